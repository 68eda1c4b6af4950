"""The training loop: deterministic, resumable to the bit, honest about small corpora, and it
writes the run directory it promises."""

import json

import numpy as np
import pytest

from charrnn import checkpoint as ckpt_io
from charrnn.options import OptionError
from charrnn.synthetic import MarkovSource
from charrnn.tokenizer import CorpusError
from charrnn.schedule import Pacer
from charrnn.sizing import fit_sizes
from charrnn.train import Run, TrainOptions, evaluate, train
from charrnn.train_state import options_from_checkpoint


class Recorder:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, args))


SMALL = dict(hidden=16, layers=2, seq_len=16, batch_size=4, eval_every=10, save_every=10,
             log_every=5, preview_chars=20, dropout=0.2, lr_schedule="constant", patience=0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "markov.txt"
    path.write_text(MarkovSource(alphabet="abcé\n", order=2, seed=0).sample_text(6000))
    return path


def run_steps(corpus, run_dir, steps, resume=None, **opts):
    options = TrainOptions(**{**SMALL, "max_steps": steps, **opts})
    if resume is not None:
        options = options_from_checkpoint(resume, {"max_steps": steps})
    run = Run(corpus, run_dir, options, resume=resume)
    rec = Recorder()
    summary = train(run, rec)
    return run, summary, rec


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_same_seed_same_losses(corpus, tmp_path):
    a, _, _ = run_steps(corpus, tmp_path / "a", 20)
    b, _, _ = run_steps(corpus, tmp_path / "b", 20)
    c, _, _ = run_steps(corpus, tmp_path / "c", 20, seed=1)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("chars_per_sec", "elapsed_s")}
                          for r in rows]
    assert strip(metrics(tmp_path / "a")) == strip(metrics(tmp_path / "b"))
    assert np.array_equal(a.model.params, b.model.params)
    assert not np.array_equal(a.model.params, c.model.params)


def test_resume_continues_exactly(corpus, tmp_path):
    straight, _, _ = run_steps(corpus, tmp_path / "straight", 30)
    run_steps(corpus, tmp_path / "split", 15)  # stops between saves: latest is written at 15
    resumed_from = ckpt_io.load(tmp_path / "split" / "latest.npz")
    assert resumed_from.train["step"] == 15
    resumed, summary, _ = run_steps(corpus, tmp_path / "split", 30, resume=resumed_from)
    assert summary["step"] == 30
    assert np.array_equal(straight.model.params, resumed.model.params)
    assert np.array_equal(straight.optimizer.m, resumed.optimizer.m)
    train_losses = lambda d: [(r["step"], r["train_loss"]) for r in metrics(d) if "train_loss" in r]
    assert train_losses(tmp_path / "straight") == train_losses(tmp_path / "split")


def test_run_directory_contents(corpus, tmp_path):
    run, summary, rec = run_steps(corpus, tmp_path / "run", 20)
    assert {p.name for p in (tmp_path / "run").iterdir()} >= {"latest.npz", "best.npz",
                                                              "metrics.jsonl"}
    rows = metrics(tmp_path / "run")
    assert [r["step"] for r in rows if "train_loss" in r] == [5, 10, 15, 20]
    assert all({"step", "epoch", "train_loss", "lr", "chars_per_sec", "elapsed_s"} <= r.keys()
               for r in rows if "train_loss" in r)
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(vals) == 2 and summary["best_val_loss"] == min(vals)
    best = ckpt_io.load(tmp_path / "run" / "best.npz")
    assert best.train["best_val_loss"] == min(vals)
    previews = [args[1] for name, args in rec.calls if name == "evaluated"]
    assert len(previews) == 2 and all(len(p) == 20 for p in previews)


def test_epochs_budget_and_state_reset(corpus, tmp_path):
    run, summary, _ = run_steps(corpus, tmp_path / "e", None, epochs=1)
    assert summary["stopped_by"] == "finished 1 epochs" and run.state.epoch == 1
    assert summary["stop_reason"] == "epochs"
    assert run.state.step == run.steps_per_epoch and run.state.position == 0
    assert not run.engine.h.any()  # a new epoch starts from a clean state


def test_fit_sizes_shrinks_with_a_warning():
    assert fit_sizes(10_000, 8, 50) == (8, 50, [])
    B, T, warnings = fit_sizes(300, 8, 50)
    assert (B, T) == (5, 50) and "--batch-size 5" in warnings[0]
    B, T, warnings = fit_sizes(20, 8, 50)
    assert (B, T) == (1, 19) and warnings


