#!/usr/bin/env python3
"""What averaging several trained models' predictions would buy on the held-out text.

Reads the held-out part of CORPUS as `charrnn train` validates it with the default --batch-size
and --seq-len (the last --val-frac, 64 streams with the state carried over windows of 100; a run
given other sizes validates with those), runs each checkpoint over it, and
prints the loss of each model alone and of the mean of their predicted probabilities, in
nats/char, one JSON object per line:

    python benchmarks/ensemble_loss.py CORPUS RUN_DIR_OR_CHECKPOINT [...]

Each model alone should match the validation its run printed (a check of this reading); the
ensemble is the question. Every model must share the corpus's vocabulary.
"""

import argparse
import json
from pathlib import Path

import numpy as np

from charrnn.batches import stream_matrix, windows
from charrnn.loading import load_model
from charrnn.tokenizer import read_corpus, split

VAL_BATCH, VAL_SEQ_LEN = 64, 100  # what training's validation reads by default


def target_log_probs(model, ids: np.ndarray) -> np.ndarray:
    """log p(target) of every held-out position the validation reads, (N,) float64."""
    h, c = model.zero_state(VAL_BATCH)
    out = []
    for x, y in windows(stream_matrix(ids, VAL_BATCH), VAL_SEQ_LEN):
        model.forward(x, y, h, c)
        h, c = model.final_state()
        z = model.logits().astype(np.float64)  # (T, B, V)
        z -= z.max(axis=2, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=2, keepdims=True))
        out.append(np.take_along_axis(log_p, y[..., None].astype(np.int64), axis=2).ravel())
    return np.concatenate(out)


def ensemble_log_probs(log_probs: list[np.ndarray]) -> np.ndarray:
    """log of the mean of the models' probabilities at each position, (N,), from each model's
    (N,) log-probabilities."""
    return np.logaddexp.reduce(np.stack(log_probs), axis=0) - np.log(len(log_probs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus", type=Path)
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--val-frac", type=float, default=0.1)
    args = ap.parse_args()

    loaded = [(path, *load_model(path)[:2]) for path in args.models]
    vocab = loaded[0][2]
    if any(list(v.codepoints) != list(vocab.codepoints) for _, _, v in loaded):
        raise SystemExit("error: the models do not share one vocabulary")
    ids = np.asarray(read_corpus(args.corpus, vocab=vocab)[1])
    val = np.ascontiguousarray(split(ids, args.val_frac)[1])

    all_lp = []
    for path, model, _ in loaded:
        lp = target_log_probs(model, val)
        all_lp.append(lp)
        print(json.dumps({"model": str(path), "val_chars": len(val),
                          "loss_nats": round(float(-lp.mean()), 5)}), flush=True)
    ensemble = ensemble_log_probs(all_lp)
    print(json.dumps({"ensemble_of": len(all_lp), "loss_nats": round(float(-ensemble.mean()), 5)}))


if __name__ == "__main__":
    main()
