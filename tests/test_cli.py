r"""The `charrnn` command line, end to end: data on stdout and nothing else there, progress and
errors on stderr, one-line errors with the right exit status, the most recent run remembered,
samples that honour --seed, --stop, --num-samples, --prime and stdin, and a closed pipe that is
a normal end.

One tiny model is trained once per module by a real `charrnn train` subprocess; the other tests
reuse it. Most end-to-end checks run the installed console script in a subprocess (so the exit
status and the one-line error formatting of charrnn.cli.main() are what a user gets); a few run
in-process, with typer's CliRunner on `app` (standalone mode: no one-line error mapping) or with
main() itself and capsys.
"""

import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from charrnn import checkpoint as ckpt_io
from charrnn.cli import UsageProblem, app, main
from charrnn.options import OptionError
from charrnn.synthetic import MarkovSource

ERROR = "charrnn: error: "
ALPHABET = "abcé \n"  # a non-ASCII letter (two bytes in UTF-8) and a newline
CORPUS_CHARS = 5000
# a constant learning rate: these runs check resuming with a larger budget, which a
# budget-aware schedule would (rightly) change
TRAIN_ARGS = ["--cell", "lstm", "--hidden", "16", "--layers", "1", "--batch-size", "4",
              "--seq-len", "16", "--eval-every", "10", "--save-every", "10",
              "--lr-schedule", "constant"]
SUBPROCESS_TIMEOUT = 300  # generous: a cold numba cache compiles the model first


# ---------------------------------------------------------------------------------------------
# helpers


def cli_command() -> list[str]:
    """The installed console script beside this interpreter, else `python -m charrnn`."""
    script = Path(sys.executable).with_name("charrnn")
    return [str(script)] if script.exists() else [sys.executable, "-m", "charrnn"]


def cli_env(state_dir=None) -> dict:
    env = {**os.environ, "NO_COLOR": "1",
           "CHARRNN_STATE_DIR": str(state_dir or os.environ["CHARRNN_STATE_DIR"])}
    env.pop("FORCE_COLOR", None)
    return env


def run_cli(*args, input="", cwd=None, state_dir=None):
    """(exit status, stdout, stderr) of `charrnn ARGS` in a subprocess. stdin is the given text
    (empty by default: never the terminal). Both streams are decoded as strict UTF-8, so len()
    counts characters."""
    data = input.encode("utf-8") if isinstance(input, str) else input
    p = subprocess.run([*cli_command(), *map(str, args)], input=data, capture_output=True,
                       cwd=cwd, env=cli_env(state_dir), timeout=SUBPROCESS_TIMEOUT)
    return p.returncode, p.stdout.decode("utf-8"), p.stderr.decode("utf-8")


def call_main(monkeypatch, capsys, *args, input=""):
    """(exit status, stdout, stderr) of charrnn.cli.main() run in-process with sys.argv set:
    exercises the one-line error formatting and exit-status mapping without a subprocess."""
    monkeypatch.setattr(sys, "argv", ["charrnn", *map(str, args)])
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(input.encode("utf-8")),
                                                    encoding="utf-8"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main()
    out, err = capsys.readouterr()
    code = exc.value.code
    return (0 if code is None else code), out, err


def invoke(*args, input=None):
    """CliRunner on `app` (standalone mode); stdout and stderr are kept apart."""
    result = CliRunner().invoke(app, [str(a) for a in args], input=input)
    return result


def assert_one_line_error(code, out, err, expected_code, mentions=()):
    assert code == expected_code, f"exit {code}, expected {expected_code}; stderr:\n{err}"
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected exactly one stderr line, got {len(lines)}:\n{err}"
    assert lines[0].startswith(ERROR), lines[0]
    assert lines[0][len(ERROR):].strip(), "the error line has no message"
    assert out == "", f"an error must print no data on stdout, got {out!r}"
    for text in mentions:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def vocabulary(text: str) -> set:
    return set(text)


