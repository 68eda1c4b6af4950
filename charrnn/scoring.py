"""`charrnn eval`: a model's loss on text files, in nats and bits per character, each file's
and, for several, their total."""

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .model import Model
from .report import LN2
from .tokenizer import CorpusError, UnknownCharacters, Vocab, read_corpus
from .train import evaluate

EVAL_BATCH, EVAL_SEQ_LEN = 32, 100  # streams and window of the scoring pass


def score_file(model: Model, vocab: Vocab, file: Path, *, skip_unknown: bool = False,
               encoding: str = "utf-8", errors: str = "strict",
               warn: Callable[[str], None] = lambda line: None) -> dict:
    """The result `eval --json` prints for one file. Characters skipped as unknown
    (skip_unknown) are said through warn(). Raises CorpusError for a file too short to score,
    UnknownCharacters (without skip_unknown) for characters the model does not know."""
    return score_files(model, vocab, [file], skip_unknown=skip_unknown, encoding=encoding,
                       errors=errors, warn=warn)[0]


def score_files(model: Model, vocab: Vocab, files: Sequence[Path], *,
                skip_unknown: bool = False, encoding: str = "utf-8", errors: str = "strict",
                warn: Callable[[str], None] = lambda line: None) -> list[dict]:
    """score_file's result for each file, in order. Every file is read and encoded before the
    first is scored, so that a bad one (missing, undecodable, too short, unknown characters)
    fails the whole call at once rather than after minutes of scoring the others; the ids of
    all of them are held together meanwhile (4 bytes a character)."""
    texts = [_read(vocab, Path(f), skip_unknown, encoding, errors, warn) for f in files]
    results = []
    for f, (ids, skipped) in zip(files, texts):
        nats = evaluate(model, ids, batch_size=EVAL_BATCH, seq_len=EVAL_SEQ_LEN)
        results.append({"file": str(f), "chars": len(ids), "skipped_chars": skipped,
                        "loss_nats": nats, "loss_bits": nats / LN2})
    return results


def total(results: Sequence[dict]) -> dict:
    """The result `eval --json` prints for several files: each file's result under "files",
    the characters scored and skipped in all, and the loss of all the text, each file's loss
    weighted by its characters."""
    chars = sum(r["chars"] for r in results)
    nats = sum(r["loss_nats"] * r["chars"] for r in results) / chars
    return {"files": list(results), "chars": chars,
            "skipped_chars": sum(r["skipped_chars"] for r in results),
            "loss_nats": nats, "loss_bits": nats / LN2}


def _read(vocab: Vocab, file: Path, skip_unknown: bool, encoding: str, errors: str,
          warn: Callable[[str], None]) -> tuple[np.ndarray, int]:
    """(ids, characters skipped as unknown) of a file to score; raises as score_file says."""
    skipped = Counter()
    _, ids = read_corpus(file, vocab=vocab, skip_unknown=skip_unknown, encoding=encoding,
                         errors=errors, skipped=skipped)
    if skipped:
        n = skipped.total()
        warn(f"warning: {file}: skipped {n:,} of {n + len(ids):,} characters "
             f"({n / (n + len(ids)):.1%}): {UnknownCharacters(sorted(skipped))}")
    if len(ids) < 2:
        raise CorpusError(f"{file} is too short to score: it needs at least 2 characters")
    return ids, skipped.total()
