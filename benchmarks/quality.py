#!/usr/bin/env python3
"""Learning curves for the same wall-clock budget: `charrnn train CORPUS --minutes M` with every
other option at its default, beside a hand-rolled PyTorch 2 x 256 LSTM (Adam 2e-3, batch 64,
seq 100, clip 5, no dropout), on the same split (first 90% train, last 10% validation).

    python benchmarks/quality.py --minutes 10 [--corpus ../shared/corpora/tinyshakespeare.txt]
        [--json quality.json] [--png quality.png] [--skip charrnn|torch]
        [--charrnn-args "--cell lstm --hidden 512"] [--torch-hidden 512]
        [--include earlier.json]   # add runs measured earlier (same machine) to the JSON and plot

Both curves are validation loss (nats/char) against seconds spent training (evaluation time
excluded on both sides: charrnn's metrics.jsonl `elapsed_s`, the same clock for PyTorch).
Prints one JSON object per run and writes them to --json; draws --png when matplotlib is
installed. Run nothing else meanwhile: the two runs take the machine one after the other.
"""

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_CORPUS = HERE.parent.parent / "shared" / "corpora" / "tinyshakespeare.txt"


def run_charrnn(corpus: Path, minutes: float, extra_args: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        env = {**os.environ, "CHARRNN_STATE_DIR": tmp}
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "charrnn", "train", str(corpus), "--minutes",
                        str(minutes), "--out", str(out), "-q", *extra_args], check=True, env=env)
        wall = time.time() - t0
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        options = json.loads(subprocess.run(
            [sys.executable, "-m", "charrnn", "info", "--json", str(out / "latest.npz")],
            capture_output=True, text=True, check=True, env=env).stdout)["options"]
    curve = [(r["elapsed_s"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    return {"impl": "charrnn", "args": extra_args, "minutes": minutes, "options": options,
            "wall_s": round(wall, 1), "steps": max(r["step"] for r in rows), "curve": curve,
            "final_val_loss": curve[-1][1] if curve else None,
            "best_val_loss": min(v for _, v in curve) if curve else None}


def run_torch(corpus: Path, minutes: float, eval_every_s: float = 60.0, hidden: int = 256,
              layers: int = 2, batch: int = 64, seq: int = 100, lr: float = 2e-3) -> dict:
    import numpy as np
    import torch
    import torch.nn as nn

    torch.manual_seed(0)
    text = corpus.read_text(encoding="utf-8")
    chars = sorted(set(text))
    lut = {c: i for i, c in enumerate(chars)}
    ids = np.fromiter((lut[c] for c in text), dtype=np.int64, count=len(text))
    n_train = int(len(ids) * 0.9)
    train, val = ids[:n_train], ids[n_train:]
    V = len(chars)

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(V, hidden)
            self.rnn = nn.LSTM(hidden, hidden, layers)
            self.out = nn.Linear(hidden, V)

        def forward(self, x, state=None):
            y, state = self.rnn(self.emb(x), state)
            return self.out(y), state

    def streams(a):  # (S, B): B contiguous streams, as charrnn's batcher
        S = len(a) // batch
        return torch.from_numpy(a[:S * batch].reshape(batch, S).T.copy())

    model = LM()
    opt = torch.optim.Adam(model.parameters(), lr)
    tr, va = streams(train), streams(val)

    def evaluate():
        model.eval()
        total, count, state = 0.0, 0, None
        with torch.no_grad():
            for p in range(0, va.shape[0] - 1, seq):
                x, y = va[p:p + seq], va[p + 1:p + seq + 1]
                x = x[:y.shape[0]]
                logits, state = model(x, state)
                total += nn.functional.cross_entropy(logits.reshape(-1, V), y.reshape(-1),
                                                     reduction="sum").item()
                count += y.numel()
        model.train()
        return total / count

    trained, next_eval, pos, state, steps, curve = 0.0, eval_every_s, 0, None, 0, []
    budget = minutes * 60
    while trained < budget:
        t0 = time.perf_counter()
        if pos + seq + 1 > tr.shape[0]:
            pos, state = 0, None
        x, y = tr[pos:pos + seq], tr[pos + 1:pos + seq + 1]
        pos += seq
        if state is not None:
            state = tuple(s.detach() for s in state)
        logits, state = model(x, state)
        loss = nn.functional.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        steps += 1
        trained += time.perf_counter() - t0
        if trained >= next_eval or trained >= budget:
            curve.append((round(trained, 2), evaluate()))
            next_eval += eval_every_s
    return {"impl": f"pytorch-{torch.__version__}", "minutes": minutes,
            "options": {"cell": "lstm", "layers": layers, "hidden": hidden, "batch_size": batch,
                        "seq_len": seq, "lr": lr, "grad_clip": 5.0, "dropout": 0.0},
            "threads": torch.get_num_threads(), "steps": steps, "curve": curve,
            "final_val_loss": curve[-1][1], "best_val_loss": min(v for _, v in curve)}


def plot(results: list[dict], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in results:
        xs, ys = zip(*r["curve"])
        o = r["options"]
        ax.plot(xs, ys, marker="o", ms=3, label=f"{r['impl']} {o['layers']} x {o['hidden']} "
                                                 f"{o['cell']} (best {r['best_val_loss']:.3f})")
    ax.set_xlabel("seconds of training")
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_title(f"tinyshakespeare, {results[0]['minutes']:g} minutes, same split")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--json", type=Path, help="write the results here (a JSON list)")
    ap.add_argument("--png", type=Path, help="draw both curves here (needs matplotlib)")
    ap.add_argument("--skip", choices=["charrnn", "torch"], action="append", default=[])
    ap.add_argument("--charrnn-args", default="",
                    help="options added to charrnn's `train` (default: none, the defaults)")
    ap.add_argument("--torch-hidden", type=int, default=256, help="PyTorch LSTM width")
    ap.add_argument("--include", type=Path, action="append", default=[],
                    help="a JSON list written earlier by this script: its runs join the output")
    a = ap.parse_args()
    if not a.corpus.exists():
        sys.exit(f"quality.py: {a.corpus} not found (pass --corpus)")
    results = []
    if "charrnn" not in a.skip:
        results.append(run_charrnn(a.corpus, a.minutes, shlex.split(a.charrnn_args)))
        print(json.dumps(results[-1]), flush=True)
    if "torch" not in a.skip:
        results.append(run_torch(a.corpus, a.minutes, hidden=a.torch_hidden))
        print(json.dumps(results[-1]), flush=True)
    for path in a.include:
        results += json.loads(path.read_text())
    if a.json:
        a.json.write_text(json.dumps(results, indent=1) + "\n")
    if a.png and results:
        plot(results, a.png)
    if all(math.isfinite(r["best_val_loss"]) for r in results):
        for r in results:
            print(f"{r['impl']}: best validation {r['best_val_loss']:.4f} nats/char after "
                  f"{r['steps']} steps", file=sys.stderr)


if __name__ == "__main__":
    main()
