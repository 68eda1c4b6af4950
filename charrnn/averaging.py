"""An exponential moving average of the weights (--ema): after every update,
avg += (1 - d) * (params - avg), with d = min(DECAY, n / (n + 2)) after n updates: until the
cap, the average of all the weights so far, the k-th weighted by k (polynomial-decay averaging,
Shamir & Zhang 2013), so the initial weights drop out at once and the average lags a third of
the run; from n = 2 DECAY / (1 - DECAY) (398 updates at 0.995) a horizon of about 1 / (1 - DECAY)
updates (Polyak & Juditsky 1992). TensorFlow's rule, min(DECAY, (1 + n) / (10 + n)), reaches
0.995 only after 1,791 updates; before that it gives the last 10% of the updates about 60% of the
weight, too short an average for a ten-minute run. Validation, previews, best.npz and the
checkpoint's `params` are the average; the trained weights go on being trained and are saved
beside it for resuming (why: BENCHMARKS.md, "Quality: more compute buys a better model").

Numba-free: numpy arithmetic in place, a few passes over the weights per step.
"""

import numpy as np


def rate(decay: float, updates: int) -> float:
    """The decay of update number updates + 1."""
    return min(decay, updates / (updates + 2.0))


class WeightAverage:
    """The running average of a flat weight buffer, and how many updates it has taken."""

    def __init__(self, params: np.ndarray, decay: float, updates: int = 0,
                 values: np.ndarray | None = None):
        self.decay, self.updates = decay, updates
        self.values = params.copy() if values is None else np.array(values, params.dtype)
        self._step = np.empty_like(self.values)

    def update(self, params: np.ndarray) -> None:
        """Take the weights after an update into the average."""
        d = rate(self.decay, self.updates)
        # a non-finite weight makes a non-finite average, quietly: the run's checks stop it
        with np.errstate(invalid="ignore", over="ignore"):
            np.subtract(params, self.values, out=self._step)
            self._step *= 1.0 - d
            self.values += self._step
        self.updates += 1
