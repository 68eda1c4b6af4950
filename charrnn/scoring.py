"""`charrnn eval`: a model's loss on a text file, in nats and bits per character."""

from collections import Counter
from pathlib import Path
from typing import Callable

from .model import Model
from .report import LN2
from .tokenizer import CorpusError, UnknownCharacters, Vocab, read_corpus
from .train import evaluate

EVAL_BATCH, EVAL_SEQ_LEN = 32, 100  # streams and window of the scoring pass


def score_file(model: Model, vocab: Vocab, file: Path, *, skip_unknown: bool = False,
               encoding: str = "utf-8", errors: str = "strict",
               warn: Callable[[str], None] = lambda line: None) -> dict:
    """The result `eval --json` prints. Characters skipped as unknown (skip_unknown) are said
    through warn(). Raises CorpusError for a file too short to score, UnknownCharacters
    (without skip_unknown) for characters the model does not know."""
    skipped = Counter()
    _, ids = read_corpus(file, vocab=vocab, skip_unknown=skip_unknown, encoding=encoding,
                         errors=errors, skipped=skipped)
    if skipped:
        n = skipped.total()
        warn(f"warning: skipped {n:,} of {n + len(ids):,} characters "
             f"({n / (n + len(ids)):.1%}): {UnknownCharacters(sorted(skipped))}")
    if len(ids) < 2:
        raise CorpusError(f"{file} is too short to score: it needs at least 2 characters")
    nats = evaluate(model, ids, batch_size=EVAL_BATCH, seq_len=EVAL_SEQ_LEN)
    return {"file": str(file), "chars": int(len(ids)), "skipped_chars": skipped.total(),
            "loss_nats": nats, "loss_bits": nats / LN2}
