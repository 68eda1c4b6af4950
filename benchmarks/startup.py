#!/usr/bin/env python3
"""Start-up: the wall time of `charrnn --help` and of `charrnn sample --length 200` from a
trained checkpoint, with the compiled kernels cached, over alternating runs.

    python benchmarks/startup.py [--runs 8] [--checkpoint RUN_OR_NPZ] [--compare TREE ...]

Without --checkpoint it trains a 2 x 128 GRU on corpora/grammar.txt for 5 steps into a
temporary directory (the first run ever compiles the kernels there, untimed). --compare runs the
same commands with another checkout of charrnn first on PYTHONPATH (its kernels are warmed
first, untimed), alternating with this one run by run, so both see the same minutes of this
shared machine. Prints one JSON object per tree and command (median, min, max seconds), then a
Markdown table.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(argv: list[str], tree: str | None) -> float:
    """Seconds of wall time for `python -m charrnn ARGV` with tree first on PYTHONPATH. It runs
    in the temporary directory: `python -m` puts the working directory first on sys.path."""
    env = {**os.environ, "PYTHONPATH": tree} if tree else None
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "charrnn", *argv], env=env,
                          cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - t0
    if done.returncode:
        sys.exit(f"charrnn {' '.join(argv)} failed ({tree or 'the installed charrnn'}): "
                 f"{done.stderr.strip()}")
    return elapsed


def train_checkpoint(out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "charrnn", "train", str(ROOT / "corpora/grammar.txt"),
                    "--cell", "gru", "--hidden", "128", "--max-steps", "5", "--out", str(out),
                    "--quiet"], check=True)
    return out / "latest.npz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--compare", nargs="*", default=[],
                    help="other charrnn checkouts (a PYTHONPATH: DIR[:DIR...])")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = (args.checkpoint.resolve() if args.checkpoint
                else train_checkpoint(Path(tmp) / "run"))
        commands = {"charrnn --help": ["--help"],
                    "charrnn sample --length 200": ["sample", str(ckpt), "--length", "200",
                                                    "--seed", "0"]}
        trees = [None, *args.compare]
        for tree in trees:  # loads (or compiles) each tree's kernels, primed and not, untimed
            run(commands["charrnn sample --length 200"], tree)
            run([*commands["charrnn sample --length 200"], "--prime", "a"], tree)
        times = {(tree, name): [] for tree in trees for name in commands}
        for _ in range(args.runs):
            for name, argv in commands.items():
                for tree in trees:
                    times[tree, name].append(run(argv, tree))
    rows = []
    for (tree, name), ts in times.items():
        row = {"tree": tree or "installed", "command": name, "runs": len(ts),
               "median_s": round(statistics.median(ts), 3), "min_s": round(min(ts), 3),
               "max_s": round(max(ts), 3)}
        rows.append(row)
        print(json.dumps(row))
    print("\n| tree | command | median s (min-max) |\n|---|---|---|")
    for r in rows:
        print(f"| {r['tree']} | `{r['command']}` | {r['median_s']:.2f} "
              f"({r['min_s']:.2f}-{r['max_s']:.2f}) |")


if __name__ == "__main__":
    main()
