"""The notice that keeps a first run from looking hung. Its own module, free of Rich, so that
`charrnn sample` does not import Rich on the way to its first character.

It speaks only while numba is compiling: numba broadcasts a "numba:compile" event around every
real compilation (a cache miss; loading a kernel from the on-disk cache fires nothing), to the
listeners registered in one process-wide table, in whichever thread compiles. So a slow call with
warm kernels (scoring a large file, a long prime) says nothing, and a compile in a worker thread
(charrnn.parallel) counts like one in the calling thread. numba is imported when the notice is
entered, never when this module is: `import charrnn` and `charrnn --help` stay without it."""

import threading
import time
from typing import Callable

COMPILE_EVENT = "numba:compile"


class SlowNotice:
    """Says `text` through `say` (a line on stderr), once, if numba is still compiling `after`
    seconds after the first compilation inside the notice began: the first run compiles the
    kernels, and a silent minute would look hung. Slow work that compiles nothing says nothing.

    It may be entered again for the next piece of the same work (the clock starts again at the
    piece's first compilation); entries may nest, and `cancel()` (the same as leaving it) may be
    called more often than it was entered. Leaving the outermost entry removes its listener."""

    def __init__(self, say: Callable[[str], None], text: str, after: float = 1.5):
        self._say_line, self._text, self._after = say, text, after
        self._lock = threading.Lock()
        self._said = False
        self._depth = 0       # entries now open (nested `with`s)
        self._serial = 0      # which outermost entry is open: stale listeners/timers check it
        self._compiling = 0   # compilations in progress, nested or in any thread
        self._started = None  # time.monotonic() of the first compilation in this entry
        self._timer = None
        self._listener = None
        self._events = None   # numba.core.event, once entered

    def __enter__(self):
        with self._lock:
            self._depth += 1
            if self._depth > 1 or self._said:
                return self
            self._serial += 1
            self._compiling, self._started = 0, None
            serial = self._serial
        # Entered around kernel work, which imports numba anyway (every caller has loaded the
        # model first); importing it here, not at module import, keeps `charrnn --help` free of it.
        events = _numba_events()
        if events is not None:
            listener = _listener_class(events)(self, serial)
            with self._lock:
                if self._depth and self._serial == serial:  # not left meanwhile (another thread)
                    self._events, self._listener = events, listener
                    events.register(COMPILE_EVENT, listener)
        return self

    def __exit__(self, *exc):
        with self._lock:
            if self._depth == 0:  # cancelled already: leaving again is nothing
                return None
            self._depth -= 1
            if self._depth:
                return None
            timer, self._timer = self._timer, None
            listener, self._listener = self._listener, None
            self._compiling, self._started = 0, None
            if listener is not None:
                self._events.unregister(COMPILE_EVENT, listener)
        if timer is not None:
            timer.cancel()
        return None

    cancel = __exit__

    # called by the listener, in the compiling thread

    def _compile_started(self, serial: int):
        with self._lock:
            if self._said or not self._depth or serial != self._serial:
                return
            self._compiling += 1
            now = time.monotonic()
            if self._started is None:
                self._started = now
            due = now - self._started >= self._after
            if due:
                self._said = True
            elif self._timer is None:
                self._timer = threading.Timer(self._started + self._after - now,
                                              self._time_up, args=(serial,))
                self._timer.daemon = True
                self._timer.start()
        if due:  # said in the compiling thread: a line that cannot be written must not fail it
            try:
                self._say_line(self._text)
            except Exception:
                pass

    def _compile_ended(self, serial: int):
        with self._lock:
            if serial == self._serial and self._compiling:
                self._compiling -= 1

    def _time_up(self, serial: int):
        """`after` seconds since the first compilation: say it if one is going on now, else the
        next compilation in this entry says it (_compile_started finds it due)."""
        with self._lock:
            if serial != self._serial or not self._depth:
                return
            self._timer = None
            say = not self._said and self._compiling > 0
            if say:
                self._said = True
        if say:
            self._say_line(self._text)


def _numba_events():
    try:
        from numba.core import event
    except ImportError:  # no numba: nothing can compile
        return None
    return event


_LISTENER_CLASS = None


def _listener_class(events):
    """A numba.core.event.Listener subclass (register() insists on one), made on first use."""
    global _LISTENER_CLASS
    if _LISTENER_CLASS is None:
        class CompileListener(events.Listener):
            def __init__(self, notice: SlowNotice, serial: int):
                self.notice, self.serial = notice, serial

            def on_start(self, event):
                self.notice._compile_started(self.serial)

            def on_end(self, event):
                self.notice._compile_ended(self.serial)

        _LISTENER_CLASS = CompileListener
    return _LISTENER_CLASS
