"""Ensembles (charrnn/ensemble.py): the prediction is the mean of the members' probabilities in
validation, scoring and sampling, and the checkpoint holds every member."""

import numpy as np
import pytest

from charrnn import checkpoint as ckpt_io
from charrnn.batches import stream_matrix
from charrnn.ensemble import (ENSEMBLE, MEMBERS, Ensemble, ensemble_checkpoint,
                              inference_model, member_params)
from charrnn.loading import load_model
from charrnn.model import Model, ModelConfig
from charrnn.stepper import CpuStepper
from charrnn.train import evaluate

V = 7


def members(cell="gru-ln", layers=2, K=3, dtype=np.float64, scale=3.0):
    """K models of one config with strong, different weights: their predictions differ."""
    config = ModelConfig(vocab_size=V, cell=cell, layers=layers, hidden=6)
    models = [Model(config, dtype=dtype, seed=seed) for seed in range(K)]
    for m in models:
        m.params *= scale
    return models


def softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def mean_probs(models, ids):
    """Each model run over the whole (T, B) ids from a zero state, its probabilities averaged:
    (T, B, V)."""
    probs = []
    for m in models:
        m.forward(ids, ids)
        probs.append(softmax(m.logits()))
    return np.mean(probs, axis=0)


def test_the_loss_is_that_of_the_mean_of_the_probabilities():
    models = members()
    rng = np.random.default_rng(0)
    ids, targets = rng.integers(0, V, (9, 4)), rng.integers(0, V, (9, 4))
    p = mean_probs(models, ids)
    expected = -np.log(np.take_along_axis(p, targets[..., None], axis=2)).mean()
    ensemble = Ensemble(models)
    assert ensemble.forward(ids, targets) == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(softmax(ensemble.logits()), p, rtol=1e-12)
    # not the mean of the members' losses (log-probabilities)
    losses = [m.forward(ids, targets) for m in models]
    assert abs(np.mean(losses) - expected) > 1e-3


@pytest.mark.parametrize("cell, layers", [("gru-ln", 2), ("lstm", 2), ("jordan", 1)])
def test_validation_carries_each_members_own_state(cell, layers):
    """Read in windows with the state carried, the loss is that of each member run over the
    whole streams at once: a member given another's state, or none, would differ."""
    models = members(cell, layers)
    ids = np.random.default_rng(1).integers(0, V, 4 * 40).astype(np.uint16)
    streams = stream_matrix(ids, 4)  # (S, 4): inputs are rows 0..S-2, targets 1..S-1
    p = mean_probs(models, streams[:-1])
    expected = -np.log(np.take_along_axis(p, streams[1:, :, None].astype(np.int64),
                                          axis=2)).mean()
    assert evaluate(Ensemble(models), ids, batch_size=4, seq_len=7) == \
        pytest.approx(expected, rel=1e-10)


def boundaries_midpoints(p):
    """For a distribution p (V,): a uniform inside each likely id's stretch of the cumulative
    sum, far from its ends, and the id an inverse-CDF draw at it gives."""
    cum = np.cumsum(p)
    starts = cum - p
    likely = np.flatnonzero(p > 1e-3)
    return (starts[likely] + cum[likely]) / 2, likely


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_the_sampler_draws_from_the_mean_of_the_members_probabilities(temperature):
    models = members(dtype=np.float32)
    prime = np.array([3, 1, 4, 1, 5], np.int32)
    p = mean_probs(models, prime[:, None])[-1, 0]  # the prediction after the prime
    target = p ** (1 / temperature) / (p ** (1 / temperature)).sum()
    uniforms, expected = boundaries_midpoints(target)
    B = len(uniforms)
    assert B >= 3, "the members should leave several likely characters"
    stepper = CpuStepper(Ensemble(models))
    stepper.arrange([], [prime[:-1]] * B)  # the state after all but the prime's last id
    drawn = stepper.generate(np.full(B, prime[-1], np.int32), np.full((1, B), -1, np.int32),
                             np.full(B, temperature), np.zeros(B, np.int64), np.ones(B),
                             uniforms[None, :])
    np.testing.assert_array_equal(drawn[0], expected)


def test_the_sampler_is_not_drawing_from_the_mean_of_the_logits():
    """What the draw test above tells apart: where the mixture and the distribution of the
    mean logits differ, the sampler follows the mixture."""
    models = members(dtype=np.float32, scale=5.0)
    prime = np.array([2, 6, 0], np.int32)
    p = mean_probs(models, prime[:, None])[-1, 0]
    logits = [m.logits()[-1, 0] for m in models]
    q = softmax(np.mean(logits, axis=0))
    uniforms, expected = boundaries_midpoints(p)
    wrong = np.searchsorted(np.cumsum(q), uniforms, side="right")
    assert (wrong != expected).any(), "pick members whose mixture and mean logits differ"
    B = len(uniforms)
    stepper = CpuStepper(Ensemble(models))
    stepper.arrange([], [prime[:-1]] * B)
    drawn = stepper.generate(np.full(B, prime[-1], np.int32), np.full((1, B), -1, np.int32),
                             np.ones(B), np.zeros(B, np.int64), np.ones(B), uniforms[None, :])
    np.testing.assert_array_equal(drawn[0], expected)


def saved_ensemble(tmp_path, models):
    cks = [ckpt_io.Checkpoint(config=m.config.to_dict(), vocab=np.arange(97, 97 + V,
                                                                         dtype=np.uint32),
                              params=m.params) for m in models]
    path = tmp_path / ENSEMBLE
    ckpt_io.save(path, ensemble_checkpoint(cks, {"best_val_loss": 1.5}))
    return path


def test_a_checkpoint_holds_every_member_and_loads_as_an_ensemble(tmp_path):
    models = members(dtype=np.float32)
    path = saved_ensemble(tmp_path, models)
    ck = ckpt_io.load(path)
    assert len(member_params(ck)) == 3
    for got, m in zip(member_params(ck), models):
        np.testing.assert_array_equal(got, m.params)
    ckpt_io.save(tmp_path / ckpt_io.BEST, ckpt_io.Checkpoint(ck.config, ck.vocab, ck.params))
    # a run directory's ensemble is what sample, eval and serve read
    net, _, _ = load_model(tmp_path)
    assert isinstance(net, Ensemble) and len(net.members) == 3
    np.testing.assert_array_equal(net.members[2].params, models[2].params)
    single = inference_model(ck.config, member_params(ck)[:1])
    assert isinstance(single, Model)


@pytest.mark.parametrize("bad, said", [
    (lambda a: a[:, :-1], "the ensemble's members have shape"),
    (lambda a: a.astype(np.float64), "the ensemble's members have shape"),
    (lambda a: np.where(np.arange(a.size).reshape(a.shape) == 5, np.nan, a),
     "the ensemble's weights contain NaN")])
def test_a_damaged_ensemble_is_refused_in_one_line(tmp_path, bad, said):
    models = members(dtype=np.float32)
    ck = ckpt_io.load(saved_ensemble(tmp_path, models))
    ck.arrays[MEMBERS] = np.ascontiguousarray(bad(ck.arrays[MEMBERS]))
    ckpt_io.save(tmp_path / "bad.npz", ck)
    with pytest.raises(ckpt_io.CheckpointError) as e:
        ckpt_io.load(tmp_path / "bad.npz")
    assert said in str(e.value) and "\n" not in str(e.value)
