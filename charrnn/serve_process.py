"""`charrnn serve` as a process: the listening socket, the warm-up, uvicorn, and the end.

The socket is bound before anything compiles, so a port in use is one line and exit 1 at once.
SIGINT or SIGTERM: the server stops accepting, the requests in flight get GRACE_S seconds to
finish, then the engine cuts those still running (a stream ends with an error event, a plain
completion is a 503) and the command exits 0. A second signal cuts them at once; a third stops
waiting for clients that do not read what they are sent.
"""

import asyncio
import contextlib
import errno
import signal
import socket
import threading
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Callable

from . import checkpoint as ckpt_io
from .options import ServeOptions

GRACE_S = 5  # seconds in-flight requests get to finish after SIGINT or SIGTERM
# what uvicorn waits on top, for the cut streams to send their last events; then it cancels
# what is left (a client that stopped reading)
FLUSH_S = 2


class ServeError(Exception):
    """The server cannot start; one line for the user."""


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (IPv4 or IPv6, as the host is written)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ServeError(f"--host {host}: {e.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart reuses the port
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        why = "is in use" if e.errno == errno.EADDRINUSE else f"cannot be used: {e.strerror}"
        raise ServeError(f"port {port} on {host} {why} (--port to choose another)") from None
    sock.setblocking(False)
    return sock


def served_name(path: Path) -> str:
    """The model's name in the API: its run directory's name, else the checkpoint's stem."""
    path = Path(path)
    if path.is_dir():
        return path.resolve().name
    if path.name in (ckpt_io.LATEST, ckpt_io.BEST):
        return path.resolve().parent.name
    return path.stem


def run(model, vocab, ck, name: str, sock: socket.socket, opts: ServeOptions,
        api_key: str | None, device: str, say: Callable[[str], None],
        compiling: AbstractContextManager = nullcontext()) -> None:
    """Warm the kernels, then serve until SIGINT or SIGTERM."""
    import uvicorn

    from .server import Server
    from .serving import BatchEngine, warm_up

    with compiling:
        warm_up(model, vocab, device)
    engine = BatchEngine(model, vocab, device, max_batch=opts.max_batch,
                         max_waiting=opts.max_waiting)
    c = model.config
    server = Server(engine, name, opts.max_tokens, api_key,
                    {"charrnn": {"cell": c.cell, "layers": c.layers, "hidden": c.hidden,
                                 "vocabulary": len(vocab), "step": ck.train.get("step")}})
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host

    def ready() -> None:  # said once uvicorn serves (and handles SIGINT and SIGTERM)
        say(f"serving {name} ({c.layers} x {c.hidden} {c.cell}) on http://{shown}:{port} "
            f"(playground /, API /v1{', API key required' if api_key else ''}); "
            f"Ctrl-C to stop")

    config = uvicorn.Config(server.app, log_level="warning", lifespan="off",
                            timeout_graceful_shutdown=GRACE_S + FLUSH_S, access_log=False)
    try:
        _uvicorn_server(config, engine, ready).run(sockets=[sock])
    finally:
        engine.stop()
        sock.close()


def _uvicorn_server(config, engine, ready: Callable[[], None]):
    """A uvicorn server for config that calls ready() once it serves and drains engine on
    SIGINT and SIGTERM. (The class is made here: uvicorn is imported only when the server
    runs, never for `charrnn --help`.)"""
    import uvicorn

    class Uvicorn(uvicorn.Server):
        """uvicorn's server, told of the engine: a signal drains it (so that streams end with a
        last event before uvicorn's grace is over, rather than being cancelled mid-write), and
        the signal is not raised again once the server has stopped (uvicorn's own
        capture_signals does that, which makes SIGTERM's exit status 143 and SIGINT a
        KeyboardInterrupt: a stop asked for is a normal end here, exit 0)."""

        def __init__(self, config, engine):
            super().__init__(config)
            self.engine = engine
            self.signals = 0

        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if not self.should_exit:  # (set when the start failed)
                # the engine hands each chunk's pieces to this loop in one call
                self.engine.start(asyncio.get_running_loop().call_soon_threadsafe)
                ready()

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield  # signals reach only the main thread
                return
            previous = {sig: signal.signal(sig, self.handle_exit)
                        for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        def handle_exit(self, sig, frame):
            # a signal handler: it only sets flags (engine.drain takes no lock)
            self.signals += 1
            if self.signals == 1:
                self.engine.drain(GRACE_S)
                self.should_exit = True
            elif self.signals == 2:  # cut the streams now; they end with their last event
                self.engine.drain(0)
            else:  # and a third stops waiting for clients that do not read
                self.force_exit = True

    return Uvicorn(config, engine)
