"""Sampling streams as slots: each with its own prime, temperature, top-k, top-p, random
generator, stop string and length, filled and freed between chunks of characters (a server adds
and drops requests mid-run).

Two layers:

- A `Stepper` holds one model's weights (a CUDA stepper uploads them once, at its making, and
  keeps them for every chunk and every slot) and the state of its rows, the active streams, kept
  contiguous: only active streams are computed. `CpuStepper` here, `cuda.sample.CudaStepper` on
  a GPU (imported only by `make_stepper(model, "cuda")`). The CPU's also steps an ensemble
  (ensemble.py), drawing from the mean of its members' probabilities.
- `Slots` gives stable handles to callers, turns ids into text pieces and finish reasons, and
  rearranges the stepper's rows when the set of slots changes.

A slot's text depends only on its own options, generator and prime, not on the other slots:
every kernel computes each row on its own. On the CPU the products go through kernels/cpu.py's
matmul_packed, whose result for a row is the same whatever the batch, one row alone included
(and rows in halves of their units on two threads, halves.py); but the classic GRU's and
Jordan's own products go through _matmul (BLAS above a few rows), whose rounding may differ in
the last bit with the number of rows: that changes a draw only where a uniform falls within
rounding of a boundary.
"""

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

from . import halves, memory
from .kernels import cpu
from .ensemble import Ensemble, models_of
from .model import Model, ParamLayout
from .parallel import StreamSplitter, row_ranges
from .options import SampleOptions
from .tokenizer import Vocab

FIRST_CHUNK = 16  # a new slot's first chunk is small: its first characters appear at once
CHUNK = memory.SAMPLE_CHUNK


