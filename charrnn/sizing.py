"""What a run's budget chooses where the options leave it open: the model's width (--hidden)
and, with it, its depth (--layers); its regularisation (--dropout, --weight-drop), and where a
run without it stops; and the batch and window a small text can fill. Pure functions
of the budget: the training speed they need is given to them (engine.training_speed), so a run
over several processes can choose once and share the result.

The rules (the measurements behind each threshold: BENCHMARKS.md, "Quality: more compute buys a
better model", and before it "Choosing the defaults" and "60 minutes"):

- width: the widest candidate for which the characters the budget allows at that width cover
  chars_needed(cell, ...): CHARS_PER_PARAM characters per parameter; for gru-ln,
  NORMALISED_CHARS_PER_PARAM per parameter or WIDE_EPOCHS passes over a small text, whichever
  is fewer, but never under NORMALISED_MIN_CHARS_PER_PARAM per parameter. The budget is the
  smallest of --epochs x the training text, --max-steps x B x T and --minutes x the training
  speed at that width (time does not limit the choice where the speed is not timed).
  2 x 1280 learnt no better than 2 x 1024 in the same steps, so wider ones are not candidates.
- depth: DEFAULT_LAYERS, except that without --layers gru-ln's widest candidate is DEEP_SHAPE
  in place of 2 x 1024: about as many parameters, and better in the same steps.
- regularisation: LONG_RUN_REGULARISATION, as dropout and as weight drop, only when the budget
  at the chosen width covers REGULARISE_FROM_EPOCHS passes over the text and
  REGULARISE_FROM_CHARS_PER_PARAM characters per parameter: it slows early learning and pays
  only once the model has had time to memorise the text.
- stop: a run without either, whose length the user did not give (no --epochs, no --max-steps:
  the default 10 epochs, or --minutes alone), stops at useful_steps (the larger of USEFUL_EPOCHS
  epochs and useful_chars_per_param(cell) characters per parameter), its schedule decaying to
  that point: past it, a model without dropout only overfits, weight decay or not.
- members: where that stop ends a timed --minutes budget early, the rest of the time trains
  more models of the same shape with other seeds to the same stop, whose predictions are
  averaged (members.py): up to MAX_CHOSEN_MEMBERS, each started while the minutes left cover
  the last one's time (the clock decides: the speed probe, a short window, judged the hour's
  3 x 768 slower than it trains, BENCHMARKS.md "Eleventh session"). Otherwise one (a run
  without --minutes keeps one model, which samples fastest).
"""

import dataclasses
import math
from typing import Callable, NamedTuple

from .cells import CELLS
from .model import ModelConfig, ParamLayout
from .options import MAX_SEED, TrainOptions, flag


class Shape(NamedTuple):
    layers: int
    hidden: int


CANDIDATE_HIDDEN = (128, 256, 384, 512, 640, 768, 1024)
DEFAULT_LAYERS = 2
# gru-ln, --layers not given: 3 x 768 (9.1M parameters) beat 2 x 1024 (9.7M) in the same steps
# on tinyshakespeare, and trains faster (BENCHMARKS.md, "Fifth session")
DEEP_SHAPE = Shape(3, 768)
CHARS_PER_PARAM = 1.25  # the cells without normalisation (measured on the GRU)
# gru-ln where the text is large enough for the budget's steps to matter more than the passes:
# in ten minutes on python-stdlib (1.8M characters), 2 x 512 at 2.5 characters per parameter
# beat 2 x 640 at 1.1 and 2 x 384 at 5.5 (BENCHMARKS.md, "Sixth session")
NORMALISED_CHARS_PER_PARAM = 1.5
# ... while on a small text the passes over it count more than the characters per parameter: at
# about 4.5 epochs 2 x 1024 (0.47 per parameter) beat 2 x 640 (1.1) (BENCHMARKS.md, "Fourth
# session"). Ten minutes' budget covers about 4.1 passes over tinyshakespeare at 2 x 640 and 3
# at 2 x 768 on the host measured: 3.5 keeps 2 x 640 there, where 4 sat within 2% of it and
# the noise of the speed probe ("Sixth session").
WIDE_EPOCHS = 3.5
NORMALISED_MIN_CHARS_PER_PARAM = 0.45
# Start-up, validation, checkpoints and previews take part of a --minutes budget (BENCHMARKS.md,
# "Figures behind the code"), more where validation is slower or more frequent; 10% is allowed.
TRAINING_SHARE_OF_MINUTES = 0.9
REGULARISE_FROM_EPOCHS = 8
REGULARISE_FROM_CHARS_PER_PARAM = 4
LONG_RUN_REGULARISATION = 0.2  # --dropout and --weight-drop alike; 0.1 overfits, 0.25 is slow
# 3 x 768 on tinyshakespeare turns up after its fifth epoch, with the default weight decay as
# without it (BENCHMARKS.md, "Seventh session" and "Eighth session")
USEFUL_EPOCHS = 4.5
USEFUL_CHARS_PER_PARAM = 1.8
# gru-ln: 2 x 1024 overfit past 4.5 epochs at 0.47 per parameter, so the floor of its width rule
NORMALISED_USEFUL_CHARS_PER_PARAM = NORMALISED_MIN_CHARS_PER_PARAM
# the most members a budget chooses: on tinyshakespeare the hour's 3 x 768 gained 0.0165 from a
# second member and 0.009 more from a third (BENCHMARKS.md, "Tenth session"), while each costs
# its model's arithmetic at every sampled character
MAX_CHOSEN_MEMBERS = 3


