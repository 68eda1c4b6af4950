#!/usr/bin/env python3
"""GFLOP/s of training's large products, one thread: the register tile (charrnn's tile_gemm,
what model_forward and model_backward call) beside BLAS (np.dot inside @njit, SciPy's OpenBLAS
with one thread, on operands already laid out as it reads them best: contiguous, transposes
copied). The shapes of one training shard (25 streams x 50 steps = 1,250 rows) at hidden size H,
an LSTM's 4H gates: the input projection x @ W_x, the weight gradient W += x.T @ dX, the
gradient through W_x (dX @ W_x.T) and the output layer y @ W_y (vocabulary 65). Then the
products of several rows that matmul_packed makes, both ways it has (cpu._rows_times_panels):
A's rows copied tile by tile first, and read where they are; matmul_packed copies them against
PACK_MIN_PANELS panels or more. Their shapes: training's per-step product (25, H) x (H, 4H) and
its backward (25, 4H) x (4H, H); sampling's per-shard (32, H) x (H, 4H), its output layer
(32, H) x (H, 65), and 8 streams' (8, H) x (H, 4H). Best of five. Prints one JSON object per H.

    python benchmarks/large_products.py [--hidden 128 512 1024] [--rows 1250]
"""

import argparse
import json

import numba
import numpy as np

from charrnn.bench import best_time
from charrnn.kernels.cpu import _rows_times_panels, copies_rows, packed, tile_gemm
from charrnn.parallel import _openblas_thread_switches


# Not cached (cache=True): numba's disk cache checks only this file, so a cached loop would
# keep running the charrnn kernels it was compiled with after they change, or another
# checkout's when timed from PYTHONPATH.
@numba.njit(nogil=True)
def _tile_products(A, B, C, a_t, b_t, beta, calls):
    for _ in range(calls):
        tile_gemm(A, B, C, a_t, b_t, beta)


@numba.njit(nogil=True)
def _blas_products(A, B, C, calls):
    for _ in range(calls):
        np.dot(A, B, C)


@numba.njit(nogil=True)
def _steps(A, P, C, copy_rows, calls):
    for t in range(calls):
        _rows_times_panels(A[t % A.shape[0]], P, C, copy_rows)


def best_seconds(fn, repeats: int = 5) -> float:
    fn()  # compiles or loads the kernels
    return best_time(fn, repeats)


def rates(H: int, N: int) -> dict:
    rng = np.random.default_rng(H)
    f32 = np.float32
    G = 4 * H
    out = {"hidden": H, "rows": N}
    # (name, op(A) shape, op(B) shape, a transposed, b transposed, beta)
    for name, (m, k), (_, n), a_t, b_t, beta in [
            ("input_projection", (N, H), (H, G), False, False, 0),
            ("weight_gradient", (H, N), (N, G), True, False, 1),
            ("gradient_through_W_x", (N, G), (G, H), False, True, 0),
            ("output_layer", (N, H), (H, 65), False, False, 0)]:
        opA = rng.standard_normal((m, k)).astype(f32)
        opB = rng.standard_normal((k, n)).astype(f32)
        A = np.ascontiguousarray(opA.T) if a_t else opA  # as training holds them
        B = np.ascontiguousarray(opB.T) if b_t else opB
        C = np.zeros((m, n), f32)
        flop = 2 * m * n * k * 3
        tile = best_seconds(lambda: _tile_products(A, B, C, a_t, b_t, beta, 3))
        blas = best_seconds(lambda: _blas_products(opA, opB, C, 3))
        out[name] = {"tile": round(flop / tile / 1e9, 1), "blas": round(flop / blas / 1e9, 1)}
    steps = 50
    for name, (m, k, n) in [("per_step_25_rows", (25, H, G)),
                            ("backward_step_25_rows", (25, G, H)),
                            ("sampling_32_rows", (32, H, G)),
                            ("sampling_output_32_rows", (32, H, 65)),
                            ("sampling_8_rows", (8, H, G))]:
        A = rng.standard_normal((steps, m, k)).astype(f32)  # a new A each step, as a window's
        P = packed(rng.standard_normal((k, n)).astype(f32))
        C = np.empty((m, n), f32)
        flop = 2 * m * k * n * steps
        out[name] = {"panels": P.shape[0],
                     "chosen": "copied" if copies_rows(P.shape[0]) else "in_place"}
        for way, copy_rows in (("copied", True), ("in_place", False)):
            seconds = best_seconds(lambda: _steps(A, P, C, copy_rows, steps))
            out[name][way] = round(flop / seconds / 1e9, 1)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", nargs="+", type=int, default=[128, 512, 1024])
    ap.add_argument("--rows", type=int, default=1250)
    a = ap.parse_args()
    for switch in _openblas_thread_switches():
        switch(1)
    for H in a.hidden:
        print(json.dumps(rates(H, a.rows)), flush=True)


if __name__ == "__main__":
    main()