class Stepper(Protocol):
    """One model's sampling state on one device: the weights and rows of (L, B, W) state."""

    def arrange(self, keep: Sequence[int], starts: Sequence["Start"]) -> None:
        """Make the rows: the current rows `keep`, in that order, then one new row per entry
        of starts: int32 (n,) ids, n >= 0 (a prime: the state after those ids from zero), or
        a state (h, c) that saved() gave."""

    def saved(self, rows: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Host copies of the state of `rows`, each (h, c), (L, 1, W)."""

    def generate(self, x: np.ndarray, forced: np.ndarray, temperature: np.ndarray,
                 top_k: np.ndarray, top_p: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
        """(n, B) next ids for the B rows: forced[t, b] (int32 (n, B)) where that is >= 0 (a
        prompt fed inside the batch), else drawn with row b's temperature[b] (float64),
        top_k[b] (int64, 0: all), top_p[b] (float64) and uniforms[t, b]; x (B,) int32, the
        last id of each row, is updated to the last of them."""


# the draw options of a one-row generate call that draws nothing (it only feeds a prime)
NO_OPTIONS = (np.ones(1), np.zeros(1, np.int64), np.ones(1))


def feeding(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x (1,) and forced (n, 1) int32 for a one-row generate call that feeds ids (n,), n >= 1:
    afterwards the row's state is that after all of ids (its x, the last forced id, unused)."""
    forced = np.append(ids[1:], ids[:1]).astype(np.int32)[:, None]
    return ids[:1].astype(np.int32), forced


Start = np.ndarray | tuple[np.ndarray, np.ndarray]  # a new row: a prime's ids, or a saved state


def arranged(h: np.ndarray, c: np.ndarray, keep: Sequence[int], starts: Sequence[Start],
             fed: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
             ) -> tuple[np.ndarray, np.ndarray]:
    """Stepper.arrange on host arrays: (h, c) (L, len(keep) + len(starts), W), contiguous,
    from rows keep of h, c (L, B, W), then the starts: saved states as they are, primes through
    fed(ids) -> (h, c) (L, 1, W), the state after a prime. A prime shared by several new rows
    (the samples of one command) is fed once."""
    states: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
    for ids in starts:
        if not isinstance(ids, tuple) and ids.tobytes() not in states:
            states[ids.tobytes()] = fed(ids)
    new = [start if isinstance(start, tuple) else states[start.tobytes()] for start in starts]
    rows = np.asarray(keep, np.intp)
    # made C-contiguous: numpy lays rows picked from the middle axis out in another order, and
    # the kernels are compiled for C-contiguous state
    return (np.ascontiguousarray(np.concatenate([h[:, rows], *(s[0] for s in new)], axis=1)),
            np.ascontiguousarray(np.concatenate([c[:, rows], *(s[1] for s in new)], axis=1)))


class Panels(NamedTuple):
    """The matrices a sampling step multiplies through cpu.matmul_packed, packed as it reads
    them: the input matrices above layer 0 (layer 0's rows are gathered, not multiplied), the
    recurrent ones (but the classic GRU's, which it multiplies itself; Jordan multiplies all of
    its own) and the output layer's, one after another in `flat`; a slot's panels are
    flat[offsets[slot]:offsets[slot + 1]] (empty for a slot not packed)."""

    flat: np.ndarray
    offsets: np.ndarray


def packed_weights(model: Model | Ensemble) -> Panels:
    """The model's Panels. An ensemble's are one buffer, `flat` (K, n), each member's row
    starting on a cache line."""
    cfg = model.config
    layout = ParamLayout(cfg)
    members = models_of(model)
    views = layout.views(members[0].params)
    multiplied = set()
    if cfg.kernel_id != cpu.JORDAN:
        multiplied |= {f"l{layer}.W_x" for layer in range(1, cfg.layers)} | {"out.W"}
    if cfg.kernel_id not in (cpu.JORDAN, cpu.GRU_CLASSIC):
        multiplied |= {f"l{layer}.W_h" for layer in range(cfg.layers)}
    size = members[0].params.itemsize
    columns = cpu.PANEL_BYTES // size  # a panel's
    align = cpu.PANEL_ALIGN // size  # every matrix's panels start on a cache line
    sizes = []
    for name, shape in layout.shapes.items():
        if name in multiplied and name in views:
            K, N = shape
            sizes.append(-(-N // columns) * K * columns)
        else:
            sizes.append(0)
    starts = np.cumsum([0] + [-(-n // align) * align for n in sizes[:-1]])
    offsets = np.append(starts, starts[-1] + sizes[-1]).astype(np.int64)
    row = max(-(-int(offsets[-1]) // align) * align, 1)  # a member's, padded to a cache line
    flat = cpu.new_panels(1, len(members) * row, members[0].params).ravel()
    flat = flat[:len(members) * row].reshape(len(members), row)
    for member, into in zip(members, flat):
        views = layout.views(member.params)
        for name, a, n in zip(layout.shapes, starts, sizes):
            if n:
                K, N = layout.shapes[name]
                cpu.pack_panels(views[name], into[a:a + n].reshape((-1, K, columns)))
    flat = flat[:, :offsets[-1]]
    return Panels(flat if isinstance(model, Ensemble) else flat[0], offsets)


@functools.cache
def _sampling_splitter() -> StreamSplitter:
    """One thread pool for every stepper of the process (a `sample` call makes a stepper each
    time; each its own pool would start threads and find BLAS's switches every time)."""
    return StreamSplitter(min_rows=2)


# cells whose own products go through BLAS (the classic GRU's two, Jordan's), whose rounding
# depends on the number of rows: their batches are never split, so a seed gives one text, nor
# run in halves (which multiply through the panels)
UNSPLIT_CELLS = (cpu.GRU_CLASSIC, cpu.JORDAN)
# How each model shape, thread count and power-of-two range of batch sizes is best split, learnt
# across the steppers of a process (a `sample` command makes a stepper per call, a server one)
_SPLITS: dict[tuple, "SplitChoice"] = {}


WHOLE, ROWS, HALVES = "whole", "rows", "halves"  # the ways a chunk's rows can run (CpuStepper)


class SplitChoice:
    """Which way a range of batch sizes runs fastest (WHOLE, ROWS, HALVES: CpuStepper._run),
    learnt from the chunks themselves: each way first runs a chunk, then the one whose latest
    chunk took the least time per row and step runs, and every EXPLORE-th chunk one of the
    others in turn, so that a chunk timed in a noisy moment, or a change in the machine's load,
    is corrected within a few chunks. Only chunks of at least TIMED_STEPS steps are timed: a
    server's (serving.SERVER_CHUNK) are, a new batch's first (FIRST_CHUNK) is not, being mostly
    the call's own cost (waking the threads, copying their rows), which a chunk of CHUNK steps
    hardly feels."""

    EXPLORE = 8
    TIMED_STEPS = 32

    def __init__(self, ways: Sequence[str]):
        self.seconds: dict[str, float | None] = dict.fromkeys(ways)  # per row and step
        self.chunks = 0

    def pick(self) -> str:
        untried = [way for way, s in self.seconds.items() if s is None]
        if untried:
            return untried[0]
        self.chunks += 1
        fastest = min(self.seconds, key=self.seconds.get)
        others = [way for way in self.seconds if way != fastest]  # in their own order
        if self.chunks % self.EXPLORE or not others:
            return fastest
        return others[self.chunks // self.EXPLORE % len(others)]

    def timed(self, way: str, seconds: float, rows: int, steps: int) -> None:
        if steps >= self.TIMED_STEPS:
            self.seconds[way] = seconds / (rows * steps)


class CpuStepper:
    """A Stepper on the CPU: the @njit kernels of kernels/cpu.py over the model's weights
    (packed once, for the register tile's products; a model trained further needs a new
    stepper, as on the GPU). An ensemble's K members step together in each kernel call, their
    weights stacked (K, P) and their states (K * L, B, W), as Ensemble.zero_state makes them.

    A batch of rows can run three ways: as one kernel call (WHOLE); split into shards of rows,
    one per thread (ROWS, parallel.StreamSplitter), which never wait for each other, each
    reading all of the weights; or in halves of every layer's units on two threads (HALVES,
    halves.py), each reading half of the weights for all the rows, meeting after each layer.
    Which pays depends on the machine, its load, the model and the rows, so it is measured on
    the chunks themselves, for each power-of-two range of batch sizes (SplitChoice). A row's
    result is the same every way (cpu.matmul_packed), so the measurement decides the speed,
    never the text."""

    def __init__(self, model: Model | Ensemble, splitter: StreamSplitter | None = None):
        self.model = model
        self.members = models_of(model)
        self.params = model.params[None] if len(self.members) == 1 else \
            np.stack([m.params for m in self.members])  # (K, P)
        self.splitter = splitter or _sampling_splitter()
        self.h, self.c = model.zero_state(0)  # (K * L, B, W)
        self._panels: Panels | None = None  # the packed weights, made at the first call
        self._one = self._scratch(1)  # for one row on one thread
        # where the rows' units split between two threads (None: they never do)
        self._halves = halves.halves_of(model) \
            if len(self.members) == 1 and self.splitter.threads > 1 \
            and model.config.kernel_id not in UNSPLIT_CELLS else None

    def _scratch(self, B: int) -> tuple[np.ndarray, ...]:
        """xg, gates (B, G*H), act (B, S*H), h_new, c_new (B, H), logits (K, B, V), probs (V,)
        float64, powers (V,) int64, acc (V,) float64 and mixed (V,)."""
        cfg, dtype = self.model.config, self.model.dtype
        GH, H, V = cfg.gates * cfg.hidden, cfg.hidden, cfg.vocab_size
        return (np.zeros((B, GH), dtype), np.zeros((B, GH), dtype),
                np.zeros((B, cfg.spec.stored_acts * H), dtype), np.zeros((B, H), dtype),
                np.zeros((B, H), dtype), np.zeros((len(self.members), B, V), dtype),
                np.zeros(V, np.float64), np.zeros(V, np.int64), np.zeros(V, np.float64),
                np.zeros(V, dtype))

    def _packed(self) -> Panels:
        """Every member's Panels, flat (K, n) (one row for a single model), made once."""
        if self._panels is None:
            panels = packed_weights(self.model)
            self._panels = Panels(panels.flat.reshape(len(self.members), -1), panels.offsets)
        return self._panels

    def _kernel(self, panels, x, h, c, forced, temperature, top_k, top_p, uniforms, out,
                scratch=None) -> None:
        m, K = self.model, len(self.members)
        by_member = (K, h.shape[0] // K, *h.shape[1:])  # (K, L, B, W): views, h is contiguous
        cpu.generate(m.config.kernel_id, self.params, m.layout.offsets, *panels, x,
                     h.reshape(by_member), c.reshape(by_member), forced, temperature, top_k,
                     top_p, uniforms, out, *(scratch or self._scratch(len(x))))

    def _fed(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, c = self.model.zero_state(1)
        if len(ids):
            x, forced = feeding(ids)
            self._stepped(h, c, x, forced, *NO_OPTIONS, np.zeros(forced.shape),
                          np.zeros_like(forced))
        return h, c

    def arrange(self, keep: Sequence[int], starts: Sequence[Start]) -> None:
        self.h, self.c = arranged(self.h, self.c, keep, starts, self._fed)

    def saved(self, rows: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(self.h[:, r:r + 1].copy(), self.c[:, r:r + 1].copy()) for r in rows]

    def generate(self, x, forced, temperature, top_k, top_p, uniforms) -> np.ndarray:
        out = np.zeros(uniforms.shape, np.int32)
        self._stepped(self.h, self.c, x, forced, temperature, top_k, top_p, uniforms, out)
        return out

    def _stepped(self, h, c, x, forced, temperature, top_k, top_p, uniforms, out) -> None:
        """The steps of `generate` on the rows h, c, run the way measured fastest so far; but
        one row's chunk too short to time (a prime, a first chunk) runs whole: starting the
        halves costs more than a few steps (BENCHMARKS.md, "One stream in halves")."""
        choice = self._split_choice(len(x))
        short_row = len(x) == 1 and len(out) < SplitChoice.TIMED_STEPS
        way = choice.pick() if choice and not short_row else WHOLE
        start = time.perf_counter()
        ran = self._run(way, h, c, x, forced, temperature, top_k, top_p, uniforms, out)
        if choice:
            choice.timed(ran, time.perf_counter() - start, *out.shape[::-1])

    def _split_choice(self, B: int) -> SplitChoice | None:
        """The ways B rows can run, learnt (None: only WHOLE): ROWS where the batch splits into
        shards of rows (the classic GRU's and Jordan's products are their own, and never split),
        HALVES where the model splits into halves of its units (halves.halves_of). They are
        tried in order, the first also running the untimed first chunk: a batch that splits
        into shards splits first (whole was the slowest way from 8 streams in BENCHMARKS.md's
        runs), one stream and a batch too small to shard run whole first (one stream's halves
        pay from 2 x 256 up, and not for a short chunk)."""
        ways = []
        if B > 1 and self.model.config.kernel_id not in UNSPLIT_CELLS \
                and self.splitter.parts(B) > 1:
            ways.append(ROWS)
        if self._halves is not None:
            ways.append(HALVES)
        if not ways:
            return None
        ways = [*ways, WHOLE] if ROWS in ways else [WHOLE, *ways]
        cfg = self.model.config
        key = (cfg.kernel_id, cfg.layers, cfg.hidden, cfg.vocab_size, len(self.members),
               self.model.dtype.str, self.splitter.threads, tuple(ways), B.bit_length())
        return _SPLITS.setdefault(key, SplitChoice(ways))

    def _run(self, way, h, c, x, forced, temperature, top_k, top_p, uniforms, out) -> str:
        """The kernel over all B rows of h, c (L, B, W) at once (WHOLE); in halves of their
        units (HALVES: halves.py); or in shards of rows on the splitter's threads (ROWS), each
        on its own contiguous copy of its rows. Returns the way the chunk ran: WHOLE where the
        halves found their partner busy (halves that gave up partway count as HALVES, whose
        time they took)."""
        panels = self._packed()  # (made here, not by each shard's thread)
        if way == WHOLE:
            self._kernel(panels, x, h, c, forced, temperature, top_k, top_p, uniforms, out,
                         self._one if len(x) == 1 else None)
            return WHOLE
        if way == HALVES:
            done = halves.generate(self.model, self._halves, panels.flat[0], panels.offsets,
                                   h, c, x, forced, temperature, top_k, top_p, uniforms, out)
            if done < len(out):  # the halves gave up, or the partner is busy: the rest whole
                self._run(WHOLE, h, c, x, forced[done:], temperature, top_k, top_p,
                          uniforms[done:], out[done:])
            return HALVES if done else WHOLE

        def shard(rows: tuple[int, int]) -> None:
            r = slice(*rows)
            hs, cs, xs, outs = (np.ascontiguousarray(h[:, r]), np.ascontiguousarray(c[:, r]),
                                x[r].copy(), np.empty_like(out[:, r]))
            self._kernel(panels, xs, hs, cs, np.ascontiguousarray(forced[:, r]), temperature[r],
                         top_k[r], top_p[r], np.ascontiguousarray(uniforms[:, r]), outs)
            h[:, r], c[:, r], x[r], out[:, r] = hs, cs, xs, outs

        self.splitter.map(shard, row_ranges(len(x), self.splitter.parts(len(x))))
        return ROWS


def make_stepper(model: Model | Ensemble, device: str = "cpu") -> Stepper:
    """The stepper of `device` ("cpu" or "cuda") for model; make it once and keep it. An
    ensemble steps on the CPU only (devices.for_model chooses it)."""
    if device == "cuda":
        if isinstance(model, Ensemble):
            raise ValueError("an ensemble samples on the CPU")
        from .cuda.sample import CudaStepper
        return CudaStepper(model)
    return CpuStepper(model)


def start_ids(vocab: Vocab, prime: str, skip_unknown: bool) -> tuple[np.ndarray, str]:
    """The ids the sample starts from and the text to print first: the prime as the model sees
    it (unknown characters dropped with skip_unknown), else a newline (or id 0 if the
    vocabulary has none), which is not printed. Raises UnknownCharacters."""
    if prime:
        ids = vocab.encode(prime, skip_unknown=skip_unknown)
        if len(ids):
            return ids.astype(np.int32), vocab.decode(ids)
    nl = np.searchsorted(vocab.codepoints, ord("\n"))
    has_nl = nl < len(vocab) and vocab.codepoints[nl] == ord("\n")
    return np.array([nl if has_nl else 0], np.int32), ""


class Piece(NamedTuple):
    """Text of one slot; finish_reason ("length" or "stop", as OpenAI's) on its last piece."""

    slot: int
    text: str
    finish_reason: str | None = None


def _held_back(text: str, stop: str) -> int:
    """How many characters at the end of text may be the start of stop (text holds no stop)."""
    for k in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:k]):
            return k
    return 0


@dataclass
class _Slot:
    opts: SampleOptions
    rng: np.random.Generator
    start: Start  # the prime ids fed when the slot gets its row, or its state saved by pause
    first: int  # the input of the slot's next step once it has its row
    pending: np.ndarray  # (m,) int32: prime ids still to feed inside the batched steps
    prime_text: str  # the prime as the model saw it, the slot's first piece
    left: int  # characters still to generate
    started: bool = False  # has had a chunk
    held: str = ""  # text held back because it may be the start of a stop string
    stops: tuple[str, ...] = ()  # the slot ends just before the first of these

    def take(self, vocab: Vocab, ids: np.ndarray) -> tuple[str, str | None] | None:
        """The text for this chunk's ids (n,), of which the first `left` count, and the
        finish reason when the slot ends. None: nothing to say yet."""
        ids = ids[:self.left]
        self.left -= len(ids)
        self.started = True
        text = self.held + vocab.decode(ids)
        cuts = [cut for cut in (text.find(stop) for stop in self.stops) if cut >= 0]
        if cuts:
            return text[:min(cuts)], "stop"
        if self.left == 0:
            return text, "length"
        held = max((_held_back(text, stop) for stop in self.stops), default=0)
        self.held = text[len(text) - held:]
        return (text[:len(text) - held], None) if len(text) > held else None


class Slots:
    """Sampling streams over one stepper, each with its own options; filled and freed between
    calls of step(), which advances every active slot by one chunk of characters.

    A slot's handle (an int, never reused) is stable while other slots come and go. A slot
    ends after opts.length new characters or just before its first stop string; its last piece
    says why, and its row is released at the next step. A step is `chunk` characters (a new
    slot's first, FIRST_CHUNK after its prime). B rows need about
    memory.sampling_bytes(config, B): a caller that fills slots checks it.

    Primes: by default a new slot's prime is fed when it gets its row, before the step draws,
    once for all the new slots that share it (the samples of one command). With
    primes_in_steps (a server, whose requests join a running batch) each slot's prime is fed
    inside the batched steps instead: in each step a row either takes its next prime character
    or draws, so a long prompt never holds up the other streams. Either way a slot's text is
    the same, to the rounding of the batch's product (module docstring)."""

    def __init__(self, stepper: Stepper, vocab: Vocab, chunk: int = CHUNK,
                 primes_in_steps: bool = False):
        self.stepper = stepper
        self.vocab = vocab
        self.chunk = chunk
        self.primes_in_steps = primes_in_steps
        self._slots: dict[int, _Slot] = {}  # the active slots, by handle
        self._rows: list[int] = []  # the handle of each stepper row
        self._new: list[int] = []  # filled or resumed, no row yet
        self._pausing: set[int] = set()  # paused, their rows to be saved and dropped
        self._paused: set[int] = set()  # paused, no row
        self._next = 0
        self._x = np.zeros(0, np.int32)  # (B,) each row's last id
        self._options = self._options_of([])

    def fill(self, opts: SampleOptions, rng: np.random.Generator | None = None,
             stops: tuple[str, ...] | None = None, echo: bool = True) -> int:
        """A new slot: its prime, temperature, top_k, top_p, stop, length and skip_unknown from
        opts (num_samples is not read: a slot is one stream), its uniforms from rng, else from
        np.random.default_rng(opts.seed). stops, when given, replaces opts.stop (several stop
        strings, as OpenAI's API has). Its prime is fed at the next step, and is its first
        piece unless not echo. Raises UnknownCharacters for a prime the model cannot read."""
        ids, printed = start_ids(self.vocab, opts.prime, opts.skip_unknown)
        slot = self._next
        self._next += 1
        if rng is None:
            rng = np.random.default_rng(opts.seed)
        if stops is None:
            stops = () if opts.stop is None else (opts.stop,)
        if self.primes_in_steps and opts.length:
            fed, first, pending = ids[:0], ids[0], ids[1:]
        else:
            fed, first, pending = ids[:-1], ids[-1], ids[:0]
        self._slots[slot] = _Slot(opts, rng, fed, int(first), pending, printed if echo else "",
                                  opts.length, stops=tuple(stops))
        self._new.append(slot)
        return slot

    def free(self, slot: int) -> None:
        """End a slot now (a request withdrawn): nothing more comes from it, held-back text
        included. A slot that has finished or was freed already: nothing to do."""
        if self._slots.pop(slot, None) is not None and slot in self._new:
            self._new.remove(slot)
        self._pausing.discard(slot)
        self._paused.discard(slot)

    def pause(self, slot: int) -> None:
        """Take a slot out of the batch (its reader is behind) from the next step on: its row's
        state is kept aside, and it draws nothing until resumed. Its text is unchanged: a slot's
        draws depend on its own state and generator only. No such slot, or paused: nothing."""
        if slot not in self._slots or slot in self._paused:
            return
        if slot in self._new:  # no row yet: it waits with its prime
            self._new.remove(slot)
            self._paused.add(slot)
        else:
            self._pausing.add(slot)

    def resume(self, slot: int) -> None:
        """Put a paused slot back in the batch at the next step, where it left off."""
        if slot in self._pausing:
            self._pausing.discard(slot)
        elif slot in self._paused:
            self._paused.discard(slot)
            self._new.append(slot)

    @property
    def active(self) -> list[int]:
        """The handles of the slots filled and not yet finished or freed (paused ones too)."""
        return list(self._slots)

    @property
    def running(self) -> int:
        """The active slots that are not paused: what a step advances."""
        return len(self._slots) - len(self._paused) - len(self._pausing)

    def step(self) -> list[Piece]:
        """Advance every active slot by one chunk: the primes of slots filled since the last
        step first, then each slot's new text in row order. A slot with nothing to say yet has
        no piece; a slot's last piece carries its finish reason, its text maybe empty."""
        pieces = self._arrange()
        if not self._rows:
            return pieces
        slots = [self._slots[s] for s in self._rows]
        # a batch that is all new starts with a small chunk after its primes, so its first
        # characters come out at once; one joining a running batch does not shrink the others'
        chunk = self.chunk
        if not any(s.started for s in slots):
            chunk = min(chunk, max(len(s.pending) for s in slots) + FIRST_CHUNK)
        n = min(chunk, max(len(s.pending) + s.left for s in slots))
        forced = np.full((n, len(slots)), -1, np.int32)  # (n, B): -1 where the row draws
        uniforms = np.zeros((n, len(slots)))  # (n, B)
        fed = []
        for row, s in enumerate(slots):
            k = min(n, len(s.pending))
            forced[:k, row], s.pending = s.pending[:k], s.pending[k:]
            # then n - k in a row from the slot's own generator, the order a single sample
            # always drew them in: a slot's uniforms depend neither on the chunking nor on
            # other slots
            uniforms[k:, row] = s.rng.random(n - k)
            fed.append(k)
        out = self.stepper.generate(self._x, forced, *self._options, uniforms)  # (n, B)
        for row, (handle, s) in enumerate(zip(self._rows, slots)):
            taken = s.take(self.vocab, out[fed[row]:, row])
            if taken is not None:
                pieces.append(Piece(handle, *taken))
                if taken[1] is not None:
                    del self._slots[handle]
        return pieces

    def _arrange(self) -> list[Piece]:
        """The stepper's rows for the active slots (the slots that stay, in their order, then
        the new ones, their primes fed), when the set changed; the new slots' prime pieces."""
        self._pausing &= self._slots.keys()  # (a slot may finish in the step it was paused)
        keep = [row for row, s in enumerate(self._rows)
                if s in self._slots and s not in self._pausing]
        if len(keep) == len(self._rows) and not self._new:
            return []
        leaving = [row for row, s in enumerate(self._rows) if s in self._pausing]
        for row, state in zip(leaving, self.stepper.saved(leaving)):
            s = self._slots[self._rows[row]]
            s.start, s.first = state, int(self._x[row])
        self._paused |= self._pausing
        self._pausing = set()
        new = [self._slots[s] for s in self._new]
        self.stepper.arrange(keep, [s.start for s in new])
        self._x = np.concatenate([self._x[keep], np.array([s.first for s in new], np.int32)])
        self._rows = [self._rows[r] for r in keep] + self._new
        self._options = self._options_of([self._slots[s].opts for s in self._rows])
        pieces = []
        for handle, s in zip(self._new, new):
            if s.prime_text:  # said once: a slot resumed says nothing here
                pieces.append(Piece(handle, s.prime_text))
                s.prime_text = ""
        self._new = []
        return pieces

    @staticmethod
    def _options_of(opts: list[SampleOptions]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each row's temperature (B,) float64, top_k (B,) int64 (0: all), top_p (B,) float64."""
        return (np.array([o.temperature for o in opts], np.float64),
                np.array([o.top_k or 0 for o in opts], np.int64),
                np.array([o.top_p for o in opts], np.float64))
