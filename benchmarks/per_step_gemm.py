#!/usr/bin/env python3
"""GFLOP/s of the per-step recurrent product (B, H) x (H, 4H): np.dot inside @njit (SciPy's
OpenBLAS) three ways: BLAS with one thread, with two threads, and two one-thread products at once
on separate threads (what running two layers on separate cores would get); and the register tile
the training step uses (charrnn/kernels/cpu.py's matmul_packed on W_h's panels, one thread), in
the forward form (K = H) and the backward form (dgates (B, 4H) x W_h.T, K = 4H) beside
one-thread BLAS on the same backward shape, and two register-tile products at once on separate
threads (what the training's two shards do). Prints one JSON object per width.

    python benchmarks/per_step_gemm.py [--batch 50] [--hidden 128 256 512] [--calls 200]
"""

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from charrnn.kernels.cpu import matmul_packed, packed
from charrnn.parallel import _openblas_thread_switches


@numba.njit(nogil=True)
def _products(h, W, out, calls):
    for _ in range(calls):
        np.dot(h, W, out)


# Not cached (cache=True): numba's disk cache checks only this file, so a cached loop would
# keep running the charrnn kernels it was compiled with after they change, or another
# checkout's when timed from PYTHONPATH.
@numba.njit(nogil=True)
def _tile_products(a, P, out, calls):
    for _ in range(calls):
        matmul_packed(a, P, out)


def tile_rates(B: int, H: int, calls: int) -> dict:
    """One thread: the register tile forward and backward, and BLAS on the backward shape; then
    two forward tile products at once, each thread with its own panels."""
    for switch in _openblas_thread_switches():
        switch(1)
    rng = np.random.default_rng(0)
    W = rng.random((H, 4 * H), dtype=np.float32)  # W_h as stored
    WT = np.ascontiguousarray(W.T)
    h = rng.random((B, H), dtype=np.float32)
    dg = rng.random((B, 4 * H), dtype=np.float32)
    gates, dh = np.empty((B, 4 * H), np.float32), np.empty((B, H), np.float32)
    P, PT = packed(W), packed(W.T)  # the panels of W_h and of W_h.T, as a window makes them
    flops = 2 * B * H * 4 * H * calls
    runs = {"gflops_tile_forward": lambda: _tile_products(h, P, gates, calls),
            "gflops_tile_backward": lambda: _tile_products(dg, PT, dh, calls),
            "gflops_1_thread_backward": lambda: _products(dg, WT, dh, calls)}
    rates = {name: round(flops / _best_of_five(run) / 1e9, 1) for name, run in runs.items()}
    shards = [(h.copy(), packed(W), np.empty_like(gates)) for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:
        both = _best_of_five(lambda: list(pool.map(lambda s: _tile_products(*s, calls), shards)))
    rates["gflops_two_tile_products_at_once"] = round(2 * flops / both / 1e9, 1)
    return rates


def _best_of_five(fn) -> float:
    """Seconds of the fastest of five calls of fn, after one that compiles and warms the caches."""
    fn()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


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
        best = _best_of_five(lambda: list(pool.map(work, range(concurrent))))
    return 2 * B * H * 4 * H * calls * concurrent / best / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--hidden", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--calls", type=int, default=200)
    a = ap.parse_args()
    for H in a.hidden:
        print(json.dumps({
            "batch": a.batch, "hidden": H,
            "gflops_1_thread": round(rate(a.batch, H, 1, 1, a.calls), 1),
            "gflops_2_threads": round(rate(a.batch, H, 2, 1, a.calls), 1),
            "gflops_two_1_thread_products_at_once": round(rate(a.batch, H, 1, 2, a.calls), 1),
            **tile_rates(a.batch, H, a.calls),
        }), flush=True)


if __name__ == "__main__":
    main()
