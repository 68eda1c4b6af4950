"""--init-from: a new run starts from a trained model's weights. The vocabulary becomes the union
of the model's and the corpus's; known characters keep their trained rows (moved to their new
ids) and new ones start improbable, so the model predicts the old characters as before;
--keep-vocab drops what the model does not know. Bad parents and conflicting options are one
line each, and nothing is created."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from charrnn import CELL_NAMES
from charrnn import checkpoint as ckpt_io
from charrnn.model import Model, ModelConfig, transplant
from charrnn.tokenizer import Vocab
from charrnn.train import Run, evaluate
from charrnn.train_state import options_from_parent, parent_of

from .main_call import call_main

ERROR = "charrnn: error: "
SMALL = ["--batch-size", "4", "--seq-len", "8", "-q"]
OLD_TEXT = "abc cab\nbad cab\n" * 40


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_a_grown_vocabulary_predicts_the_old_characters_as_before(cell):
    old_vocab, new_vocab = Vocab.from_text("\nabcd "), Vocab.from_text("\nabcd !xyz")
    layers = 1 if cell == "jordan" else 2
    old = Model(ModelConfig(vocab_size=len(old_vocab), cell=cell, layers=layers, hidden=5),
                dtype=np.float64, seed=1)
    new = Model(ModelConfig(vocab_size=len(new_vocab), cell=cell, layers=layers, hidden=5),
                dtype=np.float64, seed=2)
    transplant(old.params, old.config, old_vocab.codepoints, new, new_vocab.codepoints)
    text = "bad cab\nabc dab\n" * 3
    x, y = text[:-1], text[1:]
    old_ids = [old_vocab.encode(t)[:, None] for t in (x, y)]
    new_ids = [new_vocab.encode(t)[:, None] for t in (x, y)]
    assert new.forward(*new_ids) == pytest.approx(old.forward(*old_ids), rel=1e-9)
    # the logits of the old characters are the old ones; the new characters' far below them
    known = np.searchsorted(new_vocab.codepoints, old_vocab.codepoints)
    np.testing.assert_allclose(new.logits()[..., known], old.logits(), rtol=1e-9, atol=1e-12)
    unknown = np.setdiff1d(np.arange(len(new_vocab)), known)
    # at every position each new character is e^-20 or less as likely as the likeliest
    assert np.all(new.logits()[..., unknown].max(-1) < old.logits().max(-1) - 20)


@pytest.fixture
def parent_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("old.txt").write_text(OLD_TEXT)
    code, _, err = call_main(monkeypatch, capsys, "train", "old.txt", "--cell", "lstm",
                             "--hidden", "8", "--layers", "1", "--max-steps", "10",
                             "--out", "parent", *SMALL)
    assert code == 0, err
    return tmp_path / "parent"


def test_a_run_started_from_a_model_scores_its_old_text_as_the_model(parent_run, tmp_path):
    Path("new.txt").write_text("zebra quiz, jazz!\n" * 30)
    parent = parent_of(parent_run)
    run = Run(Path("new.txt"), tmp_path / "child", options_from_parent(parent, {}),
              parent=parent)
    run.release()
    assert run.opts.cell == "lstm" and run.opts.hidden == 8 and run.opts.layers == 1
    assert set(Vocab(parent.checkpoint.vocab).chars) < set(run.vocab.chars)
    model = Model(ModelConfig(**parent.checkpoint.config), params=parent.checkpoint.params)
    old_vocab = Vocab(parent.checkpoint.vocab)
    before = evaluate(model, old_vocab.encode(OLD_TEXT), 4, 16)
    after = evaluate(run.model, run.vocab.encode(OLD_TEXT), 4, 16)
    assert after == pytest.approx(before, rel=1e-5)
    assert run.state.parent["sha256"] == hashlib.sha256(
        (parent_run / "best.npz").read_bytes()).hexdigest()
    assert run.optimizer.steps == 0 and run.state.step == 0  # a new run, a fresh optimizer


def test_info_shows_the_lineage_and_keep_vocab_drops_the_new_characters(
        parent_run, monkeypatch, capsys):
    new_text = "abc zebra cab\n" * 30
    Path("new.txt").write_text(new_text)
    unknown = sum(ch not in OLD_TEXT for ch in new_text)
    code, _, err = call_main(monkeypatch, capsys, "train", "new.txt", "--init-from", "parent",
                             "--max-steps", "3", "--out", "child", *SMALL)
    assert code == 0, err
    code, out, _ = call_main(monkeypatch, capsys, "info", "child", "--json")
    info = json.loads(out)
    assert info["parent"]["corpus"] == "old.txt" and info["parent"]["step"] == 10
    assert "z" in info["vocabulary"] and set(OLD_TEXT) <= set(info["vocabulary"])
    code, out, _ = call_main(monkeypatch, capsys, "info", "child")
    assert "started     from parent" in out and info["parent"]["sha256"][:12] in out

    code, _, err = call_main(monkeypatch, capsys, "train", "new.txt", "--init-from", "parent",
                             "--keep-vocab", "--max-steps", "3", "--out", "kept",
                             "--batch-size", "4", "--seq-len", "8")
    assert code == 0, err
    assert f"--keep-vocab dropped {unknown:,} of {len(new_text):,} characters" in err, err
    kept = ckpt_io.load(Path("kept") / "latest.npz")
    assert Vocab(kept.vocab).chars == Vocab.from_text(OLD_TEXT).chars


def test_bad_parents_and_conflicts_are_one_line_and_create_nothing(parent_run, monkeypatch,
                                                                   capsys):
    Path("new.txt").write_text("abc\n" * 50)
    Path("foreign.npz").write_text("not a checkpoint")
    cut = Path("cut.npz")
    cut.write_bytes((parent_run / "best.npz").read_bytes()[:500])
    Path("unknown.txt").write_text("xyz" * 50)  # not even a newline the model knows
    cases = [(["--init-from", "missing"], 1, "no such checkpoint"),
             (["--init-from", "foreign.npz"], 1, "not a charrnn checkpoint"),
             (["--init-from", "cut.npz"], 1, "truncated or damaged"),
             (["--init-from", "parent", "--hidden", "16"], 2, "keeps its shape"),
             (["--init-from", "parent", "--resume"], 2, "--resume"),
             (["--keep-vocab"], 2, "--init-from")]
    for args, status, words in cases:
        code, out, err = call_main(monkeypatch, capsys, "train", "new.txt", *args,
                                   "--out", "bad", *SMALL)
        assert code == status and out == "", (args, err)
        assert err.startswith(ERROR) and words in err and err.count("\n") == 1, (args, err)
    code, _, err = call_main(monkeypatch, capsys, "train", "unknown.txt", "--init-from",
                             "parent", "--keep-vocab", "--out", "bad", *SMALL)
    assert code == 1 and "--keep-vocab leaves nothing" in err, err
    assert not Path("bad").exists() and not Path("runs").exists()
