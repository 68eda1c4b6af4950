"""`charrnn serve` as a test's subprocess, on a free port of 127.0.0.1: for the API tests
(test_serve.py) and the browser tests (test_playground.py)."""

import itertools
import re
import signal
import subprocess
import sys
import time

import pytest

START_TIMEOUT = 300  # s: a cold numba cache compiles the sampling kernels before it listens
STOP_TIMEOUT = 15  # s: a signalled server is gone within this (in-flight requests get 5 s)
_count = itertools.count()


class Served:
    """`charrnn serve MODEL --port 0 FLAGS` as a subprocess; stderr and stdout go to files, so
    that nothing blocks on a full pipe and the tests can read them at any time."""

    def __init__(self, model, *flags, env=None):
        n = next(_count)
        self.err_path = model.work / f"serve-{n}.err"
        self.out_path = model.work / f"serve-{n}.out"
        with open(self.err_path, "wb") as err, open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "charrnn", "serve", str(model.run), "--port", "0",
                 *flags], stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                env=env or model.env, cwd=model.work)
        self.port = self._wait_ready()

    def _wait_ready(self) -> int:
        """The port the server says it listens on, once it says so."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            found = re.search(r"on http://127\.0\.0\.1:(\d+)\b", self.stderr)
            if found:
                return int(found.group(1))
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited {self.proc.returncode}:\n{self.stderr}")
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"the server did not say where it listens in {START_TIMEOUT} s")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text("utf-8", errors="replace")

    def assert_no_traceback(self) -> None:
        assert "Traceback" not in self.stderr, self.stderr

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"
