"""The options of `train`, `sample` and `bench`, each one's range checked here, once.

The command line, the library and a future server build these dataclasses, so they refuse the
same values with the same words: an OptionError names the option as the command line spells it
(`--top-p must be ...`). Plain Python only: checking options imports neither numpy nor numba.

Counts stop at MAX_COUNT: past it a value is a typo, not a plan, and the kernels take counts as
int64 (a Python int beyond that would overflow in numba or numpy, not here). Whether a size fits the
machine's memory is checked where the arrays are made (charrnn/memory.py).
"""

import codecs
import math
from dataclasses import dataclass

from .cells import CELL_NAMES, CELLS, DEFAULT_CELL

MAX_COUNT = 2**31 - 1
MAX_SEED = 2**63 - 1
# a model's size in elements stays far inside int64 (memory.py refuses what does not fit long
# before these)
MAX_HIDDEN, MAX_LAYERS = 2**20, 2**10
MAX_MEMBERS = 64  # an ensemble's: each costs its whole model's arithmetic at every character
SCHEDULES = ("cosine", "constant")
DEFAULT_EVAL_EVERY = 200  # --eval-every, unless an epoch is shorter
DEVICES = ("auto", "cpu", "cuda")
ERROR_HANDLERS = ("strict", "replace", "ignore")


class OptionError(ValueError):
    """An option value out of its range, as one line naming the option."""


def flag(name: str) -> str:
    """The command-line spelling of a field: batch_size -> --batch-size."""
    return "--" + name.replace("_", "-")


def check_int(name: str, value, low: int, high: int = MAX_COUNT) -> None:
    """value is an int (not a bool) in [low, high]; None passes (not given)."""
    if value is None:
        return
    if type(value) is not int or not low <= value <= high:
        shown = repr(value) if type(value) is not int or abs(value) < 10**30 else \
            f"a {len(str(abs(value)))}-digit number"
        raise OptionError(f"{flag(name)} must be a whole number from {low:,} to {high:,}, "
                          f"not {shown}")


def check_float(name: str, value, low: float, high: float, *, low_open=False,
                high_open=False, infinite_ok=False) -> None:
    """value is a finite number in the interval between low and high (open ends as flagged);
    None passes (not given). NaN never passes, infinity only where infinite_ok (a limit that
    is off: --grad-clip inf)."""
    if value is None:
        return
    if infinite_ok and value == math.inf:
        return
    ok = type(value) in (int, float) and math.isfinite(value) \
        and (low < value if low_open else low <= value) \
        and (value < high if high_open else value <= high)
    if not ok:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        upper = "" if math.isinf(high) else f", {high:g}"
        where = f"in {left}{low:g}{upper}{right}" if upper else \
            (f"above {low:g}" if low_open else f"at least {low:g}")
        raise OptionError(f"{flag(name)} must be a finite number {where}, not {value!r}")


def check_choice(name: str, value, choices) -> None:
    if value is not None and value not in choices:
        raise OptionError(f"{flag(name)} must be one of {', '.join(choices)}, not {value!r}")


def check_device(device: str) -> None:
    check_choice("device", device, DEVICES)


def check_text_codec(encoding: str, errors: str) -> None:
    """--encoding names a text codec Python knows; --errors is a handler the CLI offers."""
    check_choice("errors", errors, ERROR_HANDLERS)
    try:
        info = codecs.lookup(encoding)
    except (LookupError, ValueError):  # ValueError: an encoding name with a NUL in it
        raise OptionError(f"--encoding: unknown encoding {encoding!r}") from None
    if not getattr(info, "_is_text_encoding", True):  # rot13, base64, ...: not for text files
        raise OptionError(f"--encoding: {encoding!r} is not a text encoding")


def check_model_shape(cell, layers) -> None:
    check_choice("cell", cell, CELL_NAMES)
    if cell is not None and CELLS[cell].single_layer and layers is not None and layers != 1:
        raise OptionError(f"--cell {cell} has one layer (its recurrence runs through the "
                          f"output): use --layers 1")


