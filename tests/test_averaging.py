"""The running average of the weights (--ema, charrnn/averaging.py): its arithmetic against a
plain float64 loop, and a run's use of it: validation and the checkpoint's params are the
average, the trained weights are kept beside it, and resuming puts both back."""

import json

import numpy as np
import pytest

from charrnn import checkpoint as ckpt_io
from charrnn.averaging import WeightAverage, rate
from charrnn.checkpoint import CheckpointError
from charrnn.model import Model, ModelConfig
from charrnn.train import Run, TrainOptions, evaluate, train
from charrnn.train_state import TRAINED_PARAMS, options_from_checkpoint, restore

from .test_reliability import Quiet


def test_the_average_weights_the_kth_update_by_k_until_the_decay_caps_it():
    rng = np.random.default_rng(0)
    steps = [rng.normal(size=7) for _ in range(40)]
    average = WeightAverage(steps[0], 0.95)  # capped from n = 38: 2 x 0.95 / 0.05
    for params in steps[1:31]:
        average.update(params)
    k = np.arange(1, 31)  # the initial weights have no share at all
    linear = (k[:, None] * np.array(steps[1:31])).sum(0) / k.sum()
    np.testing.assert_allclose(average.values, linear, rtol=1e-12)
    expected = average.values.copy()
    for n, params in enumerate(steps[31:], start=30):
        d = 0.95 if n >= 38 else n / (n + 2)
        expected = d * expected + (1 - d) * params
        average.update(params)
    np.testing.assert_allclose(average.values, expected, rtol=1e-13, atol=1e-15)
    assert average.updates == 39
    assert rate(0.95, 0) == 0 and rate(0.95, 37) < 0.95 and rate(0.95, 38) == 0.95
    assert not np.shares_memory(average.values, steps[0])  # a copy, not a view


def test_the_average_keeps_the_weights_dtype():
    params = np.ones(4, np.float32)
    average = WeightAverage(params, 0.99, updates=3, values=np.zeros(4))
    assert average.values.dtype == np.float32 and average.updates == 3
    average.update(params)
    np.testing.assert_allclose(average.values, 1 - rate(0.99, 3), rtol=1e-6)


SMALL = dict(hidden=16, layers=1, seq_len=16, batch_size=4, eval_every=5, save_every=5,
             preview_chars=0, lr_schedule="constant", patience=0, lr=1e-2)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from charrnn.synthetic import MarkovSource
    path = tmp_path_factory.mktemp("corpus") / "markov.txt"
    path.write_text(MarkovSource(alphabet="abcd\n", order=2, seed=3).sample_text(6000))
    return path


def test_validation_and_the_saved_params_are_the_average(corpus, tmp_path):
    run = Run(corpus, tmp_path / "a", TrainOptions(**SMALL, ema=0.9, max_steps=20))
    train(run, Quiet())
    ck = ckpt_io.load(tmp_path / "a" / ckpt_io.LATEST)
    trained = ck.arrays[TRAINED_PARAMS]
    assert ck.train["ema_updates"] == 20
    assert not np.array_equal(ck.params, trained)  # two different sets of weights
    history = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").open()]
    last = [r["val_loss"] for r in history if r.get("val_loss") is not None][-1]
    config = ModelConfig(**ck.config)
    val_ids = run.val_ids
    assert evaluate(Model(config, params=ck.params), val_ids, 4, 16) == pytest.approx(last,
                                                                                   rel=1e-12)
    assert evaluate(Model(config, params=trained), val_ids, 4, 16) != pytest.approx(last,
                                                                                 rel=1e-6)


def test_a_resumed_run_goes_on_from_both_sets_of_weights(corpus, tmp_path):
    straight = Run(corpus, tmp_path / "s", TrainOptions(**SMALL, ema=0.9, max_steps=20))
    train(straight, Quiet())
    first = Run(corpus, tmp_path / "r", TrainOptions(**SMALL, ema=0.9, max_steps=10))
    train(first, Quiet())
    saved = ckpt_io.load(tmp_path / "r" / ckpt_io.LATEST)
    resumed = Run(corpus, tmp_path / "r", options_from_checkpoint(saved, {"max_steps": 20}),
                  resume=saved)
    train(resumed, Quiet())
    a = ckpt_io.load(tmp_path / "s" / ckpt_io.LATEST)
    b = ckpt_io.load(tmp_path / "r" / ckpt_io.LATEST)
    np.testing.assert_array_equal(a.params, b.params)
    np.testing.assert_array_equal(a.arrays[TRAINED_PARAMS], b.arrays[TRAINED_PARAMS])
    assert a.train["ema_updates"] == b.train["ema_updates"] == 20


def test_an_averaged_checkpoint_without_its_trained_weights_is_refused(corpus, tmp_path):
    run = Run(corpus, tmp_path / "m", TrainOptions(**SMALL, ema=0.9, max_steps=5))
    train(run, Quiet())
    ck = ckpt_io.load(tmp_path / "m" / ckpt_io.LATEST)
    size, shape = ck.params.size, ck.arrays["state.h"].shape
    del ck.arrays[TRAINED_PARAMS]
    with pytest.raises(CheckpointError, match="train.params"):
        restore(ck, params_size=size, state_shape=shape, positions=10**6, averaged=True)


def test_a_checkpoint_from_before_the_average_resumes_without_it(corpus, tmp_path):
    run = Run(corpus, tmp_path / "o", TrainOptions(**SMALL, ema=0.0, max_steps=5))
    train(run, Quiet())
    ck = ckpt_io.load(tmp_path / "o" / ckpt_io.LATEST)
    assert TRAINED_PARAMS not in ck.arrays and "ema_updates" not in ck.train
    del ck.train["options"]["ema"]
    assert options_from_checkpoint(ck, {"max_steps": 9}).ema == 0.0
