#!/usr/bin/env python3
"""charrnn beside PyTorch on a machine that is busy with other work: `charrnn bench --json` for
each shape while --busy other processes spin on the CPU for the whole run (each spinner stops
by itself after --seconds, and is killed when the run ends), so that both sides share the
cores with the same load. Prints one JSON object per run (with the busy count), then a Markdown
table of the ratios.

    python benchmarks/under_load.py [--busy 0 1 2] [--cells lstm] [--sizes 512]
                                    [--repeats 1] [--seconds 900] [--out rows.jsonl]
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
SPIN = ("import time, sys\nend = time.time() + float(sys.argv[1])\n"
        "while time.time() < end:\n    pass")
KEYS = [("train_chars_per_s", "train"), ("sample_chars_per_s", "1 stream")]


def bench(cell: str, hidden: int) -> dict:
    cmd = [sys.executable, "-m", "charrnn", "bench", "--json", "--cell", cell, "--hidden",
           str(hidden)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE)
    if done.returncode:
        sys.exit(f"{' '.join(cmd[2:])} failed: {done.stderr.strip()}")
    return json.loads(done.stdout)


def under_load(busy: int, seconds: float, cell: str, hidden: int) -> dict:
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN, str(seconds)])
                for _ in range(busy)]
    try:
        return {**bench(cell, hidden), "busy": busy}
    finally:
        for p in spinners:
            p.kill()
            p.wait()


def ratios(r: dict) -> list[float]:
    out = [r[f"ratio_{k}"] for k, _ in KEYS]
    out += [r["ratio_sample_batches_chars_per_s"][b] for b in sorted(
        r["ratio_sample_batches_chars_per_s"], key=int)]
    return out + [r["ratio_batched_sample_chars_per_s"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--busy", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cells", nargs="+", default=["lstm"], choices=["lstm", "gru", "rnn"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=900, help="the most a spinner runs")
    ap.add_argument("--out", help="also append the JSON rows to this file")
    a = ap.parse_args()
    import importlib.util
    if importlib.util.find_spec("torch") is None:
        sys.exit("under_load.py compares with PyTorch: pip install torch==2.13.0")
    rows = []
    for _ in range(a.repeats):
        for busy in a.busy:
            for cell in a.cells:
                for hidden in a.sizes:
                    row = under_load(busy, a.seconds, cell, hidden)
                    print(json.dumps(row), flush=True)
                    if a.out:
                        with open(a.out, "a") as f:
                            f.write(json.dumps(row) + "\n")
                    rows.append(row)
    streams = sorted(rows[0]["sample_batches_chars_per_s"], key=int)
    print("\n| model | other busy processes | training | 1 stream | "
          + " | ".join(f"{b} streams" for b in streams) + " | "
          f"{rows[0]['batched_samples']} streams |")
    print("|---" * (5 + len(streams)) + "|")
    for r in rows:
        print(f"| {r['cell'].upper()} {r['layers']} x {r['hidden']} | {r['busy']} | "
              + " | ".join(f"{x:.2f}x" for x in ratios(r)) + " |")


if __name__ == "__main__":
    main()
