"""Nothing lost, nothing crashes: a run stopped in any way (--max-steps, Ctrl-C, SIGTERM, kill -9)
and resumed is the run that never stopped, to the bit; a checkpoint on disk is always whole;
non-finite numbers stop training without being saved; a full disk, an unwritable --out, a
second trainer in the same run directory and bad input are one-line errors; the checkpoint
loader refuses damaged files with a CheckpointError and nothing else.

Stopping and killing run the real console script in subprocesses (signals and exit statuses
are what a user gets). One-shot commands run in-process through charrnn.cli.main(), and the
fault injections (NaN weights, ENOSPC) drive charrnn.train.Run directly.

(The closed-pipe case, `charrnn sample | head -c 10`, is covered by tests/test_cli.py.)
"""

import errno
import io
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charrnn import checkpoint as ckpt_io
from charrnn.checkpoint import Checkpoint, CheckpointError
from charrnn.cli import main
from charrnn.model import Model, ModelConfig, ParamLayout
from charrnn.runs import LOCK, lock_run_dir
from charrnn.synthetic import MarkovSource
from charrnn.tokenizer import Vocab, read_corpus
from charrnn.train import METRICS, Run, TrainingError, TrainOptions, evaluate
from charrnn.train import train
from charrnn.train_state import options_from_checkpoint

ERROR = "charrnn: error: "
TIMEOUT = 120  # per subprocess; a cold numba cache compiles the kernels first
ALPHABET = "abcé \n"
TIMING = ("chars_per_sec", "elapsed_s")  # wall-clock fields: never reproducible
FOREVER = 10 ** 6  # a step budget no test reaches: something else stops the run
CADENCE = ("--eval-every", "10", "--save-every", "7")


def model_args(batch_size=4) -> list[str]:
    """A tiny model with dropout and weight drop (so the RNG state matters) and no epoch limit
    in reach."""
    return ["--hidden", "16", "--layers", "1", "--batch-size", str(batch_size), "--seq-len", "16",
            "--dropout", "0.3", "--weight-drop", "0.2", "--epochs", str(FOREVER), "--lr-schedule", "constant",
            "--patience", "0"]


# ---------------------------------------------------------------------------------------------
# running the command line


def cli_command() -> list[str]:
    script = Path(sys.executable).with_name("charrnn")
    return [str(script)] if script.exists() else [sys.executable, "-m", "charrnn"]


def cli_env() -> dict:
    """This test's environment (its private CHARRNN_STATE_DIR included), without colour."""
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("FORCE_COLOR", None)
    return env


def run_cli(*args) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `charrnn ARGS` in a subprocess."""
    p = subprocess.run([*cli_command(), *map(str, args)], stdin=subprocess.DEVNULL,
                       capture_output=True, env=cli_env(), timeout=TIMEOUT)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


@pytest.fixture
def processes():
    """Start `charrnn ARGS` in the background, its output into a log file; whatever a failing
    test leaves running is killed (by its own pid) at teardown."""
    started = []

    def start(*args, log: Path) -> subprocess.Popen:
        with open(log, "wb") as f:
            p = subprocess.Popen([*cli_command(), *map(str, args)], stdin=subprocess.DEVNULL,
                                 stdout=f, stderr=subprocess.STDOUT, env=cli_env())
        started.append(p)
        return p

    yield start
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()


def finish(p: subprocess.Popen) -> int:
    try:
        return p.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        raise AssertionError(f"charrnn (pid {p.pid}) did not exit within {TIMEOUT} s")


def wait_until(condition, what: str, proc: subprocess.Popen | None = None, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"charrnn exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def call_main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of charrnn.cli.main() run in-process."""
    monkeypatch.setattr(sys, "argv", ["charrnn", *map(str, args)])
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main()
    out, err = capsys.readouterr()
    return (0 if exc.value.code is None else exc.value.code), out, err


def assert_one_line_error(code, out, err, expected_code, mentions=()) -> str:
    assert code == expected_code, f"exit {code}, expected {expected_code}; stderr:\n{err}"
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected exactly one stderr line, got {len(lines)}:\n{err}"
    assert lines[0].startswith(ERROR) and lines[0][len(ERROR):].strip(), lines[0]
    assert out == "", out
    for text in mentions:
        assert text in lines[0], (text, lines[0])
    return lines[0]


# ---------------------------------------------------------------------------------------------
# what a run directory holds


