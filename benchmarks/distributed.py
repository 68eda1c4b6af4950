#!/usr/bin/env python3
"""`mpirun -n N charrnn train` on this machine, and a model of it on a cluster.

    python benchmarks/distributed.py [--hidden 512,1024] [--batch 64] [--steps 40] [--repeats 2]
                                     [--json F] [--rows F]

Measured (each on the same corpus, batch and options, GRU 2 x HIDDEN, batch BATCH x 64): training
characters/s of 1 rank x 1 thread, 2 ranks x 1 thread (`mpiexec -n 2` on 127.0.0.1: shared
memory) and, for reference, 1 rank x 2 threads (charrnn's default on two cores). The rate is
the median of metrics.jsonl's chars_per_sec after the first record (the first includes warm-up),
the best of --repeats runs; the configurations alternate within each repeat (the machine is
shared). Goal of issue 23: 2 ranks >= 1.8x 1 rank at 2 x 512.

Then, on paper, a cluster of machines like this one joined by 10 and 100 Gb/s Ethernet: bytes
all-reduced per step (4 x parameters: float32 gradients), a ring all-reduce's time
(2 (N - 1) / N x bytes / bandwidth + 2 (N - 1) x LATENCY_S), against the compute time of a step
(from the 1 rank x 2 threads rate measured at each width; for 3 x 2048, the median cost per
parameter and character of the measured widths, times its parameters), with no overlap of the
two: the efficiency (compute / (compute + all-reduce)) at 8 and 64 machines, and the number of
machines at which it falls under 90%, each machine keeping its batch of BATCH streams (so the
global batch grows: BATCH x N streams).
Prints one JSON object per measurement and Markdown tables. Only 127.0.0.1 is used.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from charrnn.model import ModelConfig, ParamLayout
from charrnn.synthetic import MarkovSource

ALPHABET = "".join(chr(c) for c in range(32, 32 + 65))
SEQ = 64
# loopback only (as tests/test_distributed.py): MPI's network transports on the lo interface
LOOPBACK_ENV = {"UCX_NET_DEVICES": "lo", "FI_TCP_IFACE": "lo", "FI_SOCKETS_IFACE": "lo"}
LATENCY_S = 20e-6  # one message's latency on Ethernet with a kernel TCP stack (assumed)
LINKS = {"10 Gb/s": 10e9 / 8, "100 Gb/s": 100e9 / 8}  # bytes/s


def gru_params(layers: int, hidden: int, vocab: int = len(ALPHABET)) -> int:
    """Parameters of charrnn's GRU of this shape, from the model's own layout."""
    return ParamLayout(ModelConfig(vocab_size=vocab, cell="gru", layers=layers,
                                   hidden=hidden)).size


def mpiexec() -> str:
    found = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or \
        shutil.which("mpiexec")
    if found is None:
        sys.exit("mpiexec not found: pip install mpi4py mpich")
    return found


def rate(work: Path, hidden: int, batch: int, steps: int, ranks: int, threads: int,
         tag: str) -> float:
    out = work / f"run-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, **LOOPBACK_ENV, "NO_COLOR": "1", "CHARRNN_THREADS": str(threads),
           "OPENBLAS_NUM_THREADS": str(threads), "CHARRNN_STATE_DIR": str(work / "state")}
    command = [sys.executable, "-m", "charrnn", "train", "corpus.txt", "--cell", "gru",
               "--layers", "2", "--hidden", str(hidden), "--batch-size", str(batch),
               "--seq-len", str(SEQ), "--max-steps", str(steps),
               "--eval-every", str(10 * steps), "--out", str(out), "--quiet"]
    if ranks > 1:
        command = [mpiexec(), "-iface", "lo", "-n", str(ranks), *command]
    subprocess.run(command, cwd=work, env=env, check=True, stdin=subprocess.DEVNULL)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["chars_per_sec"] for r in records if "chars_per_sec" in r][1:]
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", default="512,1024")
    ap.add_argument("--batch", type=int, default=64, help="streams (charrnn's default, 64)")
    ap.add_argument("--steps", type=int, default=40, help="logged every 10")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--rows", type=Path, help="report from rows written by --json, untimed")
    args = ap.parse_args()
    widths = [int(h) for h in args.hidden.split(",")]
    if args.rows:
        report([json.loads(line) for line in args.rows.read_text().splitlines()], widths)
        return
    configs = [("1 rank x 1 thread", 1, 1), ("2 ranks x 1 thread", 2, 1),
               ("1 rank x 2 threads", 1, 2)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="distributed-") as tmp:
        work = Path(tmp)
        text = MarkovSource(alphabet=ALPHABET, order=2, seed=0).sample_text(400_000)
        (work / "corpus.txt").write_text(ALPHABET + text, encoding="utf-8")
        for hidden in widths:
            best = {name: 0.0 for name, *_ in configs}
            for _ in range(args.repeats):
                for name, ranks, threads in configs:
                    r = rate(work, hidden, args.batch, args.steps, ranks, threads,
                             f"{hidden}-{ranks}-{threads}")
                    best[name] = max(best[name], r)
            for name, ranks, threads in configs:
                row = {"measure": "train", "model": f"2 x {hidden} gru", "config": name,
                       "ranks": ranks, "threads": threads, "chars_per_s": round(best[name], 1),
                       "params": gru_params(2, hidden), "batch": args.batch, "seq_len": SEQ}
                rows.append(row)
                print(json.dumps(row), flush=True)
    report(rows, widths)
    if args.json:
        args.json.write_text("".join(json.dumps(r) + "\n" for r in rows))


def report(rows: list[dict], widths: list[int]) -> None:
    by = {(r["model"], r["config"]): r["chars_per_s"] for r in rows}
    streams = rows[0]["batch"]
    print(f"\nOn {os.cpu_count()} cores, GRU, batch {streams} x {SEQ}, the best of the repeats:\n")
    print("| model | 1 rank x 1 thread | 2 ranks x 1 thread | speed-up | 1 rank x 2 threads |")
    print("|---|---|---|---|---|")
    for h in widths:
        m = f"2 x {h} gru"
        one, two, threads = (by[(m, c)] for c in ("1 rank x 1 thread", "2 ranks x 1 thread",
                                                  "1 rank x 2 threads"))
        print(f"| {m} | {one:,.0f} | {two:,.0f} | {two / one:.2f}x | {threads:,.0f} |")
    # a machine's compute time per character: 1 rank x 2 threads on this machine (its best use
    # of both cores) where measured; for 3 x 2048, scaled by parameters
    seconds_per_char = {f"2 x {h}": 1 / by[(f"2 x {h} gru", "1 rank x 2 threads")]
                        for h in widths}
    per_param_char = statistics.median(seconds_per_char[f"2 x {h}"] / gru_params(2, h)
                                       for h in widths)
    seconds_per_char["3 x 2048"] = per_param_char * gru_params(3, 2048)
    models = [(name, gru_params(3 if name == "3 x 2048" else 2, int(name.split()[-1])))
              for name in seconds_per_char]
    print(f"\nOn paper: machines like this one, each with {streams} streams of {SEQ} characters "
          f"per step (global batch {streams} x N); ring all-reduce, latency {LATENCY_S * 1e6:g} us "
          f"per message, no overlap with compute.\n")
    print("| model | parameters | all-reduced per step | compute per step | ring all-reduce "
          "at N = 8: 10 / 100 Gb/s | efficiency at N = 8, 64: 10 Gb/s; 100 Gb/s | machines "
          "at 90% efficiency: 10 / 100 Gb/s (global batch at 10 Gb/s) |")
    print("|---|---|---|---|---|---|---|")
    for name, params in models:
        size = 4 * params
        compute = streams * SEQ * seconds_per_char[name]

        def ring(n: int, bandwidth: float) -> float:
            return 2 * (n - 1) / n * size / bandwidth + 2 * (n - 1) * LATENCY_S

        def efficiency(n: int, bandwidth: float) -> float:
            return compute / (compute + ring(n, bandwidth))

        def limit(bandwidth: float) -> int | None:
            return next((n for n in range(2, 100_001) if efficiency(n, bandwidth) < 0.9), None)
        at8 = " / ".join(f"{ring(8, b) * 1e3:.1f} ms" for b in LINKS.values())
        eff = "; ".join(", ".join(f"{efficiency(n, b):.0%}" for n in (8, 64))
                        for b in LINKS.values())
        ten, hundred = limit(LINKS["10 Gb/s"]), limit(LINKS["100 Gb/s"])
        shown = " / ".join("over 100,000" if n is None else f"{n:,}" for n in (ten, hundred))
        batch = "" if ten is None else f" ({streams * ten:,} streams)"
        print(f"| {name} | {params / 1e6:.1f} M | {size / 1e6:.0f} MB | {compute * 1e3:.0f} ms "
              f"| {at8} | {eff} | {shown}{batch} |")


if __name__ == "__main__":
    main()
