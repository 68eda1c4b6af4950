"""Training an ensemble's members (charrnn/members.py): member k is the model `--seed` plus k - 1
trains, the run directory's ensemble.npz holds every finished member's best weights, --resume
goes on with the member where the run stopped, and under --minutes another member starts only
while the time left covers the last one's."""


import json
from pathlib import Path

import numpy as np
import pytest

from charrnn import checkpoint as ckpt_io
from charrnn import members, schedule, sizing
from charrnn.distributed import World
from charrnn.ensemble import ENSEMBLE, inference_model, member_params
from charrnn.options import TrainOptions
from charrnn.synthetic import MarkovSource
from charrnn.tokenizer import read_corpus, split
from charrnn.train import evaluate

from .test_cli import run_cli

SMALL = ("--hidden", 16, "--layers", 1, "--seq-len", 16, "--batch-size", 4,
         "--lr-schedule", "constant", "--eval-every", 5)


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("members") / "small.txt"
    path.write_text(MarkovSource(alphabet="abcdé\n", order=2, seed=3).sample_text(4000))
    return path


def train(text, *args):
    code, out, err = run_cli("train", text, *SMALL, *args, state_dir=text.parent / "state")
    assert code == 0 and out == "", err
    return err


def params(path):
    return ckpt_io.load(path).params


@pytest.fixture(scope="module")
def two(text, tmp_path_factory):
    """A run of two members of 12 steps, and the run --seed 1 trains alone."""
    work = tmp_path_factory.mktemp("two")
    err = train(text, "--members", 2, "--max-steps", 12, "--out", work / "run")
    train(text, "--seed", 1, "--max-steps", 12, "--out", work / "solo")
    return work, err


def test_member_k_is_the_model_its_seed_trains(two):
    work, err = two
    np.testing.assert_array_equal(params(work / "run" / "members" / "2" / ckpt_io.LATEST),
                                  params(work / "solo" / ckpt_io.LATEST))
    assert "member 2 of 2 (seed 1)" in err
    first, second = (params(work / "run" / ckpt_io.LATEST),
                     params(work / "solo" / ckpt_io.LATEST))
    assert np.abs(first - second).max() > 1e-3, "the members differ"


def test_the_ensemble_holds_each_members_best_weights_and_says_its_loss(two, text):
    work, err = two
    run = work / "run"
    ck = ckpt_io.load(run / ENSEMBLE)
    bests = [run / ckpt_io.BEST, run / "members" / "2" / ckpt_io.BEST]
    for got, best in zip(member_params(ck), bests, strict=True):
        np.testing.assert_array_equal(got, params(best))
    vocab, ids = read_corpus(text)
    val = np.asarray(split(ids, 0.1)[1])
    loss = evaluate(inference_model(ck.config, member_params(ck)), val, 4, 16)
    assert ck.train["best_val_loss"] == pytest.approx(loss, rel=1e-9)
    said = [line for line in err.splitlines() if line.startswith("ensemble of 2 members")]
    assert said == [f"ensemble of 2 members: validation loss {loss:.4f} nats (the best member "
                    f"alone: {min(ckpt_io.load(b).train['best_val_loss'] for b in bests):.4f})"
                    f"; saved in {run / ENSEMBLE}"]


def test_sample_eval_and_info_read_the_ensemble(two, text):
    run = two[0] / "run"
    code, out, err = run_cli("sample", run, "--length", 40, "--seed", 2)
    assert code == 0 and len(out) == 40 and set(out) <= set("abcdé\n"), err
    code, out, err = run_cli("eval", run, text, "--json")
    assert code == 0, err
    ck = ckpt_io.load(run / ENSEMBLE)
    vocab, ids = read_corpus(text)
    from charrnn.scoring import EVAL_BATCH, EVAL_SEQ_LEN
    expected = evaluate(inference_model(ck.config, member_params(ck)), ids, EVAL_BATCH,
                        EVAL_SEQ_LEN)
    assert json.loads(out)["loss_nats"] == pytest.approx(expected, rel=1e-9)
    code, out, _ = run_cli("info", run)
    assert code == 0 and "ensemble    2 members" in out


def test_an_ensemble_on_cuda_is_refused_in_one_line(two):
    code, out, err = run_cli("sample", two[0] / "run", "--device", "cuda", "--length", 5)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "ensemble of 2, which samples on the CPU" in err


def test_sample_with_no_model_reads_the_last_runs_ensemble(text, tmp_path):
    state = tmp_path / "state"
    code, _, err = run_cli("train", text, *SMALL, "--members", 2, "--max-steps", 6, "--out",
                           tmp_path / "run", state_dir=state)
    assert code == 0, err
    code, out, err = run_cli("info", "--json", state_dir=state)
    assert code == 0 and json.loads(out)["ensemble"]["members"] == 2, err


