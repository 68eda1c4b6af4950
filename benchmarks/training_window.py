#!/usr/bin/env python3
"""One training window's forward and backward, timed apart: the model's own `forward` and
`backward` (batch 50 x 50 steps, float32, the stepper's threads), best of
--repeats after two untimed windows. Finer than the speed table's training figure, which also
holds the optimizer and the batching, for a change to the products of one of them.

    python benchmarks/training_window.py [--models lstm:1024 lstm:256:4000 ...] [--repeats 7]
    PYTHONPATH=OTHER_CHECKOUT python OTHER_CHECKOUT/benchmarks/training_window.py  # another

Prints one JSON object per model (milliseconds), nothing else.
"""

import argparse
import json
import time

import numpy as np

from charrnn.model import Model, ModelConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["lstm:1024", "lstm:512"],
                    help="CELL:HIDDEN[:VOCABULARY], two layers, vocabulary 65 unless given")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    for spec in args.models:
        cell, hidden, vocab = (spec.split(":") + ["65"])[:3]
        ids, targets = (rng.integers(0, int(vocab), (50, 50)).astype(np.int32)
                        for _ in range(2))
        model = Model(ModelConfig(vocab_size=int(vocab), cell=cell, layers=2,
                                  hidden=int(hidden)), dtype=np.float32, seed=1)
        forward, backward = [], []
        for round_ in range(args.repeats + 2):
            start = time.perf_counter()
            model.forward(ids, targets)
            middle = time.perf_counter()
            model.backward()
            end = time.perf_counter()
            if round_ >= 2:  # the first two compile or load the kernels and warm the caches
                forward.append(middle - start)
                backward.append(end - middle)
        print(json.dumps({"model": spec, "forward_ms": round(min(forward) * 1e3, 2),
                          "backward_ms": round(min(backward) * 1e3, 2)}), flush=True)


if __name__ == "__main__":
    main()
