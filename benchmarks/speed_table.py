#!/usr/bin/env python3
"""The CPU speed table: charrnn beside PyTorch for LSTM and GRU at 2 x 128 to 2 x 1024 (batch
50, seq 50, vocabulary 65) and an LSTM 2 x 256 with a vocabulary of 4,000 (a Chinese corpus),
each measurement one `charrnn bench` run (both sides measured in the same run, so the ratios
hold on a noisy machine): training, sampling one stream and 8, 16 and 64 streams at once, and
the fractions of the machine's GEMM peak that training and 64-stream sampling reach. The peak is
this checkout's bench figure (the faster of BLAS's 2048 x 2048 product and the register tile's),
the median over its runs, and both tables' fractions are of it.

    python benchmarks/speed_table.py [--cells lstm gru] [--sizes 128 256 512 1024]
                                     [--vocab-row 256 4000 | --no-vocab-row] [--repeats 3]
                                     [--out results.jsonl] [--compare OLD_CHECKOUT]

A single run's ratio moves by 10-20% on this shared machine, so each row is measured --repeats
times, in rounds over all rows (the repeats of a row are spread over the whole run, not taken in
one quiet or busy minute), and the table gives each figure's median, with the range of the
training ratio. Before the first round one untimed run per cell loads or compiles the kernels,
so no timed process pays for compiling. --compare OLD_CHECKOUT measures another checkout too
(put first on PYTHONPATH), alternating with this one measurement by measurement, and prints a
table for each: a change's effect on speed, before and after in the same minutes. A checkout
from before `bench` timed several stream counts has its 8- and 16-stream figures timed after
its bench, the way bench times them; their ratios are to the PyTorch figures of this
checkout's runs of the same row.

Prints one JSON object per measurement, then a Markdown table per checkout.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parents[1])  # this checkout
sys.path.insert(0, HERE)
from charrnn.bench import BenchConfig, flops_per_char, sampling_flops_per_char  # noqa: E402
STREAMS = (8, 16)  # besides 1 and the 64 of --batched-samples

# One `charrnn bench --json` as the command does it, with the BenchConfig fields given as JSON,
# so that a checkout whose command lacks an option (--vocab) can still be measured. A checkout
# whose bench times one batch of streams only has the others timed here, the way bench does.
RUN_ONE = """
import dataclasses, json, sys
import numpy as np
from charrnn.bench import (TORCH_CELLS, bench_charrnn, best_time, ratios, run_torch_subprocess,
                           torch_available)
from charrnn.options import BenchConfig
fields = {f.name for f in dataclasses.fields(BenchConfig)}
given = json.loads(sys.argv[1])
torch, streams = given.pop("torch"), given.pop("streams")
config = BenchConfig(**{k: v for k, v in given.items() if k in fields})
result = bench_charrnn(config)
if "sample_batches_chars_per_s" not in result:
    from charrnn.model import Model, ModelConfig
    from charrnn.sample import SampleOptions, generate
    from charrnn.tokenizer import Vocab
    model = Model(ModelConfig(vocab_size=config.vocab, cell=config.cell, layers=config.layers,
                              hidden=config.hidden))
    vocab = Vocab(np.arange(32, 32 + config.vocab, dtype=np.uint32))
    def sample(n, batch):
        opts = SampleOptions(length=n, temperature=config.temperature, seed=0, num_samples=batch)
        for _ in generate(model, vocab, opts):
            pass
    n = config.sample_chars // 4
    rates = {}
    for b in streams:
        sample(10, b)
        rates[str(b)] = round(n * b / best_time(lambda: sample(n, b), config.repeats), 1)
    result["sample_batches_chars_per_s"] = rates
if torch and torch_available() and config.cell in TORCH_CELLS:
    theirs = run_torch_subprocess(config)
    result = {**result, **ratios(result, theirs), "pytorch": theirs}
