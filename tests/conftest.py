import numpy as np
import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from charrnn import CELL_NAMES
from charrnn.model import Model, ModelConfig

CELLS = list(CELL_NAMES)


@pytest.fixture(autouse=True)
def private_state_dir(tmp_path, monkeypatch):
    """Tests never touch the user's record of the most recent run."""
    monkeypatch.setenv("CHARRNN_STATE_DIR", str(tmp_path / "charrnn-state"))


def rel_error(actual, expected, floor=1e-8):
    """Largest elementwise relative error |a - e| / max(|a| + |e|, floor) (torch-rnn's measure)."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if actual.size == 0:
        return 0.0
    return float(np.max(np.abs(actual - expected) / np.maximum(np.abs(actual) + np.abs(expected),
                                                               floor)))


def scaled_error(actual, expected):
    """Largest absolute error relative to the largest reference magnitude of the array."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30))


class Problem:
    """A small model with random weights, a random window, initial states and (optionally)
    dropout masks and upstream gradients for the final states."""

    def __init__(self, cell, layers, dropout=0.0, T=5, B=3, H=4, V=6, dtype=np.float64, seed=0):
        rng = np.random.default_rng(seed)
        self.config = ModelConfig(vocab_size=V, cell=cell, layers=layers, hidden=H,
                                  dropout=dropout)
        self.model = Model(self.config, dtype=dtype, seed=seed + 1)
        # larger-than-default weights so gates saturate somewhat and every path matters
        self.model.params[:] = rng.uniform(-0.8, 0.8, self.model.params.size)
        self.ids = rng.integers(0, V, (T, B))
        self.targets = rng.integers(0, V, (T, B))
        shape = self.model.zero_state(B)[0].shape  # (L, B, H); (1, B, V) for jordan
        self.h0 = rng.uniform(-0.9, 0.9, shape).astype(dtype)
        with_c = self.config.has_cell_state
        self.c0 = (rng.uniform(-0.9, 0.9, shape) if with_c else np.zeros(shape)).astype(dtype)
        self.masks = self.model.dropout_masks(rng, T, B) if dropout else None
        self.dhT = rng.normal(size=shape).astype(dtype)
        self.dcT = (rng.normal(size=shape) if with_c else np.zeros(shape)).astype(dtype)

    def objective(self):
        """Mean loss plus <hT, dhT> + <cT, dcT>, so the final-state gradient paths are checked."""
        loss = self.model.forward(self.ids, self.targets, self.h0, self.c0, self.masks)
        hT, cT = self.model.final_state()
        return loss + float((hT * self.dhT).sum() + (cT * self.dcT).sum())

    def analytic(self):
        """(grads by name, dh0, dc0) from the hand-written backward."""
        self.objective()
        self.model.grads[:] = 0
        dh0, dc0 = self.model.backward(self.dhT, self.dcT)
        grads = {k: v.copy() for k, v in self.model.grad_views.items()}
        return grads, dh0, dc0


@pytest.fixture(params=CELLS)
def cell(request):
    return request.param


def stacks(cell: str, layers: int) -> None:
    """Skip a multi-layer case for the one cell that does not stack."""
    if cell == "jordan" and layers > 1:
        pytest.skip("a jordan network has one layer: its recurrence runs through the output")


# Hypothesis profiles. "ci", the default, keeps hypothesis's 100 examples per test and draws
# them derandomized, so CI runs the same examples every time; "long" runs ten times as many,
# random ones (python -m pytest tests/test_fuzz_cli.py --hypothesis-profile long: the
# hypothesis pytest plugin's option, which loads the profile after this file). The fuzzers run
# whole commands: no deadline, and hypothesis does not reset function-scoped fixtures (the
# autouse private_state_dir above) between examples, which they do not rely on.
_FUZZ_HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
hypothesis_settings.register_profile("ci", max_examples=100, deadline=None, derandomize=True,
                                     suppress_health_check=_FUZZ_HEALTH, print_blob=True)
hypothesis_settings.register_profile("long", max_examples=1000, deadline=None,
                                     suppress_health_check=_FUZZ_HEALTH, print_blob=True)
hypothesis_settings.load_profile("ci")
