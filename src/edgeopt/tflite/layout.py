"""Layouts: how a TFLite tensor's axes relate to the ONNX tensor it holds.

A layout is a permutation ``p`` with ``tflite = onnx.transpose(p)``: the identity for a tensor
stored as ONNX has it, :func:`channels_last` (``(0, 2, 3, 1)`` at rank 4) for an NCHW tensor
stored NHWC, as TFLite's convolutions and pools want. Every function here is arithmetic on
permutations, shapes and axes; the lowering decides which layout each tensor gets.
"""

from __future__ import annotations

import numpy as np

Layout = tuple[int, ...]


def identity(rank: int) -> Layout:
    return tuple(range(rank))


def channels_last(rank: int) -> Layout:
    """NC[D]HW -> N[D]HWC."""
    return (0, *range(2, rank), 1) if rank >= 3 else identity(rank)


def is_identity(layout: Layout) -> bool:
    return tuple(layout) == identity(len(layout))


def inverse(layout: Layout) -> Layout:
    return tuple(int(i) for i in np.argsort(layout))


def compose(first: Layout, then: Layout) -> Layout:
    """The permutation of ``x.transpose(first).transpose(then)``."""
    return tuple(first[i] for i in then)


def permute_shape(shape, layout: Layout) -> tuple[int, ...]:
    return tuple(int(shape[i]) for i in layout)


def tflite_axis(axis: int, layout: Layout) -> int:
    """Where ONNX axis ``axis`` (negative allowed) lies in the TFLite tensor."""
    rank = len(layout)
    return layout.index(axis % rank)


def is_free_reshape(shape, layout: Layout) -> bool:
    """Whether the TFLite tensor holds its elements in ONNX's order, so that a Reshape needs no
    Transpose: true when the axes ``layout`` moves are all of size 1 (``[N, C, 1, 1]`` stored
    ``[N, 1, 1, C]``)."""
    moved = [axis for axis in layout if shape[axis] != 1]
    return moved == sorted(moved)


def transpose_between(source: Layout, target: Layout) -> Layout:
    """The TRANSPOSE permutation taking a tensor stored in ``source`` to ``target``."""
    return tuple(source.index(axis) for axis in target)


def drop_axes(layout: Layout, axes) -> Layout:
    """The layout of a tensor after ONNX ``axes`` are removed from it (a reduction without keepdims)."""
    removed = sorted(set(axes))
    return tuple(a - sum(r < a for r in removed) for a in layout if a not in removed)
