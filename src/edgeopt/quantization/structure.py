"""What a pruned or clustered weight keeps through int8: its zeros, and its few values per output
channel. Decides; edits nothing.

Nearest rounding keeps both by itself (0 maps to 0, equal floats to equal integers).
Error-compensated rounding (:mod:`.rounding`) moves weights off them: it pushes each rounding
error onto the weights not yet rounded, so a pruned weight becomes non-zero and a clustered row
gains values. Told the structure, it rounds a pruned weight to 0 and a clustered row's weights to
the nearest of its clusters' integers, and pushes those (larger) errors on instead.

Found from the float weights themselves, so it holds for any model, pruned or clustered by any
tool: every exact zero is kept (a dense trained weight has next to none, and keeping one costs
nothing), and a row whose distinct values are at most half its weights is clustered (a dense
row has about as many distinct values as weights).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: A row with at most this fraction of distinct values among its weights is clustered.
CLUSTERED_FRACTION = 0.5
#: Rows with more distinct values than this are not treated as clustered (cost of the search).
MAX_LEVELS = 256


@dataclass(frozen=True)
class RowStructure:
    """For weight rows (G x R x D): ``zeros`` (G x R x D) the weights held at 0; ``clustered``
    (G x R) the rows held on ``levels`` (G x R x L, each row's allowed integers, repeated to L)."""

    zeros: np.ndarray
    clustered: np.ndarray
    levels: np.ndarray | None

    def constrain(self, q: np.ndarray, exact: np.ndarray, column: int) -> np.ndarray:
        """Integers ``q`` (G x R) of one column, whose unrounded values are ``exact``, moved onto
        the structure."""
        if self.levels is not None and self.clustered.any():
            nearest = np.abs(self.levels - exact[..., None]).argmin(axis=-1)
            snapped = np.take_along_axis(self.levels, nearest[..., None], axis=-1)[..., 0]
            q = np.where(self.clustered, snapped, q)
        return np.where(self.zeros[:, :, column], 0.0, q)

    def holds(self, integers: np.ndarray) -> bool:
        """Whether integer rows (G x R x D) keep the zeros and stay on the clusters' integers."""
        if np.any(integers[self.zeros] != 0):
            return False
        if self.levels is None:
            return True
        on_levels = (integers[..., None] == self.levels[:, :, None, :]).any(axis=-1) | (integers == 0)
        return bool(np.all(on_levels[self.clustered]))

    @property
    def empty(self) -> bool:
        return not self.zeros.any() and not self.clustered.any()


def row_structure(rows: np.ndarray, scales: np.ndarray, qmax: int) -> RowStructure | None:
    """The structure of weight ``rows`` (G x R x D) quantized at per-row ``scales`` (G x R);
    None when they have none."""
    rows = np.asarray(rows)
    zeros = rows == 0
    depth = rows.shape[2]
    flat = rows.reshape(-1, depth)
    distinct = [np.unique(row) for row in flat]
    counts = np.array([len(values) for values in distinct]).reshape(rows.shape[:2])
    clustered = (counts <= CLUSTERED_FRACTION * depth) & (counts <= MAX_LEVELS) & (depth >= 4)
    if not clustered.all() and _shared_rows(flat):  # one scaled codebook: short rows too
        clustered[:] = True
    levels = None
    if clustered.any():
        width = int(counts[clustered].max())
        levels = np.zeros(rows.shape[:2] + (width,))
        for index, values in enumerate(distinct):
            g, r = divmod(index, rows.shape[1])
            if clustered[g, r]:
                grid = np.clip(np.rint(values / scales[g, r]), -qmax, qmax)
                levels[g, r] = np.resize(grid, width)  # repeated to the common width
    structure = RowStructure(zeros, clustered, levels)
    return None if structure.empty else structure


def distinct_per_row(integers: np.ndarray, axis: int = 0) -> np.ndarray:
    """The number of distinct values of each slice along ``axis`` (an output channel)."""
    moved = np.moveaxis(np.asarray(integers), axis, 0).reshape(np.shape(integers)[axis], -1)
    return np.array([len(np.unique(row)) for row in moved])


def shared_codebook(weight: np.ndarray, axis: int) -> bool:
    """Whether the output channels (slices along ``axis``) of ``weight`` are clustered on one
    codebook times a scale each: divided by its largest magnitude, every channel's values fall in
    one small set (compared on a grid of 2**-12, so float32 storage does not split a value), of
    at most MAX_LEVELS values and at most CLUSTERED_FRACTION of all the weights. This holds for
    channels too short for :func:`row_structure`'s own test (16 values among 24 weights)."""
    moved = np.moveaxis(np.asarray(weight, np.float64), axis, 0).reshape(np.shape(weight)[axis], -1)
    return _shared_rows(moved)


def _shared_rows(rows: np.ndarray) -> bool:
    """:func:`shared_codebook` for rows R x D."""
    if rows.shape[1] < 4:
        return False
    magnitude = np.abs(rows).max(axis=1, keepdims=True)
    union = len(np.unique(np.rint(rows / np.where(magnitude > 0, magnitude, 1.0) * 4096)))
    return union <= MAX_LEVELS and union <= CLUSTERED_FRACTION * rows.size and \
        union <= 2 * int(distinct_per_row(rows).max())


def proportional_scales(weight: np.ndarray, axis: int, scales: np.ndarray) -> np.ndarray:
    """Per-channel ``scales`` for a clustered ``weight`` replaced by ones proportional to each
    channel's largest magnitude, at the largest ratio any channel needs (none goes below its own
    scale): channels sharing one codebook times their own scale (``edgeopt.cluster``'s ``scaled``
    codebook) then store the same integers, which keeps a compressed file small. Channels of
    zeros keep their scale."""
    moved = np.moveaxis(np.asarray(weight, np.float64), axis, 0).reshape(np.shape(weight)[axis], -1)
    magnitude = np.abs(moved).max(axis=1)
    live = magnitude > 0
    if not live.any():
        return scales
    ratio = (np.asarray(scales, np.float64)[live] / magnitude[live]).max()
    wanted = np.where(live, magnitude * ratio, scales).astype(np.float32)
    return np.maximum(wanted, np.asarray(scales, np.float32))  # float32 rounding never below the need
