"""Training engines: one step of training (forward and backward over a window, the gradients'
reduction, clipping and Adam) on a device, behind one protocol, so that the run and its loop
never ask which device they train on.

The host copies (``model.params``, ``optimizer.m`` and ``.v``, ``h`` and ``c``) are what
checkpoints, validation and previews read; ``pull()`` makes them current. On the CPU they are
the arrays the engine trains, so ``pull()`` does nothing.
"""

import math
import time
from contextlib import nullcontext
from typing import Callable, Protocol

import numpy as np

from .distributed import World
from .averaging import WeightAverage
from .model import Model
from .optim import Adam, clip_grad_norm
from .weight_drop import WeightMask


class NonFinite(Exception):
    """A step met a loss or a gradient norm that is not a finite number (nothing was updated)."""

    def __init__(self, what: str, value: float):
        super().__init__(f"the {what} became {value}")
        self.what, self.value = what, value


def no_reduction(grads) -> None:
    """The reduction of a run in one process: its gradients are the whole batch's already."""


class Engine(Protocol):
    model: Model  # the host copy of the weights (current after pull)
    optimizer: Adam  # its lr is set by step(); its moments are current after pull
    average: WeightAverage | None  # the weights' running average (current after pull)
    h: np.ndarray  # (L, B, W) carried state, host copy (current after pull)
    c: np.ndarray
    # called with the flat gradient buffer between backward and the update: a run over several
    # processes sums the gradients there
    reduce_gradients: Callable

    def step(self, x: np.ndarray, y: np.ndarray, masks: np.ndarray | None, lr: float,
             grad_clip: float, weight_mask: WeightMask | None = None) -> float | None:
        """Train on one (T, B) window and carry its final state. masks: the dropout masks
        (L, T, B, H) of every stream; weight_mask: the recurrent matrices' DropConnect mask
        (weight_drop.py). Returns the window's mean loss, or None where the device keeps it
        until take_loss(). Raises NonFinite where the device checks at once."""

    def take_loss(self) -> tuple[float, bool]:
        """(the sum of the losses step() did not return since the last call, whether every
        step since then was finite)."""

    def reset_state(self) -> None:
        """A new epoch: the streams start again from a zero state."""

    def pull(self) -> None:
        """Make the host copies current."""


class CpuEngine:
    """Training on the CPU: the @njit kernels over the host arrays themselves.

    In a run over several processes (world.size > 1) the engine trains this rank's streams
    (world.stream_rows) of each (T, B) window it is given: its loss and gradients are its share
    of the whole window's mean, summed across ranks before the check, the clip and Adam, which
    every rank then applies alike. h and c are this rank's rows of the carried state."""

    def __init__(self, model: Model, optimizer: Adam, h: np.ndarray, c: np.ndarray,
                 world: World | None = None, average: WeightAverage | None = None):
        self.world = world or World()
        self.B = h.shape[1]
        self.rows = self.world.stream_rows(self.B)
        self.model, self.optimizer, self.average = model, optimizer, average
        self.h, self.c = h[:, self.rows].copy(), c[:, self.rows].copy()  # (L, b, W)
        self.reduce_gradients = self.world.sum_  # (nothing to sum in a world of one)

    def step(self, x, y, masks, lr, grad_clip, weight_mask=None) -> float:
        model, rows = self.model, self.rows  # (all rows, no copy, in a world of one)
        x, y = x[:, rows], y[:, rows]
        masks = None if masks is None else masks[:, :, rows]
        with nullcontext() if weight_mask is None else \
                weight_mask.applied(model.params, model.grads):
            [loss] = self.world.sum_values(model.forward(x, y, self.h, self.c, masks,
                                                         streams=self.B))
            if not math.isfinite(loss):  # (the same sum on every rank: all stop alike)
                raise NonFinite("loss", loss)
            model.grads[:] = 0
            model.backward()
        self.reduce_gradients(model.grads)
        norm = clip_grad_norm(model.grads, grad_clip)
        if not math.isfinite(norm):
            raise NonFinite("gradients", norm)
        self.optimizer.lr = lr
        self.optimizer.step(model.params, model.grads)
        if self.average is not None:
            self.average.update(model.params)
        self.h, self.c = model.final_state()
        return loss

    def take_loss(self) -> tuple[float, bool]:
        return 0.0, True  # every loss was returned by step()

    def reset_state(self) -> None:
        self.h, self.c = self.model.zero_state(self.h.shape[1])

    def pull(self) -> None:
        pass


def make_engine(device: str, model: Model, optimizer: Adam, h: np.ndarray,
                c: np.ndarray, world: World | None = None,
                average: WeightAverage | None = None) -> Engine:
    """The engine of ``device`` ("cpu" or "cuda"), starting from these host arrays (the whole
    (L, B, W) carried state: a rank of several keeps its own rows), and keeping the weights'
    average when there is one."""
    if device == "cuda":
        from .cuda.train import CudaEngine
        return CudaEngine(model, optimizer, h, c, average)
    return CpuEngine(model, optimizer, h, c, world, average)


SPEED_PROBE_STEPS = 25  # time steps of the window timed to choose the model's width


def training_speed(model: Model, optimizer: Adam, streams: np.ndarray, seq_len: int,
                   grad_clip: float) -> float:
    """Training characters per second of this model on the CPU at the streams' batch (S, B).
    Times a short window (forward and backward) and the update (clip and Adam) apart, the best
    of three each (the first also compiles the kernels on a first run ever, or loads them from
    the cache; the best is the one least disturbed), and scales the window to seq_len: the
    update's cost is per step, so timing it with the short window alone underestimates the
    speed (BENCHMARKS.md, "Choosing the defaults")."""
    B = streams.shape[1]
    T = min(seq_len, SPEED_PROBE_STEPS, streams.shape[0] - 1)
    x, y = streams[:T], streams[1:T + 1]
    masks = model.dropout_masks(np.random.default_rng(0), T, B) \
        if model.config.dropout else None
    window_s = update_s = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        model.forward(x, y, masks=masks)
        model.grads[:] = 0
        model.backward()
        t1 = time.perf_counter()
        clip_grad_norm(model.grads, grad_clip)
        optimizer.step(model.params, model.grads)
        t2 = time.perf_counter()
        window_s, update_s = min(window_s, t1 - t0), min(update_s, t2 - t1)
    steps = min(seq_len, streams.shape[0] - 1)  # a real window's time steps
    return steps * B / (window_s * steps / T + update_s)
