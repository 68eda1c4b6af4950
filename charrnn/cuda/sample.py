"""Sampling on the GPU: a Stepper (charrnn/stepper.py) with the weights uploaded once, at its
making, and the rows' state on the device; each chunk of characters is one launch of
cuda/kernels.py's sample_steps. The rows are rearranged on the host (a copy of the state each
way, only when the set of slots changes)."""

from collections.abc import Sequence

import numpy as np
from numba import cuda

from ..model import Model
from ..stepper import NO_OPTIONS, Start, arranged, feeding
from . import kernels as K
from .model import require_kernels

THREADS = K.SAMPLE_THREADS  # per block: each block advances one stream


class CudaStepper:
    """The Stepper of charrnn/stepper.py on the device, with the model's weights as they were
    when it was made."""

    def __init__(self, model: Model):
        require_kernels(model.config)
        self.model = model
        self.cell = model.config.kernel_id
        self.params = cuda.to_device(model.params)
        self.offs = cuda.to_device(model.layout.offsets)
        self.rows = 0
        self.h = self.c = None  # (L, B, W) on the device while there are rows
        self.scratch = None

    @staticmethod
    def _zeros(shape, dtype):
        return cuda.to_device(np.zeros(shape, dtype))

    def _scratch(self, B: int) -> tuple:
        """x (B,), then xg, hw (B, G*H), logits (B, V), probs (B, V), taken (B, V)."""
        cfg, dtype = self.model.config, self.model.dtype
        GH, V = cfg.gates * cfg.hidden, cfg.vocab_size
        return (self._zeros(B, np.int32), self._zeros((B, GH), dtype),
                self._zeros((B, GH), dtype), self._zeros((B, V), dtype),
                self._zeros((B, V), np.float64), self._zeros((B, V), np.int32))

    def _fed(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, c = self.model.zero_state(1)
        if len(ids):
            d_h, d_c = cuda.to_device(h), cuda.to_device(c)
            d_x, *scratch = self._scratch(1)
            x, forced = feeding(ids)
            d_x.copy_to_device(x)
            K.sample_steps[1, THREADS](
                self.cell, self.params, self.offs, d_x, d_h, d_c, cuda.to_device(forced),
                *map(cuda.to_device, NO_OPTIONS), cuda.to_device(np.zeros(forced.shape)),
                cuda.device_array(forced.shape, np.int32), *scratch)
            h, c = d_h.copy_to_host(), d_c.copy_to_host()
        return h, c

    def _host_state(self) -> tuple[np.ndarray, np.ndarray]:
        return ((self.h.copy_to_host(), self.c.copy_to_host()) if self.rows
                else self.model.zero_state(0))

    def saved(self, rows: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        h, c = self._host_state()
        return [(h[:, r:r + 1].copy(), c[:, r:r + 1].copy()) for r in rows]

    def arrange(self, keep: Sequence[int], starts: Sequence[Start]) -> None:
        h, c = arranged(*self._host_state(), keep, starts, self._fed)
        self.rows = h.shape[1]
        if self.rows:
            self.h, self.c = cuda.to_device(h), cuda.to_device(c)
            self.scratch = self._scratch(self.rows)
        else:
            self.h = self.c = self.scratch = None

    def generate(self, x, forced, temperature, top_k, top_p, uniforms) -> np.ndarray:
        d_x, *scratch = self.scratch
        d_x.copy_to_device(np.ascontiguousarray(x, np.int32))
        out = cuda.device_array(uniforms.shape, np.int32)
        K.sample_steps[self.rows, THREADS](
            self.cell, self.params, self.offs, d_x, self.h, self.c, cuda.to_device(forced),
            cuda.to_device(temperature), cuda.to_device(top_k), cuda.to_device(top_p),
            cuda.to_device(uniforms), out, *scratch)
        ids = out.copy_to_host()
        x[:] = ids[-1]
        return ids
