#!/usr/bin/env python3
"""The ways CpuStepper can run a chunk of B streams (charrnn/stepper.py), the same model, rows
and chunk, alternating: WHOLE (one thread), ROWS (shards of rows, one a thread) and HALVES
(halves of every layer's units on two threads, charrnn/halves.py), where each can run.
Characters a second, and the steps after which the halves gave up (their threads kept waiting
on each other), if they did.

    python benchmarks/split_ways.py [--models lstm:256:65 gru:512:65 ...] [--streams 1 8 16 64]
                                    [--chunk 256] [--rounds 5] [> FILE.jsonl]

A model is CELL:HIDDEN:VOCAB, two layers, random weights. Each round times one chunk each way
(the first round also compiles and is dropped); prints one JSON object per model and number of
streams with the best and median of each way, then nothing else. benchmarks/bandwidth.py gives
the bound one stream approaches.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from charrnn import halves  # noqa: E402
from charrnn.model import Model, ModelConfig  # noqa: E402
from charrnn.parallel import StreamSplitter  # noqa: E402
from charrnn.stepper import HALVES, WHOLE, CpuStepper  # noqa: E402

DEFAULT_MODELS = ["lstm:256:65", "gru:256:65", "gru:512:65", "lstm:512:65", "lstm:256:4000",
                  "gru:1024:65", "lstm:1024:65"]


def chunk_rate(stepper: CpuStepper, way: str, B: int, n: int, halves_done: list) -> float:
    """Characters a second of one chunk of n steps of B streams run `way` (the steps the halves
    did are appended to halves_done; the stepper finishes the rest on one thread)."""
    stepper.arrange([], [np.array([1 + b % 7], np.int32) for b in range(B)])
    x, out = np.full(B, 2, np.int32), np.zeros((n, B), np.int32)
    uniforms = np.random.default_rng(0).random((n, B))
    generate = halves.generate

    def counted(*args, **kwargs):
        halves_done.append(generate(*args, **kwargs))
        return halves_done[-1]

    halves.generate = counted
    try:
        start = time.perf_counter()
        stepper._run(way, stepper.h, stepper.c, x, np.full((n, B), -1, np.int32),
                     np.ones(B), np.zeros(B, np.int64), np.ones(B), uniforms, out)
        return n * B / (time.perf_counter() - start)
    finally:
        halves.generate = generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    ap.add_argument("--streams", nargs="+", type=int, default=[1, 8, 16, 64])
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    for spec in args.models:
        cell, hidden, vocab = spec.split(":")
        model = Model(ModelConfig(vocab_size=int(vocab), cell=cell, layers=2,
                                  hidden=int(hidden)), seed=3)
        stepper = CpuStepper(model, StreamSplitter(threads=2, min_rows=2))
        for B in args.streams:
            choice = stepper._split_choice(B)
            ways = list(choice.seconds) if choice else [WHOLE]
            rates: dict[str, list[float]] = {way: [] for way in ways}
            done: list = []
            for round_ in range(args.rounds + 1):
                for way in ways:
                    rate = chunk_rate(stepper, way, B, args.chunk, done)
                    if round_:
                        rates[way].append(rate)
            row = {"model": spec, "layers": 2, "streams": B, "chunk": args.chunk}
            for way, got in rates.items():
                row[f"{way}_best"] = round(max(got))
                row[f"{way}_median"] = round(statistics.median(got))
            if HALVES in rates:
                row["halves_gave_up_after"] = [d for d in done[1:] if d < args.chunk]
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
