"""Continuous batching for `charrnn serve`: one engine thread owns the model and advances every
active request in one batched step, chunk after chunk.

A request joins at the next chunk boundary; in each batched step its row takes the next
character of its prompt until the prompt is fed, then draws with the others (a long prompt holds
no one up). It leaves when it is done, when a stop string appears, or when it is cancelled (its
client went away). Its pieces are handed to the request's `deliver` callback where the engine's
`post` runs them: on the web server's event loop, all of a chunk's pieces in one call (one
wake-up of the loop per chunk, not one per stream). The kernels release the GIL, so the event
loop keeps answering while a chunk is computed. A request whose client reads slower than its
text is made is paused (out of the batch, its state kept) until the client catches up: the
engine never waits for a client.

A request's text depends only on its own prompt, options and seed (each slot draws from its own
generator, stepper.py): alone with a seed it is what `charrnn sample --seed` writes after the
prime. Batching and pausing change only when its characters come out.
"""

import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import memory
from .ensemble import members_of
from .model import Model
from .options import SampleOptions
from .sample import sample_rng
from .stepper import Slots, make_stepper
from .tokenizer import Vocab

SERVER_CHUNK = 32  # characters per batched step: a joining request waits at most one chunk
# while only paused streams are in the batch the engine sleeps, and looks this often whether the
# server is stopping (a signal handler cannot wake it: it may not take the lock)
IDLE_POLL_S = 0.1


class Overloaded(Exception):
    """More requests are waiting than the queue holds: try again later."""


class ShuttingDown(Exception):
    """The server is stopping: it takes no new requests."""


@dataclass
class Completion:
    """One request: n streams of one prompt and options. deliver(index, text, finish_reason)
    is called for every piece (finish_reason None but on the last), in order, through the
    engine's post (BatchEngine.start).
    A stream that fails ends with finish_reason "error" (the batch failed) or "shutdown" (cut
    by the server's end), its text then the message for the client."""

    opts: SampleOptions
    n: int
    stops: tuple[str, ...]
    deliver: Callable[[int, str, str | None], None]
    cancelled: bool = False
    paused: bool = False  # its reader is behind: its streams wait out of the batch
    handles: dict[int, int] = field(default_factory=dict)  # slot handle -> choice index


