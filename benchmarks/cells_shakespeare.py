#!/usr/bin/env python3
"""Validation loss on tiny-shakespeare per cell at the same wall-clock budget.

    python benchmarks/cells_shakespeare.py [--minutes 1.5] [--cells lstm gru ...]

Each cell trains with `charrnn train ../shared/corpora/tinyshakespeare.txt --minutes M` and the
same options (first 90% train, last 10% validation; the validation loss is read over its first
500,000 characters); prints one JSON object per cell, then a Markdown table.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from charrnn import CELL_NAMES

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt"
OPTIONS = ["--layers", "2", "--hidden", "128", "--batch-size", "32", "--seq-len", "64",
           "--lr", "0.005", "--grad-clip", "1", "--eval-every", "100000", "--epochs", "1000",
           "--quiet"]


def run(cell: str, minutes: float, work: Path) -> dict:
    out = work / cell
    env = {**os.environ, "CHARRNN_STATE_DIR": str(work / "state")}
    layers = ["--layers", "1"] if cell == "jordan" else []  # it does not stack
    subprocess.run([sys.executable, "-m", "charrnn", "train", str(CORPUS), "--cell", cell,
                    "--minutes", str(minutes), "--out", str(out), *OPTIONS, *layers],
                   check=True, env=env)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in rows if r.get("val_loss") is not None][-1]
    return {"cell": cell, "minutes": minutes, "steps": final["step"],
            "val_loss": final["val_loss"], "val_bits": final["val_loss"] / math.log(2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", nargs="+", default=list(CELL_NAMES))
    ap.add_argument("--minutes", type=float, default=1.5)
    a = ap.parse_args()
    if not CORPUS.exists():
        sys.exit(f"{CORPUS} is missing: this benchmark needs the shared corpora")
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for cell in a.cells:
            rows.append(run(cell, a.minutes, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    print()
    print("| cell | steps in the budget | validation loss, nats/char (bits/char) |")
    print("|---|---|---|")
    for r in sorted(rows, key=lambda r: r["val_loss"]):
        print(f"| `{r['cell']}` | {r['steps']} | {r['val_loss']:.3f} ({r['val_bits']:.3f}) |")
    print(f"\n{a.minutes:g} minutes each; options: {' '.join(OPTIONS[:-1])}")


if __name__ == "__main__":
    main()