def metrics_rows(run_dir: Path) -> list[dict]:
    path = run_dir / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def loss_history(run_dir: Path, end_step: int) -> list[dict]:
    """metrics.jsonl without wall-clock fields; a final (report-only) evaluation counts only at
    the end of the run, where a straight run has one too."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in metrics_rows(run_dir)
            if not r.get("final") or r["step"] == end_step]


def latest(run_dir: Path) -> Checkpoint:
    return ckpt_io.load(run_dir / ckpt_io.LATEST)


def checkpoint_bytes(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run_dir.glob("*.npz"))}


def temporaries(run_dir: Path, pid="*") -> list[str]:
    return sorted(p.name for p in run_dir.glob(f".*.{pid}.tmp"))


def strict_json_numbers_are_finite(run_dir: Path) -> None:
    """Every line of metrics.jsonl is standard JSON (no NaN/Infinity) with finite numbers."""
    def refuse(constant):
        raise AssertionError(f"metrics.jsonl holds {constant}")

    path = run_dir / METRICS
    for line in (path.read_text().splitlines() if path.exists() else []):
        record = json.loads(line, parse_constant=refuse)
        for key, value in record.items():
            assert not isinstance(value, float) or math.isfinite(value), (key, value, line)


def assert_finite_checkpoint(ck: Checkpoint) -> None:
    for name, a in {"params": ck.params, **ck.arrays}.items():
        assert np.all(np.isfinite(a)), f"{name} holds non-finite values"


def assert_same_training(resumed: Path, straight: Path, end_step: int) -> None:
    """Bit-for-bit the same weights, optimizer moments, carried state, RNG, data position and
    loss history; best.npz the same, unless the stop's final validation beat every other."""
    a, b = latest(resumed), latest(straight)
    assert a.train["step"] == b.train["step"] == end_step
    for name in ("adam.m", "adam.v", "state.h", "state.c"):
        assert np.array_equal(a.arrays[name], b.arrays[name]), f"{name} differs"
    assert np.array_equal(a.params, b.params), "the weights differ"
    for key in ("epoch", "position", "adam_steps", "rng", "loss_sum", "loss_count", "history"):
        assert a.train[key] == b.train[key], f"train[{key!r}] differs"
    best_a, best_b = (ckpt_io.load(d / ckpt_io.BEST) for d in (resumed, straight))
    if a.train["best_val_loss"] == b.train["best_val_loss"]:
        assert np.array_equal(best_a.params, best_b.params), "best.npz differs"
    else:  # the stop's final validation, which the straight run never made, was the best
        assert a.train["best_val_loss"] < b.train["best_val_loss"]
        assert best_a.train["step"] not in {h["step"] for h in b.train["history"]}
    assert loss_history(resumed, end_step) == loss_history(straight, end_step)


# ---------------------------------------------------------------------------------------------
# corpora and in-process training


