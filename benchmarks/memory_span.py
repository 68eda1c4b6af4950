#!/usr/bin/env python3
"""Why LSTMs exist: how far back can each cell remember one character?

Each record of the synthetic corpus is a random key letter, k filler dots, the key again and a
newline ("B.....B\\n"); records follow each other in one long text. Every cell trains with the
same small budget (model size, steps, optimizer) for each gap k, and we report the accuracy of
its prediction of the recalled key (chance: 1 / number of keys).

    python benchmarks/memory_span.py [--cells lstm gru ...] [--gaps 5 10 20 50 100 200]

Prints one JSON object per (cell, k), then a Markdown table. The BPTT window is k + 10
characters, so the gradient can always reach from the recall back to the key.
"""

import argparse
import json
import time

import numpy as np

from charrnn import CELL_NAMES
from charrnn.batches import stream_matrix, windows
from charrnn.model import Model, ModelConfig
from charrnn.optim import Adam, clip_grad_norm
from charrnn.tokenizer import Vocab

KEYS = "ABCD"
VOCAB = Vocab.from_text(KEYS + ".\n")


def corpus(k: int, records: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, recall): the text's ids, and the positions whose next character is the recalled
    key (the last filler of each record)."""
    rng = np.random.default_rng(seed)
    keys = np.array(list(KEYS))[rng.integers(len(KEYS), size=records)]
    text = "".join(f"{key}{'.' * k}{key}\n" for key in keys)
    ids = VOCAB.encode(text)
    recall = np.arange(records) * (k + 3) + k  # index of the last '.' in each record
    return ids, recall


def train(cell: str, k: int, steps: int, hidden: int, batch: int, seed: int) -> Model:
    ids, _ = corpus(k, records=max(2000, steps * batch * (k + 10) // (k + 3) // 4), seed=seed)
    model = Model(ModelConfig(vocab_size=len(VOCAB), cell=cell, layers=1, hidden=hidden),
                  seed=seed)
    opt = Adam(model.params.size, lr=1e-2)
    streams = stream_matrix(ids, batch)
    step = 0
    while step < steps:
        h, c = model.zero_state(batch)
        for x, y in windows(streams, k + 10):
            model.forward(x, y, h, c)
            h, c = model.final_state()
            model.grads[:] = 0
            model.backward()
            clip_grad_norm(model.grads, 1.0)
            opt.step(model.params, model.grads)
            step += 1
            if step == steps:
                break
    return model


def recall_accuracy(model: Model, k: int, seed: int) -> float:
    """Share of held-out records whose key the model ranks first among the keys at the recall
    (which key, not when: knowing that a key comes after k dots is counting, not memory)."""
    ids, recall = corpus(k, records=400, seed=seed)
    x = ids[:-1].reshape(-1, 1)  # one stream: the state runs through the whole text
    model.forward(x, ids[1:].reshape(-1, 1))
    key_ids = VOCAB.encode(KEYS)
    predicted = key_ids[model.logits()[recall, 0][:, key_ids].argmax(axis=1)]
    return float(np.mean(predicted == ids[recall + 1]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", nargs="+", default=list(CELL_NAMES))
    ap.add_argument("--gaps", nargs="+", type=int, default=[5, 10, 20, 50, 100, 200])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    table = {}
    for cell in a.cells:
        for k in a.gaps:
            t = time.perf_counter()
            model = train(cell, k, a.steps, a.hidden, a.batch, a.seed)
            acc = recall_accuracy(model, k, a.seed + 1)
            table[cell, k] = acc
            print(json.dumps({"cell": cell, "gap": k, "recall_accuracy": acc,
                              "seconds": round(time.perf_counter() - t, 1)}), flush=True)
    print()
    print("| cell | " + " | ".join(f"k = {k}" for k in a.gaps) + " |")
    print("|---|" + "---|" * len(a.gaps))
    for cell in a.cells:
        print(f"| `{cell}` | " + " | ".join(f"{table[cell, k]:.0%}" for k in a.gaps) + " |")
    print(f"\nchance = {1 / len(KEYS):.0%}; {a.steps} steps of batch {a.batch}, window k + 10, "
          f"1 x {a.hidden}, Adam 1e-2, clip 1.")


if __name__ == "__main__":
    main()
