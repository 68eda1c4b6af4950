"""DropConnect on the recurrent matrices (Wan et al. 2013; the weight drop of AWD-LSTM, Merity et
al. 2017): each training window multiplies every layer's W_h by one mask of 0 and 1 / (1 - p),
the same for every stream and time step of the window. The recurrence is regularised without
touching the kernels (CPU or CUDA): the engine masks the weights in place around forward and
backward, and the gradient of the masked matrix reaches W_h through the same mask,
d(W * m) / dW = m. Evaluation and sampling use W_h itself (inverted scaling).
"""

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .model import ParamLayout


@dataclass(frozen=True)
class WeightMask:
    """One window's mask: where the masked matrices lie in the flat parameter buffer, and their
    multipliers one after another."""
    slices: tuple[slice, ...]  # each layer's W_h in the flat buffer
    values: np.ndarray  # (n,) 0 or 1 / (1 - p), the matrices' masks concatenated

    def parts(self) -> Iterator[tuple[slice, slice]]:
        """(the matrix in the flat buffer, its mask in values), per matrix."""
        start = 0
        for where in self.slices:
            size = where.stop - where.start
            yield where, slice(start, start + size)
            start += size

    @contextmanager
    def applied(self, params: np.ndarray, grads: np.ndarray):
        """Within: params hold the masked matrices. On leaving normally, the gradients of the
        masked matrices become those of the matrices (times the mask); on any leaving, params
        hold the matrices again, bit for bit."""
        saved = [params[where].copy() for where in self.slices]
        for where, mask in self.parts():
            params[where] *= self.values[mask]
        try:
            yield
            for where, mask in self.parts():
                grads[where] *= self.values[mask]
        finally:
            for where, kept in zip(self.slices, saved):
                params[where] = kept


class WeightDrop:
    """Draws the window masks of rate p for a model's layout."""

    def __init__(self, layout: ParamLayout, p: float):
        self.slices = layout.recurrent_slices()
        self.size = sum(s.stop - s.start for s in self.slices)
        self.p = p

    def draw(self, rng: np.random.Generator, dtype) -> WeightMask:
        keep = rng.random(self.size) >= self.p
        return WeightMask(self.slices, (keep / (1.0 - self.p)).astype(dtype))