def write_markov(path: Path, chars: int) -> Path:
    path.write_text(MarkovSource(alphabet=ALPHABET, order=2, seed=0).sample_text(chars),
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """3000 characters: 43 steps an epoch at batch 4 x 16, so the resumed runs cross epochs."""
    return write_markov(tmp_path_factory.mktemp("corpus") / "markov.txt", 3000)


class Quiet:
    """A Reporter that shows nothing."""

    def __getattr__(self, name):
        return lambda *args: None


# the plain GRU: an infinite weight into one of its gates only saturates the gate (gru-ln's
# normalisation of that gate's block would turn it into NaN at once)
SMALL = dict(cell="gru", hidden=16, layers=1, seq_len=16, batch_size=4, dropout=0.3,
             weight_drop=0.2, eval_every=5, save_every=5, preview_chars=0,
             lr_schedule="constant", patience=0)


def train_in_process(corpus: Path, run_dir: Path, steps: int) -> dict:
    return train(Run(corpus, run_dir, TrainOptions(**SMALL, max_steps=steps)), Quiet())


def resumed_run(corpus: Path, run_dir: Path, steps: int) -> Run:
    ck = latest(run_dir)
    return Run(corpus, run_dir, options_from_checkpoint(ck, {"max_steps": steps}), resume=ck)


@pytest.fixture(scope="module")
def model_dir(corpus, tmp_path_factory) -> Path:
    """A trained tiny model for the sample checks (the user's last-run record untouched)."""
    run_dir = tmp_path_factory.mktemp("model") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHARRNN_STATE_DIR", str(run_dir.parent / "state"))
        train_in_process(corpus, run_dir, 10)
    return run_dir


# ---------------------------------------------------------------------------------------------
# 1. exact resume, whichever way the run was stopped


def stop_at_max_steps(corpus: Path, run_dir: Path, log_dir: Path, processes) -> int:
    k = 23
    assert k % 10 and k % 7, "the stop must fall off the --eval-every and --save-every cadence"
    code, out, err = run_cli("train", corpus, "--out", run_dir, *model_args(), *CADENCE,
                             "--max-steps", k)
    assert code == 0 and out == "", err
    return k


def stop_by_signal(signum):
    def stop(corpus: Path, run_dir: Path, log_dir: Path, processes) -> int:
        log = log_dir / "interrupted.log"
        p = processes("train", corpus, "--out", run_dir, *model_args(), *CADENCE,
                      "--max-steps", FOREVER, log=log)
        wait_until(lambda: bool(metrics_rows(run_dir)), "the first metrics line", p)
        p.send_signal(signum)
        code = finish(p)
        err = log.read_text()
        assert code == 128 + signum, f"exit {code}, expected {128 + signum}:\n{err}"
        assert "Traceback" not in err, err
        assert "--resume" in err and f"--out {run_dir}" in err, "no word on how to resume"
        said = re.search(r"saved step (\d+)", err)
        assert said, err
        step = int(said.group(1))
        assert latest(run_dir).train["step"] == step, "latest.npz is not the last step done"
        assert max(r["step"] for r in metrics_rows(run_dir)) <= step
        return step
    return stop


STOPS = {"max-steps": stop_at_max_steps, "sigint": stop_by_signal(signal.SIGINT),
         "sigterm": stop_by_signal(signal.SIGTERM)}


@pytest.mark.parametrize("how", list(STOPS))
def test_stopped_and_resumed_run_equals_the_straight_run(how, corpus, tmp_path, processes):
    split, straight = tmp_path / "split", tmp_path / "straight"
    stopped_at = STOPS[how](corpus, split, tmp_path, processes)
    end = max(stopped_at + 20, 50)  # past an epoch boundary (step 43)
    code, out, err = run_cli("train", corpus, "--out", split, "--resume", "--max-steps", end)
    assert code == 0, err
    code, out, err = run_cli("train", corpus, "--out", straight, *model_args(), *CADENCE,
                             "--max-steps", end)
    assert code == 0, err
    assert_same_training(split, straight, end)


def test_a_stop_resumed_with_the_same_budget_is_exact_under_cosine(corpus, tmp_path):
    """The cosine schedule decays to the end of the budget: a run stopped (as by Ctrl-C) and
    resumed with the same --max-steps is the straight run, bit for bit."""
    opts = dict(SMALL, lr_schedule="cosine", max_steps=30)
    split, straight = tmp_path / "split", tmp_path / "straight"
    train(Run(corpus, straight, TrainOptions(**opts)), Quiet())
    run = Run(corpus, split, TrainOptions(**opts))
    summary = train(run, Quiet(), should_stop=lambda: run.state.step >= 13)
    assert summary["stopped_by"] == "interrupted" and summary["step"] == 13
    assert summary["stop_reason"] == "signal"
    ck = latest(split)
    train(Run(corpus, split, options_from_checkpoint(ck, {}), resume=ck), Quiet())
    assert_same_training(split, straight, 30)


@pytest.mark.parametrize("schedule,noted", [("cosine", True), ("constant", False)])
def test_a_new_budget_that_moves_the_schedule_is_said(schedule, noted, corpus, tmp_path,
                                                        monkeypatch, capsys):
    run_dir = tmp_path / "run"
    args = ["--out", run_dir, *model_args(), "--lr-schedule", schedule]
    code, _, err = call_main(monkeypatch, capsys, "train", corpus, *args, "--max-steps", "10",
                             "-q")
    assert code == 0, err
    code, _, err = call_main(monkeypatch, capsys, "train", corpus, "--out", run_dir,
                             "--resume", "--max-steps", "20")
    assert code == 0, err
    assert ("note: the budget changed (--max-steps 10 -> 20)" in err) == noted, err


# ---------------------------------------------------------------------------------------------
# 2. a second Ctrl-C exits at once


@pytest.fixture(scope="module")
def slow_to_validate(tmp_path_factory) -> Path:
    """600,000 characters, 85% held out: at batch 1 the final evaluation of a stopped run reads
    500,000 characters (about a second), a window for the second Ctrl-C to land in."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("big") / "big.txt"
    path.write_text("".join(rng.choice(list(ALPHABET), 600_000)), encoding="utf-8")
    return path


def test_second_ctrl_c_exits_at_once_leaving_a_loadable_checkpoint(slow_to_validate, tmp_path,
                                                                    processes):
    run_dir, log = tmp_path / "run", tmp_path / "train.log"
    p = processes("train", slow_to_validate, "--out", run_dir, *model_args(batch_size=1),
                  "--val-frac", "0.85", "--eval-every", FOREVER, "--save-every", "10",
                  "--max-steps", FOREVER, log=log)
    wait_until(lambda: (run_dir / ckpt_io.LATEST).exists(), "the first checkpoint", p)
    p.send_signal(signal.SIGINT)
    time.sleep(0.15)  # the first one is being honoured: final evaluation under way
    p.send_signal(signal.SIGINT)
    code = finish(p)
    err = log.read_text()
    assert code == 130, f"exit {code}:\n{err}"
    assert "Traceback" not in err, err
    assert "saved step" not in err, "the second Ctrl-C waited for the graceful stop to finish"
    assert latest(run_dir).train["step"] >= 10


# ---------------------------------------------------------------------------------------------
# 3. kill -9 at random moments


def file_identity(path: Path):
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_ino, info.st_mtime_ns


def test_kill_9_at_random_moments_never_breaks_the_checkpoint(corpus, tmp_path, processes):
    rng = random.Random(20240601)
    run_dir = tmp_path / "run"
    args = [*model_args(), "--eval-every", "7", "--save-every", "1"]
    killed, step, torn_saves = [], 0, 0
    for i in range(8):
        before = file_identity(run_dir / ckpt_io.LATEST)
        p = processes("train", corpus, "--out", run_dir, *args, "--max-steps", FOREVER,
                      *(["--resume"] if i else []), log=tmp_path / f"train-{i}.log")
        wait_until(lambda: file_identity(run_dir / ckpt_io.LATEST) not in (None, before),
                   "a new checkpoint", p)
        for pid in killed:  # the restart cleared what the kills left half-written
            assert temporaries(run_dir, pid) == [], f"stale temporary of killed pid {pid}"
        time.sleep(rng.uniform(0.0, 0.2))
        p.send_signal(signal.SIGKILL)
        assert finish(p) == -signal.SIGKILL
        killed.append(p.pid)
        torn_saves += bool(temporaries(run_dir, p.pid))
        ck = latest(run_dir)  # whole, whatever the moment of the kill
        assert_finite_checkpoint(ck)
        assert ck.train["step"] >= step, "a kill lost saved progress"
        step = ck.train["step"]
    print(f"{torn_saves} of 8 kills landed during a save; last saved step {step}")

    end = step + 15
    code, out, err = run_cli("train", corpus, "--out", run_dir, "--resume", "--max-steps", end)
    assert code == 0, err
    assert temporaries(run_dir) == [], "a stale checkpoint temporary survived a clean run"
    straight = tmp_path / "straight"
    code, out, err = run_cli("train", corpus, "--out", straight, *args, "--max-steps", end)
    assert code == 0, err
    assert_same_training(run_dir, straight, end)


# ---------------------------------------------------------------------------------------------
# 4. non-finite numbers


OUTPUT_BIAS = -1  # the last parameter: a bias of the softmax layer, in every loss term
INPUT_WEIGHT = 3  # a weight into a GRU gate (r): +inf only saturates it


def poison_weight(index: int, value):
    def poison(run: Run):
        run.model.params[index] = value
    return poison


def weights_go_bad_in_step(step: int):
    """The optimizer's update of `step` leaves a NaN weight, with a finite loss and gradients."""
    def poison(run: Run):
        real = run.optimizer.step

        def step_then_break(params, grads):
            real(params, grads)
            if run.optimizer.steps == step:
                params[OUTPUT_BIAS] = np.nan
        run.optimizer.step = step_then_break
    return poison


POISONS = {  # (poison applied to a run resumed at step 10, the step the error must name)
    "nan-weight": (poison_weight(OUTPUT_BIAS, np.nan), 11),
    "inf-weight": (poison_weight(OUTPUT_BIAS, np.inf), 11),
    # the loss stays finite: the next save (step 15) is what must refuse it
    "inf-weight-saturating-a-gate": (poison_weight(INPUT_WEIGHT, np.inf), 15),
    "nan-from-update-off-cadence": (weights_go_bad_in_step(13), 14),
    "nan-from-update-on-eval-and-save-cadence": (weights_go_bad_in_step(15), 15),
}


@pytest.mark.parametrize("name", list(POISONS))
def test_non_finite_stops_training_and_keeps_the_last_good_checkpoint(name, corpus, tmp_path):
    poison, bad_step = POISONS[name]
    run_dir = tmp_path / "run"
    train_in_process(corpus, run_dir, 10)  # latest.npz and best.npz at step 10
    before = checkpoint_bytes(run_dir)
    run = resumed_run(corpus, run_dir, 20)
    poison(run)
    with pytest.raises(TrainingError) as e:
        train(run, Quiet())
    message = str(e.value)
    assert re.search(rf"\bstep {bad_step}\b", message) and "\n" not in message, message
    assert checkpoint_bytes(run_dir) == before, "a checkpoint changed"
    assert temporaries(run_dir) == []
    assert latest(run_dir).train["step"] == 10
    assert_finite_checkpoint(latest(run_dir))
    strict_json_numbers_are_finite(run_dir)


def test_non_finite_optimizer_state_is_never_saved(corpus, tmp_path):
    """An infinite second moment freezes its weight (the update is m / sqrt(inf) = 0), so the
    weights stay finite and the loss too: only the checkpoint can tell."""
    run_dir = tmp_path / "run"
    train_in_process(corpus, run_dir, 10)
    run = resumed_run(corpus, run_dir, 20)
    run.optimizer.v[3] = np.inf
    try:
        train(run, Quiet())
    except TrainingError:
        pass  # stopping is fine; saving it is not
    for name in checkpoint_bytes(run_dir):
        assert_finite_checkpoint(ckpt_io.load(run_dir / name))


def huge_lr_run(corpus, tmp_path, monkeypatch, capsys, *extra):
    """--lr 1e38: the first update sends weights to about 1e38, still finite in float32, which
    overflow in the next forward pass. Without weight decay, which --lr 1e38 would not allow."""
    run_dir = tmp_path / "run"
    result = call_main(monkeypatch, capsys, "train", corpus, "--out", run_dir, "-q",
                       *model_args(), "--lr", "1e38", "--weight-decay", "0", "--max-steps", "20",
                       "--save-every", "1", *extra)
    return run_dir, result


def test_huge_learning_rate_is_one_line_naming_the_step(corpus, tmp_path, monkeypatch, capsys):
    run_dir, (code, out, err) = huge_lr_run(corpus, tmp_path, monkeypatch, capsys)
    line = assert_one_line_error(code, out, err, 1, mentions=["--lr"])
    assert re.search(r"\bstep \d+\b", line), line
    if (run_dir / ckpt_io.LATEST).exists():  # no checkpoint at all is fine: none was good
        assert_finite_checkpoint(latest(run_dir))


def test_checkpoint_left_by_a_non_finite_stop_is_usable(corpus, tmp_path, monkeypatch, capsys):
    """The last good checkpoint stays the latest: one whose model gives a finite loss, not the
    weights that just produced the NaN."""
    run_dir, (code, _, err) = huge_lr_run(corpus, tmp_path, monkeypatch, capsys)
    assert code == 1, err
    if (run_dir / ckpt_io.LATEST).exists():
        ck = latest(run_dir)
        model = Model(ModelConfig(**ck.config), params=ck.params)
        _, ids = read_corpus(corpus, vocab=Vocab(ck.vocab))
        loss = evaluate(model, ids, batch_size=4, seq_len=16)
        assert math.isfinite(loss), f"latest.npz (step {ck.train['step']}) has loss {loss}"


def test_non_finite_validation_loss_is_never_logged(corpus, tmp_path, monkeypatch, capsys):
    run_dir, (code, _, err) = huge_lr_run(corpus, tmp_path, monkeypatch, capsys,
                                          "--eval-every", "1")
    assert code == 1, err
    strict_json_numbers_are_finite(run_dir)


# ---------------------------------------------------------------------------------------------
# 5. a full disk, an unwritable --out


def disk_full(fails: str, run_dir: Path):
    """A stand-in for np.savez or os.replace (inside charrnn.checkpoint) that hits ENOSPC
    for files in run_dir; np.savez writes half a file first."""
    real = {"savez": np.savez, "replace": os.replace}[fails]

    def savez(file, *args, **kwargs):
        file.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def replace(src, dst, *args, **kwargs):
        if Path(dst).parent == run_dir and Path(dst).suffix == ".npz":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst, *args, **kwargs)

    return {"savez": savez, "replace": replace}[fails]


