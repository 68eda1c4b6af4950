"""The model's width when --hidden is not given: the widest that the run's budget can train.

A wider model learns more per character but sees fewer characters in the same time. In 10-minute
runs on tinyshakespeare (BENCHMARKS.md, "Choosing the defaults"), a GRU 2 x 512 that saw 1.9
characters per parameter reached 1.447 nats/char, a 2 x 384 that saw 6.3 reached 1.480 and then
overfitted. So the rule is: the widest candidate for which

    characters the budget allows at that width >= CHARS_PER_PARAM * its parameters

where the budget is the smallest of --epochs x the training text, --max-steps x B x T, and
--minutes x the measured training speed at that width (`chars_per_second`, None when the
speed is not known: then time does not limit the choice). Widths above 512 were not measured,
so they are not candidates.
"""

from typing import Callable

from .model import ModelConfig, ParamLayout

CANDIDATE_HIDDEN = (128, 256, 384, 512)
CHARS_PER_PARAM = 1.5
# Start-up, validation, checkpoints and previews take part of a --minutes budget: 4% in the
# 10-minute tinyshakespeare runs at 2 x 512 (575-579 s of training), more where validation is
# slower or more frequent; 10% is allowed for them.
TRAINING_SHARE_OF_MINUTES = 0.9


def parameter_count(cell: str, layers: int, hidden: int, vocab_size: int) -> int:
    return ParamLayout(ModelConfig(vocab_size=vocab_size, cell=cell, layers=layers,
                                   hidden=hidden)).size


def budget_chars(hidden: int, *, n_train: int, batch_size: int, seq_len: int,
                 epochs: int | None, max_steps: int | None, minutes: float | None,
                 chars_per_second: Callable[[int], float] | None) -> float:
    """How many training characters the run will see at this width, at most."""
    limits = []
    if epochs is not None:
        limits.append(epochs * n_train)
    if max_steps is not None:
        limits.append(max_steps * batch_size * seq_len)
    if minutes is not None and chars_per_second is not None:
        limits.append(minutes * 60 * TRAINING_SHARE_OF_MINUTES * chars_per_second(hidden))
    return min(limits) if limits else float("inf")


def choose_hidden(cell: str, layers: int, vocab_size: int,
                  budget: Callable[[int], float]) -> int:
    """The widest candidate whose budget covers CHARS_PER_PARAM characters per parameter (the
    narrowest when none does). Tries the widest first, so a speed measurement inside `budget`
    runs only for the widths it needs."""
    for hidden in sorted(CANDIDATE_HIDDEN, reverse=True):
        if budget(hidden) >= CHARS_PER_PARAM * parameter_count(cell, layers, hidden, vocab_size):
            return hidden
    return min(CANDIDATE_HIDDEN)
