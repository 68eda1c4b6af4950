"""`charrnn eval MODEL FILE...` (each file's loss and the total) and `charrnn sample --lines N`
(N complete lines): the library (scoring.total, sample.generate_lines) and the command line,
on the tiny model tests/test_cli.py trains."""

import json
import math
from collections import Counter

import pytest

from charrnn.model import Model, ModelConfig
from charrnn.options import OptionError, SampleOptions
from charrnn.sample import IncompleteLines, generate_lines, sample_rng
from charrnn.scoring import total
from charrnn.stepper import CpuStepper, Slots
from charrnn.tokenizer import CorpusError, UnknownCharacters, Vocab

from . import test_cli
from .test_cli import ERROR, assert_one_line_error, run_cli

trained = test_cli.trained  # the fixture: the tiny model tests/test_cli.py trains

# ---------------------------------------------------------------------------------------------
# the library


@pytest.fixture(scope="module")
def toy():
    """Random weights over "abc\\n", strong enough that the text depends on the state (the
    context of a prime shows): lines end often, and some are empty."""
    vocab = Vocab.from_text("abc\n")
    model = Model(ModelConfig(vocab_size=4, cell="gru", layers=2, hidden=8), seed=3)
    model.params[:] *= 4
    return model, vocab


def lines(model, vocab, **kw) -> list[str]:
    return list(generate_lines(model, vocab, SampleOptions(**kw)))


def attempt_alone(model, vocab, opts, seed, i) -> str | None:
    """The line attempt i makes when it is the only slot: None when it makes none."""
    slots = Slots(CpuStepper(model), vocab)
    slot = slots.fill(SampleOptions(length=opts.length, prime=opts.prime, stop="\n"),
                      sample_rng(seed, i))
    text, reason = "", None
    while slots.active:
        for piece in slots.step():
            assert piece.slot == slot
            text += piece.text
            reason = piece.finish_reason or reason
    line = text[text.rfind("\n") + 1:]
    return line + "\n" if reason == "stop" and line else None


def test_lines_are_complete_lines_of_the_vocabulary_and_follow_the_seed(toy):
    out = lines(*toy, lines=4, length=30, seed=3)
    assert len(out) == 4
    for line in out:
        assert line.endswith("\n") and line.count("\n") == 1 and len(line) > 1, repr(line)
        assert set(line) <= set("abc\n")
    assert out == lines(*toy, lines=4, length=30, seed=3)
    assert out != lines(*toy, lines=4, length=30, seed=4)


def test_the_lines_are_the_first_attempts_each_made_alone(toy):
    """Attempt i draws from sample_rng(seed, i) whatever the other slots do: the lines are
    those of attempts 0 .. S-1 (all of them finished, the dropped ones dropped), for some S.
    (4 rows at most: the few-rows product, bit for bit the one-row one.)"""
    opts = SampleOptions(lines=4, length=12, seed=11)
    out = list(generate_lines(*toy, opts))
    made = [attempt_alone(*toy, opts, 11, i) for i in range(44)]
    assert any(made[:s].count(None) > 0 for s in range(1, 45)), "nothing was dropped: weak test"
    assert any(Counter(out) == Counter(m for m in made[:s] if m) for s in range(1, 45)), \
        (out, made)


def test_the_prime_after_its_last_newline_starts_every_line(toy):
    for line in lines(*toy, lines=3, length=20, seed=0, prime="ba"):
        assert line.startswith("ba") and line.count("\n") == 1
    # the text before the prime's last newline is context: fed, never printed
    context = lines(*toy, lines=3, length=20, seed=0, prime="cc\nba")
    assert all(line.startswith("ba") and line.count("\n") == 1 for line in context)
    assert context != lines(*toy, lines=3, length=20, seed=0, prime="ba")


def test_giving_up_names_the_length(toy):
    # one character per attempt: a newline alone (an empty line) or no newline, never a line
    with pytest.raises(IncompleteLines, match=r"--length 1 ") as e:
        lines(*toy, lines=2, length=1, seed=0)
    assert "gave up after 20 attempts" in str(e.value) and "0 of 2 lines" in str(e.value)


def test_refusals_come_before_the_first_line(toy):
    with pytest.raises(UnknownCharacters):
        generate_lines(*toy, SampleOptions(lines=2, prime="abz"))  # not iterated
    for kw in ({"lines": 0}, {"lines": 2**31}, {"lines": 2, "num_samples": 2},
               {"lines": 2, "stop": "\n"}):
        with pytest.raises(OptionError, match="--lines"):
            SampleOptions(**kw)


def test_the_total_weights_each_file_by_its_characters():
    results = [{"file": "a", "chars": 100, "skipped_chars": 1, "loss_nats": 1.0,
                "loss_bits": 1 / math.log(2)},
               {"file": "b", "chars": 300, "skipped_chars": 2, "loss_nats": 2.0,
                "loss_bits": 2 / math.log(2)}]
    t = total(results)
    assert t["files"] == results and t["chars"] == 400 and t["skipped_chars"] == 3
    assert t["loss_nats"] == pytest.approx(1.75, rel=1e-15)
    assert t["loss_bits"] == pytest.approx(1.75 / math.log(2), rel=1e-15)


