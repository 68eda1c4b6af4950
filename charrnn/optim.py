"""Optimizers over the flat parameter buffer: thin stateful wrappers of the @njit kernels.

Their state is a dict of plain arrays and numbers, so a checkpoint can store it without pickle.
"""

import numpy as np

from .kernels import cpu
from .parallel import StreamSplitter, row_ranges

# Fewer weights than this per thread and Adam runs on one thread: below some millions of
# weights two threads were no faster where measured (BENCHMARKS.md, "Loops as wide as the
# registers").
ADAM_MIN_PART = 1 << 21


class Adam:
    """torch.optim.Adam over one flat buffer, or torch.optim.AdamW with weight_decay above 0
    (the decay decoupled from the gradient: every weight shrinks by lr * weight_decay a step).
    With a splitter, the buffer is cut into one range per thread (each weight's update is its
    own, so the bits are those of one thread)."""

    def __init__(self, size: int, dtype=np.float32, lr: float = 2e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, splitter: StreamSplitter | None = None):
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.m = np.zeros(size, dtype)  # first moment
        self.v = np.zeros(size, dtype)  # second moment
        self.steps = 0
        parts = 1 if splitter is None else max(1, min(splitter.threads, size // ADAM_MIN_PART))
        self._ranges = row_ranges(size, parts)
        self._splitter = splitter

    def step(self, params: np.ndarray, grads: np.ndarray) -> None:
        self.steps += 1
        m, v = self.m, self.v
        hyper = (self.steps, self.lr, self.betas[0], self.betas[1], self.eps, self.weight_decay)

        def update(span):
            lo, hi = span
            cpu.adam_step(params[lo:hi], grads[lo:hi], m[lo:hi], v[lo:hi], *hyper)

        if len(self._ranges) == 1:
            update(self._ranges[0])
        else:
            self._splitter.map(update, self._ranges)

    def state(self) -> dict:
        return {"m": self.m, "v": self.v, "steps": self.steps}

    def load_state(self, state: dict) -> None:
        self.m[:] = state["m"]
        self.v[:] = state["v"]
        self.steps = int(state["steps"])


class SGD:
    """torch.optim.SGD with momentum (dampening 0, no Nesterov) over one flat buffer."""

    def __init__(self, size: int, dtype=np.float32, lr: float = 0.1, momentum: float = 0.9):
        self.lr, self.momentum = lr, momentum
        self.velocity = np.zeros(size, dtype)
        self.steps = 0

    def step(self, params: np.ndarray, grads: np.ndarray) -> None:
        self.steps += 1
        cpu.sgd_step(params, grads, self.velocity, self.lr, self.momentum)

    def state(self) -> dict:
        return {"velocity": self.velocity, "steps": self.steps}

    def load_state(self, state: dict) -> None:
        self.velocity[:] = state["velocity"]
        self.steps = int(state["steps"])



def clip_grad_norm(grads: np.ndarray, max_norm: float) -> float:
    """Scale grads in place to global norm <= max_norm; return the norm before clipping."""
    return float(cpu.clip_grad_norm(grads, max_norm))
