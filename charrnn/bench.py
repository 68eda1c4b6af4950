"""`charrnn bench`: training-step and sampling throughput on synthetic data, and the same work in
PyTorch (when it is importable) measured in the same run, so the ratios mean something on a
shared, noisy machine.

Each measurement is the best of several repeats (the least disturbed one), after warm-up, so
compilation is excluded. PyTorch runs in a subprocess (`python -m charrnn.bench --torch ...`)
so that each side's peak RSS is its own.
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import asdict

import numpy as np

from .cells import CELLS
from .options import BenchConfig


def peak_rss_mb() -> float:
    """Peak resident memory of this process image. VmHWM starts afresh at exec, unlike
    ru_maxrss, which a subprocess inherits from the process that forked it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


TORCH_CELLS = {"lstm", "gru", "rnn"}  # those torch.nn has; the others run without a comparison


def flops_per_char(c: BenchConfig) -> float:
    """Training FLOPs per character (cells.CellSpec.flops_per_char)."""
    return CELLS[c.cell].flops_per_char(c.layers, c.hidden, c.vocab)


def sampling_flops_per_char(c: BenchConfig) -> float:
    """Sampling FLOPs per character: the forward alone, a third of training's."""
    return flops_per_char(c) / 3


def gemm_peak_gflops(n: int = 2048) -> dict:
    """float32 GEMM throughput on an (n, n) x (n, n) product, GFLOP/s: "blas", the BLAS numba
    calls with its own threads; "tile", the register tile (cpu.tile_gemm, what training's large
    products run on), its rows split over training's worker threads; "peak", the faster, which
    the fractions of the peak are of (a fraction of a slower BLAS's rate alone can exceed 1)."""
    from .kernels import cpu
    from .model import _default_splitter
    from .parallel import row_ranges
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    out = np.empty_like(a)
    splitter = _default_splitter()  # training's worker threads
    shards = row_ranges(n, splitter.parts(n))

    def blas():
        cpu.matmul(a, a, out)

    def tile():
        splitter.map(lambda rows: cpu.tile_gemm(a[rows[0]:rows[1]], a, out[rows[0]:rows[1]],
                                                False, False, 0), shards)

    rates = {}
    for name, product in (("blas", blas), ("tile", tile)):
        product()
        rates[name] = 2 * n ** 3 / best_time(product, 3) / 1e9
    return {**rates, "peak": max(rates.values())}


