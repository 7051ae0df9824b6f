"""Samples grouped by step, for the per-step columns BDF derives from the store's counters and back."""

from __future__ import annotations

import numpy as np

from cyclerd.analysis.bdf_columns import FloatArray, IntArray


class StepGroups:
    """Samples grouped by step number, in file order within a step (an interrupted step goes on)."""

    def __init__(self, step: IntArray) -> None:
        self.order = np.argsort(step, kind="stable")
        ordered = step[self.order]
        self.first = np.r_[True, ordered[1:] != ordered[:-1]][: len(step)]
        self.starts = np.flatnonzero(self.first)
        self.group = np.cumsum(self.first) - 1
        self.numbers = ordered[self.starts]
        self.first_index = self.order[self.starts]
        self.last_index = self.order[np.r_[self.starts[1:], len(step)][: len(self.starts)] - 1]

    def _back(self, ordered: np.ndarray) -> np.ndarray:
        out = np.empty_like(ordered)
        out[self.order] = ordered
        return out

    def index(self) -> IntArray:
        return self._back(np.arange(len(self.order)) - self.starts[self.group] + 1)

    def increments(self, v: FloatArray) -> FloatArray:
        """Change since the step's previous sample (at its first sample: the value itself)."""
        ordered = v[self.order]
        return self._back(np.where(self.first, ordered, ordered - np.r_[0.0, ordered[:-1]]))

    def running(self, dv: FloatArray) -> FloatArray:
        """Sum of `dv` over the step's samples so far."""
        total = np.cumsum(dv[self.order])
        return self._back(total - (total - dv[self.order])[self.starts][self.group])

    def trapezoid(self, f: FloatArray, t: FloatArray) -> FloatArray:
        """The integral of `f` over `t` since the step's previous sample, over contiguous rows only.

        A step that other steps interrupted (an every-block's rest and spectrum) resumes where it
        was: the gap between its last row before and its first row after contributes nothing.
        """
        fo, to = f[self.order], t[self.order]
        resumed = np.diff(self.order, prepend=-1) != 1  # the previous row in the file is another step's
        return self._back(
            np.where(self.first | resumed, 0.0, 0.5 * (fo + np.r_[0.0, fo[:-1]]) * np.diff(to, prepend=0.0))
        )