@pytest.mark.parametrize("fails", ["savez", "replace"])
def test_disk_full_while_saving_keeps_the_previous_checkpoint(fails, corpus, tmp_path,
                                                              monkeypatch):
    run_dir = tmp_path / "run"
    train_in_process(corpus, run_dir, 10)
    before = checkpoint_bytes(run_dir)
    run = resumed_run(corpus, run_dir, 20)
    target = ckpt_io.np if fails == "savez" else ckpt_io.os
    monkeypatch.setattr(target, fails, disk_full(fails, run_dir))
    with pytest.raises(TrainingError) as e:
        train(run, Quiet())
    message = str(e.value)
    assert "No space left on device" in message and "\n" not in message, message
    assert checkpoint_bytes(run_dir) == before, "a checkpoint changed"
    assert temporaries(run_dir) == [], "the half-written temporary was left behind"


def test_disk_full_through_the_cli_is_one_line(corpus, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    train_in_process(corpus, run_dir, 10)
    before = checkpoint_bytes(run_dir)
    monkeypatch.setattr(ckpt_io.np, "savez", disk_full("savez", run_dir))
    code, out, err = call_main(monkeypatch, capsys, "train", corpus, "--out", run_dir,
                               "--resume", "--max-steps", "20", "-q")
    assert_one_line_error(code, out, err, 1, mentions=["No space left on device"])
    assert checkpoint_bytes(run_dir) == before


def test_a_crash_while_resuming_keeps_the_loss_history(corpus, tmp_path, monkeypatch):
    """Resuming rewrites metrics.jsonl (dropping what follows the checkpoint); a crash during
    that rewrite must not lose the history before it."""
    run_dir = tmp_path / "run"
    train_in_process(corpus, run_dir, 10)
    history = metrics_rows(run_dir)
    assert history, "precondition: a loss history to keep"
    run = resumed_run(corpus, run_dir, 20)
    real_write_text = Path.write_text

    def crash_midway(self, data, *args, **kwargs):
        if METRICS in self.name:  # the history itself or a temporary copy of it
            open(self, "w").close()  # what a write does first (truncate)...
            raise OSError(errno.EIO, "simulated crash")  # ...and then the process is gone
        return real_write_text(self, data, *args, **kwargs)

    with monkeypatch.context() as patch, pytest.raises(OSError):
        patch.setattr(Path, "write_text", crash_midway)
        train(run, Quiet())
    assert metrics_rows(run_dir) == history


@pytest.mark.parametrize("out", ["afile/run", "afile"], ids=["under-a-file", "is-a-file"])
def test_unwritable_out_is_one_line(out, corpus, tmp_path, monkeypatch, capsys):
    (tmp_path / "afile").write_text("not a directory")
    code, err_out, err = call_main(monkeypatch, capsys, "train", corpus, "--out",
                                   tmp_path / out, "--max-steps", "2", "-q")
    assert_one_line_error(code, err_out, err, 1, mentions=["afile"])
    assert (tmp_path / "afile").read_text() == "not a directory"


# ---------------------------------------------------------------------------------------------
# 6. one writer per run directory


@pytest.mark.parametrize("resume", [False, True], ids=["fresh", "resume"])
def test_one_trainer_per_run_directory(resume, corpus, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    if resume:
        train_in_process(corpus, run_dir, 10)
        argv = ["train", corpus, "--out", run_dir, "--resume", "--max-steps", "20", "-q"]
    else:
        run_dir.mkdir()
        argv = ["train", corpus, "--out", run_dir, *model_args(), "--max-steps", "20", "-q"]
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.name != LOCK}
    holder = lock_run_dir(run_dir)
    try:
        code, out, err = call_main(monkeypatch, capsys, *argv)
        assert_one_line_error(code, out, err, 1,
                              mentions=["another charrnn process", f"pid {os.getpid()}"])
        after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.name != LOCK}
        assert after == before, "the refused trainer touched the run directory"
        assert (run_dir / LOCK).exists(), "the refused trainer removed the other's lock file"
    finally:
        holder.close()
    code, out, err = call_main(monkeypatch, capsys, *argv)
    assert code == 0, err
    assert latest(run_dir).train["step"] == 20


