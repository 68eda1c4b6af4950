#!/usr/bin/env python3
"""Training-step throughput of charrnn's CPU kernels, side by side with the PyTorch reference.

    python benchmarks/train_step.py --cell lstm --layers 2 --hidden 128 --batch 50 --seq-len 50

Times forward + backward + global-norm clipping + Adam on random data (compilation excluded),
then, when torch is importable and ../shared/bench/torch_reference.py exists, runs it with the
same settings in the same job. Prints one JSON object per implementation and one with the ratio.
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from charrnn.model import Model, ModelConfig
from charrnn.optim import Adam, clip_grad_norm

REFERENCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "bench" / "torch_reference.py"


def time_charrnn(a) -> dict:
    model = Model(ModelConfig(vocab_size=a.vocab, cell=a.cell, layers=a.layers, hidden=a.hidden))
    opt = Adam(model.params.size, lr=2e-3)
    rng = np.random.default_rng(0)
    x = rng.integers(0, a.vocab, (a.seq_len, a.batch))
    y = rng.integers(0, a.vocab, (a.seq_len, a.batch))
    for i in range(3 + a.iters):
        if i == 3:
            t0 = time.perf_counter()
        model.forward(x, y)
        model.grads[:] = 0
        model.backward()
        clip_grad_norm(model.grads, 5.0)
        opt.step(model.params, model.grads)
    dt = (time.perf_counter() - t0) / a.iters
    return {
        "impl": "charrnn", "cell": a.cell, "hidden": a.hidden, "layers": a.layers,
        "batch": a.batch, "seq_len": a.seq_len,
        "ms_per_iter": round(dt * 1e3, 3),
        "train_chars_per_s": round(a.batch * a.seq_len / dt, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def time_torch(a) -> dict | None:
    try:
        import torch  # noqa: F401
    except ImportError:
        return None
    if not REFERENCE.exists():
        return None
    cmd = [sys.executable, str(REFERENCE), "--cell", a.cell, "--layers", str(a.layers),
           "--hidden", str(a.hidden), "--batch", str(a.batch), "--seq-len", str(a.seq_len),
           "--vocab", str(a.vocab), "--iters", str(a.iters), "--sample-chars", "100"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell", default="lstm", choices=["lstm", "gru", "rnn"])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--seq-len", type=int, default=50)
    ap.add_argument("--vocab", type=int, default=65)
    ap.add_argument("--iters", type=int, default=20)
    a = ap.parse_args()
    ours = time_charrnn(a)
    print(json.dumps(ours))
    theirs = time_torch(a)
    if theirs is not None:
        print(json.dumps(theirs))
        print(json.dumps({"ratio_train_chars_per_s":
                          round(ours["train_chars_per_s"] / theirs["train_chars_per_s"], 3)}))


if __name__ == "__main__":
    main()
