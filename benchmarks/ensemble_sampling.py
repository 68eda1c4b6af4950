#!/usr/bin/env python3
"""What an ensemble costs at sampling: characters per second of `charrnn sample`'s loop for one
model and for ensembles of 2 and 3 members of the same shape, one stream and 64 at once, with
PyTorch sampling one model of that shape in the same run where torch has the cell (gru, lstm,
rnn; the default gru-ln it has not, so run it with --cell gru for the comparison). One JSON
object per line:

    python benchmarks/ensemble_sampling.py [--cell gru-ln --layers 3 --hidden 768]

Random weights: the arithmetic per character does not depend on them.
"""

import argparse
import json

import numpy as np

from charrnn.bench import best_time, run_torch_subprocess, torch_available
from charrnn.ensemble import Ensemble
from charrnn.model import Model, ModelConfig
from charrnn.options import BenchConfig, SampleOptions
from charrnn.sample import generate
from charrnn.tokenizer import Vocab


def rate(model, vocab, streams: int, chars: int, repeats: int) -> float:
    """Characters per second of `streams` samples of `chars` characters each, at once."""
    def sample(n):
        for _ in generate(model, vocab, SampleOptions(length=n, seed=0, num_samples=streams)):
            pass

    sample(10)  # compiled, packed, and the split tried
    return chars * streams / best_time(lambda: sample(chars), repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell", default="gru-ln")
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=65)
    ap.add_argument("--chars", type=int, default=400, help="per stream and timing")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    config = ModelConfig(vocab_size=args.vocab, cell=args.cell, layers=args.layers,
                         hidden=args.hidden)
    vocab = Vocab(np.arange(32, 32 + args.vocab, dtype=np.uint32))
    models = [Model(config, seed=seed) for seed in range(3)]
    shape = {"cell": args.cell, "layers": args.layers, "hidden": args.hidden}
    single = {}
    for streams in (1, 64):
        chars = args.chars * (4 if streams == 1 else 1)
        for k in (1, 2, 3):
            model = models[0] if k == 1 else Ensemble(models[:k])
            cps = rate(model, vocab, streams, chars, args.repeats)
            single.setdefault(streams, cps)
            print(json.dumps({**shape, "members": k, "streams": streams,
                              "chars_per_s": round(cps, 1),
                              "vs_one_member": round(cps / single[streams], 3)}), flush=True)
    if torch_available() and args.cell in ("gru", "lstm", "rnn"):
        torch = run_torch_subprocess(BenchConfig(cell=args.cell, layers=args.layers,
                                                 hidden=args.hidden, vocab=args.vocab,
                                                 iters=2, repeats=args.repeats,
                                                 sample_chars=args.chars * 4,
                                                 batched_samples=64, sample_batches=()))
        print(json.dumps({**shape, "pytorch_members": 1,
                          "chars_per_s_1_stream": torch.get("sample_chars_per_s"),
                          "chars_per_s_64_streams": torch.get("batched_sample_chars_per_s")}))


if __name__ == "__main__":
    main()
