"""The model's width and dropout when --hidden and --dropout are not given, and where a --minutes
run stops, from the run's budget.

A wider model learns more per character but sees fewer characters in the same time. In 10-minute
runs on tinyshakespeare (BENCHMARKS.md, "Choosing the defaults"), a GRU 2 x 512 that saw 1.9
characters per parameter reached 1.447 nats/char, a 2 x 384 that saw 6.3 reached 1.480 and then
overfitted. So the rule is: the widest candidate for which

    characters the budget allows at that width >= CHARS_PER_PARAM * its parameters

where the budget is the smallest of --epochs x the training text, --max-steps x B x T, and
--minutes x the measured training speed at that width (`chars_per_second`, None when the
speed is not known: then time does not limit the choice). Widths above 512 were not measured,
so they are not candidates.

Dropout slows early learning and pays only once the model has had time to memorise the text, so
it is on (LONG_RUN_DROPOUT) only when the budget at the chosen width covers both
DROPOUT_FROM_EPOCHS passes over the text and DROPOUT_FROM_CHARS_PER_PARAM characters per
parameter. Measured: a 60-minute GRU 2 x 512 on tinyshakespeare (about 26 epochs, 11 characters
per parameter) overfitted from its 4th epoch without dropout and early-stopped at 1.498
nats/char, while with 0.3 it reached 1.463 (at 20 minutes; early-stopped at 28). In 10 minutes
(4.5 epochs, 1.9 per parameter) 0.1 was no better than none (1.451 against 1.447). A bare run on
corpora/markov.txt (10 epochs, 5.7 per parameter) reached 1.4627 with 0.3 against 1.4469 without.
The thresholds sit between those points; nothing between them was measured.

A --minutes run without dropout stops where its model stops learning: at `useful_steps`, the
larger of USEFUL_EPOCHS epochs and USEFUL_CHARS_PER_PARAM characters per parameter, its schedule
decaying to that point (so such a run never reaches the dropout rule, which is left to --epochs
and --max-steps budgets). Measured on tinyshakespeare, GRU 2 x 512 (1.0M training characters,
2.5M parameters; BENCHMARKS.md, "The 60-minute point"), runs whose schedule ended where they
stopped: 706 steps (4.5 epochs, 1.8 characters per parameter) reached 1.442 nats/char with the
cosine decaying to 2% of --lr and 1.451 with it decaying to 10%; 785 steps (5 epochs) 1.452;
964 steps (6.1 epochs) 1.453; 60 minutes reached 1.463 with dropout 0.3 and 1.498 without. The
epoch limit is the best of those points; fewer steps were not tried. On that corpus the epochs
decide; the per-parameter limit (the same point, 1.8, at that width) decides on smaller texts
and was not measured apart.
"""

import math
from typing import Callable

from .model import ModelConfig, ParamLayout

CANDIDATE_HIDDEN = (128, 256, 384, 512)
CHARS_PER_PARAM = 1.5
# Start-up, validation, checkpoints and previews take part of a --minutes budget: 4% in the
# 10-minute tinyshakespeare runs at 2 x 512 (575-579 s of training), more where validation is
# slower or more frequent; 10% is allowed for them.
TRAINING_SHARE_OF_MINUTES = 0.9
DROPOUT_FROM_EPOCHS = 8
DROPOUT_FROM_CHARS_PER_PARAM = 8
LONG_RUN_DROPOUT = 0.3
USEFUL_EPOCHS = 4.5
USEFUL_CHARS_PER_PARAM = 1.8


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


def useful_steps(steps_per_epoch: int, chars_per_step: int, params: int) -> int:
    """The most steps a --minutes run without dropout learns from: past both USEFUL_EPOCHS
    epochs and USEFUL_CHARS_PER_PARAM characters per parameter, more time only overfits.
    Counted in steps because an epoch's last window can be shorter than --seq-len."""
    return max(math.ceil(USEFUL_EPOCHS * steps_per_epoch),
               math.ceil(USEFUL_CHARS_PER_PARAM * params / chars_per_step))


def choose_dropout(budget: float, n_train: int, params: int) -> float:
    """LONG_RUN_DROPOUT when the budget (training characters) covers DROPOUT_FROM_EPOCHS passes
    over the n_train training characters and DROPOUT_FROM_CHARS_PER_PARAM characters for each
    of the model's parameters, else none. An unknown budget (inf: a GPU run limited by
    --minutes alone, whose speed is not timed; it gets a step limit first) gets none."""
    if budget == float("inf"):
        return 0.0
    long_run = budget >= DROPOUT_FROM_EPOCHS * n_train and \
        budget >= DROPOUT_FROM_CHARS_PER_PARAM * params
    return LONG_RUN_DROPOUT if long_run else 0.0