def lstm_parameter_count(vocab_size: int, hidden: int) -> int:
    """One LSTM layer on one-hot input plus the softmax layer: 4H(V + H + 1) + V(H + 1)."""
    return 4 * hidden * (vocab_size + hidden + 1) + vocab_size * (hidden + 1)


# ---------------------------------------------------------------------------------------------
# the one trained model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`charrnn train` run once, in a subprocess, on a small Markov corpus."""
    work = tmp_path_factory.mktemp("cli-work")
    state = tmp_path_factory.mktemp("cli-state")
    text = MarkovSource(alphabet=ALPHABET, order=2, seed=0).sample_text(CORPUS_CHARS)
    corpus = work / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    code, out, err = run_cli("train", "corpus.txt", "--max-steps", "20", *TRAIN_ARGS,
                             "--out", "RUN", cwd=work, state_dir=state)
    assert code == 0, f"training failed (exit {code}):\n{err}"
    # a primed sample compiles (on a cold cache) the one kernel training does not use, so the
    # tests that expect a silent stderr do not get the compile notice instead
    warm = run_cli("sample", "RUN", "--length", "2", "--prime", text[:3], cwd=work,
                   state_dir=state)
    assert warm[0] == 0, warm[2]
    return SimpleNamespace(work=work, state=state, corpus=corpus, text=text, run=work / "RUN",
                           code=code, out=out, err=err)