def test_resume_goes_on_with_the_member_where_it_stopped(text, tmp_path, two):
    run = tmp_path / "run"
    train(text, "--max-steps", 12, "--out", run)  # one member
    # two members asked for now: member 1 is done, member 2 trains 6 steps
    err = train(text, "--resume", "--out", run, "--members", 2, "--max-steps", 6)
    assert "member 2 of 2 (seed 1)" in err
    assert ckpt_io.load(run / "members" / "2" / ckpt_io.LATEST).train["step"] == 6
    train(text, "--resume", "--out", run, "--max-steps", 12)  # member 2 goes on to 12
    np.testing.assert_array_equal(params(run / "members" / "2" / ckpt_io.LATEST),
                                  params(two[0] / "run" / "members" / "2" / ckpt_io.LATEST))
    code, _, err = run_cli("train", text, *SMALL, "--resume", "--out", run)
    assert code == 2 and "the run has trained all its 2 members: give --members 3" in err
    assert err.count("\n") == 1


def test_resume_passes_over_a_member_that_stopped_early(tmp_path):
    corpus = tmp_path / "shift.txt"  # the held-out end is text the training part never shows
    corpus.write_text("ab" * 1800 + "cd" * 200)
    run = tmp_path / "run"
    err = train(corpus, "--patience", 2, "--lr", 0.01, "--max-steps", 400, "--out", run)
    assert "(early stop)" in err
    step = ckpt_io.load(run / ckpt_io.LATEST).train["step"]
    assert step < 400
    # alone, it would only stop again after its next validation: refused, nothing written
    code, _, err = run_cli("train", corpus, *SMALL, "--resume", "--out", run,
                           state_dir=tmp_path / "state")
    assert code == 2 and err.count("\n") == 1 and "the run stopped early" in err, err
    err = train(corpus, "--resume", "--out", run, "--members", 2)
    assert "member 2 of 2 (seed 1)" in err and "member 1 " not in err
    assert ckpt_io.load(run / ckpt_io.LATEST).train["step"] == step
    assert members.ensemble_is_current(run, 2)


def copy_of(run, tmp_path):
    """A copy of a finished run, to resume (paths inside its checkpoints are only recorded)."""
    import shutil
    return Path(shutil.copytree(run, tmp_path / "copy"))


def test_resume_with_the_first_command_s_seed_goes_on_with_each_member(two, text, tmp_path):
    run = copy_of(two[0] / "run", tmp_path)
    err = train(text, "--resume", "--out", run, "--seed", 0, "--max-steps", 14)
    # member 1 goes on to 14, then member 2 (seed 1) from its own step 12, not from scratch
    assert "member 2 of 2 (seed 1)" in err
    second = ckpt_io.load(run / "members" / "2" / ckpt_io.LATEST)
    assert second.train["step"] == 14
    steps = [json.loads(line)["step"] for line in
             (run / "members" / "2" / "metrics.jsonl").read_text().splitlines()]
    assert steps[0] < 12 and steps[-1] == 14, "its first 12 steps' records are kept"
    assert members.ensemble_is_current(run, 2)


def test_an_ensemble_that_was_not_written_is_written_on_resume(two, text, tmp_path):
    run = copy_of(two[0] / "run", tmp_path)
    (run / ENSEMBLE).unlink()
    err = train(text, "--resume", "--out", run)
    assert "ensemble of 2 members" in err
    for got, best in zip(member_params(ckpt_io.load(run / ENSEMBLE)),
                         [run / ckpt_io.BEST, run / "members" / "2" / ckpt_io.BEST]):
        np.testing.assert_array_equal(got, params(best))
    code, _, err = run_cli("train", text, *SMALL, "--resume", "--out", run, "--members", 1)
    assert code == 2 and "trained all its 2 members: give --members 3" in err


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def fake_members(tmp_path, first, summaries, each, clock=None, given=None):
    """train_members over fake members (no training; ensemble writes recorded): each takes
    `each` seconds of clock and ends with the next of summaries' stop reasons (schedule.py's
    codes)."""
    clock = clock or FakeClock()
    seen, said = [], []
    stops = iter(summaries)

    def train_one(member):
        seen.append(member)
        clock.now += each
        reason = next(stops)
        return {"stopped_by": f"in words: {reason}", "stop_reason": reason, "step": 10}, \
            member.opts

    summary = members.train_members(members.Member(1, first), None, given or {},
                                    train_one=train_one, val_loss=lambda cks: None,
                                    run_dir=tmp_path, world=World(), say=said.append,
                                    clock=clock)
    return summary, seen, said


@pytest.mark.parametrize("minutes, each, trained", [
    (1.0, 25, 2),      # 25 s, then 35 s left: a second; then 10 s left: no third
    (1.0, 15, 3),      # three of 15 s fit; a fourth is not asked for
    (1.0, 31, 1),      # 29 s left after the first: too few for another
    (None, 1000, 3)])  # no time budget: all that --members asks