class BatchEngine:
    """The thread that owns the model: admits requests into slots between chunks (at most
    max_batch streams at once, at most max_waiting requests waiting), steps them, delivers."""

    def __init__(self, model: Model, vocab: Vocab, device: str = "cpu", max_batch: int = 64,
                 max_waiting: int = 256, chunk: int = SERVER_CHUNK):
        memory.check_fits(memory.sampling_bytes(model.config, max_batch,
                                                members=members_of(model)),
                          f"serving {max_batch:,} streams at once", "--max-batch")
        self.vocab = vocab
        self.slots = Slots(make_stepper(model, device), vocab, chunk=chunk, primes_in_steps=True)
        self.max_batch, self.max_waiting = max_batch, max_waiting
        self._waiting: deque[Completion] = deque()
        self._running: dict[int, Completion] = {}  # slot handle -> its request
        self._wake = threading.Condition()
        self._stopping = False
        # monotonic time at which the streams still running are cut (the server is stopping);
        # set without the lock: drain() is called from a signal handler
        self._cut_at: float | None = None
        # written by the engine thread only; read (an int or a dict lookup) by the event loop
        self.generated = 0  # characters delivered, for /metrics
        self._thread = threading.Thread(target=self._run, name="charrnn-engine", daemon=True)
        self._post: Callable[[Callable[[], None]], object] = _call

    def start(self, post: Callable[[Callable[[], None]], object] | None = None) -> None:
        """Start the engine thread. post(fn) runs fn where the requests' deliver callbacks are
        to run (an event loop's call_soon_threadsafe); without it, on the engine thread."""
        self._post = post or _call
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread; requests still in it end with finish_reason "shutdown"."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread.ident is not None:  # (started)
            self._thread.join(timeout)

    def drain(self, grace: float) -> None:
        """The server is stopping: refuse new requests, and cut the streams still running
        `grace` seconds from now (finish_reason "shutdown"). Safe in a signal handler (it
        takes no lock: the handler may have interrupted a holder of the lock); a later call
        may shorten the grace, never lengthen it."""
        at = time.monotonic() + grace
        if self._cut_at is None or at < self._cut_at:
            self._cut_at = at

    @property
    def draining(self) -> bool:
        return self._cut_at is not None

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def active(self) -> int:
        """Streams in the batch now."""
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def submit(self, request: Completion) -> None:
        """Queue a request; raises Overloaded when it would wait for room in the batch and
        max_waiting requests wait already, ShuttingDown once the server is stopping."""
        if request.n > self.max_batch:
            raise ValueError(f"n is at most {self.max_batch} (the server's --max-batch)")
        with self._wake:
            if self.draining or self._stopping:
                raise ShuttingDown("the server is shutting down")
            # a request the batch has room for now does not wait (so that --max-waiting 0
            # means "no queue", not "no requests")
            ahead = self.active + sum(r.n for r in self._waiting)
            if len(self._waiting) >= self.max_waiting and ahead + request.n > self.max_batch:
                raise Overloaded(f"{len(self._waiting)} requests are waiting already")
            self._waiting.append(request)
            self._wake.notify()

    def cancel(self, request: Completion) -> None:
        """Withdraw a request (its client went away): its streams leave at the next chunk."""
        with self._wake:
            request.cancelled = True
            self._wake.notify()

    def pause(self, request: Completion, paused: bool = True) -> None:
        """Hold a request's streams out of the batch (its client reads slower than they are
        made), or with paused=False put them back, from the next chunk on. Backpressure: the
        engine never waits for a client, and a slow one holds no row and makes no text."""
        with self._wake:
            request.paused = paused
            self._wake.notify()

    @property
    def paused(self) -> int:
        """Streams held out of the batch now."""
        return sum(request.paused for request in list(self._running.values()))

    def _admit(self) -> None:
        """Under the lock: drop cancelled requests, and move waiting ones into the batch while
        their streams fit, in arrival order."""
        for handle, request in list(self._running.items()):
            if request.cancelled:
                self.slots.free(handle)
                del self._running[handle]
            elif request.paused:
                self.slots.pause(handle)
            else:
                self.slots.resume(handle)
        while self._waiting:
            request = self._waiting[0]
            if request.cancelled:
                self._waiting.popleft()
                continue
            if len(self._running) + request.n > self.max_batch:
                break
            self._waiting.popleft()
            failed = []
            for index in range(request.n):
                try:
                    handle = self.slots.fill(request.opts, sample_rng(request.opts.seed, index),
                                             stops=request.stops, echo=False)
                except Exception as e:  # noqa: BLE001 - checked at submit; never kill the engine
                    failed.append((request, index, str(e), "error"))
                    continue
                request.handles[handle] = index
                self._running[handle] = request
                if request.paused:  # (paused while it waited)
                    self.slots.pause(handle)
            self._deliver(failed)

    def _end_all(self, reason: str, message: str, waiting: bool = True) -> None:
        """Under the lock: end every request in the batch (and, if waiting, in the queue), each
        unfinished stream with one last piece (text: the message; finish_reason: reason)."""
        ended = {}
        for handle, request in self._running.items():
            self.slots.free(handle)
            ended.setdefault(id(request), (request, []))[1].append(request.handles[handle])
        self._running.clear()
        if waiting:
            for request in self._waiting:
                ended.setdefault(id(request), (request, []))[1].extend(range(request.n))
            self._waiting.clear()
        self._deliver([(request, index, message, reason)
                       for request, indices in ended.values() for index in indices])

    def _run(self) -> None:
        while True:
            with self._wake:
                self._admit()
                while not self.slots.running and not self._stopping and not self._cut_due():
                    self._wake.wait(IDLE_POLL_S if self._running else None)
                    self._admit()
                if self._stopping:
                    self._end_all("shutdown", "the server stopped before this completion ended")
                    return
                if self._cut_due():
                    self._end_all("shutdown", "the server is shutting down: the completion "
                                  "was cut short")
                    continue
            try:
                pieces = self.slots.step()  # the batched chunk, outside the lock
            except Exception as e:  # noqa: BLE001 - the engine outlives a failed batch
                self._failed(e)
                continue
            delivered = []
            for piece in pieces:
                request = self._running.get(piece.slot)
                if request is None:  # cancelled meanwhile
                    continue
                self.generated += len(piece.text)
                if piece.finish_reason is not None:
                    del self._running[piece.slot]
                delivered.append((request, request.handles[piece.slot], piece.text,
                                  piece.finish_reason))
            self._deliver(delivered)

    def _cut_due(self) -> bool:
        """The server is stopping, its grace is over, and streams are still in the engine."""
        return (self._cut_at is not None and time.monotonic() >= self._cut_at
                and bool(self._running or self._waiting))

    def _deliver(self, pieces: list[tuple[Completion, int, str, str | None]]) -> None:
        """Hand (request, index, text, finish_reason) pieces to their requests, in order, in
        one post."""
        if not pieces:
            return

        def run() -> None:
            for request, index, text, finish in pieces:
                if not request.cancelled:
                    _tell(request, index, text, finish)
        try:
            self._post(run)
        except RuntimeError:  # the event loop has closed (the server stopped): no one listens
            for request, *_ in pieces:
                request.cancelled = True

    def _failed(self, e: Exception) -> None:
        """A batched step raised: the requests in it end with an error, the engine goes on with
        fresh slots (the rows' state may be half-written; the next step rebuilds them) and the
        requests still waiting, which were not in that batch."""
        print(f"charrnn serve: a batch of {len(self._running)} streams failed: "
              f"{type(e).__name__}: {e}", file=sys.stderr)
        with self._wake:
            self._end_all("error", "the server failed to compute this completion",
                          waiting=False)
            self.slots = Slots(self.slots.stepper, self.vocab, chunk=self.slots.chunk,
                               primes_in_steps=True)


def _call(fn: Callable[[], None]) -> None:
    fn()


def _tell(request: Completion, index: int, text: str, finish: str | None) -> None:
    """request.deliver, which a failing callback must not end (nor the event loop it runs on):
    the request is cancelled instead (its streams leave the batch at the next chunk)."""
    try:
        request.deliver(index, text, finish)
    except Exception:  # noqa: BLE001 - e.g. the event loop closed while the server stops
        request.cancelled = True


def warm_up(model: Model, vocab: Vocab, device: str) -> None:
    """Compile (or load) the sampling kernels before the server says it listens."""
    slots = Slots(make_stepper(model, device), vocab, chunk=4)
    slots.fill(SampleOptions(length=4, seed=0, prime=vocab.chars[:1]), np.random.default_rng(0))
    while slots.active:
        slots.step()
