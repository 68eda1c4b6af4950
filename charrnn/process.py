"""The command's life as a process: its streams (stdout for data, stderr for messages that must
never stop the work, closed or unencodable streams), its signals (Ctrl-C and SIGTERM saving a
run, or cleaning up one being set up) and how it ends (flushing, the exit status; console_main in
charrnn.cli also skips the interpreter's teardown). charrnn.cli parses and calls; this module is
what it runs inside.
"""

import contextlib
import errno
import io
import os
import signal
import sys
import unicodedata


class MessageStream(io.TextIOBase):
    """stderr as charrnn uses it: for messages only, so a write that fails (a reader that went
    away, `2>/dev/full`) must never stop the work. The first failure is kept in `lost` and
    later messages are dropped; `charrnn train` notes it in metrics.jsonl and trains on."""

    def __init__(self, stream):
        self.stream = stream
        self.lost: str | None = None

    def _guard(self, action) -> None:
        if self.lost is None:
            try:
                action()
            except OSError as e:
                self.lost = f"stderr could not be written ({e.strerror or e})"

    def write(self, text: str) -> int:
        self._guard(lambda: self.stream.write(text))
        return len(text)

    def flush(self) -> None:
        self._guard(self.stream.flush)

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self):
        return getattr(self.stream, "encoding", "utf-8")

    @property
    def errors(self):
        return getattr(self.stream, "errors", "backslashreplace")


def unencodable_output(e: UnicodeEncodeError) -> str:
    return (f"the output's encoding ({e.encoding}) cannot write {e.object[e.start:e.end]!a}: "
            f"set PYTHONIOENCODING=utf-8 (or utf-8 locale)")


class ClosedStdout(io.TextIOBase):
    """Stands in for a stdout closed when the process started: data written there is lost,
    which is an error (EBADF, as a write to the closed descriptor would give)."""

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, "stdout is closed")

    def isatty(self) -> bool:
        return False


def file_names_as_given() -> None:
    """A file name that is not valid UTF-8 reaches Python as lone surrogates; written to stdout
    (`eval` names its FILE) they become the name's own bytes again instead of an error.
    charrnn's text never holds lone surrogates otherwise: a checkpoint's vocabulary refuses
    them."""
    if getattr(sys.stdout, "errors", None) == "strict" and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="surrogateescape")


def replace_closed_streams() -> None:
    """Started with stdout or stderr closed (`>&-`), Python gives None for it, and print() to a
    None stderr would write to stdout. Messages for a closed stderr are dropped; data for a
    closed stdout is an error."""
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")
    if sys.stdout is None:
        sys.stdout = ClosedStdout()


def exit_status(e: SystemExit) -> int:
    """The status Python gives a process that raised e: sys.exit("message") prints the
    message on stderr and exits 1."""
    if e.code is None or isinstance(e.code, int):
        return e.code or 0
    print(e.code, file=sys.stderr)
    return 1


def flush_streams(code: int) -> int:
    """Flush stdout and stderr (never None: main() replaced closed ones) and return the exit
    status: output that cannot be written is an error unless one was reported already (then the
    bytes that failed are still in the buffer and fail again)."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away: a normal end
        pass
    except OSError as e:  # the data did not all arrive (a full disk)
        if code == 0:
            print(f"charrnn: error: writing the output: {e.strerror or e}", file=sys.stderr)
            code = 1
    try:
        sys.stderr.flush()
    except OSError:
        pass
    return code


def one_line(message: str) -> str:
    """message with its line breaks and other control characters escaped (a file name may hold
    a newline), so that an error is always one line."""
    return "".join(c.encode("unicode_escape").decode("ascii")
                   if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in message)


def quiet_broken_pipe() -> None:
    """The reader went away (`charrnn sample | head`): that is a normal end, exit 0."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
    sys.exit(0)


@contextlib.contextmanager
def terminate_through_clean_ups():
    """SIGTERM while a run is set up (reading the corpus, compiling) raises SystemExit(143), as
    Ctrl-C raises KeyboardInterrupt, so that a run that saved nothing removes what it made.
    Once training runs, StopOnSignal takes over."""
    def terminate(signum, frame):
        raise SystemExit(128 + signum)
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class StopOnSignal:
    """First SIGINT/SIGTERM: finish the current step, save, exit 130/143. Second: exit at once."""

    def __init__(self):
        self.signum = 0
        self.previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.signum:
            os._exit(128 + signum)  # the last complete checkpoint is untouched: saves are atomic
        self.signum = signum

    def requested(self) -> bool:
        return bool(self.signum)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
