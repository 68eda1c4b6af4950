#!/usr/bin/env python3
"""Is a new cell worth building? Layer-normalised GRU and multiplicative LSTM, prototyped in
PyTorch, against the GRU and LSTM they would join, for the same number of steps.

    python benchmarks/cell_prototypes.py [--hidden 256] [--steps 1000] [--cells gru lngru ...]

Issue 25 names layer normalisation in the cell (Ba et al. 2016) and the multiplicative LSTM
(Krause et al. 2016). Building either in charrnn means CPU and CUDA kernels with a hand-written
backward pass, so this measures first what each buys per step on tinyshakespeare, with
charrnn's initialisation and training set-up written in PyTorch: the first 90% in B contiguous
streams, windows of T with the state carried over, Adam, a cosine schedule after a 2% warm-up,
global-norm clipping at 5; validation on the last 10%. What a cell costs per step in charrnn's
kernels is a separate question: the loss per step tells whether it is worth asking.

Prints one JSON object per validation, then a Markdown table of the last ones.
"""

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "tinyshakespeare.txt"


def uniform_(t: torch.Tensor, hidden: int) -> torch.Tensor:
    """PyTorch's own initialisation of its recurrent layers."""
    bound = 1 / math.sqrt(hidden)
    return nn.init.uniform_(t, -bound, bound)


