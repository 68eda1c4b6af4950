#!/usr/bin/env python3
"""GFLOP/s of the per-step recurrent product (B, H) x (H, 4H) as the kernels call it (np.dot
inside @njit, SciPy's OpenBLAS), three ways: BLAS with one thread, with two threads, and two
one-thread products at once on separate threads (what running two layers on separate cores would
get). Prints one JSON object per width.

    python benchmarks/per_step_gemm.py [--batch 50] [--hidden 256 512] [--calls 200]
"""

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from charrnn.parallel import _openblas_thread_switches


@numba.njit(nogil=True, cache=True)
def _products(h, W, out, calls):
    for _ in range(calls):
        np.dot(h, W, out)


def rate(B: int, H: int, blas_threads: int, concurrent: int, calls: int) -> float:
    switches = _openblas_thread_switches()
    rng = np.random.default_rng(0)
    Ws = [rng.random((H, 4 * H), dtype=np.float32) for _ in range(concurrent)]
    hs = [rng.random((B, H), dtype=np.float32) for _ in range(concurrent)]
    outs = [np.empty((B, 4 * H), np.float32) for _ in range(concurrent)]

    def work(i):
        for switch in switches:
            switch(blas_threads)
        _products(hs[i], Ws[i], outs[i], calls)

    with ThreadPoolExecutor(concurrent) as pool:
        list(pool.map(work, range(concurrent)))  # compile, warm the caches
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            list(pool.map(work, range(concurrent)))
            best = min(best, time.perf_counter() - t0)
    return 2 * B * H * 4 * H * calls * concurrent / best / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--hidden", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--calls", type=int, default=200)
    a = ap.parse_args()
    for H in a.hidden:
        print(json.dumps({
            "batch": a.batch, "hidden": H,
            "gflops_1_thread": round(rate(a.batch, H, 1, 1, a.calls), 1),
            "gflops_2_threads": round(rate(a.batch, H, 2, 1, a.calls), 1),
            "gflops_two_1_thread_products_at_once": round(rate(a.batch, H, 1, 2, a.calls), 1),
        }), flush=True)


if __name__ == "__main__":
    main()
