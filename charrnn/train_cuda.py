"""A training run's model and Adam state resident on the GPU (`charrnn train --device cuda`).

The host copies in the Run (model.params, optimizer.m and .v) stay the checkpoint's source of
truth: ``pull()`` brings the device state back before anything reads them (saving, validation,
previews), ``push()`` sends it after a resume. The arithmetic is the CPU trainer's: the same
loss, global-norm clipping (coefficient max_norm / (norm + 1e-6)) and torch's Adam.
"""

import math

import numpy as np
from numba import cuda

from .kernels import cuda as K
from .model import Model
from .model_cuda import CudaModel
from .optim import Adam


class DeviceTrainer:
    def __init__(self, model: Model, optimizer: Adam):
        self.host_model, self.optimizer = model, optimizer
        self.model = CudaModel(model.config, params=model.params)
        self.m = cuda.to_device(optimizer.m)
        self.v = cuda.to_device(optimizer.v)
        self._norm = cuda.to_device(np.zeros(1, np.float64))

    def push(self) -> None:
        """Host state -> device (after a resume)."""
        self.model.params.copy_to_device(self.host_model.params)
        self.m.copy_to_device(self.optimizer.m)
        self.v.copy_to_device(self.optimizer.v)

    def pull(self) -> None:
        """Device state -> host (before a save, a validation or a preview)."""
        self.model.params.copy_to_host(self.host_model.params)
        self.m.copy_to_host(self.optimizer.m)
        self.v.copy_to_host(self.optimizer.v)

    def step(self, x, y, h, c, masks, grad_clip: float) -> tuple[float, float]:
        """Forward, backward, clip and Adam on the device; returns (loss, gradient norm).
        Nothing is updated when either is not finite."""
        model = self.model
        loss = model.forward(x, y, h, c, masks)
        if not math.isfinite(loss):
            return loss, math.nan
        grads = model.grads
        K.fill[K.grid(grads.size)](grads, 0.0)
        model.backward()
        self._norm.copy_to_device(np.zeros(1))
        K.sum_squares[K.grid(min(grads.size, 64 * K.BLOCK))](grads, self._norm)
        norm = math.sqrt(float(self._norm.copy_to_host()[0]))
        if not math.isfinite(norm):
            return loss, norm
        coef = grad_clip / (norm + 1e-6)
        if coef < 1.0:
            K.scale[K.grid(grads.size)](grads, coef)
        opt = self.optimizer
        opt.steps += 1
        beta1, beta2 = opt.betas
        K.adam_step[K.grid(grads.size)](model.params, grads, self.m, self.v,
                                        opt.lr / (1.0 - beta1 ** opt.steps),
                                        math.sqrt(1.0 - beta2 ** opt.steps), beta1, beta2,
                                        opt.eps)
        return loss, norm

    def final_state(self):
        return self.model.final_state()
