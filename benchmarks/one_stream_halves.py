#!/usr/bin/env python3
"""One stream on one thread against one stream in halves on two (charrnn/one_stream.py), the
same model and chunk, alternating: characters a second and the steps after which the halves
gave up (their threads kept waiting on each other), if they did.

    python benchmarks/one_stream_halves.py [--models lstm:256:65 gru:512:65 ...]
                                           [--chunk 256] [--rounds 5] [> FILE.jsonl]

A model is CELL:HIDDEN:VOCAB, two layers, random weights. Each round times one chunk each way
(the first round also compiles and is dropped); prints one JSON object per model with the best
and median of each way, then nothing else. benchmarks/bandwidth.py gives the bound both ways
approach.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from charrnn import one_stream  # noqa: E402
from charrnn.model import Model, ModelConfig  # noqa: E402
from charrnn.parallel import StreamSplitter  # noqa: E402
from charrnn.stepper import CpuStepper  # noqa: E402

DEFAULT_MODELS = ["lstm:256:65", "gru:256:65", "gru:512:65", "lstm:512:65", "lstm:256:4000",
                  "gru:1024:65", "lstm:1024:65"]


def chunk_rate(stepper: CpuStepper, parts: int, n: int, halves_done: list) -> float:
    """Characters a second of one chunk of n steps; `parts` 2: in halves (the steps they did
    are appended to halves_done; the stepper finishes the rest on one thread)."""
    stepper.arrange([], [np.array([1], np.int32)])
    x, out = np.array([2], np.int32), np.zeros((n, 1), np.int32)
    uniforms = np.random.default_rng(0).random((n, 1))
    generate = one_stream.generate

    def counted(*args, **kwargs):
        halves_done.append(generate(*args, **kwargs))
        return halves_done[-1]

    one_stream.generate = counted
    try:
        start = time.perf_counter()
        stepper._run(parts, stepper.h, stepper.c, x, np.full((n, 1), -1, np.int32),
                     np.ones(1), np.zeros(1, np.int64), np.ones(1), uniforms, out)
        return n / (time.perf_counter() - start)
    finally:
        one_stream.generate = generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    for spec in args.models:
        cell, hidden, vocab = spec.split(":")
        model = Model(ModelConfig(vocab_size=int(vocab), cell=cell, layers=2,
                                  hidden=int(hidden)), seed=3)
        stepper = CpuStepper(model, StreamSplitter(threads=2))
        if stepper._halves is None:
            print(f"{spec}: no halves for this model", file=sys.stderr)
            continue
        rates = {1: [], 2: []}
        done: list = []
        for round_ in range(args.rounds + 1):
            for parts in (1, 2):
                rate = chunk_rate(stepper, parts, args.chunk, done)
                if round_:
                    rates[parts].append(rate)
        row = {"model": spec, "layers": 2, "chunk": args.chunk,
               "one_thread_best": round(max(rates[1])),
               "one_thread_median": round(statistics.median(rates[1])),
               "halves_best": round(max(rates[2])),
               "halves_median": round(statistics.median(rates[2])),
               "halves_gave_up_after": [d for d in done[1:] if d < args.chunk]}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