def bench_charrnn(c: BenchConfig) -> dict:
    from .engine import make_engine
    from .model import Model, ModelConfig
    from .optim import Adam
    from .sample import SampleOptions, generate
    from .tokenizer import Vocab

    from . import memory
    config = ModelConfig(vocab_size=c.vocab, cell=c.cell, layers=c.layers, hidden=c.hidden)
    memory.check_fits(memory.training_bytes(config, c.seq_len, c.batch_size)
                      + memory.sampling_bytes(config, c.batched_samples),
                      f"timing a {c.layers} x {c.hidden} {c.cell} at batch {c.batch_size} x "
                      f"{c.seq_len}", "--hidden, --layers, --batch-size, --seq-len or "
                      "--batched-samples")
    model = Model(config)
    opt = Adam(model.params.size, lr=2e-3, splitter=model.splitter)
    rng = np.random.default_rng(0)
    x = rng.integers(0, c.vocab, (c.seq_len, c.batch_size))
    y = rng.integers(0, c.vocab, (c.seq_len, c.batch_size))

    # the training run's engine: the same step `charrnn train` takes on this device
    engine = make_engine(c.device, model, opt, *model.zero_state(c.batch_size))

    def train_iters(n):
        for _ in range(n):
            engine.step(x, y, None, 2e-3, 5.0)
        engine.take_loss()  # the GPU's steps are done once their loss has come back

    train_iters(3)
    dt = best_time(lambda: train_iters(c.iters), c.repeats) / c.iters

    vocab = Vocab(np.arange(32, 32 + c.vocab, dtype=np.uint32))

    def sample(n, batch):
        opts = SampleOptions(length=n, temperature=c.temperature, seed=0, num_samples=batch)
        for _ in generate(model, vocab, opts, device=c.device):
            pass

    def batched_rate(streams: int) -> float:
        """Characters per second of `streams` samples at once (c.sample_chars // 4 each)."""
        sample(10, streams)  # (too short to time a split: the first timed repeat tries both)
        n = c.sample_chars // 4
        return n * streams / best_time(lambda: sample(n, streams), c.repeats)

    sample(10, 1)
    st = best_time(lambda: sample(c.sample_chars, 1), c.repeats) / c.sample_chars
    batched = batched_rate(c.batched_samples)
    train_cps = c.batch_size * c.seq_len / dt
    rates = gemm_peak_gflops() if c.device == "cpu" else {}  # the GPU's: not measured
    peak = rates.get("peak")

    def fraction(gflops: float) -> float | None:
        return round(gflops / peak, 5) if peak else None

    sample_gflops = batched * sampling_flops_per_char(c) / 1e9
    return {
        "impl": "charrnn", **asdict(c),
        "ms_per_iter": round(dt * 1e3, 3),
        "train_chars_per_s": round(train_cps, 1),
        "sample_chars_per_s": round(1 / st, 1),
        "batched_sample_chars_per_s": round(batched, 1),
        "sample_batches_chars_per_s": {str(b): round(batched_rate(b), 1)
                                       for b in c.sample_batches},
        "train_gflops": round(train_cps * flops_per_char(c) / 1e9, 1),
        "gemm_peak_gflops": round(peak, 1) if peak else None,
        "blas_gemm_gflops": round(rates["blas"], 1) if rates else None,
        "tile_gemm_gflops": round(rates["tile"], 1) if rates else None,
        "fraction_of_peak": fraction(train_cps * flops_per_char(c) / 1e9),
        "batched_sample_gflops": round(sample_gflops, 3),
        "batched_sample_fraction_of_peak": fraction(sample_gflops),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def bench_torch(c: BenchConfig) -> dict:
    """The same work as a PyTorch user writes it: embedding -> nn.LSTM/GRU/RNN -> linear,
    cross-entropy, clip_grad_norm_, Adam; sampling one character at a time with temperature."""
    import torch
    import torch.nn as nn

    torch.manual_seed(0)
    rnn_cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[c.cell]

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(c.vocab, c.hidden)
            self.rnn = rnn_cls(c.hidden, c.hidden, c.layers)
            self.out = nn.Linear(c.hidden, c.vocab)

        def forward(self, ids, state=None):
            y, state = self.rnn(self.emb(ids), state)
            return self.out(y), state

    dev = torch.device(c.device)
    model = LM().to(dev)
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    x = torch.randint(0, c.vocab, (c.seq_len, c.batch_size), device=dev)
    y = torch.randint(0, c.vocab, (c.seq_len, c.batch_size), device=dev)

    def train_iters(n):
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            logits, _ = model(x)
            loss = nn.functional.cross_entropy(logits.reshape(-1, c.vocab), y.reshape(-1))
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
        if c.device == "cuda":
            torch.cuda.synchronize()

    train_iters(3)
    dt = best_time(lambda: train_iters(c.iters), c.repeats) / c.iters

    def sample(n, batch):
        with torch.no_grad():
            state, ch = None, torch.zeros(1, batch, dtype=torch.long, device=dev)
            for _ in range(n):
                logits, state = model(ch, state)
                p = torch.softmax(logits[0] / c.temperature, -1)
                ch = torch.multinomial(p, 1).view(1, batch)
                if c.device == "cuda":
                    ch.cpu()  # a streaming sampler hands each character to the host

    def batched_rate(streams: int) -> float:
        n = c.sample_chars // 16
        sample(10, streams)
        return n * streams / best_time(lambda: sample(n, streams), c.repeats)

    sample(10, 1)
    st = best_time(lambda: sample(c.sample_chars // 4, 1), c.repeats) / (c.sample_chars // 4)
    return {
        "impl": f"pytorch-{torch.__version__}", **asdict(c), "threads": torch.get_num_threads(),
        "ms_per_iter": round(dt * 1e3, 3),
        "train_chars_per_s": round(c.batch_size * c.seq_len / dt, 1),
        "sample_chars_per_s": round(1 / st, 1),
        "batched_sample_chars_per_s": round(batched_rate(c.batched_samples), 1),
        "sample_batches_chars_per_s": {str(b): round(batched_rate(b), 1)
                                       for b in c.sample_batches},
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def torch_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("torch") is not None


def run_torch_subprocess(c: BenchConfig) -> dict:
    cmd = [sys.executable, "-m", "charrnn.bench", "--torch", json.dumps(asdict(c))]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def ratios(ours: dict, theirs: dict) -> dict:
    keys = ["train_chars_per_s", "sample_chars_per_s", "batched_sample_chars_per_s"]
    out = {f"ratio_{k}": round(ours[k] / theirs[k], 3) for k in keys}
    out["ratio_sample_batches_chars_per_s"] = {
        b: round(ours["sample_batches_chars_per_s"][b] / rate, 3)
        for b, rate in theirs["sample_batches_chars_per_s"].items()}
    out["ratio_peak_rss"] = round(ours["peak_rss_mb"] / theirs["peak_rss_mb"], 3)
    return out


if __name__ == "__main__":  # the PyTorch side, in its own process
    ap = argparse.ArgumentParser()
    ap.add_argument("--torch", required=True, help="BenchConfig as JSON")
    print(json.dumps(bench_torch(BenchConfig(**json.loads(ap.parse_args().torch)))))


def table(result: dict) -> str:
    """A bench result as `charrnn bench` prints it: one row per figure, PyTorch's beside it
    with the ratio when it ran, and the fraction of the GEMM peak."""
    def by_streams(r: dict) -> dict:
        return {**r, **{f"batch_{b}": rate for b, rate in r["sample_batches_chars_per_s"].items()}}

    rows = [("train chars/s", "train_chars_per_s"),
            ("sample chars/s (batch 1)", "sample_chars_per_s"),
            *((f"sample chars/s (batch {b})", f"batch_{b}") for b in result["sample_batches"]),
            (f"sample chars/s (batch {result['batched_samples']})", "batched_sample_chars_per_s"),
            ("ms per training step", "ms_per_iter"), ("peak RSS MB", "peak_rss_mb")]
    ours, theirs = by_streams(result), result.get("pytorch")
    theirs = theirs and by_streams(theirs)
    lines = [f"{result['layers']} x {result['hidden']} {result['cell']}, vocabulary "
             f"{result['vocab']}, batch {result['batch_size']} x {result['seq_len']}"
             + (f"          charrnn      {theirs['impl']}" if theirs else "")]
    for label, key in rows:
        line = f"{label:<28}{ours[key]:>12,.1f}"
        if theirs:
            line += f"{theirs[key]:>12,.1f}   x{ours[key] / theirs[key]:.2f}"
        lines.append(line)
    if result["fraction_of_peak"] is not None:
        lines.append(f"training at {result['train_gflops']:.0f} GFLOP/s = "
                     f"{result['fraction_of_peak']:.0%} of this machine's GEMM peak "
                     f"({result['gemm_peak_gflops']:.0f} GFLOP/s); sampling "
                     f"{result['batched_samples']} streams at "
                     f"{result['batched_sample_gflops']:.0f} GFLOP/s = "
                     f"{result['batched_sample_fraction_of_peak']:.0%}")
    return "\n".join(lines)