def test_every_file_is_read_before_any_is_scored(toy, tmp_path, monkeypatch):
    from charrnn import scoring
    scored = []
    monkeypatch.setattr(scoring, "evaluate", lambda model, ids, **kw: scored.append(ids) or 1.0)
    good = tmp_path / "good.txt"
    good.write_text("abcabc\n", encoding="utf-8")
    assert len(scoring.score_files(*toy, [good, good])) == 2 and len(scored) == 2
    scored.clear()
    with pytest.raises(CorpusError, match="missing.txt"):
        scoring.score_files(*toy, [good, tmp_path / "missing.txt"])
    assert scored == []


# ---------------------------------------------------------------------------------------------
# the command line


@pytest.fixture(scope="module")
def two_files(trained):
    """The corpus and a second text of the same characters, shorter and in another order."""
    second = trained.work / "second.txt"
    second.write_text(trained.text[:1500][::-1], encoding="utf-8")
    return trained.corpus, second


def test_eval_of_several_files_is_each_alone_and_their_weighted_total(trained, two_files):
    a, b = two_files
    alone = []
    for f in (a, b):
        code, out, err = run_cli("eval", trained.run, f, "--json")
        assert code == 0 and err == "", err
        alone.append(json.loads(out))
    # one file: the object it always printed
    assert set(alone[0]) == {"file", "chars", "skipped_chars", "loss_nats", "loss_bits"}
    code, out, err = run_cli("eval", trained.run, a, b, "--json")
    assert code == 0 and err == "", err
    both = json.loads(out)
    assert set(both) == {"files", "chars", "skipped_chars", "loss_nats", "loss_bits"}
    assert both["files"] == alone
    chars = [r["chars"] for r in alone]
    assert both["chars"] == sum(chars) == len(trained.text) + 1500
    assert both["skipped_chars"] == 0
    mean = sum(r["loss_nats"] * n for r, n in zip(alone, chars)) / sum(chars)
    assert both["loss_nats"] == pytest.approx(mean, rel=1e-12)
    assert both["loss_bits"] == pytest.approx(mean / math.log(2), rel=1e-12)
    assert min(r["loss_nats"] for r in alone) < mean < max(r["loss_nats"] for r in alone)

    code, text, err = run_cli("eval", trained.run, a, b)
    assert code == 0 and err == "", err
    first, second, last = text.splitlines()
    assert first == run_cli("eval", trained.run, a)[1].rstrip("\n")
    assert second.startswith(f"{b}: {alone[1]['loss_nats']:.4f} nats/char")
    assert last.startswith(f"total of 2 files: {mean:.4f} nats/char")
    assert f"over {sum(chars):,} characters" in last


def test_a_bad_file_among_several_fails_before_any_output(trained, two_files, tmp_path):
    a, b = two_files
    missing = tmp_path / "missing.txt"
    code, out, err = run_cli("eval", trained.run, a, missing)
    assert_one_line_error(code, out, err, 1, [str(missing)])
    unknown = tmp_path / "unknown.txt"
    unknown.write_text("abc xyz\n", encoding="utf-8")
    code, out, err = run_cli("eval", trained.run, a, b, unknown, "--json")
    assert_one_line_error(code, out, err, 1, [str(unknown), "'x'"])
    # --skip-unknown: counted, per file and in total, with a warning naming the file
    code, out, err = run_cli("eval", trained.run, a, unknown, "--json", "--skip-unknown")
    assert code == 0, err
    assert err.startswith(f"warning: {unknown}: skipped 3 of 8 characters")
    result = json.loads(out)
    assert [r["skipped_chars"] for r in result["files"]] == [0, 3]
    assert result["skipped_chars"] == 3


def test_sample_lines_prints_that_many_complete_lines(trained):
    code, out, err = run_cli("sample", trained.run, "--lines", "6", "--seed", "2", "--length",
                             "100", cwd=trained.work, state_dir=trained.state)
    assert code == 0 and err == "", err
    printed = out.split("\n")
    assert out.endswith("\n") and len(printed) == 6 + 1
    assert all(printed[:-1]), "an empty line"
    assert set(out) <= set(trained.text)
    again = run_cli("sample", trained.run, "--lines", "6", "--seed", "2", "--length", "100")
    assert again == (0, out, "")
    other = run_cli("sample", trained.run, "--lines", "6", "--seed", "3", "--length", "100")
    assert other[0] == 0 and other[1] != out


def test_sample_lines_with_a_prime_starts_every_line_with_it(trained):
    code, out, err = run_cli("sample", trained.run, "--lines", "4", "--seed", "0", "--prime",
                             "ab")
    assert code == 0 and err == "", err
    assert len(out.splitlines()) == 4 and all(ln.startswith("ab") for ln in out.splitlines())


@pytest.mark.parametrize("extra", [["--lines", "0"], ["--lines", "-1"], ["--lines", "x"],
                                   ["--lines", "2", "--num-samples", "2"],
                                   ["--lines", "2", "--stop", "\\n"]])
def test_sample_lines_usage_errors(trained, extra):
    code, out, err = run_cli("sample", trained.run, *extra)
    assert_one_line_error(code, out, err, 2, ["--lines"])


def test_sample_lines_that_never_end_is_one_error(trained):
    code, out, err = run_cli("sample", trained.run, "--lines", "3", "--length", "1",
                             "--seed", "0")
    assert code == 1 and out == "", (out, err)  # one character: never a non-empty line
    assert err.splitlines() == [err.rstrip("\n")] and err.startswith(ERROR + "--lines: gave up")
    assert "--length 1 " in err

