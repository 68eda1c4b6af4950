#!/usr/bin/env python3
"""GFLOP/s of training's large products, one thread: the register tile (charrnn's tile_gemm,
what model_forward and model_backward call) beside BLAS (np.dot inside @njit, SciPy's OpenBLAS
with one thread, on operands already laid out as it reads them best: contiguous, transposes
copied). The shapes of one training shard (25 streams x 50 steps = 1,250 rows) at hidden size H,
an LSTM's 4H gates: the input projection x @ W_x, the weight gradient W += x.T @ dX, the
gradient through W_x (dX @ W_x.T) and the output layer y @ W_y (vocabulary 65). Then the
per-step product (25, H) x (H, 4H) through matmul_packed, each row read where it is (the code
before its rows were packed) and packed tile by tile (the code now). Best of five. Prints one
JSON object per H.

    python benchmarks/large_products.py [--hidden 128 512 1024] [--rows 1250]
"""

import argparse
import json

import numba
import numpy as np

from charrnn.bench import best_time
from charrnn.kernels.cpu import TILE_ROWS, _tile, matmul_packed, packed, tile_gemm
from charrnn.parallel import _openblas_thread_switches


@numba.njit(nogil=True, cache=True)
def _tile_products(A, B, C, a_t, b_t, beta, calls):
    for _ in range(calls):
        tile_gemm(A, B, C, a_t, b_t, beta)


@numba.njit(nogil=True, cache=True)
def _blas_products(A, B, C, calls):
    for _ in range(calls):
        np.dot(A, B, C)


@numba.njit(nogil=True, cache=True)
def _rows_where_they_are(A, P, C):
    """matmul_packed's tiles before _pack_tiles: each tile reads its rows of A in place."""
    M, K = A.shape
    N = C.shape[1]
    n_panels, _, NR = P.shape
    size = A.itemsize
    lda, ldc = A.strides[0] // size, C.strides[0] // size
    a0, c0, p0 = A.ctypes.data, C.ctypes.data, P.ctypes.data
    tiles = (M + TILE_ROWS - 1) // TILE_ROWS
    for p in range(n_panels):
        i = 0
        for t in range(tiles):
            rows = (M - i) // (tiles - t)
            _tile(a0 + i * lda * size, lda, 1, p0 + p * K * NR * size, K,
                  c0 + (i * ldc + p * NR) * size, ldc, min(NR, N - p * NR), rows, 0,
                  A.dtype.type(0))
            i += rows


@numba.njit(nogil=True, cache=True)
def _steps(A, P, C, packed_rows, calls):
    for _ in range(calls):
        if packed_rows:
            matmul_packed(A, P, C)
        else:
            _rows_where_they_are(A, P, C)


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
    h = rng.standard_normal((25, H)).astype(f32)
    P = packed(rng.standard_normal((H, G)).astype(f32))
    gates = np.empty((25, G), f32)
    flop = 2 * 25 * H * G * 50
    out["per_step_25_rows"] = {
        way: round(flop / best_seconds(lambda: _steps(h, P, gates, packed_rows, 50)) / 1e9, 1)
        for way, packed_rows in (("rows_where_they_are", False), ("rows_packed", True))}
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
