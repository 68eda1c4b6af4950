#!/usr/bin/env python3
"""How fast one stream could sample at most: the rate at which one and two threads read the
weights one character multiplies, and the characters a second that allows.

One stream's step multiplies one row by each matrix (every layer's W_h, the W_x of the layers
above the first, the output's W_y), so it reads every weight once a character and does two
flops per weight: it is bound by how fast the weights stream from cache or memory, not by
arithmetic. For each model this reads arrays of the same total size (two threads each their
half, as halves.py splits the units) with a vectorised sum, best of five, and divides.

    python benchmarks/bandwidth.py [--cells lstm gru] [--sizes 128 256 512 1024]
                                   [--vocab-row 256 4000] [> bandwidth.jsonl]

Prints one JSON object per model: the bytes a character reads, GB/s with one and two threads,
and the characters a second each allows (an upper bound: a real step adds the gate arithmetic,
the draw and the threads' meetings).
"""

import argparse
import json
import threading
import time

import numpy as np
from numba import njit

GATES = {"lstm": 4, "gru": 3}


@njit(nogil=True, fastmath=True)  # fastmath: a vectorised sum in several accumulators
def _read(a, times):
    total = np.float32(0)
    for _ in range(times):
        for i in range(a.size):
            total += a[i]
    return total


def read_rate(total_bytes: int, threads: int) -> float:
    """GB/s at which `threads` threads read total_bytes of float32 between them, each its own
    share, over and over (best of five)."""
    shares = [np.ones(total_bytes // 4 // threads, np.float32) for _ in range(threads)]
    times = max(3, int(4e8 // total_bytes))  # about 0.4 GB a measurement
    for share in shares:
        _read(share, 1)  # compiled and in cache before the clock starts
    best = float("inf")
    for _ in range(5):
        workers = [threading.Thread(target=_read, args=(share, times)) for share in shares]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = min(best, time.perf_counter() - start)
    return total_bytes * times / best / 1e9


def weight_bytes(cell: str, layers: int, hidden: int, vocab: int) -> int:
    """float32 bytes one stream's step reads from its multiplied matrices."""
    GH = GATES[cell] * hidden
    return 4 * (layers * hidden * GH + (layers - 1) * hidden * GH + hidden * vocab)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", nargs="+", default=["lstm", "gru"], choices=sorted(GATES))
    ap.add_argument("--sizes", nargs="+", type=int, default=[128, 256, 512, 1024])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab-row", nargs=2, type=int, default=[256, 4000],
                    metavar=("HIDDEN", "VOCAB"), help="an LSTM with a large vocabulary")
    args = ap.parse_args()
    models = [(cell, size, 65) for cell in args.cells for size in args.sizes]
    models.append(("lstm", args.vocab_row[0], args.vocab_row[1]))
    for cell, hidden, vocab in models:
        size = weight_bytes(cell, args.layers, hidden, vocab)
        one, two = read_rate(size, 1), read_rate(size, 2)
        row = {"cell": cell, "layers": args.layers, "hidden": hidden, "vocab": vocab,
               "weight_bytes": size, "gb_per_s_1_thread": round(one, 1),
               "gb_per_s_2_threads": round(two, 1),
               "bound_chars_per_s_1_thread": round(one * 1e9 / size),
               "bound_chars_per_s_2_threads": round(two * 1e9 / size)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
