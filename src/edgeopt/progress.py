"""Progress bars for long work (calibration, the int8 search, evaluation).

Shown on a terminal only, and only for jobs of at least ``MIN_STEPS`` steps: a tiny job or a log
file gets no bar. ``EDGEOPT_PROGRESS=0`` turns bars off, ``=1`` forces them on.
"""

from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
MIN_STEPS = 20


def enabled(total: int | None) -> bool:
    forced = os.environ.get("EDGEOPT_PROGRESS")
    if forced is not None:
        return forced not in ("0", "", "false", "no")
    return sys.stderr.isatty() and (total is None or total >= MIN_STEPS)


def progress(items: Iterable[T], description: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """``items``, with a bar on stderr when :func:`enabled`."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if not enabled(total):
        yield from items
        return
    from tqdm import tqdm

    yield from tqdm(items, desc=description, total=total, unit=unit, leave=False, file=sys.stderr,
                    dynamic_ncols=True)


class StepBar:
    """A bar advanced by hand, for steps that are not one loop (the models the search builds);
    it appears on a terminal at the first step and counts every step after it."""

    def __init__(self, description: str, unit: str = "it"):
        self.description, self.unit = description, unit
        self.bar = None
        self.started = False

    def step(self, text: str | None = None) -> None:
        if not self.started:
            self.started = True
            if enabled(None):
                from tqdm import tqdm

                self.bar = tqdm(desc=self.description, unit=self.unit, leave=False, file=sys.stderr,
                                dynamic_ncols=True)
        if self.bar is not None:
            if text:
                self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
