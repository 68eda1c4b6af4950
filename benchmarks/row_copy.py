#!/usr/bin/env python3
"""Microseconds of the copy of A's rows that the register tile reads (charrnn's
cpu._pack_tiles: each tile's rows k-major, turned in registers a vector's lanes at a time)
beside the same copy element by element (how _pack_tiles made it before, written here), on
the shapes training and sampling copy: one shard's 25 rows of a per-step product (K = H) and
of its backward (K = 4H), 32 rows of a sampling shard, and 1,250 rows of a large product
(K = H, and K = 4,000 as the output layer's dH = dlogits @ W_y.T at 4,000 characters). Best of
nine, one thread, float32 and float64. Prints one JSON object per shape.

    python benchmarks/row_copy.py [--shapes 25x1024 1250x4000 ...]
"""

import argparse
import json
import time

import numba
import numpy as np

from charrnn.kernels.cpu import TILE_ROWS, _pack_tiles, rows_copy_size


# Not cached (cache=True): numba's disk cache checks only this file, so a cached loop would
# keep the charrnn constants it was compiled with after they change.
@numba.njit(nogil=True)
def _element_by_element(A, out):
    M, K = A.shape
    tiles = (M + TILE_ROWS - 1) // TILE_ROWS
    i = 0
    for t in range(tiles):
        rows = (M - i) // (tiles - t)
        for r in range(rows):
            a = A[i + r]
            for k in range(K):
                out[i * K + k * rows + r] = a[k]
        i += rows


def best_us(fn, repeats: int = 9) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(min(times) * 1e6, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["25x512", "25x1024", "25x2048", "25x4096",
                                                    "32x1024", "1250x1024", "1250x4000"])
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    for shape in args.shapes:
        M, K = map(int, shape.split("x"))
        row = {"rows": M, "k": K}
        for dtype in (np.float32, np.float64):
            A = rng.standard_normal((M, K)).astype(dtype)
            out = np.empty(rows_copy_size(M, K, A), dtype)
            reference = np.empty_like(out)
            row[np.dtype(dtype).name] = {
                "in_registers_us": best_us(lambda: _pack_tiles(A, out)),
                "element_by_element_us": best_us(lambda: _element_by_element(A, reference))}
            assert np.array_equal(out[:M * K], reference[:M * K])
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