def test_tiny_corpus_trains_or_says_why(tmp_path):
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("abcabcabca")
    run, summary, rec = run_steps(tiny, tmp_path / "t", 3, batch_size=64, seq_len=100)
    assert summary["step"] == 3
    assert any("too small" in args[0] for name, args in rec.calls if name == "message")
    one = tmp_path / "one.txt"
    one.write_text("a")
    with pytest.raises(CorpusError, match="at least 2"):
        run_steps(one, tmp_path / "o", 3)


def test_resume_refuses_shape_changes(corpus, tmp_path):
    run_steps(corpus, tmp_path / "r", 10)
    ck = ckpt_io.load(tmp_path / "r" / "latest.npz")
    with pytest.raises(ValueError, match="--hidden cannot change"):
        options_from_checkpoint(ck, {"hidden": 99})
    assert options_from_checkpoint(ck, {"max_steps": 50, "lr": 1e-3}).lr == 1e-3
    with pytest.raises(ValueError, match="--weight-drop cannot change"):
        options_from_checkpoint(ck, {"weight_drop": 0.5})  # the run trained with 0


def test_a_checkpoint_from_before_weight_drop_resumes_without_it(corpus, tmp_path):
    run_steps(corpus, tmp_path / "r", 10)
    ck = ckpt_io.load(tmp_path / "r" / "latest.npz")
    del ck.train["options"]["weight_drop"]
    assert options_from_checkpoint(ck, {"max_steps": 50}).weight_drop == 0.0


def test_weight_decay_trains_resumes_exactly_and_old_checkpoints_run_without_it(corpus,
                                                                                  tmp_path):
    straight, _, _ = run_steps(corpus, tmp_path / "straight", 20, weight_decay=2.0)
    plain, _, _ = run_steps(corpus, tmp_path / "plain", 20, weight_decay=0.0)
    assert straight.optimizer.weight_decay == 2.0
    # the decay pulls the weights in: the same steps end smaller
    assert np.linalg.norm(straight.model.params) < np.linalg.norm(plain.model.params)
    run_steps(corpus, tmp_path / "split", 10, weight_decay=2.0)
    saved = ckpt_io.load(tmp_path / "split" / "latest.npz")
    resumed, _, _ = run_steps(corpus, tmp_path / "split", 20, resume=saved)
    assert resumed.opts.weight_decay == 2.0
    assert np.array_equal(straight.model.params, resumed.model.params)
    # --weight-decay x --lr < 1 holds for the run's own decay, not for today's default
    with pytest.raises(OptionError, match="--weight-decay x --lr"):
        options_from_checkpoint(saved, {"max_steps": 50, "lr": 0.5})
    del saved.train["options"]["weight_decay"]  # saved before the option existed
    assert options_from_checkpoint(saved, {"max_steps": 50}).weight_decay == 0.0
    assert options_from_checkpoint(saved, {"max_steps": 50, "lr": 4.0}).lr == 4.0