def test_a_stale_lock_is_taken_over(corpus, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LOCK).write_text("999999\n")  # left by a process that no longer exists
    code, out, err = call_main(monkeypatch, capsys, "train", corpus, "--out", run_dir,
                               *model_args(), "--max-steps", "5", "-q")
    assert code == 0, err
    assert latest(run_dir).train["step"] == 5
    assert "999999" not in (run_dir / LOCK).read_text()


# ---------------------------------------------------------------------------------------------
# 8. bad input


TEXT = ("abcé \n" * 400).encode("utf-8")  # 'é' is two bytes: byte and character offsets differ


@pytest.fixture
def train_cli(tmp_path, monkeypatch, capsys):
    """Train on the given bytes in-process through main(): (exit status, stdout, stderr, out)."""
    def run(data: bytes, *extra):
        path = tmp_path / "corpus.txt"
        path.write_bytes(data)
        out = tmp_path / "out"
        return (*call_main(monkeypatch, capsys, "train", path, "--out", out, *model_args(),
                           "--max-steps", "3", "-q", *extra), out)
    return run


def test_binary_corpus(train_cli):
    code, out, err, run_dir = train_cli(TEXT[:100] + b"\x00\x01\x02" + TEXT)
    assert_one_line_error(code, out, err, 1, mentions=["binary", "offset 100"])
    assert not run_dir.exists(), "a failed start left a run directory"