@dataclass
class TrainOptions:
    cell: str = DEFAULT_CELL
    layers: int | None = None  # None: 2, or chosen with the width (sizing.py)
    hidden: int | None = None  # None: chosen from the corpus and the budget (sizing.py)
    dropout: float | None = None  # None: chosen from the epochs the budget allows (sizing.py)
    weight_drop: float | None = None  # DropConnect on W_h; None: chosen with the dropout
    ema: float = 0.995  # decay of the weights' running average (averaging.py); 0: none
    seq_len: int = 100
    batch_size: int = 64
    # with the cosine decay: 3e-3 beat 4e-3 at 2 x 640 for 10 minutes' steps, and 2e-3 learnt
    # slower at 2 x 256 (tinyshakespeare; BENCHMARKS.md, "Quality: more compute ...")
    lr: float = 3e-3
    grad_clip: float = 5.0
    # AdamW's, decoupled from the gradient (optim.Adam). 0.3 and 0.5 both took the hour's
    # 3 x 768 on tinyshakespeare below the same steps without it; 1.0 learnt too slowly
    # (BENCHMARKS.md, "Eighth session")
    weight_decay: float = 0.3
    epochs: int | None = 10
    max_steps: int | None = None
    minutes: float | None = None
    val_frac: float = 0.1
    eval_every: int | None = None  # None: every 200 steps, or once an epoch if that is sooner
    save_every: int = 200
    log_every: int = 10
    seed: int = 0
    preview_chars: int = 200
    lr_schedule: str = "cosine"  # or "constant"
    patience: int = 5  # evaluations without a better validation loss before stopping; 0: never
    doc_sep: str = "\n\n"  # between documents of several files (documents.py)
    val_file: str | None = None  # held out whole, instead of the last --val-frac of each file
    lines: bool = False  # each line an example, shuffled into the streams every epoch
    # models trained apart, one after another, their predictions averaged (ensemble.py,
    # members.py); None: chosen (sizing.py)
    members: int | None = None

    def __post_init__(self):
        check_model_shape(self.cell, self.layers)
        if type(self.doc_sep) is not str:
            raise OptionError("--doc-sep must be text")
        if self.val_file is not None and (type(self.val_file) is not str or not self.val_file):
            raise OptionError("--val-file must name a file")
        if type(self.lines) is not bool:
            raise OptionError("--lines is on or off")
        check_int("layers", self.layers, 1, MAX_LAYERS)
        check_int("hidden", self.hidden, 1, MAX_HIDDEN)
        for name in ("seq_len", "batch_size", "epochs", "max_steps", "eval_every",
                     "save_every", "log_every"):
            check_int(name, getattr(self, name), 1)
        check_int("seed", self.seed, 0, MAX_SEED)
        check_int("patience", self.patience, 0)
        check_int("members", self.members, 1, MAX_MEMBERS)
        if self.members is not None and self.seed + self.members - 1 > MAX_SEED:
            raise OptionError(f"--seed {self.seed} leaves no seed for {self.members} members "
                              f"(member k trains with --seed plus k - 1): give a smaller --seed")
        check_int("preview_chars", self.preview_chars, 0)
        check_float("dropout", self.dropout, 0, 1, high_open=True)
        check_float("weight_drop", self.weight_drop, 0, 1, high_open=True)
        check_float("ema", self.ema, 0, 1, high_open=True)
        check_float("val_frac", self.val_frac, 0, 1, high_open=True)
        check_float("lr", self.lr, 0, math.inf, low_open=True)
        check_float("grad_clip", self.grad_clip, 0, math.inf, low_open=True, infinite_ok=True)
        check_float("weight_decay", self.weight_decay, 0, math.inf)
        if self.weight_decay * self.lr >= 1:  # a step keeps 1 - lr x decay of every weight
            raise OptionError(f"--weight-decay x --lr must be under 1, not {self.weight_decay:g} "
                              f"x {self.lr:g}")
        check_float("minutes", self.minutes, 0, math.inf, low_open=True, infinite_ok=True)
        check_choice("lr_schedule", self.lr_schedule, SCHEDULES)


@dataclass(frozen=True)
class SampleOptions:
    length: int = 500
    temperature: float = 1.0  # 0: greedy (argmax)
    top_k: int | None = None  # None: all characters
    top_p: float = 1.0
    prime: str = ""
    seed: int | None = None
    num_samples: int = 1
    stop: str | None = None
    skip_unknown: bool = False
    lines: int | None = None  # complete lines to print, each ending at a newline (sample.py)

    def __post_init__(self):
        check_int("length", self.length, 1)
        check_float("temperature", self.temperature, 0, math.inf)
        check_int("top_k", self.top_k, 1)
        check_float("top_p", self.top_p, 0, 1, low_open=True)
        check_int("seed", self.seed, 0, MAX_SEED)
        check_int("num_samples", self.num_samples, 1)
        check_int("lines", self.lines, 1)
        if self.stop == "":
            raise OptionError("--stop must not be empty")
        if self.lines is not None and self.num_samples > 1:
            raise OptionError("give --lines or --num-samples, not both")
        if self.lines is not None and self.stop is not None:
            raise OptionError("--lines ends each line at its newline: it takes no --stop")


@dataclass
class BenchConfig:
    cell: str = "gru"  # not gru-ln, the default: the nearest cell torch.nn has, like for like
    layers: int = 2
    hidden: int = 128
    batch_size: int = 50
    seq_len: int = 50
    vocab: int = 65
    iters: int = 20
    repeats: int = 3
    sample_chars: int = 2000
    batched_samples: int = 64
    sample_batches: tuple[int, ...] = (8, 16)  # more stream counts sampling is timed at
    temperature: float = 0.8
    device: str = "cpu"

    def __post_init__(self):
        check_model_shape(self.cell, self.layers)
        check_int("layers", self.layers, 1, MAX_LAYERS)
        check_int("hidden", self.hidden, 1, MAX_HIDDEN)
        check_int("vocab", self.vocab, 1, 0x110000)
        for name in ("batch_size", "seq_len", "iters", "repeats", "batched_samples"):
            check_int(name, getattr(self, name), 1)
        self.sample_batches = tuple(self.sample_batches)
        for streams in self.sample_batches:
            check_int("sample_batches", streams, 1)
        check_int("sample_chars", self.sample_chars, 16)
        check_float("temperature", self.temperature, 0, math.inf)
        check_choice("device", self.device, ("cpu", "cuda"))


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"  # loopback unless the user says otherwise
    port: int = 8000  # 0: any free port (the server says which)
    max_batch: int = 64  # streams sampled in one batch
    max_waiting: int = 256  # requests waiting for room; more are told to retry (429)
    max_tokens: int = 4096  # the most characters one completion may ask for

    def __post_init__(self):
        if not isinstance(self.host, str) or not self.host:
            raise OptionError("--host must name an address")
        check_int("port", self.port, 0, 65535)
        check_int("max_batch", self.max_batch, 1, 4096)
        check_int("max_waiting", self.max_waiting, 0)
        check_int("max_tokens", self.max_tokens, 1)
