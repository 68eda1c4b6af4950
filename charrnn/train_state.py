"""The training state and its place in a checkpoint: the one owner of the checkpoint's training
schema (which arrays, which counters, how they are checked and put back).

A checkpoint holds the model (config, vocabulary, weights: checkpoint.py) and, for training to
go on exactly, the arrays ``adam.m``, ``adam.v``, ``state.h``, ``state.c`` and the JSON object
``train``: the options, the counters of TrainState, the random generator's state, the history
of validations and the corpus's name and length. docs/checkpoint.md lists every field.

Numba-free: `charrnn info` and `charrnn sample` read checkpoints without compiling.
"""

import hashlib
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from .checkpoint import Checkpoint, CheckpointError, load, resolve
from .averaging import WeightAverage
from .options import OptionError, TrainOptions, flag
from .schedule import evals_without_improvement

ADAM_M, ADAM_V, STATE_H, STATE_C = "adam.m", "adam.v", "state.h", "state.c"
# the trained weights, where `params` holds their running average (--ema)
TRAINED_PARAMS = "train.params"
COUNTERS = ("step", "epoch", "position", "adam_steps", "loss_count")  # non-negative integers
NUMBERS = ("elapsed_s", "loss_sum")
# options that shape the model, its noise or the data stream: a resumed run must keep them
FIXED_ON_RESUME = ("cell", "layers", "hidden", "dropout", "weight_drop", "ema", "seq_len",
                   "batch_size", "val_frac", "seed", "doc_sep", "val_file", "lines")


@dataclass
class TrainState:
    """Where a run stands, beyond the weights, optimizer moments and carried state: everything
    else that decides the next step (the data position, the generator for dropout masks, the
    running loss sum of the current logging interval, the validation history)."""

    rng: np.random.Generator
    step: int = 0
    epoch: int = 0
    position: int = 0  # the first row of the next window in the (S, B) stream matrix
    elapsed: float = 0.0  # seconds spent in training steps, over every invocation
    best_val: float = math.inf  # the best validation ever made (best.npz holds its weights)
    best_step: int | None = None
    loss_sum: float = 0.0  # the losses of the steps since the last log
    loss_count: int = 0
    history: list[dict] = field(default_factory=list)  # the --eval-every validations
    parent: dict | None = None  # the model an --init-from run started from (lineage)

    @classmethod
    def fresh(cls, seed: int) -> "TrainState":
        return cls(rng=np.random.default_rng(seed))


def to_checkpoint(state: TrainState, *, config: dict, vocab: np.ndarray, params: np.ndarray,
                  adam: dict, h: np.ndarray, c: np.ndarray, opts: TrainOptions,
                  corpus: dict, average: WeightAverage | None = None) -> Checkpoint:
    """The checkpoint of a run: adam is the optimizer's state ({"m", "v", "steps"}), h and c the
    carried state (L, B, W), corpus {"path", "chars"}. With an average of the weights, the
    checkpoint's params (what sample, eval and serve read) are the average, and the trained
    weights are kept as TRAINED_PARAMS."""
    s = state
    arrays = {ADAM_M: adam["m"], ADAM_V: adam["v"], STATE_H: h, STATE_C: c}
    if average is not None:
        arrays[TRAINED_PARAMS] = params
        params = average.values
    return Checkpoint(
        config=config, vocab=vocab, params=params, arrays=arrays,
        train={"options": asdict(opts), "step": s.step, "epoch": s.epoch,
               "position": s.position, "elapsed_s": s.elapsed,
               "best_val_loss": None if math.isinf(s.best_val) else s.best_val,
               "best_step": s.best_step, "adam_steps": adam["steps"],
               "rng": s.rng.bit_generator.state, "loss_sum": s.loss_sum,
               "loss_count": s.loss_count, "history": s.history, "corpus": corpus,
               **({"ema_updates": average.updates} if average is not None else {}),
               **({"parent": s.parent} if s.parent else {})})


@dataclass
class Restored:
    """What a checkpoint gives back to resume: the state and the arrays to put in place."""
    state: TrainState
    adam: dict  # {"m", "v", "steps"}
    h: np.ndarray
    c: np.ndarray
    params: np.ndarray  # the trained weights
    average: dict | None  # {"values", "updates"} of their running average (--ema), or None