def parameter_count(cell: str, layers: int, hidden: int, vocab_size: int) -> int:
    return ParamLayout(ModelConfig(vocab_size=vocab_size, cell=cell, layers=layers,
                                   hidden=hidden)).size


def default_layers(cell: str) -> int:
    return 1 if CELLS[cell].single_layer else DEFAULT_LAYERS


def candidate_shapes(cell: str, layers: int | None) -> list[Shape]:
    """The shapes a chosen width picks from, fewest parameters first: CANDIDATE_HIDDEN at the
    given depth, or at the default one with gru-ln's widest replaced by DEEP_SHAPE."""
    shapes = [Shape(layers or default_layers(cell), hidden) for hidden in CANDIDATE_HIDDEN]
    if layers is None and cell == "gru-ln":
        shapes[-1] = DEEP_SHAPE
    return shapes


def budget_chars(shape: Shape, *, n_train: int, batch_size: int, seq_len: int,
                 epochs: int | None, max_steps: int | None, minutes: float | None,
                 chars_per_second: Callable[[Shape], float] | None) -> float:
    """How many training characters the run will see at this shape, at most."""
    limits = []
    if epochs is not None:
        limits.append(epochs * n_train)
    if max_steps is not None:
        limits.append(max_steps * batch_size * seq_len)
    if minutes is not None and chars_per_second is not None:
        limits.append(minutes * 60 * TRAINING_SHARE_OF_MINUTES * chars_per_second(shape))
    return min(limits) if limits else float("inf")


def chars_needed(cell: str, params: int, n_train: int) -> float:
    """The budget (training characters) a width of this many parameters needs to be chosen."""
    if cell != "gru-ln":
        return CHARS_PER_PARAM * params
    return max(NORMALISED_MIN_CHARS_PER_PARAM * params,
               min(NORMALISED_CHARS_PER_PARAM * params, WIDE_EPOCHS * n_train))


def choose_shape(cell: str, layers: int | None, vocab_size: int, n_train: int,
                 budget: Callable[[Shape], float],
                 fits: Callable[[Shape], bool] = lambda shape: True) -> Shape:
    """The largest of candidate_shapes that fits in memory and whose budget covers chars_needed
    (the smallest when none does). Tries the largest first, so a speed measurement inside
    `budget` runs only for the shapes it needs."""
    shapes = candidate_shapes(cell, layers)
    for shape in reversed(shapes):
        params = parameter_count(cell, *shape, vocab_size)
        if fits(shape) and budget(shape) >= chars_needed(cell, params, n_train):
            return shape
    return shapes[0]


def useful_chars_per_param(cell: str) -> float:
    return NORMALISED_USEFUL_CHARS_PER_PARAM if cell == "gru-ln" else USEFUL_CHARS_PER_PARAM


def useful_steps(cell: str, steps_per_epoch: int, chars_per_step: int, params: int) -> int:
    """The most steps a run without dropout learns from: past both USEFUL_EPOCHS
    epochs and useful_chars_per_param(cell) characters per parameter, more time only overfits.
    Counted in steps because an epoch's last window can be shorter than --seq-len."""
    return max(math.ceil(USEFUL_EPOCHS * steps_per_epoch),
               math.ceil(useful_chars_per_param(cell) * params / chars_per_step))


def choose_regularisation(budget: float, n_train: int, params: int) -> float:
    """The dropout and weight drop of a long run, LONG_RUN_REGULARISATION, when the budget
    (training characters) covers REGULARISE_FROM_EPOCHS passes over the n_train training
    characters and REGULARISE_FROM_CHARS_PER_PARAM characters for each of the model's
    parameters, else none. An unknown budget (inf: a GPU run limited by --minutes alone, whose
    speed is not timed; it gets a step limit instead) gets none."""
    if budget == float("inf"):
        return 0.0
    long_run = budget >= REGULARISE_FROM_EPOCHS * n_train and \
        budget >= REGULARISE_FROM_CHARS_PER_PARAM * params
    return LONG_RUN_REGULARISATION if long_run else 0.0


