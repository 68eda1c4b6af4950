"""The training engine on the GPU (`charrnn train --device cuda`; the protocol is
charrnn/engine.py's): the model, Adam state and carried hidden state resident on the device.

Nothing comes back to the host per step: the loss is summed on the device, the gradient norm
feeds the clipping and Adam kernels there (a non-finite norm skips the update and raises a flag),
and the run reads the loss sum and the flag once per logging interval (``take_loss``). The
host copies (model.params, optimizer.m and .v, h and c) stay the checkpoint's source of truth:
``pull()`` brings the device state back before anything reads them (saving, validation,
previews). The arithmetic is the CPU trainer's: the same loss,
global-norm clipping (coefficient max_norm / (norm + 1e-6)) and torch's Adam.
"""

import math

import numpy as np
from numba import cuda

from .. import averaging
from ..averaging import WeightAverage
from ..engine import no_reduction
from ..model import Model
from ..optim import Adam
from . import kernels as K
from .model import CudaModel


class CudaEngine:
    def __init__(self, model: Model, optimizer: Adam, h: np.ndarray, c: np.ndarray,
                 average: WeightAverage | None = None):
        self.model, self.optimizer, self.h, self.c = model, optimizer, h, c  # host copies
        self.average = average  # host copy; the device's is self.d_average
        self.d_average = None if average is None else cuda.to_device(average.values)
        self.reduce_gradients = no_reduction  # called with the device's gradient buffer
        self.device_model = CudaModel(model.config, params=model.params)
        self.m = cuda.to_device(optimizer.m)
        self.v = cuda.to_device(optimizer.v)
        self.d_h, self.d_c = cuda.to_device(h), cuda.to_device(c)  # (L, B, W), carried
        self._norm_sq = cuda.to_device(np.zeros(1))
        self._loss_sum = cuda.to_device(np.zeros(1))  # sum of the windows' mean losses
        self._bad = cuda.to_device(np.zeros(1, np.int32))
        self._pulled = True  # whether the host copies hold the device's state

    def pull(self) -> None:
        """Device -> host: weights, Adam moments and the carried state into the host copies
        (once per step however often it is asked: a validation and the save after it)."""
        if self._pulled:
            return
        self.device_model.params.copy_to_host(self.model.params)
        self.m.copy_to_host(self.optimizer.m)
        self.v.copy_to_host(self.optimizer.v)
        if self.average is not None:
            self.d_average.copy_to_host(self.average.values)
        self.h, self.c = self.d_h.copy_to_host(), self.d_c.copy_to_host()
        self._pulled = True

    def take_loss(self) -> tuple[float, bool]:
        """(sum of the mean losses since the last call, whether every step was finite)."""
        total = float(self._loss_sum.copy_to_host()[0])
        finite = not self._bad.copy_to_host()[0] and math.isfinite(total)
        K.fill[1, 1](self._loss_sum, 0.0)
        return total, finite

    def reset_state(self) -> None:
        """A new epoch: the streams start again from a zero state."""
        for d in (self.d_h, self.d_c):
            K.fill[K.grid(d.size)](d.reshape(d.size), 0.0)
        self.h, self.c = np.zeros_like(self.h), np.zeros_like(self.c)

    def step(self, x, y, masks, lr: float, grad_clip: float, weight_mask=None) -> None:
        """Forward, backward, clip and Adam on the device; the final state carries over. The
        loss stays on the device (take_loss). weight_mask: as WeightMask.applied does on the
        host, the recurrent matrices are masked for forward and backward, their gradients
        masked after, and the matrices put back before the update."""
        self._pulled = False
        model = self.device_model
        grads = model.grads
        if weight_mask is not None:
            saved = self._mask_weights(weight_mask)
        model.forward(x, y, self.d_h, self.d_c, masks, loss_sum=self._loss_sum)
        K.fill[K.grid(grads.size)](grads, 0.0)
        model.backward(initial_grads=False)
        if weight_mask is not None:
            self._unmask_weights(weight_mask, saved)
        self.reduce_gradients(grads)
        K.fill[1, 1](self._norm_sq, 0.0)
        K.sum_squares[K.grid(min(grads.size, 64 * K.BLOCK))](grads, self._norm_sq)
        K.clip_by_norm[K.grid(grads.size)](grads, self._norm_sq, grad_clip)
        K.note_nonfinite[1, 1](self._norm_sq, self._loss_sum, self._bad)
        opt = self.optimizer
        opt.lr = lr
        opt.steps += 1
        beta1, beta2 = opt.betas
        K.adam_step[K.grid(grads.size)](model.params, grads, self.m, self.v,
                                        opt.lr / (1.0 - beta1 ** opt.steps),
                                        math.sqrt(1.0 - beta2 ** opt.steps), beta1, beta2,
                                        opt.eps, 1.0 - opt.lr * opt.weight_decay,
                                        self._norm_sq)
        if self.average is not None:  # the host counts the updates; the device averages
            d = averaging.rate(self.average.decay, self.average.updates)
            K.average_weights[K.grid(grads.size)](self.d_average, model.params, 1.0 - d)
            self.average.updates += 1
        hs, cs = model.last_states()
        for layer in range(self.d_h.shape[0]):  # device to device
            self.d_h[layer].copy_to_device(hs[layer])
            self.d_c[layer].copy_to_device(cs[layer])

    def _mask_weights(self, weight_mask):
        """params[where] *= mask for every masked matrix; returns the device's copies of the
        matrices and of the mask."""
        params = self.device_model.params
        d_values = cuda.to_device(weight_mask.values)
        saved = cuda.device_array_like(d_values)
        for where, mask in weight_mask.parts():
            saved[mask].copy_to_device(params[where])
            _mul(params[where], d_values[mask])
        return saved, d_values

    def _unmask_weights(self, weight_mask, saved) -> None:
        """grads[where] *= mask (the gradient of W * m with respect to W), then the matrices
        back as they were."""
        saved, d_values = saved
        params, grads = self.device_model.params, self.device_model.grads
        for where, mask in weight_mask.parts():
            _mul(grads[where], d_values[mask])
            params[where].copy_to_device(saved[mask])


def _mul(flat, mask) -> None:
    """flat *= mask on the device, both (n,)."""
    n = flat.shape[0]
    K.mul[K.grid(n)](flat.reshape(1, n), mask.reshape(1, n), flat.reshape(1, n))
