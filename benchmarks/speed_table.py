#!/usr/bin/env python3
"""The CPU speed table: charrnn beside PyTorch for LSTM and GRU at 2 x 128, 2 x 256, 2 x 512
(batch 50, seq 50, vocab 65), each row from one `charrnn bench --json` run (both measured in
the same run, so the ratios hold on a noisy machine).

    python benchmarks/speed_table.py [--cells lstm gru] [--sizes 128 256 512] [--out results.jsonl]

Prints one JSON object per row, then a Markdown table.
"""

import argparse
import json
import subprocess
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", nargs="+", default=["lstm", "gru"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[128, 256, 512])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--out", help="also append the JSON rows to this file")
    a = ap.parse_args()
    rows = []
    for cell in a.cells:
        for hidden in a.sizes:
            cmd = [sys.executable, "-m", "charrnn", "bench", "--json", "--cell", cell,
                   "--layers", str(a.layers), "--hidden", str(hidden)]
            row = json.loads(subprocess.run(cmd, capture_output=True, text=True,
                                            check=True).stdout)
            print(json.dumps(row), flush=True)
            if a.out:
                with open(a.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
            rows.append(row)
    print()
    print("| cell | layers x hidden | train chars/s (charrnn / PyTorch) | ratio | sample chars/s, "
          "batch 1 (charrnn / PyTorch) | ratio | batch 64 sample chars/s (charrnn / PyTorch) | "
          "peak RSS MB (charrnn / PyTorch) | GEMM peak used |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        t = r.get("pytorch", {})
        pair = lambda k: f"{r[k]:,.0f} / {t[k]:,.0f}" if t else f"{r[k]:,.0f}"
        ratio = lambda k: f"{r['ratio_' + k]:.2f}x" if t else "-"
        print(f"| {r['cell']} | {r['layers']} x {r['hidden']} | {pair('train_chars_per_s')} | "
              f"{ratio('train_chars_per_s')} | {pair('sample_chars_per_s')} | "
              f"{ratio('sample_chars_per_s')} | {pair('batched_sample_chars_per_s')} | "
              f"{pair('peak_rss_mb')} | {r['fraction_of_peak']:.0%} |")


if __name__ == "__main__":
    main()