print(json.dumps(result))
"""


def bench(tree: str, **config) -> dict:
    """One bench run of the checkout at tree (torch=True: PyTorch beside it)."""
    env = {**os.environ, "PYTHONPATH": tree}
    done = subprocess.run([sys.executable, "-c", RUN_ONE, json.dumps(config)],
                          capture_output=True, text=True, env=env, cwd=tree)
    if done.returncode:
        sys.exit(f"bench {config} in {tree} failed: {done.stderr.strip()}")
    return json.loads(done.stdout)


def measure(tree: str, cell: str, layers: int, hidden: int, vocab: int) -> dict:
    """One row's figures from the checkout at tree, 8 and 16 streams included. Fewer training
    steps per timing for the wide models (each still a second or more), so a round of the
    table stays within minutes."""
    iters = int(min(20, max(3, 20 * (256 / hidden) ** 2)))
    return bench(tree, cell=cell, layers=layers, hidden=hidden, vocab=vocab, iters=iters,
                 sample_batches=list(STREAMS), streams=list(STREAMS), torch=True)


FIGURES = ("train_chars_per_s", "sample_chars_per_s", "batched_sample_chars_per_s",
           "peak_rss_mb")


def flat(r: dict) -> dict:
    """A measurement's figures, the per-stream-count ones as keys of their own."""
    out = {k: r[k] for k in FIGURES}
    out.update({f"streams_{b}": v for b, v in r["sample_batches_chars_per_s"].items()})
    return out


def median_row(runs: list[dict], torch_runs: list[dict], peak: float) -> dict:
    """The median of each figure over the runs of one row: charrnn's, PyTorch's (from
    torch_runs: the runs of the row that have PyTorch's figures for every stream count) and
    the ratios; the fractions of the GEMM peak are of `peak`, one figure for every checkout
    (an old checkout's bench took BLAS's product alone for the peak)."""
    med = lambda values: statistics.median(values)  # noqa: E731
    ours = [flat(r) for r in runs]
    row = {k: med([o[k] for o in ours]) for k in ours[0]}
    config = BenchConfig(cell=runs[0]["cell"], layers=runs[0]["layers"],
                         hidden=runs[0]["hidden"], vocab=runs[0]["vocab"])
    row["fraction_of_peak"] = row["train_chars_per_s"] * flops_per_char(config) / 1e9 / peak
    row["batched_sample_fraction_of_peak"] = (row["batched_sample_chars_per_s"]
                                              * sampling_flops_per_char(config) / 1e9 / peak)
    row.update(cell=runs[0]["cell"], layers=runs[0]["layers"], hidden=runs[0]["hidden"],
               vocab=runs[0]["vocab"])
    if torch_runs:
        theirs = [flat(r["pytorch"]) for r in torch_runs]
        row["pytorch"] = {k: med([t[k] for t in theirs]) for k in theirs[0]}
        row["ratio"] = {k: row[k] / row["pytorch"][k] for k in row["pytorch"]}
        own = [r["ratio_train_chars_per_s"] for r in runs if "ratio_train_chars_per_s" in r]
        if own:  # training's ratio: each run's to the PyTorch run beside it
            row["ratio"]["train_chars_per_s"] = med(own)
            row["train_ratio_range"] = (min(own), max(own))
    return row


