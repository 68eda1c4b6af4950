"""Data parallelism over the streams of a window: each thread runs the whole forward and
backward for its own share of the B streams, then the shards' gradients are summed.

The streams of a window are independent until the gradients are summed, so the sequential part
of the work (a small (B, H) x (H, GH) GEMM and the gate arithmetic per time step) splits across
cores with no synchronisation inside the window. Each worker's BLAS calls are single-threaded
(OpenBLAS's ``openblas_set_num_threads_local``): BLAS's own threads, fighting the workers for
the cores and synchronising on every small per-step product, are what this replaces. Where that
switch is not found (another BLAS), everything runs on the calling thread. In OpenBLAS's
pthreads build (the one pip wheels ship) the "local" switch sets the count for the whole process,
so it is set to one only while the shards run and restored after: the sampler and anything else
on the calling thread keep BLAS's threads.

CHARRNN_THREADS sets the number of workers (default: the cores this process may use, shared
among the ranks an MPI launcher started on this machine).
"""

import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

MIN_ROWS = 8  # fewer streams per thread than this leaves the per-step GEMM too thin to pay off
_BLAS_COUNT_HELD = threading.Lock()  # held while a map has set BLAS's threads to one


def _openblas_thread_switches() -> list:
    """``openblas_set_num_threads_local`` of every OpenBLAS loaded in this process (numpy's
    and scipy's each bundle one; numba's np.dot calls scipy's, loaded here if it is not yet)."""
    import scipy.linalg.cython_blas  # noqa: F401  (loads scipy's OpenBLAS into the maps)
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
    except OSError:
        return []
    switches = []
    for path in sorted(paths):
        try:
            switches.append(ctypes.CDLL(path).openblas_set_num_threads_local)
        except (OSError, AttributeError):
            pass
    return switches


class ThreadsSettingError(Exception):
    """CHARRNN_THREADS is not a positive whole number."""


def default_threads() -> int:
    env = os.environ.get("CHARRNN_THREADS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ThreadsSettingError(f"CHARRNN_THREADS must be a whole number >= 1, not {env!r}")
        return int(env)
    from .distributed import ranks_on_this_machine
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cores // ranks_on_this_machine())  # ranks of one run share the machine


def row_ranges(B: int, parts: int) -> list[tuple[int, int]]:
    """Split rows 0..B into ``parts`` contiguous ranges whose sizes differ by at most one."""
    bounds = [B * k // parts for k in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


class StreamSplitter:
    """Decides how many shards B streams split into and runs one function per shard, on worker
    threads (each with single-threaded BLAS) when there are several."""

    def __init__(self, threads: int | None = None, min_rows: int = MIN_ROWS):
        self.threads = default_threads() if threads is None else max(1, threads)
        self.min_rows = min_rows
        self._pool = None
        self._switches = None  # found at the first split: a sampler never needs them
        self._starting = threading.Lock()

    def _start(self) -> None:
        """Find the BLAS thread switches and start the workers (once)."""
        with self._starting:
            if self._switches is not None:
                return
            switches = _openblas_thread_switches() if self.threads > 1 else []
            if switches:
                # the initializer is what makes the workers single-threaded where the switch is
                # truly thread-local (OpenMP builds); map() covers the process-wide pthreads
                # build
                self._pool = ThreadPoolExecutor(
                    self.threads, thread_name_prefix="charrnn",
                    initializer=lambda: [switch(1) for switch in switches])
            self._switches = switches  # last: a started splitter has its pool

    def parts(self, B: int) -> int:
        """How many shards to split B streams into."""
        if B // self.min_rows < 2:
            return 1
        self._start()
        if self._pool is None:
            return 1
        return min(self.threads, B // self.min_rows)

    def map(self, fn, items: list) -> None:
        """fn(item) for every item, on the workers when there are several (one after another
        where there are no workers)."""
        if len(items) > 1:
            self._start()
        if len(items) == 1 or self._pool is None:
            for item in items:
                fn(item)
            return
        # BLAS's thread count is the whole process's: two maps at once (two samplers, say) must
        # not interleave setting it to one and putting it back, or it stays at one
        with _BLAS_COUNT_HELD:
            before = [switch(1) for switch in self._switches]  # each gives the previous count
            try:
                futures = [self._pool.submit(fn, item) for item in items]
                wait(futures)  # all of them, even when one fails, before the count goes back
            finally:
                for switch, count in zip(self._switches, before):
                    switch(count)
        for future in futures:
            future.result()  # re-raises a worker's exception here
