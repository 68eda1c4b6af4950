#!/usr/bin/env python3
"""The sampler's products, (M, H) x (H, G*H) for M streams: np.dot inside @njit (SciPy's
OpenBLAS, with its threads) against charrnn's matmul_few_rows (one thread), against M one-row
np.dot calls (OpenBLAS hands a one-row product to its gemv, which does not pack W as its gemm
does) and against charrnn's matmul_packed on W's panels (one thread: what the sampler runs, a
shard of rows per thread), microseconds per product, best of seven. ONE_ROW_MAX_BYTES in
charrnn/kernels/cpu.py, where _matmul (the classic GRU's and Jordan's own products) hands one
row to gemv, is chosen from it. Prints one JSON object per shape.

    python benchmarks/few_rows_product.py [--rows 1 2 4 8] [--hidden 128 256 512] [--gates 3 4]
"""

import argparse
import json
import time

import numba
import numpy as np

from charrnn.kernels.cpu import matmul_few_rows, matmul_packed, packed


@numba.njit
def _blas_products(A, W, C, calls):
    for _ in range(calls):
        np.dot(A, W, C)


@numba.njit
def _row_by_row_products(A, W, C, calls):
    for _ in range(calls):
        for i in range(A.shape[0]):
            np.dot(A[i:i + 1], W, C[i:i + 1])


# Not cached (cache=True): numba's disk cache checks only this file, so a cached loop would
# keep running the charrnn kernels it was compiled with after they change, or another
# checkout's when timed from PYTHONPATH.
@numba.njit
def _few_rows_products(A, W, C, calls):
    for _ in range(calls):
        matmul_few_rows(A, W, C)


@numba.njit
def _packed_products(A, P, C, calls):
    for _ in range(calls):
        matmul_packed(A, P, C)


def microseconds(fn, A, W, C, calls: int) -> float:
    fn(A, W, C, 10)  # compiles (or loads) and warms the caches
    best = float("inf")
    for _ in range(7):
        t0 = time.perf_counter()
        fn(A, W, C, calls)
        best = min(best, time.perf_counter() - t0)
    return best / calls * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--hidden", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--gates", type=int, nargs="+", default=[3, 4])
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    for H in args.hidden:
        for M in args.rows:
            for G in args.gates:
                A = rng.standard_normal((M, H), dtype=np.float32)
                W = rng.standard_normal((H, G * H), dtype=np.float32)
                C_blas, C_few, C_rows, C_tile = (np.empty((M, G * H), np.float32)
                                                  for _ in range(4))
                calls = max(20, 25_000_000 // (M * H * G * H))
                blas = microseconds(_blas_products, A, W, C_blas, calls)
                few = microseconds(_few_rows_products, A, W, C_few, calls)
                rows = microseconds(_row_by_row_products, A, W, C_rows, calls)
                tile = microseconds(_packed_products, A, packed(W), C_tile, calls)
                np.testing.assert_allclose(C_few, C_blas, rtol=1e-3, atol=1e-3)
                np.testing.assert_allclose(C_rows, C_blas, rtol=1e-3, atol=1e-3)
                np.testing.assert_allclose(C_tile, C_blas, rtol=1e-3, atol=1e-3)
                print(json.dumps({"rows": M, "hidden": H, "gates": G,
                                  "W_bytes": W.nbytes, "blas_us": round(blas, 2),
                                  "few_rows_us": round(few, 2),
                                  "row_by_row_us": round(rows, 2),
                                  "tile_us": round(tile, 2),
                                  "speedup": round(blas / few, 2)}), flush=True)


if __name__ == "__main__":
    main()
