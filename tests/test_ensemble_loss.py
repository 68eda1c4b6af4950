"""benchmarks/ensemble_loss.py reads the held-out text as training's validation does, so its
figures for one model are the validation's, and its ensemble is the mean of probabilities."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from charrnn.model import Model, ModelConfig
from charrnn.train import evaluate

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "ensemble_loss.py"


@pytest.fixture(scope="module")
def ensemble_loss():
    spec = importlib.util.spec_from_file_location("ensemble_loss", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_model_scores_as_validation_does(ensemble_loss):
    V = 7
    ids = np.random.default_rng(0).integers(V, size=64 * 230).astype(np.uint16)  # 3 windows
    model = Model(ModelConfig(vocab_size=V, cell="gru-ln", layers=2, hidden=8), seed=3)
    log_p = ensemble_loss.target_log_probs(model, ids)
    assert len(log_p) == 64 * (230 - 1)
    assert -log_p.mean() == pytest.approx(evaluate(model, ids, batch_size=64, seq_len=100),
                                          rel=1e-5)


def test_the_ensemble_averages_probabilities_not_losses(ensemble_loss):
    a, b = np.log([0.9, 0.1]), np.log([0.1, 0.9])  # two models, each sure of one position
    ensemble = ensemble_loss.ensemble_log_probs([a, b])
    np.testing.assert_allclose(ensemble, np.log([0.5, 0.5]))
    assert -ensemble.mean() < min(-a.mean(), -b.mean())
