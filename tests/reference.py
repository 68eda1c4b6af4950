"""Slow, obvious reference implementations written straight from the equations (numpy, one time
step and one gate at a time, one-hot inputs as a real matmul). Tests compare the kernels to these.
"""

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def lstm_cell(x, h, c, W_x, W_h, b):
    H = h.shape[1]
    a = x @ W_x + h @ W_h + b
    i = sigmoid(a[:, :H])
    f = sigmoid(a[:, H:2 * H])
    g = np.tanh(a[:, 2 * H:3 * H])
    o = sigmoid(a[:, 3 * H:])
    c = f * c + i * g
    return o * np.tanh(c), c


def gru_cell(x, h, W_x, W_h, b, b_hn):
    H = h.shape[1]
    ax = x @ W_x + b
    ah = h @ W_h
    r = sigmoid(ax[:, :H] + ah[:, :H])
    z = sigmoid(ax[:, H:2 * H] + ah[:, H:2 * H])
    n = np.tanh(ax[:, 2 * H:] + r * (ah[:, 2 * H:] + b_hn))
    return (1.0 - z) * n + z * h


def layer_norm_blocks(a, gain, bias, blocks=3, eps=1e-5):
    """Each of the `blocks` equal column blocks of a normalised apart, then * gain + bias."""
    out = []
    for part in np.split(a, blocks, axis=-1):
        mean = part.mean(axis=-1, keepdims=True)
        var = ((part - mean) ** 2).mean(axis=-1, keepdims=True)
        out.append((part - mean) / np.sqrt(var + eps))
    return np.concatenate(out, axis=-1) * gain + bias


def gru_ln_cell(x, h, W_x, W_h, b, ln_gain_b_hn):
    """The GRU on a layer-normalised input projection: ln_gain_b_hn holds the gains (3H) and
    the GRU's b_hn (H)."""
    H = h.shape[1]
    gain, b_hn = ln_gain_b_hn[:3 * H], ln_gain_b_hn[3 * H:]
    ax = layer_norm_blocks(x @ W_x, gain, b)
    ah = h @ W_h
    r = sigmoid(ax[:, :H] + ah[:, :H])
    z = sigmoid(ax[:, H:2 * H] + ah[:, H:2 * H])
    n = np.tanh(ax[:, 2 * H:] + r * (ah[:, 2 * H:] + b_hn))
    return (1.0 - z) * n + z * h


def rnn_cell(x, h, W_x, W_h, b):
    return np.tanh(x @ W_x + h @ W_h + b)


def gru_classic_cell(x, h, W_x, W_h, b, W_hn):
    """Cho et al. (2014): the reset gate acts before W_hn, and z weighs the new state."""
    H = h.shape[1]
    ax = x @ W_x + b
    rz = sigmoid(ax[:, :2 * H] + h @ W_h)
    r, z = rz[:, :H], rz[:, H:]
    n = np.tanh(ax[:, 2 * H:] + (r * h) @ W_hn)
    return (1.0 - z) * h + z * n


def irnn_cell(x, h, W_x, W_h, b):
    return np.maximum(x @ W_x + h @ W_h + b, 0.0)


def coupled_lstm_cell(x, h, c, W_x, W_h, b):
    H = h.shape[1]
    a = x @ W_x + h @ W_h + b
    f = sigmoid(a[:, :H])
    g = np.tanh(a[:, H:2 * H])
    o = sigmoid(a[:, 2 * H:])
    c = f * c + (1.0 - f) * g  # the input gate is 1 - f
    return o * np.tanh(c), c


def peephole_lstm_cell(x, h, c, W_x, W_h, b, p):
    H = h.shape[1]
    a = x @ W_x + h @ W_h + b
    i = sigmoid(a[:, :H] + p[:H] * c)
    f = sigmoid(a[:, H:2 * H] + p[H:2 * H] * c)
    g = np.tanh(a[:, 2 * H:3 * H])
    c = f * c + i * g
    o = sigmoid(a[:, 3 * H:] + p[2 * H:] * c)  # the output gate sees the new cell
    return o * np.tanh(c), c


def jordan_forward(weights, ids, targets, y0, masks=None):
    """Jordan (1986): h_t = tanh(W_x x_t + W_h y_{t-1} + b), y_t = softmax(W_y h_t + b_y)."""
    V = weights["out.W"].shape[1]
    x = np.eye(V)[ids]
    y = y0[0]
    all_logits = []
    for t in range(len(ids)):
        h = np.tanh(x[t] @ weights["l0.W_x"] + y @ weights["l0.W_h"] + weights["l0.b"])
        if masks is not None:
            h = h * masks[0, t]
        logits = h @ weights["out.W"] + weights["out.b"]
        y = np.exp(logits - logits.max(axis=-1, keepdims=True))
        y /= y.sum(axis=-1, keepdims=True)
        all_logits.append(logits)
    logits = np.stack(all_logits)
    logp = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
    logp = logits - logits.max(-1, keepdims=True) - logp
    loss = -np.take_along_axis(logp, targets[..., None], axis=-1).mean()
    return loss, logits, y[None], np.zeros_like(y[None])


def forward(weights, cell, ids, targets, h0, c0, masks=None):
    """Returns (loss, logits (T, B, V), hT, cT) for the named weights of charrnn.model."""
    if cell == "jordan":
        return jordan_forward(weights, ids, targets, h0, masks)
    T, B = ids.shape
    L = h0.shape[0]
    V = weights["out.W"].shape[1]
    x = np.eye(V)[ids]  # (T, B, V) one-hot
    hT, cT = h0.copy(), c0.copy()
    for layer in range(L):
        W_x, W_h, b = (weights[f"l{layer}.{k}"] for k in ("W_x", "W_h", "b"))
        h, c = h0[layer], c0[layer]
        outs = []
        for t in range(T):
            if cell == "lstm":
                h, c = lstm_cell(x[t], h, c, W_x, W_h, b)
            elif cell == "lstm-coupled":
                h, c = coupled_lstm_cell(x[t], h, c, W_x, W_h, b)
            elif cell == "lstm-peephole":
                h, c = peephole_lstm_cell(x[t], h, c, W_x, W_h, b, weights[f"l{layer}.peep"])
            elif cell == "gru":
                h = gru_cell(x[t], h, W_x, W_h, b, weights[f"l{layer}.b_hn"])
            elif cell == "gru-ln":
                h = gru_ln_cell(x[t], h, W_x, W_h, b, weights[f"l{layer}.ln_gain_b_hn"])
            elif cell == "gru-classic":
                h = gru_classic_cell(x[t], h, W_x, W_h, b, weights[f"l{layer}.W_hn"])
            elif cell == "irnn":
                h = irnn_cell(x[t], h, W_x, W_h, b)
            else:
                h = rnn_cell(x[t], h, W_x, W_h, b)
            outs.append(h)
        hT[layer], cT[layer] = h, c
        x = np.stack(outs)
        if masks is not None:
            x = x * masks[layer]
    logits = x @ weights["out.W"] + weights["out.b"]
    z = logits - logits.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    loss = -np.take_along_axis(logp, targets[..., None], axis=-1).mean()
    return loss, logits, hT, cT


def adam(params, grads_seq, lr, beta1, beta2, eps):
    """Adam from Kingma & Ba (2015), Algorithm 1, over a sequence of gradients."""
    p = params.astype(np.float64).copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads_seq, start=1):
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat = m / (1 - beta1 ** t)
        v_hat = v / (1 - beta2 ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p
