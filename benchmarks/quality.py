#!/usr/bin/env python3
"""Learning curves for the same wall-clock budget: `charrnn train CORPUS --minutes M` with every
other option at its default, on each corpus and budget asked for, beside a hand-rolled PyTorch
2 x 256 LSTM (Adam 2e-3, batch 64, seq 100, clip 5, no dropout) on the same split (first 90%
train, last 10% validation).

    python benchmarks/quality.py --minutes 10 60 --corpus tinyshakespeare python-stdlib
        man-cyrillic --skip torch --json quality.json [--png quality.png]
        [--charrnn-args "--cell lstm --hidden 512"] [--torch-hidden 512]
        [--tree OLD_CHECKOUT]      # train with another checkout's charrnn (its defaults)
        [--include earlier.json]   # add runs measured earlier (same machine) to the JSON and plot

A corpus is a path, or tinyshakespeare (../shared/corpora) or one of the corpora that
benchmarks/quality_corpora.py builds from what this machine has installed (python-stdlib,
man-cyrillic; built once under $TMPDIR/charrnn-quality-corpora, never committed).

Both curves are validation loss (nats/char) against seconds spent training (evaluation time
excluded on both sides: charrnn's metrics.jsonl `elapsed_s`, the same clock for PyTorch).
Prints one JSON object per run and, at the end, a table of every run's last and best
validation loss; writes the runs to --json; draws --png when matplotlib is installed. Run
nothing else meanwhile: the runs take the machine one after the other. For a run that trained
several members (an ensemble) the curve is its first member's, and the last and best loss are
the ensemble's (the model `sample` reads), with `members` and `first_member_best`.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED_CORPORA = HERE.parent.parent / "shared" / "corpora"
BUILT_CORPORA = Path(os.environ.get("TMPDIR", "/tmp")) / "charrnn-quality-corpora"


def corpus_path(name: str) -> Path:
    """A corpus named on the command line: a path, tinyshakespeare, or one quality_corpora.py
    builds (once)."""
    if name == "tinyshakespeare":
        return SHARED_CORPORA / "tinyshakespeare.txt"
    sys.path.insert(0, str(HERE))
    import quality_corpora
    if name in quality_corpora.BUILDERS:
        return quality_corpora.build(name, BUILT_CORPORA)
    return Path(name)


def run_charrnn(corpus: Path, minutes: float, extra_args: list[str], tree: Path) -> dict:
    """`charrnn train corpus --minutes M` of the checkout at tree, run from a scratch folder."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        env = {**os.environ, "CHARRNN_STATE_DIR": tmp, "PYTHONPATH": str(tree)}
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "charrnn", "train", str(corpus.resolve()),
                        "--minutes", str(minutes), "--out", str(out), "-q", *extra_args],
                       check=True, env=env, cwd=tmp)
        wall = time.time() - t0
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        info = json.loads(subprocess.run(
            [sys.executable, "-m", "charrnn", "info", "--json", str(out)],
            capture_output=True, text=True, check=True, env=env, cwd=tmp).stdout)
        options, ensemble = info["options"], info.get("ensemble")
        revision = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                                  capture_output=True, text=True).stdout.strip()
    curve = [(r["elapsed_s"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    result = {"impl": "charrnn", "revision": revision, "corpus": corpus.name,
              "args": extra_args, "minutes": minutes, "options": options,
              "wall_s": round(wall, 1), "steps": max(r["step"] for r in rows), "curve": curve,
              "final_val_loss": curve[-1][1] if curve else None,
              "best_val_loss": min(v for _, v in curve) if curve else None}
    if ensemble:  # several members: the curve is the first's; the model is their ensemble
        result.update(members=ensemble["members"], first_member_best=result["best_val_loss"],
                      final_val_loss=ensemble["val_loss"], best_val_loss=ensemble["val_loss"])
    return result


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
    return {"impl": f"pytorch-{torch.__version__}", "corpus": corpus.name, "minutes": minutes,
            "options": {"cell": "lstm", "layers": layers, "hidden": hidden, "batch_size": batch,
                        "seq_len": seq, "lr": lr, "grad_clip": 5.0, "dropout": 0.0},
            "threads": torch.get_num_threads(), "steps": steps, "curve": curve,
            "final_val_loss": curve[-1][1], "best_val_loss": min(v for _, v in curve)}


def label(r: dict) -> str:
    o = r["options"]
    who = r["impl"] + (f" {r['revision']}" if r.get("revision") else "")
    extra = f" {' '.join(r['args'])}" if r.get("args") else ""
    members = f", {r['members']} members averaged" if r.get("members") else ""
    return (f"{who}{extra}, {r['minutes']:g} min: {o['layers']} x {o['hidden']} {o['cell']}, "
            f"dropout {o['dropout']:g}, weight drop {o.get('weight_drop') or 0:g}{members}")


def plot(results: list[dict], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return False
    corpora = list(dict.fromkeys(r.get("corpus", "tinyshakespeare.txt") for r in results))
    fig, axes = plt.subplots(len(corpora), 1, figsize=(8, 4.2 * len(corpora)), squeeze=False)
    for ax, corpus in zip(axes[:, 0], corpora):
        for r in results:
            if r.get("corpus", "tinyshakespeare.txt") != corpus:
                continue
            xs, ys = zip(*r["curve"])
            ax.plot(xs, ys, marker="o", ms=3,
                    label=f"{label(r)} (best {r['best_val_loss']:.3f})")
        ax.set_xlabel("seconds of training")
        ax.set_ylabel("validation loss (nats/char)")
        ax.set_title(f"{corpus}, last 10% held out")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def table(results: list[dict]) -> str:
    """Markdown: one row per run, its last and best validation loss."""
    rows = ["| corpus | run | minutes | steps | last | best |", "|---|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r.get('corpus', 'tinyshakespeare.txt')} | {label(r)} | "
                    f"{r['minutes']:g} | {r['steps']:,} | {r['final_val_loss']:.4f} | "
                    f"{r['best_val_loss']:.4f} |")
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--minutes", type=float, nargs="+", default=[10.0])
    ap.add_argument("--corpus", nargs="+", default=["tinyshakespeare"],
                    help="paths, or tinyshakespeare, python-stdlib, man-cyrillic")
    ap.add_argument("--json", type=Path, help="write the results here (a JSON list)")
    ap.add_argument("--png", type=Path, help="draw the curves here (needs matplotlib)")
    ap.add_argument("--skip", choices=["charrnn", "torch"], action="append", default=[])
    ap.add_argument("--charrnn-args", default="",
                    help="options added to charrnn's `train` (default: none, the defaults)")
    ap.add_argument("--tree", type=Path, default=HERE.parent,
                    help="the checkout whose charrnn trains (default: this one)")
    ap.add_argument("--torch-hidden", type=int, default=256, help="PyTorch LSTM width")
    ap.add_argument("--include", type=Path, action="append", default=[],
                    help="a JSON list written earlier by this script: its runs join the output")
    a = ap.parse_args()
    results = []
    for name in a.corpus:
        corpus = corpus_path(name)
        if not corpus.exists():
            sys.exit(f"quality.py: {corpus} not found (pass --corpus)")
        for minutes in a.minutes:
            if "charrnn" not in a.skip:
                results.append(run_charrnn(corpus, minutes, shlex.split(a.charrnn_args),
                                           a.tree.resolve()))
                print(json.dumps(results[-1]), flush=True)
            if "torch" not in a.skip:
                results.append(run_torch(corpus, minutes, hidden=a.torch_hidden))
                print(json.dumps(results[-1]), flush=True)
            if a.json:  # after every run: a long sweep cut short keeps what it measured
                a.json.write_text(json.dumps(results, indent=1) + "\n")
    for path in a.include:
        results += json.loads(path.read_text())
    if a.json:
        a.json.write_text(json.dumps(results, indent=1) + "\n")
    if a.png and results:
        plot(results, a.png)
    print(table(results), file=sys.stderr)


if __name__ == "__main__":
    main()