def print_table(rows: list[dict], repeats: int) -> None:
    streams = [f"streams_{b}" for b in STREAMS]
    print(f"| model | train chars/s (charrnn / PyTorch) | ratio, median of {repeats} (range) | "
          f"GEMM peak used, training | sample chars/s, 1 stream | ratio | "
          + " | ".join(f"{b} streams | ratio" for b in STREAMS)
          + " | 64 streams | ratio | GEMM peak used, 64 streams | peak RSS MB |")
    print("|---" * (9 + 2 * len(STREAMS)) + "|")
    for r in rows:
        t = r.get("pytorch")
        pair = lambda k: f"{r[k]:,.0f} / {t[k]:,.0f}" if t else f"{r[k]:,.0f}"  # noqa: E731
        ratio = lambda k: f"{r['ratio'][k]:.2f}x" if t else "-"  # noqa: E731
        pct = lambda k: f"{r[k]:.0%}"  # noqa: E731
        train_range = (f" ({r['train_ratio_range'][0]:.2f}-{r['train_ratio_range'][1]:.2f})"
                       if "train_ratio_range" in r else "")
        vocab = f", vocabulary {r['vocab']:,}" if r["vocab"] != 65 else ""
        print(f"| {r['cell'].upper()} {r['layers']} x {r['hidden']}{vocab} | "
              f"{pair('train_chars_per_s')} | {ratio('train_chars_per_s')}{train_range} | "
              f"{pct('fraction_of_peak')} | {pair('sample_chars_per_s')} | "
              f"{ratio('sample_chars_per_s')} | "
              + " | ".join(f"{pair(k)} | {ratio(k)}" for k in streams)
              + f" | {pair('batched_sample_chars_per_s')} | "
              f"{ratio('batched_sample_chars_per_s')} | "
              f"{pct('batched_sample_fraction_of_peak')} | {pair('peak_rss_mb')} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", nargs="+", default=["lstm", "gru"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[128, 256, 512, 1024])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab-row", nargs=2, type=int, default=[256, 4000],
                    metavar=("HIDDEN", "VOCAB"), help="an LSTM row with a large vocabulary")
    ap.add_argument("--no-vocab-row", action="store_true")
    ap.add_argument("--repeats", type=int, default=3, help="measurements of each row")
    ap.add_argument("--out", help="also append the JSON measurements to this file")
    ap.add_argument("--compare", metavar="OLD_CHECKOUT",
                    help="also measure this checkout, alternating with this one")
    a = ap.parse_args()
    trees = [HERE] + ([str(Path(a.compare).resolve())] if a.compare else [])
    shapes = [(cell, a.layers, hidden, 65) for cell in a.cells for hidden in a.sizes]
    if not a.no_vocab_row:
        shapes.append(("lstm", a.layers, *a.vocab_row))
    for tree in trees:
        for cell in {s[0] for s in shapes}:  # load or compile the kernels, untimed
            bench(tree, cell=cell, layers=a.layers, hidden=min(a.sizes), iters=1,
                  sample_chars=16, streams=[], torch=False)
    runs = {(tree, shape): [] for shape in shapes for tree in trees}
    for _ in range(a.repeats):
        for (tree, shape), done in runs.items():
            # which checkout, without this machine's paths
            row = {**measure(tree, *shape), "tree": "this" if tree == HERE else "compared"}
            print(json.dumps(row), flush=True)
            if a.out:
                with open(a.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
            done.append(row)
    # the GEMM peak: this checkout's measure (the faster of BLAS's product and the tile's),
    # the median over all its runs, for both tables
    peaks = {k: statistics.median(r[k] for shape in shapes for r in runs[(HERE, shape)])
             for k in ("gemm_peak_gflops", "blas_gemm_gflops", "tile_gemm_gflops")}
    print(f"\nGEMM peak {peaks['gemm_peak_gflops']:.0f} GFLOP/s (BLAS "
          f"{peaks['blas_gemm_gflops']:.0f}, register tile {peaks['tile_gemm_gflops']:.0f}; "
          f"medians of {sum(len(runs[(HERE, s)]) for s in shapes)} runs)")
    for tree in trees:
        print(f"\n{tree}:")
        rows = []
        for shape in shapes:
            # PyTorch's figures at every stream count: from the runs that have them
            with_torch = [r for t in trees for r in runs[(t, shape)] if "pytorch" in r
                          and "sample_batches_chars_per_s" in r["pytorch"]]
            rows.append(median_row(runs[(tree, shape)], with_torch, peaks["gemm_peak_gflops"]))
        print_table(rows, a.repeats)


if __name__ == "__main__":
    main()
