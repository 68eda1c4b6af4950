#!/usr/bin/env python3
"""Scale: encoding speed and training memory on a large corpus (default 1 GB), generated here
(corpora/grammar.txt repeated) and deleted afterwards; nothing large is committed.

    python benchmarks/big_corpus.py [--gb 1.0] [--dir /tmp/charrnn-big]

Prints one JSON object: the corpus size, encoding MB/s and peak RSS (read_corpus alone), and the
peak RSS of `charrnn train` on it (50 steps) against the size of the id array.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ENCODE = """
import json, sys, time
from charrnn.tokenizer import read_corpus
t = time.perf_counter()
vocab, ids = read_corpus(sys.argv[1], workdir=sys.argv[2])
dt = time.perf_counter() - t
hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]
print(json.dumps({"seconds": dt, "chars": int(len(ids)), "id_bytes": int(ids.nbytes),
                  "vocab": len(vocab), "peak_rss_mb": int(hwm) / 1024}))
"""


def make_corpus(path: Path, size: int) -> None:
    block = (ROOT / "corpora" / "grammar.txt").read_bytes()
    with open(path, "wb") as f:
        written = 0
        while written < size:
            f.write(block)
            written += len(block)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--dir", default="/tmp/charrnn-big")
    a = ap.parse_args()
    work = Path(a.dir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        corpus = work / "big.txt"
        make_corpus(corpus, int(a.gb * 1e9))
        size = corpus.stat().st_size
        # training first, so the children's peak RSS is the training process's own
        env = {**os.environ, "CHARRNN_STATE_DIR": str(work / "state")}
        cmd = [sys.executable, "-m", "charrnn", "train", str(corpus), "--out", str(work / "run"),
               "--hidden", "128", "--max-steps", "50", "--eval-every", "50", "--quiet"]
        t = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        train_s = time.perf_counter() - t
        train_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # bytes
        shutil.rmtree(work / "run")
        enc = json.loads(subprocess.run([sys.executable, "-c", ENCODE, str(corpus), str(work)],
                                        check=True, capture_output=True, text=True).stdout)
        print(json.dumps({
            "corpus_mb": round(size / 1e6, 1), "chars": enc["chars"], "vocab": enc["vocab"],
            "id_array_mb": round(enc["id_bytes"] / 1e6, 1),
            "encode_seconds": round(enc["seconds"], 2),
            "encode_mb_per_s": round(size / 1e6 / enc["seconds"], 1),
            "encode_peak_rss_mb": round(enc["peak_rss_mb"], 1),
            "train_50_steps_seconds": round(train_s, 1),
            "train_peak_rss_mb": round(train_rss / 1e6, 1),
            "train_peak_rss_over_id_array": round(train_rss / enc["id_bytes"], 3),
        }))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