def test_another_member_starts_only_while_the_time_left_covers_the_last(
        monkeypatch, tmp_path, minutes, each, trained):
    written = []
    monkeypatch.setattr(members, "_write_ensemble", lambda run_dir, k, *a: written.append(k))
    first = TrainOptions(hidden=8, max_steps=10, minutes=minutes, members=3, seed=5)
    _, seen, said = fake_members(tmp_path, first, [schedule.STEPS] * 3, each)
    assert [m.k for m in seen] == list(range(1, trained + 1))
    assert [m.opts.seed for m in seen] == [5 + k for k in range(trained)]
    assert written == list(range(2, trained + 1))
    if minutes is not None and trained > 1:  # each later member gets the minutes left
        assert seen[1].opts.minutes == pytest.approx((60 - each) / 60)
    stopped = [line for line in said if line.startswith("stopped after")]
    assert len(stopped) == (trained < 3)


@pytest.mark.parametrize("stop, goes_on", [
    (schedule.SIGNAL, False), (schedule.MINUTES, False), (schedule.EARLY, True),
    (schedule.EPOCHS, True), (schedule.STEPS, True)])
def test_a_member_cut_short_ends_the_ensemble_and_says_so(monkeypatch, tmp_path, stop,
                                                          goes_on):
    written = []
    monkeypatch.setattr(members, "_write_ensemble", lambda run_dir, k, *a: written.append(k))
    summary, seen, said = fake_members(tmp_path, TrainOptions(hidden=8, members=2),
                                       [stop, schedule.STEPS], 1)
    assert len(seen) == (2 if goes_on else 1) and written == ([2] if goes_on else [])
    told = [line for line in said if "ended before its limit" in line]
    assert len(told) == (stop != schedule.SIGNAL and not goes_on)
    assert all(f"in words: {stop}" in line for line in told)  # the stop said in words


def choose(minutes=None, speed=None, **given):
    opts = TrainOptions(**{"hidden": 12, "layers": 1, "seq_len": 16, "batch_size": 4,
                           "epochs": None if minutes else 10, "minutes": minutes, **given})
    return sizing.choose_sizes(opts, n_train=6000, vocab_size=5, steps_per_epoch=90,
                               chars_per_second=None if speed is None else lambda s: speed,
                               length_given=False)


@pytest.mark.parametrize("members_of_budget", [1.2, 2.5, 10])
def test_a_time_budget_past_the_stop_trains_up_to_three_members_and_says_so(
        members_of_budget):
    """The clock, not the speed probe, decides how many of the three train (members.py)."""
    params = sizing.parameter_count("gru-ln", 1, 12, 5)
    steps = sizing.useful_steps("gru-ln", 90, 64, params)
    speed = members_of_budget * steps * 64 / (60 * sizing.TRAINING_SHARE_OF_MINUTES)
    chosen, notes = choose(minutes=1.0, speed=speed, dropout=0.0, weight_drop=0.0)
    assert chosen.max_steps == steps and chosen.members == sizing.MAX_CHOSEN_MEMBERS == 3
    assert notes[-1] == ("up to 3 members: models trained apart with seeds 0 to 2, each "
                         "started while the minutes left cover the last one's time, their "
                         "predictions averaged (--members to choose)")
    assert notes[-2].startswith(f"each member stops after {steps:,} steps")


@pytest.mark.parametrize("how", ["no minutes", "untimed", "given", "short"])
def test_other_budgets_keep_one_member_unless_given(how):
    unregularised = dict(dropout=0.0, weight_drop=0.0)
    if how == "no minutes":  # the default epochs: the stop, but one model (fastest to sample)
        chosen, notes = choose(**unregularised)
    elif how == "untimed":  # a GPU's speed is not timed
        chosen, notes = choose(minutes=60.0, **unregularised)
    elif how == "given":
        chosen, notes = choose(minutes=60.0, speed=1e9, members=4, **unregularised)
    else:  # the time runs out before the stop
        chosen, notes = choose(minutes=1e-4, speed=100.0, **unregularised)
    assert chosen.members == (4 if how == "given" else 1)
    assert not any("members:" in note for note in notes)
    assert (chosen.max_steps is not None) == (how != "short")  # the stop, where it applies


def test_a_seed_near_the_last_leaves_fewer_members():
    chosen, _ = choose(minutes=1.0, speed=1e5, dropout=0.0, weight_drop=0.0, seed=2**63 - 2)
    assert chosen.members == 2  # seeds 2**63 - 2 and 2**63 - 1


@pytest.mark.parametrize("args, said", [
    (("--members", 0), "--members must be a whole number from 1"),
    (("--members", 2, "--seed", 2**63 - 1), "leaves no seed for 2 members"),
    (("--members", 2, "--init-from", "x"), "--init-from starts one model from another")])
def test_bad_members_are_refused_in_one_line(text, tmp_path, args, said):
    code, out, err = run_cli("train", text, "--out", tmp_path / "r", *args)
    assert code == 2 and out == "" and said in err and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists()