def charrnn_init_(model: nn.Module, vocab: int, hidden: int) -> None:
    """charrnn's initialisation (model.init_params) where PyTorch's differs: one-hot input rows
    U(-1, 1), each gate's (H, H) recurrent block orthogonal (the mLSTM's m takes h's part), the
    LSTMs' forget-gate bias 1. Without it the baselines start with inputs 16x weaker, which
    layer normalisation would repair and be credited for."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.shape[0] == vocab and name.endswith(("w_x", "w_mx")) or \
                    name == "rnn.weight_ih_l0":
                nn.init.uniform_(p, -1.0, 1.0)
            elif name.endswith(("w_h", "w_mh", "w_m")) or name.startswith("rnn.weight_hh"):
                blocks = p.t() if name.startswith("rnn.") else p  # (H, gates x H)
                for g in range(blocks.shape[1] // hidden):
                    nn.init.orthogonal_(blocks[:, g * hidden:(g + 1) * hidden])
            elif name.startswith("rnn.bias_ih") and model.cell == "lstm":
                p[hidden:2 * hidden] = 1.0  # PyTorch's gate order: i, f, g, o
            elif name.endswith(".b") and model.cell == "mlstm":
                p[hidden:2 * hidden] = 1.0


class LayerNormGRUCell(nn.Module):
    """GRU with each gate group's input and recurrent sums normalised apart (Ba et al. 2016,
    section 3.1 applied to the GRU): r, z from LN(x W_x) + LN(h W_h) + b, the candidate from
    LN(x W_xn) + r * LN(h W_hn) + b_n."""

    def __init__(self, n_in: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.w_x = nn.Parameter(uniform_(torch.empty(n_in, 3 * hidden), hidden))
        self.w_h = nn.Parameter(uniform_(torch.empty(hidden, 3 * hidden), hidden))
        self.b = nn.Parameter(torch.zeros(3 * hidden))
        self.ln_x = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(3))
        self.ln_h = nn.ModuleList(nn.LayerNorm(hidden, bias=False) for _ in range(3))

    def forward(self, x, h):
        ax = [ln(a) for ln, a in zip(self.ln_x, (x @ self.w_x).chunk(3, -1))]  # 3 x (B, H)
        ah = [ln(a) for ln, a in zip(self.ln_h, (h @ self.w_h).chunk(3, -1))]
        br, bz, bn = self.b.chunk(3)
        r = torch.sigmoid(ax[0] + ah[0] + br)
        z = torch.sigmoid(ax[1] + ah[1] + bz)
        n = torch.tanh(ax[2] + bn + r * ah[2])
        return (1 - z) * n + z * h


class RecurrentLayerNormGRUCell(LayerNormGRUCell):
    """The layer-normalised GRU with the input side left plain: r, z from x W_x + b +
    LN(h W_h), the candidate from x W_xn + b_n + r * LN(h W_hn). charrnn forms x W_x + b for
    a whole window before its time loop, so this variant changes only the step."""

    def __init__(self, n_in: int, hidden: int):
        super().__init__(n_in, hidden)
        del self.ln_x  # unused: its parameters must not count

    def forward(self, x, h):
        ax = (x @ self.w_x + self.b).chunk(3, -1)  # 3 x (B, H)
        ah = [ln(a) for ln, a in zip(self.ln_h, (h @ self.w_h).chunk(3, -1))]
        r = torch.sigmoid(ax[0] + ah[0])
        z = torch.sigmoid(ax[1] + ah[1])
        n = torch.tanh(ax[2] + r * ah[2])
        return (1 - z) * n + z * h


class JointRecurrentLayerNormGRUCell(LayerNormGRUCell):
    """As RecurrentLayerNormGRUCell, but h W_h normalised as one 3H vector (one mean and one
    variance for r, z and n together, as Ba et al. normalise the LSTM's four gates)."""

    def __init__(self, n_in: int, hidden: int):
        super().__init__(n_in, hidden)
        del self.ln_x, self.ln_h  # unused: their parameters must not count
        self.ln_hj = nn.LayerNorm(3 * hidden, bias=False)

    def forward(self, x, h):
        ax = (x @ self.w_x + self.b).chunk(3, -1)  # 3 x (B, H)
        ah = self.ln_hj(h @ self.w_h).chunk(3, -1)
        r = torch.sigmoid(ax[0] + ah[0])
        z = torch.sigmoid(ax[1] + ah[1])
        n = torch.tanh(ax[2] + r * ah[2])
        return (1 - z) * n + z * h


class InputLayerNormGRUCell(LayerNormGRUCell):
    """The layer-normalised GRU with the recurrent side left as the GRU's (b_hn included):
    r, z from LN(x W_x) + h W_h, the candidate from LN(x W_xn) + r * (h W_hn + b_hn)."""

    def __init__(self, n_in: int, hidden: int):
        super().__init__(n_in, hidden)
        del self.b, self.ln_h  # unused (ln_x has its own bias): they must not count
        self.b_hn = nn.Parameter(torch.zeros(hidden))

    def forward(self, x, h):
        ax = [ln(a) for ln, a in zip(self.ln_x, (x @ self.w_x).chunk(3, -1))]  # 3 x (B, H)
        ah = (h @ self.w_h).chunk(3, -1)
        r = torch.sigmoid(ax[0] + ah[0])
        z = torch.sigmoid(ax[1] + ah[1])
        n = torch.tanh(ax[2] + r * (ah[2] + self.b_hn))
        return (1 - z) * n + z * h


class MultiplicativeLSTMCell(nn.Module):
    """mLSTM (Krause et al. 2016): m = (x W_mx) * (h W_mh) takes h's place in the LSTM's gates,
    so each input character chooses its own recurrent matrix."""

    def __init__(self, n_in: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.w_mx = nn.Parameter(uniform_(torch.empty(n_in, hidden), hidden))
        self.w_mh = nn.Parameter(uniform_(torch.empty(hidden, hidden), hidden))
        self.w_x = nn.Parameter(uniform_(torch.empty(n_in, 4 * hidden), hidden))
        self.w_m = nn.Parameter(uniform_(torch.empty(hidden, 4 * hidden), hidden))
        self.b = nn.Parameter(torch.zeros(4 * hidden))

    def forward(self, x, state):
        h, c = state
        m = (x @ self.w_mx) * (h @ self.w_mh)  # (B, H)
        i, f, g, o = (x @ self.w_x + m @ self.w_m + self.b).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class CharModel(nn.Module):
    """One-hot characters -> L stacked cells -> linear -> logits, as charrnn's model."""

    def __init__(self, cell: str, vocab: int, hidden: int, layers: int):
        super().__init__()
        self.cell, self.vocab, self.hidden, self.layers = cell, vocab, hidden, layers
        if cell in ("gru", "lstm"):  # PyTorch's own fused layers: the same arithmetic, faster
            self.rnn = (nn.GRU if cell == "gru" else nn.LSTM)(vocab, hidden, layers)
        else:
            make = {"lngru": LayerNormGRUCell, "lngru-h": RecurrentLayerNormGRUCell,
                    "lngru-hj": JointRecurrentLayerNormGRUCell,
                    "lngru-x": InputLayerNormGRUCell,
                    "mlstm": MultiplicativeLSTMCell}[cell]
            self.cells = nn.ModuleList(make(vocab if i == 0 else hidden, hidden)
                                       for i in range(layers))
        self.out = nn.Linear(hidden, vocab)
        charrnn_init_(self, vocab, hidden)

    def initial_state(self, batch: int):
        zeros = torch.zeros(self.layers, batch, self.hidden)
        return (zeros, zeros.clone()) if self.cell in ("lstm", "mlstm") else zeros

    def forward(self, ids, state):  # ids (T, B)
        x = F.one_hot(ids, self.vocab).float()  # (T, B, V)
        if self.cell in ("gru", "lstm"):
            y, state = self.rnn(x, state)
            return self.out(y), state
        new_state = []
        for i, cell in enumerate(self.cells):
            s = (state[0][i], state[1][i]) if self.cell == "mlstm" else state[i]
            outputs = []
            for t in range(x.shape[0]):
                s = cell(x[t], s)
                outputs.append(s[0] if self.cell == "mlstm" else s)
            x = torch.stack(outputs)  # (T, B, H)
            new_state.append(s)
        if self.cell == "mlstm":
            state = (torch.stack([s[0] for s in new_state]), torch.stack([s[1] for s in new_state]))
        else:
            state = torch.stack(new_state)
        return self.out(x), state


def detach(state):
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def streams(ids: torch.Tensor, batch: int) -> torch.Tensor:
    """(S, B): B contiguous streams, as charrnn's batcher."""
    length = ids.numel() // batch
    return ids[:length * batch].view(batch, length).t()


def validate(model: CharModel, val: torch.Tensor, batch: int, seq_len: int) -> float:
    data = streams(val, batch)
    state, total, count = model.initial_state(batch), 0.0, 0
    with torch.no_grad():
        for start in range(0, data.shape[0] - 1, seq_len):
            x, y = data[start:start + seq_len], data[start + 1:start + seq_len + 1]
            x = x[:y.shape[0]]
            logits, state = model(x, state)
            total += F.cross_entropy(logits.reshape(-1, model.vocab), y.reshape(-1),
                                     reduction="sum").item()
            count += y.numel()
    return total / count


def train(cell: str, text: str, a) -> list[dict]:
    torch.manual_seed(a.seed)
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text])
    cut = int(len(ids) * 0.9)
    train_ids, val_ids = ids[:cut], ids[cut:]
    model = CharModel(cell, len(chars), a.hidden, a.layers)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    warmup = min(100, max(1, int(0.02 * a.steps)))

    def lr_at(step):
        return a.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / a.steps))

    data = streams(train_ids, a.batch_size)
    state, position, rows, start = model.initial_state(a.batch_size), 0, [], time.perf_counter()
    for step in range(a.steps):
        if position + a.seq_len + 1 > data.shape[0]:  # a new epoch: streams start again
            state, position = model.initial_state(a.batch_size), 0
        x = data[position:position + a.seq_len]
        y = data[position + 1:position + a.seq_len + 1]
        position += a.seq_len
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        logits, state = model(x, detach(state))
        loss = F.cross_entropy(logits.reshape(-1, model.vocab), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        if (step + 1) % a.eval_every == 0 or step + 1 == a.steps:
            row = {"cell": cell, "hidden": a.hidden, "layers": a.layers, "params": params,
                   "step": step + 1, "train_loss": loss.item(),
                   "val_loss": validate(model, val_ids, a.batch_size, a.seq_len),
                   "seconds": round(time.perf_counter() - start, 1)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", nargs="+", default=["gru", "lngru", "lstm", "mlstm"],
                    choices=["gru", "lngru", "lngru-h", "lngru-hj", "lngru-x", "lstm",
                                                      "mlstm"])
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=100)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    text = a.corpus.read_text(encoding="utf-8")
    last = [train(cell, text, a)[-1] for cell in a.cells]
    print("| cell | params | steps | validation loss | seconds (PyTorch, not charrnn) |")
    print("|---|---|---|---|---|")
    for r in last:
        print(f"| {r['cell']} | {r['params']:,} | {r['step']} | {r['val_loss']:.4f} | "
              f"{r['seconds']} |")


if __name__ == "__main__":
    main()