def restore(ck: Checkpoint, *, params_size: int, state_shape: tuple, positions: int,
            averaged: bool = False) -> Restored:
    """The training state of ck, checked against the model it resumes (params_size weights,
    carried state of state_shape (L, B, W)), its data (positions rows of windows to start
    from) and whether it keeps a running average of its weights; anything missing or
    malformed is refused."""
    t = ck.train

    def bad(what):
        return CheckpointError(f"the checkpoint cannot resume training: {what}")

    shapes = {ADAM_M: (params_size,), ADAM_V: (params_size,), STATE_H: state_shape,
              STATE_C: state_shape}
    if averaged:
        shapes[TRAINED_PARAMS] = (params_size,)
        if type(t.get("ema_updates")) is not int or t["ema_updates"] < 0:
            raise bad("ema_updates is missing or not a non-negative integer")
    for name, shape in shapes.items():
        if name not in ck.arrays or ck.arrays[name].shape != shape:
            raise bad(f"{name} is missing or not of shape {shape}")
    for name in COUNTERS:
        if type(t.get(name)) is not int or t[name] < 0:
            raise bad(f"{name} is missing or not a non-negative integer")
    if not all(isinstance(t.get(k), (int, float)) for k in NUMBERS):
        raise bad("elapsed_s or loss_sum is missing or not a number")
    if t.get("best_val_loss") is not None and not isinstance(t["best_val_loss"], (int, float)):
        raise bad("best_val_loss is not a number")
    if t.get("best_step") is not None and type(t["best_step"]) is not int:
        raise bad("best_step is not an integer")
    if t["position"] >= positions:
        raise bad("its data position lies beyond this corpus (was it trained on another "
                  "text?)")
    rng = np.random.default_rng()
    try:
        rng.bit_generator.state = t["rng"]
    except (KeyError, TypeError, ValueError):
        raise bad("the random generator state is missing or malformed") from None
    state = TrainState(
        rng=rng, step=t["step"], epoch=t["epoch"], position=t["position"],
        elapsed=float(t["elapsed_s"]),
        best_val=math.inf if t.get("best_val_loss") is None else float(t["best_val_loss"]),
        best_step=t.get("best_step"), loss_sum=float(t["loss_sum"]),
        loss_count=t["loss_count"], history=list(t.get("history", [])),
        parent=t.get("parent") if isinstance(t.get("parent"), dict) else None)
    average = {"values": ck.params, "updates": t["ema_updates"]} if averaged else None
    return Restored(state, {"m": ck.arrays[ADAM_M], "v": ck.arrays[ADAM_V],
                            "steps": t["adam_steps"]},
                    ck.arrays[STATE_H], ck.arrays[STATE_C],
                    ck.arrays[TRAINED_PARAMS] if averaged else ck.params, average)


def _is_number(x, optional=False) -> bool:
    return (x is None and optional) or (type(x) in (int, float))


def readable_meta(train) -> bool:
    """Whether the parts of the training state that `info` and `sample` read are well formed:
    a dict, a history of {step, train_loss, val_loss} numbers, a best loss that is a number or
    None, integer step and epoch. (What only resuming reads is checked by restore.)"""
    if not isinstance(train, dict):
        return False
    history = train.get("history", [])
    return (isinstance(history, list)
            and all(isinstance(h, dict) and type(h.get("step")) is int
                    and _is_number(h.get("train_loss"), True)
                    and _is_number(h.get("val_loss"), True) for h in history)
            and _is_number(train.get("best_val_loss"), True)
            and all(type(train.get(k, 0)) is int for k in ("step", "epoch")))


def corpus_chars(ck: Checkpoint) -> int | None:
    """The length in characters of the corpus the checkpoint's run trained on."""
    return (ck.train.get("corpus") or {}).get("chars")


