"""The defects of a new user's trial (issue 19), one test each, through the real command line:
stderr that stops accepting writes, values that used to end in a traceback or leave a run
directory behind, best.npz and `info` telling the truth about a run, `eval --skip-unknown`
counting what it drops, pipes as corpora, a diverging run warned about, a failed save that
does not claim an earlier checkpoint, --out naming a file, -h and --version.

(The byte-order mark, UTF-16, truncated-checkpoint and config-key cases are in
tests/test_tokenizer.py and tests/test_checkpoint.py; the compile notice in tests/test_notice.py;
the fuzzer that looks for the rest in tests/test_fuzz_cli.py.)
"""

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from charrnn import checkpoint as ckpt_io
from charrnn.synthetic import MarkovSource

from .test_cli import ERROR, assert_one_line_error, call_main, cli_command, cli_env, run_cli

ALPHABET = "abcé \n"
SMALL = ["--cell", "gru", "--hidden", "8", "--layers", "1", "--batch-size", "4", "--seq-len",
         "8", "--lr-schedule", "constant", "--lr", "0.01"]
TIMEOUT = 300  # a subprocess on a cold numba cache compiles first


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("trial") / "corpus.txt"
    path.write_text(MarkovSource(alphabet=ALPHABET, order=2, seed=0).sample_text(3000),
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run_dir(corpus, tmp_path_factory) -> Path:
    """A run of 20 steps validated every 10."""
    out = tmp_path_factory.mktemp("trial-run") / "run"
    code, _, err = run_cli("train", corpus, "--out", out, *SMALL, "--max-steps", "20",
                           "--eval-every", "10", "-q", state_dir=out.parent)
    assert code == 0, err
    return out


def shell(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """bash -c script, with `charrnn` meaning this checkout's command."""
    command = " ".join(cli_command())
    return subprocess.run(["bash", "-c", f"charrnn() {{ {command} \"$@\"; }}; {script}"],
                          cwd=cwd, env=cli_env(cwd / "state"), capture_output=True,
                          timeout=TIMEOUT)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


# ---------------------------------------------------------------------------------------------
# work lost: stderr that cannot be written


@pytest.mark.parametrize("redirect", ["2>&1 | head -3", "2>/dev/full"])
def test_training_outlives_its_stderr(redirect, corpus, tmp_path):
    """Progress lines that cannot be written do not stop training: it runs to its budget, saves,
    exits 0 and says in metrics.jsonl that its progress was lost."""
    p = shell(f"charrnn train {corpus} --out run {' '.join(SMALL)} --max-steps 60 "
              f"--eval-every 20 {redirect}; echo \"status=${{PIPESTATUS[0]}}\" >&2", tmp_path)
    assert "status=0" in p.stderr.decode(), p.stderr.decode()
    latest = ckpt_io.load(tmp_path / "run" / ckpt_io.LATEST)
    assert latest.train["step"] == 60
    lost = [r for r in metrics(tmp_path / "run") if "output_lost" in r]
    assert len(lost) == 1, "metrics.jsonl must say once that stderr was lost"
    assert "stderr" in lost[0]["output_lost"]


# ---------------------------------------------------------------------------------------------
# tracebacks: one line, the right status, nothing created


@pytest.mark.parametrize("argv,status,mention", [
    (["train", "{corpus}", "--seed", "-1"], 2, "--seed"),
    (["sample", "{run}", "--seed", "-1"], 2, "--seed"),
    (["train", "{corpus}", "--hidden", "100000"], 1, "memory"),
    (["train", "{corpus}", "--hidden", "10000000"], 2, "--hidden"),
    (["sample", "{run}", "--num-samples", "99999999999999999999"], 2, "--num-samples"),
    (["sample", "{run}", "--num-samples", "1000000000"], 1, "memory"),
    (["train", "{corpus}", "--out", "{run}/latest.npz"], 1, "is a file"),
    (["train", "{corpus}", "--lr", "inf"], 2, "--lr"),
    (["sample", "{run}", "--top-k", "0"], 2, "--top-k"),
], ids=["train-seed", "sample-seed", "hidden-memory", "hidden-range", "num-samples-huge",
        "num-samples-memory", "out-is-a-file", "lr-inf", "top-k-0"])
def test_bad_values_are_one_line_and_leave_nothing(argv, status, mention, corpus, run_dir,
                                                   tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    shutil.copytree(run_dir, work / "run")
    monkeypatch.chdir(work)
    before = tree(work)
    args = [a.format(corpus=corpus, run="run") for a in argv]
    code, out, err = call_main(monkeypatch, capsys, *args)
    assert_one_line_error(code, out, err, status, mentions=[mention])
    assert tree(work) == before, "a refused command created or changed files"


def test_a_failed_default_run_does_not_number_the_next(corpus, tmp_path, monkeypatch, capsys):
    """The run directory a failing `train` made is gone, so the next run is runs/<name>."""
    monkeypatch.chdir(tmp_path)
    code, _, _ = call_main(monkeypatch, capsys, "train", corpus, "--hidden", "100000")
    assert code == 1 and not (tmp_path / "runs").exists()
    code, _, err = call_main(monkeypatch, capsys, "train", corpus, *SMALL, "--max-steps", "2")
    assert code == 0, err
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [corpus.stem]


def test_an_output_encoding_without_the_models_characters(run_dir, tmp_path):
    """PYTHONIOENCODING=ascii and a model that writes 'é': one line before any output."""
    p = subprocess.run([*cli_command(), "sample", str(run_dir), "--length", "50", "--seed", "1"],
                       env={**cli_env(tmp_path), "PYTHONIOENCODING": "ascii"},
                       capture_output=True, timeout=TIMEOUT)
    assert_one_line_error(p.returncode, p.stdout.decode(), p.stderr.decode(), 1,
                          mentions=["PYTHONIOENCODING", "ascii"])


# ---------------------------------------------------------------------------------------------
# best.npz and info


def validations(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["val_loss"]) for r in metrics(run) if r.get("val_loss") is not None]


@pytest.mark.parametrize("steps,eval_every", [(5, 10), (15, 10)],
                         ids=["before-the-first-validation", "off-the-cadence"])
def test_best_is_the_best_validation_ever_made(steps, eval_every, corpus, tmp_path, monkeypatch,
                                               capsys):
    """best.npz holds the weights of the lowest validation loss the run printed, the final one
    of a stop off the --eval-every cadence included."""
    out = tmp_path / "run"
    code, _, err = call_main(monkeypatch, capsys, "train", corpus, "--out", out, *SMALL,
                             "--max-steps", steps, "--eval-every", eval_every)
    assert code == 0, err
    best_step, best_loss = min(validations(out), key=lambda v: v[1])
    best = ckpt_io.load(out / ckpt_io.BEST)
    assert best.train["step"] == best_step
    assert best.train["best_val_loss"] == best_loss
    if best_step == steps:  # the final validation was the best: the last weights
        assert np.array_equal(best.params, ckpt_io.load(out / ckpt_io.LATEST).params)


def test_info_shows_the_run_and_its_best(run_dir, corpus, tmp_path, monkeypatch, capsys):
    """A run that went on past its best (resumed at a learning rate too high to improve): info
    gives the run's steps (latest.npz) and the step of the weights sample and eval use
    (best.npz)."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    code, _, err = call_main(monkeypatch, capsys, "train", corpus, "--out", run, "--resume",
                             "--max-steps", "40", "--eval-every", "1000", "--lr", "1.0",
                             "--weight-decay", "0", "-q")
    assert code == 0, err
    best_step = ckpt_io.load(run / ckpt_io.BEST).train["step"]
    assert best_step < 40, "the resumed run was meant to end worse than its best"
    code, out, err = call_main(monkeypatch, capsys, "info", run)
    assert code == 0, err
    assert "40 steps" in out and f"at step {best_step} (best.npz" in out, out
    code, out, err = call_main(monkeypatch, capsys, "info", run, "--json")
    info = json.loads(out)
    assert info["step"] == 40 and info["best"]["step"] == best_step
    assert info["checkpoint"].endswith(ckpt_io.LATEST)


# ---------------------------------------------------------------------------------------------
# eval --skip-unknown, pipes


def test_eval_says_what_it_skipped(run_dir, tmp_path, monkeypatch, capsys):
    text = tmp_path / "text.txt"
    text.write_text("abc abQc\nZZa é", encoding="utf-8")  # Q once, Z twice: 3 of 14 unknown
    code, out, err = call_main(monkeypatch, capsys, "eval", run_dir, text, "--skip-unknown",
                               "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["skipped_chars"] == 3 and result["chars"] == 11
    assert "skipped 3 of 14 characters" in err and "'Q'" in err and "'Z'" in err


@pytest.mark.parametrize("source", ["cat {corpus} | charrnn train /dev/stdin",
                                    "charrnn train <(cat {corpus})"], ids=["stdin", "fd"])
def test_a_pipe_is_a_corpus(source, corpus, tmp_path):
    p = shell(source.format(corpus=corpus) + f" --out run {' '.join(SMALL)} --max-steps 3 -q",
              tmp_path)
    assert p.returncode == 0, p.stderr.decode()
    assert ckpt_io.load(tmp_path / "run" / ckpt_io.LATEST).train["corpus"]["chars"] == \
        len(corpus.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# wrong or silent


def test_a_diverging_run_is_warned_about(corpus, tmp_path, monkeypatch, capsys):
    """--lr 1e6 (without weight decay, which it would not allow): the losses stay finite and
    huge; the run says it diverges, once."""
    out = tmp_path / "run"
    code, _, err = call_main(monkeypatch, capsys, "train", corpus, "--out", out, *SMALL[:-2],
                             "--lr", "1e6", "--weight-decay", "0", "--max-steps", "30",
                             "--eval-every", "10")
    assert code == 0, err
    assert err.count("training is diverging") == 1, err
    assert sum(1 for r in metrics(out) if r.get("diverging")) == 1


def test_a_failed_first_save_does_not_claim_an_earlier_checkpoint(corpus, tmp_path):
    p = shell(f"ulimit -f 4; charrnn train {corpus} --out run {' '.join(SMALL)} "
              f"--max-steps 3 -q", tmp_path)
    err = p.stderr.decode()
    assert p.returncode == 1 and err.startswith(ERROR) and len(err.splitlines()) == 1, err
    assert "intact" not in err and "not written" in err, err
    assert not (tmp_path / "run").exists(), "a run that saved nothing leaves nothing"


def test_help_and_version(monkeypatch, capsys):
    from charrnn import __version__
    code, out, _ = call_main(monkeypatch, capsys, "--version")
    assert code == 0 and out.strip() == f"charrnn {__version__}"
    code, out, _ = call_main(monkeypatch, capsys, "train", "-h")
    assert code == 0 and "train [OPTIONS] CORPUS" in " ".join(out.split())
    code, out, _ = call_main(monkeypatch, capsys, "eval", "-h")
    assert "MODEL FILE" in " ".join(out.split()) and "{" not in out


def test_counts_in_words(tmp_path, monkeypatch, capsys):
    (tmp_path / "one.txt").write_text("a", encoding="utf-8")
    code, out, err = call_main(monkeypatch, capsys, "train", tmp_path / "one.txt", "--out",
                               tmp_path / "run")
    assert_one_line_error(code, out, err, 1, mentions=["1 character,"])


def test_a_device_is_not_a_corpus(tmp_path, monkeypatch, capsys):
    """/dev/zero is refused at once (copied like a pipe it would fill the disk)."""
    monkeypatch.chdir(tmp_path)
    code, out, err = call_main(monkeypatch, capsys, "train", "/dev/zero", *SMALL)
    assert_one_line_error(code, out, err, 1, mentions=["device"])
    assert list(tmp_path.iterdir()) == []


def test_eval_of_a_text_it_knows_nothing_of(run_dir, tmp_path, monkeypatch, capsys):
    text = tmp_path / "text.txt"
    text.write_text("QQZZ", encoding="utf-8")
    code, out, err = call_main(monkeypatch, capsys, "eval", run_dir, text, "--skip-unknown")
    assert code == 1 and "dropped them all" in err.splitlines()[-1], err


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_stopped_while_compiling_leaves_nothing(how, corpus, tmp_path, monkeypatch, capsys):
    """Ctrl-C or SIGTERM during the first run's compile (the kernels' warm-up): the run saved
    nothing, so nothing of it stays."""
    import os
    import signal

    from charrnn.train import Run

    def interrupted(self):
        if how == "ctrl-c":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 1)  # let the handler run here

    monkeypatch.setattr(Run, "_warm_up", interrupted)
    monkeypatch.chdir(tmp_path)
    code, _, _ = call_main(monkeypatch, capsys, "train", corpus, *SMALL, "--max-steps", "3")
    assert code == (130 if how == "ctrl-c" else 143)
    assert not (tmp_path / "runs").exists()


def test_options_of_runs_saved_before_still_resume():
    """--grad-clip inf (no clipping) and --minutes inf were accepted before options.py: saved
    in a checkpoint, they must still make options."""
    from charrnn.options import OptionError, TrainOptions
    TrainOptions(grad_clip=math.inf, minutes=math.inf)
    with pytest.raises(OptionError, match="--lr"):
        TrainOptions(lr=math.inf)
    with pytest.raises(OptionError, match="--grad-clip"):
        TrainOptions(grad_clip=math.nan)
