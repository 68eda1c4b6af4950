"""Corpora of many files: folders read in sorted order with hidden and binary files left out,
validation taken from the end of every document (or a whole --val-file), memory-mapped
assembly equal to the in-memory one, resume refused on other files, and --lines: each epoch's
streams hold the same lines in a new order, drawn so that a resumed run trains as a straight
one."""

from pathlib import Path

import numpy as np
import pytest

from charrnn import checkpoint as ckpt_io
from charrnn import documents
from charrnn.batches import line_bounds, shuffled_lines
from charrnn.documents import expand, read_documents
from charrnn.report import QuietReporter
from charrnn.tokenizer import CorpusError
from charrnn.train import Run, TrainOptions, train
from charrnn.train_state import options_from_checkpoint

from .main_call import call_main

ERROR = "charrnn: error: "
SMALL = ["--hidden", "8", "--layers", "1", "--batch-size", "4", "--seq-len", "8", "-q"]


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def test_folders_are_read_in_sorted_order_without_hidden_or_binary_files(tmp_path):
    write(tmp_path / "d" / "b.txt", "b")
    write(tmp_path / "d" / "a" / "z.txt", "z")
    write(tmp_path / "d" / "c.md", "c")
    write(tmp_path / "d" / ".notes.txt", "hidden")
    write(tmp_path / "d" / ".git" / "config", "hidden too")
    write(tmp_path / "d" / "image.png", b"\x89PNG\x00\x00")
    alone = write(tmp_path / "alone.txt", "x")
    files, warnings = expand([alone, tmp_path / "d"])
    assert files == [alone, tmp_path / "d" / "a" / "z.txt", tmp_path / "d" / "b.txt",
                     tmp_path / "d" / "c.md"]
    assert warnings == ["left out 3 hidden or binary files found in folders"]
    # in UTF-16 every file has NUL bytes: none is taken for binary
    assert len(expand([tmp_path / "d"], encoding="UTF-16")[0]) == 4
    write(tmp_path / "empty" / ".only-hidden", "x")
    with pytest.raises(CorpusError, match="holds no text file"):
        expand([tmp_path / "empty"])


def test_validation_is_the_end_of_every_document(tmp_path):
    one = write(tmp_path / "one.txt", "a" * 90 + "A" * 10)
    two = write(tmp_path / "two.txt", "b" * 45 + "B" * 5)
    corpus = read_documents([one, two], val_frac=0.1, doc_sep="|")
    decode = corpus.vocab.decode
    assert decode(corpus.train) == "a" * 90 + "|" + "b" * 45
    assert decode(corpus.val) == "A" * 10 + "|" + "B" * 5
    assert corpus.files == [{"path": str(one), "chars": 100}, {"path": str(two), "chars": 50}]
    # one file: the last --val-frac of it, as before
    alone = read_documents([one], val_frac=0.1)
    assert alone.vocab.decode(alone.val) == "A" * 10 and len(alone.train) == 90


def test_a_val_file_is_held_out_whole(tmp_path):
    one = write(tmp_path / "one.txt", "abc" * 10)
    held = write(tmp_path / "held.txt", "cab!")
    corpus = read_documents([one], val_frac=0.5, val_file=held, doc_sep="\n\n")
    assert corpus.vocab.decode(corpus.train) == "abc" * 10  # --val-frac does not apply
    assert corpus.vocab.decode(corpus.val) == "cab!"
    assert "!" in corpus.vocab.chars and corpus.files[-1]["held_out"]


