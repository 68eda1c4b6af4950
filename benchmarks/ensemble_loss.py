#!/usr/bin/env python3
"""What averaging several trained models' predictions buys on the held-out text: models from
separate runs (of one config and vocabulary), scored alone and as an ensemble (charrnn's
Ensemble: the mean of their predicted probabilities).

Reads the held-out part of CORPUS as `charrnn train` validates it with the default --batch-size
and --seq-len (the last --val-frac, 64 streams with the state carried over windows of 100; a run
given other sizes validates with those) and prints, in nats/char, one JSON object per line:

    python benchmarks/ensemble_loss.py CORPUS RUN_DIR_OR_CHECKPOINT [...]

Each model alone should match the validation its run printed (a check of this reading). A run
of several members (--members) scores its ensemble.npz; this scores runs trained apart.
"""

import argparse
import json
from pathlib import Path

import numpy as np

from charrnn import checkpoint as ckpt_io
from charrnn.ensemble import Ensemble
from charrnn.loading import load_model
from charrnn.tokenizer import read_corpus, split
from charrnn.train import evaluate

VAL_BATCH, VAL_SEQ_LEN = 64, 100  # what training's validation reads by default


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus", type=Path)
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--val-frac", type=float, default=0.1)
    args = ap.parse_args()

    # each run's best (else latest) checkpoint: one model, not an ensemble it may have written
    loaded = [(path, *load_model(ckpt_io.resolve(path, ensemble=False))[:2])
              for path in args.models]
    vocab = loaded[0][2]
    if any(list(v.codepoints) != list(vocab.codepoints) for _, _, v in loaded):
        raise SystemExit("error: the models do not share one vocabulary")
    ids = np.asarray(read_corpus(args.corpus, vocab=vocab)[1])
    val = np.ascontiguousarray(split(ids, args.val_frac)[1])

    for path, model, _ in loaded:
        print(json.dumps({"model": str(path), "val_chars": len(val),
                          "loss_nats": round(evaluate(model, val, VAL_BATCH, VAL_SEQ_LEN), 5)}),
              flush=True)
    ensemble = Ensemble([model for _, model, _ in loaded])
    print(json.dumps({"ensemble_of": len(loaded),
                      "loss_nats": round(evaluate(ensemble, val, VAL_BATCH, VAL_SEQ_LEN), 5)}))


if __name__ == "__main__":
    main()
