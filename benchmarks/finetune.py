#!/usr/bin/env python3
"""Fine-tuning against training from scratch: a model trained --parent-minutes (10) on
tinyshakespeare, then --minutes (1) on a small text of another kind (corpora/grammar.txt by
default), beside --minutes on that text from scratch, and with --keep-vocab. Every run is
`charrnn train` with its defaults otherwise; each reports the best validation loss on the small
text's held-out 10%.

    python benchmarks/finetune.py [--parent-minutes 10] [--minutes 1] [--target FILE]
        [--corpus ../shared/corpora/tinyshakespeare.txt] [--json finetune.json]

Prints one JSON object per run, then a Markdown table. Run nothing else meanwhile: the runs are
timed by --minutes. --keep-vocab validates on what is left of the held-out text once the
characters tinyshakespeare never had are dropped, so its loss is over other text.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_CORPUS = HERE.parent.parent / "shared" / "corpora" / "tinyshakespeare.txt"
DEFAULT_TARGET = HERE.parent / "corpora" / "grammar.txt"


def train(corpus: Path, out: Path, minutes: float, *extra: str) -> dict:
    """One `charrnn train`: its wall time, steps and best validation loss."""
    env = {**os.environ, "CHARRNN_STATE_DIR": str(out.parent)}
    t0 = time.time()
    done = subprocess.run([sys.executable, "-m", "charrnn", "train", str(corpus), "--minutes",
                           str(minutes), "--out", str(out), "-q", *extra], env=env,
                          capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"charrnn train {corpus} {' '.join(extra)} failed: {done.stderr.strip()}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    vals = [r["val_loss"] for r in rows if r.get("val_loss") is not None]
    info = json.loads(subprocess.run([sys.executable, "-m", "charrnn", "info", "--json",
                                      str(out)], env=env, capture_output=True, text=True,
                                     check=True).stdout)
    return {"corpus": corpus.name, "args": list(extra), "minutes": minutes,
            "wall_s": round(time.time() - t0, 1), "steps": max(r["step"] for r in rows),
            "vocabulary": len(info["vocabulary"]), "best_val_loss": min(vals) if vals else None}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--target", type=Path, default=DEFAULT_TARGET)
    ap.add_argument("--parent-minutes", type=float, default=10.0)
    ap.add_argument("--minutes", type=float, default=1.0)
    ap.add_argument("--json", type=Path, help="also write the runs here")
    a = ap.parse_args()
    if not a.corpus.exists():
        sys.exit(f"{a.corpus} is missing: this benchmark needs the shared corpora")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        parent = Path(tmp) / "parent"
        for name, corpus, minutes, extra in [
                ("parent", a.corpus, a.parent_minutes, ()),
                ("from scratch", a.target, a.minutes, ()),
                ("--init-from", a.target, a.minutes, ("--init-from", str(parent))),
                ("--init-from --keep-vocab", a.target, a.minutes,
                 ("--init-from", str(parent), "--keep-vocab"))]:
            run = {"run": name, **train(corpus, Path(tmp) / name.replace(" ", "_"), minutes,
                                        *extra)}
            run["args"] = [str(x).replace(tmp, "TMP") for x in run["args"]]
            print(json.dumps(run), flush=True)
            runs.append(run)
    if a.json:
        a.json.write_text(json.dumps(runs, indent=1) + "\n")
    print("\n| run | text | minutes | steps | vocabulary | best validation (nats/char) |")
    print("|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['run']} | {r['corpus']} | {r['minutes']:g} | {r['steps']:,} | "
              f"{r['vocabulary']} | {r['best_val_loss']:.4f} |")


if __name__ == "__main__":
    main()