def test_invalid_utf8_names_the_byte_offset(train_cli):
    offset = len(TEXT) + 7
    code, out, err, run_dir = train_cli(TEXT + b"abcdefg" + b"\xff" + TEXT)
    assert_one_line_error(code, out, err, 1, mentions=[f"at byte {offset};", "--errors"])
    assert not run_dir.exists(), "a failed start left a run directory"


@pytest.mark.parametrize("option,char", [(["--errors", "replace"], "\ufffd"),
                                         (["--encoding", "latin-1"], "\xff")],
                         ids=["errors-replace", "latin-1"])
def test_undecodable_bytes_train_with_an_option(train_cli, option, char):
    code, out, err, run_dir = train_cli(TEXT + b"\xff" + TEXT, *option)
    assert code == 0, err
    assert latest(run_dir).train["step"] == 3
    assert ord(char) in latest(run_dir).vocab


def test_too_small_corpus_leaves_nothing_behind(train_cli):
    code, out, err, run_dir = train_cli(b"a")
    assert_one_line_error(code, out, err, 1, mentions=["too small"])
    assert not run_dir.exists(), f"a failed start left {sorted(os.listdir(run_dir))}"


def test_sample_top_k_0_is_a_usage_error(model_dir, monkeypatch, capsys):
    code, out, err = call_main(monkeypatch, capsys, "sample", model_dir, "--top-k", "0")
    assert_one_line_error(code, out, err, 2, mentions=["--top-k"])


