#!/usr/bin/env python3
"""The CPU speed table: charrnn beside PyTorch for LSTM and GRU at 2 x 128, 2 x 256, 2 x 512
(batch 50, seq 50, vocab 65), each measurement one `charrnn bench --json` run (both sides
measured in the same run, so the ratios hold on a noisy machine).

    python benchmarks/speed_table.py [--cells lstm gru] [--sizes 128 256 512] [--repeats 3]
                                     [--out results.jsonl] [--compare OLD_CHECKOUT]

A single run's ratio moves by 10-20% on this shared machine, so each row is measured --repeats
times, in rounds over all rows (the repeats of a row are spread over the whole run, not taken in
one quiet or busy minute), and the table gives each figure's median, with the range of the
training ratio. Before the first round one untimed run per cell loads or compiles the kernels,
so no timed process pays for compiling. --compare OLD_CHECKOUT measures another checkout too
(put first on PYTHONPATH), alternating with this one measurement by measurement, and prints a
table for each: a change's effect on speed, before and after in the same minutes.

Prints one JSON object per measurement, then a Markdown table.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parents[1])  # this checkout


def bench(tree: str, cell: str, layers: int, hidden: int, *extra: str) -> dict:
    """One `charrnn bench --json` of the checkout at tree."""
    cmd = [sys.executable, "-m", "charrnn", "bench", "--json", "--cell", cell,
           "--layers", str(layers), "--hidden", str(hidden), *extra]
    env = {**os.environ, "PYTHONPATH": tree}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree)
    if done.returncode:
        sys.exit(f"{' '.join(cmd[2:])} failed: {done.stderr.strip()}")
    return json.loads(done.stdout)


def median_row(runs: list[dict]) -> dict:
    """The median of each figure over the runs of one row (charrnn's, PyTorch's, the ratios)."""
    def med(get):
        return statistics.median(get(r) for r in runs)
    keys = ("train_chars_per_s", "sample_chars_per_s", "batched_sample_chars_per_s",
            "peak_rss_mb")
    row = {k: med(lambda r: r[k]) for k in keys + ("fraction_of_peak",)}
    row.update(cell=runs[0]["cell"], layers=runs[0]["layers"], hidden=runs[0]["hidden"])
    if all("pytorch" in r for r in runs):
        row["pytorch"] = {k: med(lambda r: r["pytorch"][k]) for k in keys}
        for k in ("train_chars_per_s", "sample_chars_per_s"):
            row["ratio_" + k] = med(lambda r: r["ratio_" + k])
        ratios = [r["ratio_train_chars_per_s"] for r in runs]
        row["train_ratio_range"] = (min(ratios), max(ratios))
    return row


def print_table(rows: list[dict], repeats: int) -> None:
    print(f"| cell | layers x hidden | train chars/s (charrnn / PyTorch) | ratio, median of "
          f"{repeats} (range) | sample chars/s, batch 1 (charrnn / PyTorch) | ratio | batch 64 "
          f"sample chars/s (charrnn / PyTorch) | peak RSS MB (charrnn / PyTorch) | GEMM peak "
          f"used |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        t = r.get("pytorch")
        pair = lambda k: f"{r[k]:,.0f} / {t[k]:,.0f}" if t else f"{r[k]:,.0f}"
        train_ratio = (f"{r['ratio_train_chars_per_s']:.2f}x ({r['train_ratio_range'][0]:.2f}-"
                       f"{r['train_ratio_range'][1]:.2f})") if t else "-"
        sample_ratio = f"{r['ratio_sample_chars_per_s']:.2f}x" if t else "-"
        print(f"| {r['cell']} | {r['layers']} x {r['hidden']} | {pair('train_chars_per_s')} | "
              f"{train_ratio} | {pair('sample_chars_per_s')} | {sample_ratio} | "
              f"{pair('batched_sample_chars_per_s')} | {pair('peak_rss_mb')} | "
              f"{r['fraction_of_peak']:.0%} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", nargs="+", default=["lstm", "gru"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[128, 256, 512])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="measurements of each row")
    ap.add_argument("--out", help="also append the JSON measurements to this file")
    ap.add_argument("--compare", metavar="OLD_CHECKOUT",
                    help="also measure this checkout, alternating with this one")
    a = ap.parse_args()
    trees = [HERE] + ([str(Path(a.compare).resolve())] if a.compare else [])
    for tree in trees:
        for cell in a.cells:  # load or compile the kernels, untimed
            bench(tree, cell, a.layers, min(a.sizes), "--no-torch", "--iters", "1",
                  "--sample-chars", "16")
    runs = {(tree, cell, hidden): [] for cell in a.cells for hidden in a.sizes
            for tree in trees}
    for _ in range(a.repeats):
        for (tree, cell, hidden), done in runs.items():
            row = {**bench(tree, cell, a.layers, hidden), "tree": tree}
            print(json.dumps(row), flush=True)
            if a.out:
                with open(a.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
            done.append(row)
    for tree in trees:
        print(f"\n{tree}:")
        print_table([median_row(done) for (t, *_), done in runs.items() if t == tree],
                    a.repeats)


if __name__ == "__main__":
    main()