def fit_sizes(n_train: int, batch_size: int, seq_len: int) -> tuple[int, int, list[str]]:
    """Batch size and window length that the training text can fill, shrunk if needed, with
    the warnings to show. Needs at least 2 characters (one input, one target)."""
    warnings = []
    B, T = batch_size, seq_len
    if n_train < B * (T + 1):
        B = max(1, n_train // (T + 1))
        if B == 1 and n_train < T + 1:
            T = n_train - 1
        warnings.append(f"the training text ({n_train} characters) is too small for "
                        f"--batch-size {batch_size} --seq-len {seq_len}; using --batch-size {B} "
                        f"--seq-len {T}")
    return B, T, warnings


def choose_sizes(opts: TrainOptions, *, n_train: int, vocab_size: int, steps_per_epoch: int,
                 chars_per_second: Callable[[Shape], float] | None, length_given: bool,
                 fits: Callable[[Shape], bool] = lambda shape: True
                 ) -> tuple[TrainOptions, list[str]]:
    """The options with the width and depth, the dropout and, for a run without dropout whose
    length was not given (length_given: --epochs or --max-steps was), the step limit and under
    --minutes the members chosen where they are None (members: 1 where not chosen), and the
    notes that say so.
    chars_per_second(shape): the training speed at that shape (asked only when --minutes limits
    the run and a choice needs it), or None when it is not known (a GPU: a CPU timing says
    nothing of its speed). fits(shape): whether training at that shape fits in memory (a shape
    that does not is not chosen)."""
    o = dataclasses.replace(opts)
    notes = []

    def budget(shape: Shape) -> float:  # under the limits as they stand at the call
        return budget_chars(shape, n_train=n_train, batch_size=o.batch_size,
                            seq_len=o.seq_len, epochs=o.epochs, max_steps=o.max_steps,
                            minutes=o.minutes, chars_per_second=chars_per_second)

    if o.hidden is None:
        o.layers, o.hidden = choose_shape(o.cell, o.layers, vocab_size, n_train, budget, fits)
        limits = [f"{o.epochs} epochs" if o.epochs is not None else "",
                  f"{o.max_steps} steps" if o.max_steps is not None else "",
                  f"{o.minutes:g} minutes" if o.minutes is not None else ""]
        notes.append(f"model: {o.layers} x {o.hidden} {o.cell}, the widest that "
                     f"{' or '.join(filter(None, limits))} on {n_train:,} training "
                     f"characters can train (--hidden and --layers to choose)")
    elif o.layers is None:
        o.layers = default_layers(o.cell)
    params = parameter_count(o.cell, o.layers, o.hidden, vocab_size)
    if o.dropout is None or o.weight_drop is None:
        chars = budget(Shape(o.layers, o.hidden))
        p = choose_regularisation(chars, n_train, params)
        chosen = [name for name in ("dropout", "weight_drop") if getattr(o, name) is None]
        for name in chosen:
            setattr(o, name, p)
        if p:
            said = " and ".join(flag(name) for name in chosen)
            notes.append(f"{said} {p:g}: the budget allows {chars / n_train:.0f} epochs, "
                         f"{chars / params:.0f} characters per parameter, enough to overfit "
                         f"without it (give {said} to choose)")
    members_chosen = False
    if not length_given and not o.dropout and not o.weight_drop:
        chars_per_step = o.batch_size * o.seq_len
        steps = useful_steps(o.cell, steps_per_epoch, chars_per_step, params)
        chars = budget(Shape(o.layers, o.hidden))
        if chars > steps * chars_per_step:
            o.max_steps = steps
            if o.members is None and o.minutes is not None and chars != float("inf"):
                # (member k trains with --seed + k - 1, which must stay a seed)
                o.members = min(MAX_CHOSEN_MEMBERS, MAX_SEED - o.seed + 1)
                members_chosen = True
            each = "" if (o.members or 1) == 1 else "each member "
            unless = "" if o.minutes is None else \
                f" unless the {o.minutes:g} minutes run out first"
            notes.append(f"{each}stops after {steps:,} steps ({steps / steps_per_epoch:.1f} "
                         f"epochs, {steps * chars_per_step / params:.1f} characters per "
                         f"parameter){unless}: past that, this model without dropout overfits "
                         f"(--max-steps, --epochs, or --dropout above 0 to train longer)")
    if members_chosen and o.members > 1:
        notes.append(f"up to {o.members} members: models trained apart with seeds {o.seed} "
                     f"to {o.seed + o.members - 1}, each started while the minutes left cover "
                     f"the last one's time, their predictions averaged (--members to choose)")
    o.members = o.members or 1
    return o, notes