def test_prime_file_with_unknown_characters(model_dir, tmp_path, monkeypatch, capsys):
    prime = tmp_path / "prime.txt"
    prime.write_text("abZ cq", encoding="utf-8")
    code, out, err = call_main(monkeypatch, capsys, "sample", model_dir, "--prime-file", prime,
                               "--length", "5")
    line = assert_one_line_error(code, out, err, 1, mentions=["'Z'", "'q'"])
    assert "'a'" not in line and "'c'" not in line, line


# ---------------------------------------------------------------------------------------------
# 9. the checkpoint loader, fuzzed


def small_checkpoint() -> Checkpoint:
    config = ModelConfig(vocab_size=5, cell="lstm", layers=1, hidden=3)
    size = ParamLayout(config).size
    rng = np.random.default_rng(0)
    return Checkpoint(config=config.to_dict(), vocab=np.array([10, 32, 97, 98, 233], np.uint32),
                      params=rng.normal(size=size).astype(np.float32),
                      arrays={"adam.m": rng.normal(size=size).astype(np.float32),
                              "state.h": np.zeros((1, 2, 3), np.float32)},
                      train={"step": 7, "rng": np.random.default_rng(1).bit_generator.state})


class Valid:
    """A valid checkpoint: the object, its file's bytes, its .npz members, and a scratch path
    for damaged copies (repr kept short for hypothesis's reports)."""

    def __init__(self, work: Path):
        self.ck = small_checkpoint()
        ckpt_io.save(work / "valid.npz", self.ck)
        self.data = (work / "valid.npz").read_bytes()
        with np.load(work / "valid.npz", allow_pickle=False) as z:
            self.members = {k: z[k] for k in z.files}
        self.meta = json.loads(self.members["meta"].tobytes())
        self.path = work / "damaged.npz"

    def with_meta(self, meta) -> bytes:
        """The checkpoint's bytes with its metadata JSON replaced (a well-formed .npz)."""
        buf = io.BytesIO()
        np.savez(buf, **{**self.members,
                         "meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)})
        return buf.getvalue()

    def __repr__(self):
        return "<valid checkpoint>"


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory) -> Valid:
    return Valid(tmp_path_factory.mktemp("fuzz"))


def load_or_refuse(path: Path, data: bytes) -> Checkpoint | None:
    """Write data to path and load it: the checkpoint, or None when refused with a
    CheckpointError. Any other exception fails the test, and so does any attempt to unpickle
    (recorded, since load() would turn an exception raised there into a CheckpointError)."""
    path.write_bytes(data)
    unpickled = []
    with mock.patch("pickle.load", side_effect=lambda *a, **k: unpickled.append(a)), \
            mock.patch("pickle.loads", side_effect=lambda *a, **k: unpickled.append(a)):
        try:
            ck = ckpt_io.load(path)
        except CheckpointError:
            ck = None
    assert not unpickled, "the loader tried to unpickle"
    return ck


def assert_loads_as_original(ck: Checkpoint | None, original: Checkpoint) -> None:
    """A damaged file that still loads must be the original data, usable as a checkpoint."""
    if ck is None:
        return
    assert np.array_equal(ck.params, original.params)
    assert np.array_equal(ck.vocab, original.vocab)
    assert isinstance(ck.config, dict) and isinstance(ck.train, dict), (ck.config, ck.train)


EOCD = b"PK\x05\x06" + bytes(18)  # an empty zip's end record: zipfile takes any file ending so

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.one_of(st.binary(max_size=4096),
                      st.binary(max_size=512).map(lambda b: b"PK\x03\x04" + b),
                      st.binary(max_size=512).map(lambda b: b + EOCD),
                      st.binary(max_size=64).map(lambda b: b"\x93NUMPY" + b)))