def test_train_writes_the_run_and_logs_only_to_stderr(trained):
    assert trained.code == 0
    assert trained.out == "", "train must print nothing on stdout"
    err = trained.err
    assert "\x1b[" not in err and "\r" not in err, "not a terminal: plain log lines expected"
    step10 = [line for line in err.splitlines() if re.match(r"step 10\b", line)]
    assert step10, err
    assert re.search(r"\bval \d+\.\d+ nats", step10[0]), step10[0]

    names = {p.name for p in trained.run.iterdir()}
    assert {"latest.npz", "best.npz", "metrics.jsonl"} <= names, names
    rows = [json.loads(line) for line in
            (trained.run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [r["step"] for r in rows if "train_loss" in r] == [10, 20]
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(vals) == 2 and all(math.isfinite(v) and v > 0 for v in vals)
    # the logged validation loss is the one in metrics.jsonl
    assert f"{rows[0]['val_loss']:.4f}" in step10[0]

    latest = ckpt_io.load(trained.run / "latest.npz")
    best = ckpt_io.load(trained.run / "best.npz")
    assert latest.train["step"] == 20
    assert best.train["best_val_loss"] == pytest.approx(min(vals))
    assert "".join(map(chr, latest.vocab)) == "".join(sorted(set(trained.text)))


# ---------------------------------------------------------------------------------------------
# sample, end to end


def test_same_seed_same_sample_exact_length_and_vocabulary(trained):
    a = run_cli("sample", trained.run, "--length", 300, "--seed", 7)
    b = run_cli("sample", trained.run, "--length", 300, "--seed", 7)
    assert a[0] == 0 and a[2] == "", a[2]
    assert a == b
    text = a[1]
    assert len(text) == 300  # characters, not bytes
    assert set(text) <= vocabulary(trained.text), set(text) - vocabulary(trained.text)
    # the same seed in-process gives the same text; another seed gives another one
    assert invoke("sample", trained.run, "--length", 300, "--seed", 7).stdout == text
    assert invoke("sample", trained.run, "--length", 300, "--seed", 8).stdout != text


def test_sample_without_model_uses_the_most_recent_run(trained, tmp_path):
    code, out, err = run_cli("sample", "--length", 120, "--seed", 3, cwd=tmp_path,
                             state_dir=trained.state)
    assert code == 0 and err == "", err
    assert len(out) == 120
    assert out == invoke("sample", trained.run, "--length", 120, "--seed", 3).stdout


def test_stop_ends_just_before_the_stop_string(trained):
    stop = "a\n"
    full = invoke("sample", trained.run, "--length", 400, "--seed", 11).stdout
    assert stop in full, "precondition: the unstopped sample contains the stop string"
    code, out, err = run_cli("sample", trained.run, "--length", 400, "--seed", 11,
                             "--stop", r"a\n")
    assert code == 0 and err == "", err
    assert stop not in out
    assert out == full[:full.index(stop)]


def test_num_samples_each_followed_by_the_separator(trained):
    code, out, err = run_cli("sample", trained.run, "--length", 40, "--seed", 5,
                             "--num-samples", 3, "--separator", r"\n---\n")
    assert code == 0 and err == "", err
    assert out.endswith("\n---\n")
    pieces = out.split("\n---\n")
    assert len(pieces) == 4 and pieces[-1] == "", out
    assert all(len(p) == 40 for p in pieces[:3]), [len(p) for p in pieces]
    assert all(set(p) <= vocabulary(trained.text) for p in pieces)
    assert len(set(pieces[:3])) > 1, "three identical samples: the batch is not sampled"


def test_unknown_prime_character_fails_and_skip_unknown_drops_it(trained):
    code, out, err = run_cli("sample", trained.run, "--length", 30, "--seed", 2,
                             "--prime", "Zé")
    assert_one_line_error(code, out, err, 1, mentions=["'Z'"])
    assert "'é'" not in err

    code, out, err = run_cli("sample", trained.run, "--length", 30, "--seed", 2,
                             "--prime", "Zé", "--skip-unknown")
    assert code == 0 and err == "", err
    # the prime is printed as the model saw it: 'é' alone, exactly as if primed with 'é'
    only_known = invoke("sample", trained.run, "--length", 30, "--seed", 2, "--prime", "é")
    assert out.startswith("é") and len(out) == 1 + 30
    assert out == only_known.stdout


def test_stdin_is_the_prime_when_no_prime_option(trained):
    code, out, err = run_cli("sample", trained.run, "--length", 50, "--seed", 4,
                             input="ab\né")
    assert code == 0 and err == "", err
    assert out.startswith("ab\né") and len(out) == 4 + 50
    primed = invoke("sample", trained.run, "--length", 50, "--seed", 4, "--prime", "ab\né")
    assert out == primed.stdout


def test_prime_option_wins_over_stdin(trained):
    result = invoke("sample", trained.run, "--length", 20, "--seed", 1, "--prime", "é",
                    input="abc")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("é") and len(result.stdout) == 21


def test_greedy_is_deterministic_without_a_seed(trained):
    a = invoke("sample", trained.run, "--length", 60, "--argmax")
    b = invoke("sample", trained.run, "--length", 60, "--argmax")
    c = invoke("sample", trained.run, "--length", 60, "--temperature", 0)
    assert a.exit_code == b.exit_code == c.exit_code == 0
    assert a.stderr == "" and len(a.stdout) == 60
    assert a.stdout == b.stdout == c.stdout
    # and a random sample without a seed is not pinned to one text
    r = {invoke("sample", trained.run, "--length", 60).stdout for _ in range(3)}
    assert len(r) > 1


def test_closed_pipe_is_a_normal_end(trained):
    p = subprocess.Popen([*cli_command(), "sample", str(trained.run), "--length", "100000"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=cli_env())
    try:
        head = p.stdout.read(10)
        p.stdout.close()
        err = p.stderr.read()
        code = p.wait(timeout=SUBPROCESS_TIMEOUT)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert len(head) == 10
    assert code == 0, err.decode("utf-8", "replace")
    assert err == b""


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("argv", [["sample", "--length", "5"], ["sample", "--length", "20000"],
                                  ["info"]], ids=["short-sample", "long-sample", "info"])
@pytest.mark.parametrize("unbuffered", ["", "1"], ids=["buffered", "unbuffered"])
def test_output_that_cannot_be_written_is_an_error(trained, argv, unbuffered):
    """stdout on a full disk: one error line and exit 1, never a traceback or a silent 0, with
    Python's stdout buffered (a shell) or not (PYTHONUNBUFFERED, as some CI sets)."""
    env = {**cli_env(), "PYTHONUNBUFFERED": unbuffered}
    with open("/dev/full", "wb") as full:
        p = subprocess.run([*cli_command(), argv[0], str(trained.run), *argv[1:]],
                           stdin=subprocess.DEVNULL, stdout=full, stderr=subprocess.PIPE,
                           env=env, timeout=SUBPROCESS_TIMEOUT)
    err = p.stderr.decode("utf-8", "replace")
    assert p.returncode == 1, err
    assert err.startswith(ERROR) and "No space left" in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("closed", ["stdout", "stderr"])
def test_a_closed_stream(trained, closed):
    """Started with stdout or stderr closed (`>&-`): messages for a closed stderr are dropped
    and the sample still succeeds; a sample for a closed stdout is one error line, exit 1."""
    redirect = ">&-" if closed == "stdout" else "2>&-"
    p = subprocess.run(["bash", "-c", f'"$@" {redirect}', "bash", *cli_command(), "sample",
                        str(trained.run), "--length", "20", "--seed", "1"],
                       stdin=subprocess.DEVNULL, capture_output=True, env=cli_env(),
                       timeout=SUBPROCESS_TIMEOUT)
    err = p.stderr.decode("utf-8", "replace")
    if closed == "stderr":
        assert p.returncode == 0 and len(p.stdout.decode("utf-8")) == 20
    else:
        assert p.returncode == 1, err
        assert err == ERROR + "stdout is closed\n"


# ---------------------------------------------------------------------------------------------
# eval, info


def test_eval_text_and_json(trained):
    code, out, err = run_cli("eval", trained.run, trained.corpus)
    assert code == 0 and err == "", err
    assert out.count("\n") == 1 and str(trained.corpus) in out
    code, jout, err = run_cli("eval", "--json", trained.run, trained.corpus)
    assert code == 0 and err == "", err
    result = json.loads(jout)
    nats, bits = result["loss_nats"], result["loss_bits"]
    assert math.isfinite(nats) and nats > 0
    assert bits == pytest.approx(nats / math.log(2), rel=1e-12)
    assert len(trained.corpus.read_bytes()) > CORPUS_CHARS  # 'é' is two bytes...
    assert result["chars"] == len(trained.text) == CORPUS_CHARS  # ...but one character
    # 20 steps have learnt something: no worse than a uniform guess over the vocabulary
    assert nats < math.log(len(vocabulary(trained.text))) + 0.05
    # the text form reports the same numbers
    assert f"{nats:.4f} nats" in out and f"{bits:.4f} bits" in out and f"{CORPUS_CHARS:,}" in out


def test_info_text_and_json(trained):
    ck = ckpt_io.load(trained.run / "best.npz")
    V = len(vocabulary(trained.text))
    code, jout, err = run_cli("info", "--json", trained.run)
    assert code == 0 and err == "", err
    result = json.loads(jout)
    assert result["parameters"] == ck.params.size == lstm_parameter_count(V, 16)
    assert result["step"] == 20
    assert result["vocabulary"] == "".join(sorted(vocabulary(trained.text)))
    assert result["config"]["hidden"] == 16 and result["config"]["layers"] == 1
    assert result["config"]["cell"] == "lstm"
    assert [h["step"] for h in result["history"]] == [10, 20]

    code, out, err = run_cli("info", trained.run)
    assert code == 0 and err == "", err
    assert f"{lstm_parameter_count(V, 16):,} parameters" in out
    assert "20 steps" in out
    assert repr("".join(sorted(vocabulary(trained.text)))) in out


# ---------------------------------------------------------------------------------------------
# bad input: one line on stderr, no traceback, the right exit status


@pytest.fixture
def bad(trained, tmp_path):
    """Paths for the bad-input cases; the run is a copy, so a failing check cannot spoil it."""
    (tmp_path / "adir").mkdir()
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "x.npz").write_bytes(b"this is not a checkpoint \x00\x01\x02" * 10)
    run = tmp_path / "run-copy"
    shutil.copytree(trained.run, run)
    return dict(corpus=str(trained.corpus), run=str(run), tmp=str(tmp_path))


BAD_INPUT = [
    # (id, argv template, exit status, text the error line must contain)
    ("missing-corpus", ["train", "{tmp}/missing.txt", "--out", "{tmp}/o"], 1, "missing.txt"),
    ("corpus-is-a-directory", ["train", "{tmp}/adir", "--out", "{tmp}/o"], 1, "adir"),
    ("empty-corpus", ["train", "{tmp}/empty.txt", "--out", "{tmp}/o"], 1, "empty"),
    ("hidden-0", ["train", "{corpus}", "--hidden", "0", "--out", "{tmp}/o"], 2, "--hidden"),
    ("dropout-1", ["train", "{corpus}", "--dropout", "1.0", "--out", "{tmp}/o"], 2, "--dropout"),
    ("weight-drop-1", ["train", "{corpus}", "--weight-drop", "1.0", "--out", "{tmp}/o"], 2,
     "--weight-drop"),
    ("cell-foo", ["train", "{corpus}", "--cell", "foo", "--out", "{tmp}/o"], 2, "--cell"),
    ("weight-decay-negative", ["train", "{corpus}", "--weight-decay", "-0.1", "--out", "{tmp}/o"],
     2, "--weight-decay"),
    # lr x weight decay of 1 would zero every weight in one step
    ("weight-decay-past-inverse-lr", ["train", "{corpus}", "--lr", "0.5", "--weight-decay", "2",
                                "--out", "{tmp}/o"], 2, "--weight-decay"),
    ("train-missing-argument", ["train"], 2, "CORPUS"),
    ("unknown-option", ["sample", "{run}", "--bogus"], 2, "--bogus"),
    ("length-not-a-number", ["sample", "{run}", "--length", "abc"], 2, "--length"),
    ("length-0", ["sample", "{run}", "--length", "0"], 2, "--length"),
    ("temperature-negative", ["sample", "{run}", "--temperature", "-1"], 2, "--temperature"),
    ("temperature-nan", ["sample", "{run}", "--temperature", "nan"], 2, "--temperature"),
    ("top-p-0", ["sample", "{run}", "--top-p", "0"], 2, "--top-p"),
    ("top-p-1.5", ["sample", "{run}", "--top-p", "1.5"], 2, "--top-p"),
    ("top-k-negative", ["sample", "{run}", "--top-k", "-1"], 2, "--top-k"),
    ("stop-bad-escape", ["sample", "{run}", "--stop", "\\"], 2, "--stop"),
    ("separator-bad-escape",
     ["sample", "{run}", "--num-samples", "2", "--length", "3", "--separator", "\\"], 2,
     "--separator"),
    ("missing-checkpoint", ["sample", "{tmp}/missing.npz"], 1, "missing.npz"),
    ("corrupt-checkpoint-sample", ["sample", "{tmp}/x.npz"], 1, "x.npz"),
    ("corrupt-checkpoint-eval", ["eval", "{tmp}/x.npz", "{corpus}"], 1, "x.npz"),
    ("corrupt-checkpoint-info", ["info", "{tmp}/x.npz"], 1, "x.npz"),
    ("eval-missing-file", ["eval", "{run}", "{tmp}/missing.txt"], 1, "missing.txt"),
    ("sample-device-cuda", ["sample", "{run}", "--device", "cuda"], 1, "cuda"),
    ("bench-device-cuda", ["bench", "--device", "cuda"], 1, "cuda"),
    ("bench-device-unknown", ["bench", "--device", "tpu"], 2, "--device"),
    ("train-device-cuda", ["train", "{corpus}", "--device", "cuda", "--out", "{tmp}/o"], 1,
     "cuda"),
    ("out-holds-a-run", ["train", "{corpus}", "--out", "{run}", "--max-steps", "1"], 1,
     "--resume"),
    ("resume-changes-hidden",
     ["train", "{corpus}", "--out", "{run}", "--resume", "--hidden", "32"], 2, "--hidden"),
    ("resume-lr-negative", ["train", "{corpus}", "--out", "{run}", "--resume", "--lr", "-1"], 2,
     "--lr"),
    # the run trained with the default decay 0.3: 0.3 x 4 >= 1
    ("resume-lr-against-the-runs-decay",
     ["train", "{corpus}", "--out", "{run}", "--resume", "--lr", "4"], 2, "--weight-decay"),
    ("no-model-no-recorded-run", ["sample"], 1, "train"),
    ("unknown-prime", ["sample", "{run}", "--prime", "Q"], 1, "'Q'"),
]


@pytest.mark.parametrize("argv,expected,mention", [c[1:] for c in BAD_INPUT],
                         ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_one_line_and_the_right_status(bad, monkeypatch, capsys, argv, expected,
                                                    mention):
    if "cuda" in argv:
        from charrnn.device import cuda_problem
        if cuda_problem() is None:
            pytest.skip("a GPU is usable here: --device cuda is not an error")
    args = [a.format(**bad) for a in argv]
    before = {p.name: p.read_bytes() for p in Path(bad["run"]).iterdir() if p.is_file()}
    code, out, err = call_main(monkeypatch, capsys, *args)
    assert_one_line_error(code, out, err, expected, mentions=[mention])
    after = {p.name: p.read_bytes() for p in Path(bad["run"]).iterdir() if p.is_file()}
    assert after == before, "a failed command changed the run directory"


@pytest.mark.parametrize("argv,expected", [
    (["train", "{tmp}/missing.txt", "--out", "{tmp}/o"], 1),
    (["sample", "{tmp}/x.npz"], 1),
    (["sample", "{run}", "--bogus"], 2),
    (["sample"], 1),
    (["sample", "{run}", "--num-samples", "2", "--length", "3", "--separator", "\\"], 2),
], ids=["missing-corpus", "corrupt-checkpoint", "unknown-option", "no-recorded-run",
        "separator-bad-escape"])
def test_bad_input_in_a_real_process(bad, tmp_path, argv, expected):
    code, out, err = run_cli(*[a.format(**bad) for a in argv], cwd=tmp_path)
    assert_one_line_error(code, out, err, expected)


def test_corrupt_checkpoint_error_does_not_advise_unpickling(bad, monkeypatch, capsys):
    """numpy's 'load it unsafely with allow_pickle=' is advice a CLI user cannot (and should
    not) follow: the line should just say the file is not a readable checkpoint."""
    code, out, err = call_main(monkeypatch, capsys, "sample", f"{bad['tmp']}/x.npz")
    line = assert_one_line_error(code, out, err, 1)
    assert "pickle" not in line, line


def test_no_arguments_shows_help_without_an_empty_error(monkeypatch, capsys):
    code, out, err = call_main(monkeypatch, capsys)
    assert "Usage" in out and "sample" in out
    assert code in (0, 2)
    for line in err.splitlines():
        assert line[len(ERROR):].strip() if line.startswith(ERROR) else True, \
            f"an error line with no message: {err!r}"


def test_progress_lines_are_not_wrapped(trained, tmp_path, monkeypatch, capsys):
    """stderr is not a terminal: a long path must stay on its line, not be cut at 80 columns."""
    deep = tmp_path / ("a-rather-long-directory-name-" * 3) / "run"
    code, out, err = call_main(monkeypatch, capsys, "train", trained.corpus, "--max-steps", 1,
                               *TRAIN_ARGS, "--out", deep)
    assert code == 0 and out == "", err
    assert any(line.startswith("training ") and line.endswith(f"run directory {deep}")
               for line in err.splitlines()), err


@pytest.mark.parametrize("argv,problem", [
    (["sample", "RUN", "--top-p", "1.5"], OptionError),
    (["sample", "RUN", "--prime", "a", "--prime-file", "f"], UsageProblem)])
def test_standalone_app_raises_usage_problem_for_bad_values(trained, argv, problem):
    """In-process through CliRunner (standalone mode) the check itself is visible: a value out
    of range is the options' own OptionError, a bad combination a UsageProblem; main() turns
    both into exit 2."""
    result = invoke(*[trained.run if a == "RUN" else a for a in argv])
    assert isinstance(result.exception, problem), result.exception
    assert result.stdout == ""


# ---------------------------------------------------------------------------------------------
# help and start-up cost


def test_help_in_process_on_stdout(trained):
    result = invoke("--help")
    assert result.exit_code == 0
    assert result.stderr == ""
    for command in ("train", "sample", "eval", "info"):
        assert command in result.stdout


def test_python_dash_m_help():
    p = subprocess.run([sys.executable, "-m", "charrnn", "--help"], capture_output=True,
                       env=cli_env(), timeout=SUBPROCESS_TIMEOUT, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    assert b"Usage" in p.stdout and b"sample" in p.stdout
    assert p.stderr == b""


MODULES_CHECK = """
import sys
sys.argv = ['charrnn'] + sys.argv[1:]
import charrnn.cli
try:
    charrnn.cli.main()
except SystemExit as e:
    code = e.code
print('\\nNUMBA=%s SCIPY=%s SCIPY-LINALG=%s EXIT=%s' % ('numba' in sys.modules,
      'scipy' in sys.modules, 'scipy.linalg' in sys.modules, code))
"""


def modules_loaded_by(args, **kwargs) -> str:
    """The last line of MODULES_CHECK run on `charrnn ARGS`: which of the slow imports ran."""
    p = subprocess.run([sys.executable, "-c", MODULES_CHECK, *args], capture_output=True,
                       text=True, timeout=SUBPROCESS_TIMEOUT, stdin=subprocess.DEVNULL, **kwargs)
    return p.stdout.strip().splitlines()[-1] if p.stdout.strip() else p.stderr


@pytest.mark.parametrize("argv", [["--help"], ["sample", "--help"], ["train", "--help"]],
                         ids=["help", "sample-help", "train-help"])
def test_help_does_not_import_numba(argv):
    loaded = modules_loaded_by(argv, env=cli_env())
    assert loaded == "NUMBA=False SCIPY=False SCIPY-LINALG=False EXIT=0"


@pytest.mark.parametrize("extra", [[], ["--prime", "ab", "--num-samples", "8"]],
                         ids=["one-stream", "primed-batch-of-8"])
def test_sampling_does_not_import_scipy_linalg(trained, extra):
    """Importing scipy.linalg (numba wants its BLAS module) is 0.15 s of start-up: the BLAS
    module is loaded alone (charrnn/kernels/scipy_blas.py). The kernels are cached by the
    fixture's runs; a batch of 8 calls BLAS through it."""
    args = ["sample", "RUN", "--length", "30", "--seed", "1", *extra]
    loaded = modules_loaded_by(args, env=cli_env(trained.state), cwd=trained.work)
    assert loaded == "NUMBA=True SCIPY=True SCIPY-LINALG=False EXIT=0"


def test_import_charrnn_does_not_import_numba():
    p = subprocess.run([sys.executable, "-c", "import sys, charrnn; print('numba' in sys.modules)"],
                       capture_output=True, text=True, env=cli_env(), timeout=SUBPROCESS_TIMEOUT)
    assert p.stdout.strip() == "False", p.stderr


# ---------------------------------------------------------------------------------------------
# resume


def test_resume_through_the_cli(trained, tmp_path):
    out_dir = tmp_path / "R"
    code, out, err = run_cli("train", trained.corpus, "--max-steps", 10, *TRAIN_ARGS,
                             "--out", out_dir, cwd=tmp_path)
    assert code == 0 and out == "", err
    assert ckpt_io.load(out_dir / "latest.npz").train["step"] == 10
    code, out, err = run_cli("train", trained.corpus, "--out", out_dir, "--resume",
                             "--max-steps", 20, cwd=tmp_path)
    assert code == 0 and out == "", err
    latest = ckpt_io.load(out_dir / "latest.npz")
    assert latest.train["step"] == 20
    assert latest.config["hidden"] == 16 and latest.config["layers"] == 1
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train_loss" in r] == [10, 20]
    # 10 + 10 steps are the 20 straight steps of the module's run, to the bit
    straight = ckpt_io.load(trained.run / "latest.npz")
    assert np.array_equal(latest.params, straight.params)


def test_resume_with_the_budget_used_up_says_so(trained, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained.run, run)
    code, out, err = call_main(monkeypatch, capsys, "train", trained.corpus, "--out", run,
                               "--resume")
    line = assert_one_line_error(code, out, err, 2, mentions=["--max-steps"])
    assert "already" in line


def test_info_draws_the_learning_curve(trained):
    ck = ckpt_io.load(trained.run / "best.npz")
    history = ck.train["history"]
    code, out, err = run_cli("info", trained.run)
    assert code == 0 and err == "", err
    lines = out.splitlines()
    val_line = next(line for line in lines if line.strip().startswith("val "))
    train_line = next(line for line in lines if line.strip().startswith("train "))
    spark = val_line.split()[1]
    assert len(spark) == len(history) and set(spark) <= set("▁▂▃▄▅▆▇█")
    # on the shared scale the lowest point of either curve is the bottom block
    vals = [h["val_loss"] for h in history]
    trains = [h["train_loss"] for h in history]
    lowest = min(vals + trains)
    assert ("▁" in spark) == (min(vals) == lowest)
    assert f"{vals[0]:.3f} -> {vals[-1]:.3f}" in val_line
    assert f"{trains[0]:.3f} -> {trains[-1]:.3f}" in train_line
    best = min(history, key=lambda h: h["val_loss"])
    assert f"at step {best['step']}" in out


def test_sparkline_scales_and_thins():
    from charrnn.report import sparkline
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline([5, 5, 5]) == "▁▁▁"
    thinned = sparkline(list(range(100)), width=10)
    assert len(thinned) == 10 and thinned[0] == "▁" and thinned[-1] == "█"
    assert sparkline([1.0, 2.0], low=0.0, high=3.5) == "▃▅"


COMMANDS = [["train"], ["sample"], ["eval"], ["info"], ["bench"], ["corpus", "get"],
            ["corpus", "list"]]


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_every_option_shows_its_default(command, monkeypatch, capsys):
    """Every option that takes a value says its default in --help, as rendered (Rich markup
    once swallowed hand-written '[default: ...]' texts), and the defaults typer shows come from
    the options dataclasses."""
    import typer

    monkeypatch.setenv("COLUMNS", "400")  # one line per option
    code, out, _ = call_main(monkeypatch, capsys, *command, "--help")
    assert code == 0
    group = typer.main.get_command(app)
    cmd = group
    for name in command:
        cmd = cmd.commands[name]
    lines = out.splitlines()
    for param in cmd.params:
        if param.param_type_name != "option" or param.is_flag or param.name == "version":
            continue
        line = next((ln for ln in lines if re.search(rf"│ {re.escape(param.opts[0])}\b", ln)),
                    None)
        assert line is not None, (param.opts, out)
        assert "[default: " in line, f"{param.opts[0]} shows no default: {line.strip()}"


def test_typer_defaults_are_the_dataclasses():
    from charrnn.options import BenchConfig, SampleOptions
    sample, bench = (typer_command(name) for name in ("sample", "bench"))
    for param in sample.params:
        if param.name in ("length", "temperature", "top_p", "num_samples"):
            assert param.default == getattr(SampleOptions, param.name), param.name
    for param in bench.params:
        if hasattr(BenchConfig, param.name):  # (a list option's default: the tuple's items)
            default = tuple(param.default) if param.multiple else param.default
            assert default == getattr(BenchConfig, param.name), param.name


def typer_command(name: str):
    import typer
    return typer.main.get_command(app).commands[name]


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_every_command_ends_its_help_with_examples(command, monkeypatch, capsys):
    code, out, _ = call_main(monkeypatch, capsys, *command, "--help")
    after = out.split("Examples:", 1)
    assert code == 0 and len(after) == 2, out
    assert any(line.strip().startswith(f"charrnn {command[0]}") for line in after[1].splitlines())