def test_large_documents_are_assembled_on_disk_as_in_memory(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    files = [write(tmp_path / f"{k}.txt", "".join(rng.choice(list("abcdé\n"), 3000 + k)))
             for k in range(3)]
    in_memory = read_documents(files, val_frac=0.2, doc_sep="\n\n")
    monkeypatch.setattr(documents, "COPY_BLOCK", 64)  # every corpus counts as large
    work = tmp_path / "run"
    on_disk = read_documents(files, val_frac=0.2, doc_sep="\n\n", workdir=work)
    assert isinstance(on_disk.train, np.memmap)
    assert np.array_equal(on_disk.train, in_memory.train)
    assert np.array_equal(on_disk.val, in_memory.val)
    assert sorted(p.name for p in work.iterdir()) == ["corpus.ids"]  # per-document files gone


def test_cli_refusals_create_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    text = write(tmp_path / "t.txt", "some text\n" * 50)
    write(tmp_path / "hidden" / ".x", "x")
    cases = [(["train", "hidden", *SMALL], 1, "holds no text file"),
             (["train", text, "--val-file", text, *SMALL], 2, "also a training file"),
             (["train", write(tmp_path / "line.txt", "one line only"), "--lines", *SMALL], 1,
              "several lines")]
    for args, status, words in cases:
        code, out, err = call_main(monkeypatch, capsys, *args)
        assert code == status and out == "", err
        assert err.startswith(ERROR) and words in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()


def test_resume_refuses_another_set_of_files(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name in "ab":
        write(tmp_path / "docs" / f"{name}.txt", f"text of {name}\n" * 40)
    code, _, err = call_main(monkeypatch, capsys, "train", "docs", "--out", "r",
                             "--max-steps", "3", *SMALL)
    assert code == 0, err
    write(tmp_path / "docs" / "c.txt", "a new file\n" * 40)
    before = (tmp_path / "r" / "latest.npz").read_bytes()
    code, _, err = call_main(monkeypatch, capsys, "train", "docs", "--out", "r", "--resume",
                             "--max-steps", "6", "-q")
    assert code == 1 and "same files" in err, err
    assert (tmp_path / "r" / "latest.npz").read_bytes() == before


def test_shuffled_lines_keep_every_line():
    ids = np.array([1, 2, 0, 3, 0, 4, 4, 4, 0, 5], np.uint16)  # 0 is the newline
    bounds = line_bounds(ids, 0)
    lines = lambda a: sorted(tuple(a[s:e]) for s, e in zip(*line_bounds(a, 0)))  # noqa: E731
    orders = set()
    for seed in range(20):
        out = shuffled_lines(ids, bounds, np.random.default_rng(seed))
        assert len(out) == len(ids) and out.dtype == ids.dtype
        # the same lines; the fragment after the last newline stays at the end
        assert sorted(out.tolist()) == sorted(ids.tolist()) and out[-1] == 5
        orders.add(tuple(out))
    assert lines(ids[:9]) == lines(shuffled_lines(ids[:9], line_bounds(ids[:9], 0),
                                                  np.random.default_rng(1)))
    assert len(orders) > 3  # different seeds, different orders


def lines_run(corpus, run_dir, steps, resume=None):
    opts = TrainOptions(hidden=8, layers=1, batch_size=4, seq_len=8, lines=True,
                        lr_schedule="constant", eval_every=5, save_every=5, max_steps=steps)
    if resume is not None:
        opts = options_from_checkpoint(resume, {"max_steps": steps})
    run = Run(corpus, run_dir, opts, resume=resume)
    train(run, QuietReporter())
    return run


def test_lines_are_reshuffled_every_epoch_and_resume_exactly(tmp_path):
    rng = np.random.default_rng(0)
    names = ["".join(rng.choice(list("abcdefg"), rng.integers(2, 7))) for _ in range(60)]
    corpus = write(tmp_path / "names.txt", "\n".join(names) + "\n")
    run = lines_run(corpus, tmp_path / "straight", 30)
    epochs = [run._streams(e) for e in range(3)]
    assert not np.array_equal(epochs[0], epochs[1])  # a new order each epoch
    train_lines = set(run.vocab.decode(run.train_ids).split("\n"))
    for streams in epochs:  # each epoch's streams: whole training lines, none cut or mixed
        text = run.vocab.decode(streams.T.reshape(-1))
        complete = text.split("\n")[:-1]  # the last may be cut by the streams' length
        assert len(complete) > 20 and set(complete) <= train_lines
    assert run.state.epoch >= 2  # the run crossed epochs, so the reshuffle was trained on
    lines_run(corpus, tmp_path / "split", 12)
    resumed = lines_run(corpus, tmp_path / "split", 30,
                        resume=ckpt_io.load(tmp_path / "split" / "latest.npz"))
    assert np.array_equal(resumed.model.params, run.model.params)


def test_a_run_with_a_val_file_resumes_and_validates_on_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "t.txt", "the cat sat\n" * 40)
    write(tmp_path / "v.txt", "a cat\n" * 10)
    code, _, err = call_main(monkeypatch, capsys, "train", "t.txt", "--val-file", "v.txt",
                             "--out", "r", "--max-steps", "3", *SMALL)
    assert code == 0, err
    code, _, err = call_main(monkeypatch, capsys, "train", "t.txt", "--val-file", "v.txt",
                             "--out", "r", "--resume", "--max-steps", "6", "-q")
    assert code == 0, err
    ck = ckpt_io.load(tmp_path / "r" / "latest.npz")
    assert ck.train["step"] == 6 and ck.train["options"]["val_file"] == "v.txt"
    assert [f["chars"] for f in ck.train["corpus"]["files"]] == [480, 60]
    write(tmp_path / "v.txt", "a cat sat\n" * 10)  # the held-out file changed
    code, _, err = call_main(monkeypatch, capsys, "train", "t.txt", "--val-file", "v.txt",
                             "--out", "r", "--resume", "--max-steps", "9", "-q")
    assert code == 1 and "same files" in err, err