def corpus_files(ck: Checkpoint, held_out: bool = True) -> list[tuple[str, int]] | None:
    """The names and lengths of the documents the checkpoint's run read (without held_out: of
    those it trained on, not its --val-file); None: written before runs kept them."""
    files = (ck.train.get("corpus") or {}).get("files")
    if not isinstance(files, list):
        return None
    return [(Path(str(f.get("path"))).name, f.get("chars")) for f in files
            if isinstance(f, dict) and (held_out or not f.get("held_out"))]


SHAPE_OPTIONS = ("cell", "layers", "hidden")  # what a model started from another keeps


@dataclass
class Parent:
    """The model an --init-from run starts from, and its lineage as the new run records it."""
    checkpoint: Checkpoint
    lineage: dict  # {"checkpoint", "sha256", "corpus", "step"}


def parent_of(path: Path) -> Parent:
    """The checkpoint at path (a file, or a run directory's best, else latest: of an ensemble's
    run, its first member) as a parent."""
    path = resolve(Path(path), ensemble=False)
    ck = load(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    corpus = (ck.train.get("corpus") or {}).get("path")
    return Parent(ck, {"checkpoint": str(path), "sha256": digest.hexdigest(),
                       "corpus": corpus if isinstance(corpus, str) else None,
                       "step": ck.train.get("step")})


def options_from_parent(parent: Parent, given: dict) -> TrainOptions:
    """The options of a new run that starts from parent: the shape (cell, layers, hidden) is the
    parent's, and a given one that differs is refused (OptionError); the rest as given."""
    config = parent.checkpoint.config
    for name in SHAPE_OPTIONS:
        if given.get(name) is not None and given[name] != config[name]:
            raise OptionError(f"{flag(name)} {given[name]} conflicts with --init-from's model "
                              f"({config[name]}): a model started from another keeps its "
                              f"shape; leave {flag(name)} out")
    return TrainOptions(**{**given, **{name: config[name] for name in SHAPE_OPTIONS}})


class BudgetUsedUp(OptionError):
    """A run resumed with a budget it has already used up."""


def options_from_checkpoint(ck: Checkpoint, given: dict, check_budget: bool = True
                            ) -> TrainOptions:
    """The saved options of a run being resumed, with the budget and cadence options the user
    gave now. Refuses (OptionError) changes to what shapes the model or the data stream, and
    (BudgetUsedUp, unless not check_budget) a budget the run has already used up."""
    saved = ck.train.get("options")
    if not isinstance(saved, dict):
        raise CheckpointError("the checkpoint has no training options to resume with")
    known = {f.name for f in fields(TrainOptions)}
    saved = {k: v for k, v in saved.items() if k in known}
    # a run saved before these options trained without them
    saved.setdefault("weight_drop", 0.0)
    saved.setdefault("ema", 0.0)
    saved.setdefault("weight_decay", 0.0)
    saved.setdefault("members", 1)
    try:
        TrainOptions(**saved)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"the checkpoint's training options are malformed: "
                              f"{e}") from None
    for name, value in given.items():
        if value is None:
            continue
        if name in FIXED_ON_RESUME and saved.get(name) != value:
            raise OptionError(f"{flag(name)} cannot change when resuming "
                              f"(the run uses {saved.get(name)})")
        saved[name] = value
    opts = TrainOptions(**saved)  # the values given, together with the run's own (OptionError)
    step, epoch = ck.train.get("step", 0), ck.train.get("epoch", 0)
    if not check_budget:
        return opts
    if opts.max_steps is not None and step >= opts.max_steps:
        raise BudgetUsedUp(f"the run already did {step} steps (--max-steps {opts.max_steps}); "
                          f"pass a larger --max-steps to go on")
    if opts.epochs is not None and epoch >= opts.epochs:
        raise BudgetUsedUp(f"the run already did {epoch} epochs; pass a larger --epochs to go on")
    # a run that stopped early would stop again after its next validation: its history says so
    without_gain = evals_without_improvement(ck.train.get("history", []))
    if opts.patience and without_gain >= opts.patience:
        raise BudgetUsedUp(f"the run stopped early: no better validation loss in its last "
                           f"{without_gain} evaluations (--patience {opts.patience}); pass a "
                           f"larger --patience, or --patience 0, to go on")
    return opts