def test_evaluate_reads_everything_unless_capped(corpus, tmp_path):
    run, _, _ = run_steps(corpus, tmp_path / "v", 5)
    ids = run.val_ids
    whole = evaluate(run.model, ids, 4, 16)
    assert whole == evaluate(run.model, ids, 4, 16, max_chars=len(ids))
    assert whole != evaluate(run.model, ids, 4, 16, max_chars=len(ids) // 3)


def test_resume_refuses_another_corpus_and_malformed_state(corpus, tmp_path):
    run_steps(corpus, tmp_path / "r", 10)
    ck = ckpt_io.load(tmp_path / "r" / "latest.npz")
    other = tmp_path / "other.txt"
    other.write_text(corpus.read_text()[:-100])
    opts = options_from_checkpoint(ck, {"max_steps": 20})
    with pytest.raises(ckpt_io.CheckpointError, match="same corpus"):
        Run(other, tmp_path / "r", opts, resume=ck)
    ck.train["step"] = "ten"
    with pytest.raises(ckpt_io.CheckpointError, match="step"):
        Run(corpus, tmp_path / "r", opts, resume=ck)
    ck.train["step"] = 10
    ck.arrays["adam.m"] = ck.arrays["adam.m"][:1]
    with pytest.raises(ckpt_io.CheckpointError, match="adam.m"):
        Run(corpus, tmp_path / "r", opts, resume=ck)


# ---------------------------------------------------------------------------------------------
# the learning-rate schedule and early stopping


def test_the_schedule_warms_up_then_decays_to_two_percent_at_the_end_of_the_budget():
    from charrnn.schedule import scheduled_lr
    opts = TrainOptions(lr=1e-2)
    total = 1000  # warm-up: 2% = 20 steps
    lrs = [scheduled_lr(opts, s, total, s / total) for s in range(total)]
    assert lrs[0] == pytest.approx(1e-2 / 20, rel=0.01)
    assert all(a < b for a, b in zip(lrs[:19], lrs[1:20]))  # rising through the warm-up
    assert max(lrs) <= 1e-2 and max(lrs) > 0.99e-2
    assert all(a >= b for a, b in zip(lrs[20:], lrs[21:]))  # then never rising
    assert scheduled_lr(opts, total, total, 1.0) == pytest.approx(2e-4)  # 2% of --lr (README)
    # a --minutes budget decays by the time used even when the steps are far from their limit
    assert scheduled_lr(opts, 500, 10**6, 1.0) == pytest.approx(2e-4)
    # and ends its warm-up at 2% of the time when that comes before 100 steps
    assert scheduled_lr(opts, 10, None, 0.01) == pytest.approx(1e-2 * 0.5, rel=0.01)
    assert scheduled_lr(opts, 10, None, 0.02) == pytest.approx(1e-2, rel=0.01)
    assert scheduled_lr(opts, 10, None, 0.0) == pytest.approx(1e-2 * 11 / 100)
    assert scheduled_lr(TrainOptions(lr=1e-2, lr_schedule="constant"), 7, total, 0.5) == 1e-2


def test_a_resumed_run_under_the_schedule_equals_the_straight_one(corpus, tmp_path):
    opts = dict(lr_schedule="cosine")
    straight, _, _ = run_steps(corpus, tmp_path / "straight", 20, **opts)
    run = Run(corpus, tmp_path / "split", TrainOptions(**{**SMALL, "max_steps": 20, **opts}))
    train(run, Recorder(), should_stop=lambda: run.state.step >= 12)
    resumed, _, _ = run_steps(corpus, tmp_path / "split", 20,
                              resume=ckpt_io.load(tmp_path / "split" / "latest.npz"))
    assert np.array_equal(resumed.model.params, straight.model.params)
    lrs = [r["lr"] for r in metrics(tmp_path / "straight") if "lr" in r]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.5 * lrs[0], lrs  # it decayed


def test_early_stop_when_validation_stops_improving(tmp_path):
    corpus = tmp_path / "shift.txt"  # the held-out end is text the training part never shows
    corpus.write_text("ab" * 1800 + "cd" * 200)
    rec = Recorder()
    run = Run(corpus, tmp_path / "run", TrainOptions(**{**SMALL, "patience": 2, "lr": 1e-2}))
    summary = train(run, rec)
    assert "early stop" in summary["stopped_by"] and summary["stop_reason"] == "early", summary
    vals = [h["val_loss"] for h in run.state.history]
    assert len(vals) >= 3 and min(vals) < min(vals[-2:])  # two evaluations past the best
    best = ckpt_io.load(tmp_path / "run" / "best.npz")
    assert best.train["best_val_loss"] == min(vals)


def test_the_cosine_schedule_halves_for_each_validation_without_a_new_best(corpus, tmp_path):
    run = Run(corpus, tmp_path / "r", TrainOptions(**{**SMALL, "lr_schedule": "cosine",
                                                     "max_steps": 100}))
    run.release()
    pacer = Pacer(run.opts, run.steps_per_epoch)
    plain = pacer.learning_rate(0, [])
    history = [{"step": 10, "val_loss": 2.0}, {"step": 20, "val_loss": 1.5}]
    assert pacer.learning_rate(0, history) == pytest.approx(plain)  # every validation a new best
    history.append({"step": 30, "val_loss": 1.5})  # equal is no gain
    assert pacer.learning_rate(0, history) == pytest.approx(plain / 2)
    history += [{"step": 40, "val_loss": 1.4}, {"step": 50, "val_loss": 1.45}]
    assert pacer.learning_rate(0, history) == pytest.approx(plain / 4)  # over the whole run
    run.opts.lr_schedule = "constant"
    assert pacer.learning_rate(0, history) == run.opts.lr