def test_random_bytes_are_refused(fuzz, data):
    assert load_or_refuse(fuzz.path, data) is None


MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(0, 7)),
    st.tuples(st.just("set"), st.integers(0, 1 << 20), st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 20)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("zero"), st.integers(0, 1 << 20), st.integers(1, 64)),
)


def mutate(data: bytes, ops) -> bytes:
    """Apply (kind, position, argument) edits; positions wrap around the current length."""
    b = bytearray(data)
    for kind, pos, *arg in ops:
        i = pos % (len(b) + 1)
        if kind == "flip" and i < len(b):
            b[i] ^= 1 << arg[0]
        elif kind == "set" and i < len(b):
            b[i] = arg[0]
        elif kind == "truncate":
            del b[i:]
        elif kind == "insert":
            b[i:i] = arg[0]
        elif kind == "zero":
            b[i:i + arg[0]] = bytes(len(b[i:i + arg[0]]))
    return bytes(b)


@FUZZ
@given(ops=st.lists(MUTATION, min_size=1, max_size=4))
def test_mutated_checkpoints_are_refused_or_intact(fuzz, ops):
    ck = load_or_refuse(fuzz.path, mutate(fuzz.data, ops))
    assert_loads_as_original(ck, fuzz.ck)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 1 << 40) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=6)


def replace_at(doc, path: list[int], value):
    """A copy of the JSON document with the node `path` leads to replaced by value: each index
    picks a key or an item (modulo their count); the walk stops at a scalar."""
    if not path or not isinstance(doc, (dict, list)) or not doc:
        return value
    i, rest = path[0], path[1:]
    if isinstance(doc, dict):
        key = list(doc)[i % len(doc)]
        return {**doc, key: replace_at(doc[key], rest, value)}
    j = i % len(doc)
    return [*doc[:j], replace_at(doc[j], rest, value), *doc[j + 1:]]


@FUZZ
@given(path=st.lists(st.integers(0, 40), max_size=4), value=JSON)
def test_checkpoints_with_altered_metadata_are_refused_or_usable(fuzz, path, value):
    """A well-formed .npz whose metadata JSON has one node replaced by arbitrary JSON."""
    ck = load_or_refuse(fuzz.path, fuzz.with_meta(replace_at(fuzz.meta, path, value)))
    assert_loads_as_original(ck, fuzz.ck)


def replace(key_path: tuple, value):
    """Metadata with the node at key_path (keys into nested objects) replaced by value."""
    def change(meta):
        meta = json.loads(json.dumps(meta))
        node = meta
        for key in key_path[:-1]:
            node = node[key]
        node[key_path[-1]] = value
        return meta
    return change


@pytest.mark.parametrize("change", [
    replace(("arrays",), ["vocab", "params", "adam.m", "state.h"]),
    replace(("arrays", "params"), 1),
    replace(("train",), [1]),
], ids=["arrays-listed-not-described", "array-description-not-an-object",
        "train-not-an-object"])
def test_metadata_of_the_wrong_shape_is_refused(fuzz, change):
    """Examples of what the fuzzing above finds, kept as plain cases."""
    ck = load_or_refuse(fuzz.path, fuzz.with_meta(change(fuzz.meta)))
    assert_loads_as_original(ck, fuzz.ck)


@pytest.mark.parametrize("damage", [lambda d: b"Q" + d[1:], lambda d: b"#!junk\n" + d],
                         ids=["first-byte-flipped", "bytes-prepended"])
def test_refusal_never_advises_unpickling(fuzz, damage):
    """zipfile still calls these zips (it reads the end record), numpy does not (it reads the
    first bytes): the error line must not pass on numpy's advice to load it with pickle."""
    fuzz.path.write_bytes(damage(fuzz.data))
    with pytest.raises(CheckpointError) as e:
        ckpt_io.load(fuzz.path)
    assert "pickle" not in str(e.value), str(e.value)
