"""Numba CPU kernels: the whole-window forward and backward of the model, and the optimizers.

Conventions (after llm.c): outputs and workspaces are arguments, nothing is allocated per time
step, backward *adds* into the gradient buffer. Every kernel compiles for float32 (training) and
float64 (gradient checks); numba specialises on the dtype of the arrays passed in.

Shapes: T time steps, B streams, H hidden units, V vocabulary, L layers, G gates per cell
(LSTM 4, GRU 3, RNN 1). All parameters live in one flat buffer; ``offs`` holds the slot
boundaries of its named views (see charrnn/model.py and docs/model.md):

    slot 4*l + 0   W_x   (In_l, G*H)   In_0 = V (row gather), In_l = H above
    slot 4*l + 1   W_h   (H, G*H)
    slot 4*l + 2   b     (G*H,)
    slot 4*l + 3   b_hn  (H,) for GRU, empty otherwise
    slot 4*L + 0   W_y   (H, V)
    slot 4*L + 1   b_y   (V,)

Memory kept from forward for backward (torch-rnn style accounting), per layer and per step:
    hs     B*H           hidden states (plus h0)
    cs     B*H           LSTM cell states (plus c0); one slot only for the other cells
    acts   B*S*H         LSTM: i, f, g, o, tanh(c) (S=5); GRU: r, z, n, W_hn h + b_hn (S=4);
                         RNN: nothing (S=0; the derivative comes from hs)
plus, once for the whole model, logits and probabilities (T*B*V each). Scratch reused across
layers: xg, dX, dHG (T*B*G*H each), xin and dH (T*B*H each), gates (B*G*H), tmp (B*H).
"""

import math

import numpy as np
from numba import njit

LSTM = 0
GRU = 1
RNN = 2

SLOTS_PER_LAYER = 4


# ---------------------------------------------------------------------------------------------
# views into the flat parameter buffer


@njit(cache=True)
def _mat(buf, offs, slot, rows):
    """Slot ``slot`` of ``buf`` as a C-contiguous (rows, n // rows) matrix."""
    a = offs[slot]
    b = offs[slot + 1]
    return buf[a:b].reshape((rows, (b - a) // rows))


@njit(cache=True)
def _vec(buf, offs, slot):
    return buf[offs[slot]:offs[slot + 1]]


# ---------------------------------------------------------------------------------------------
# nonlinearities


@njit(cache=True, inline="always")
def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


# ---------------------------------------------------------------------------------------------
# one time step of each cell, forward: gates (B, G*H) holds h_prev @ W_h on entry


@njit(cache=True)
def _lstm_step(xg, gates, c_prev, h_out, c_out, act):
    """xg, gates: (B, 4H) rows i, f, g, o; c_prev, h_out, c_out: (B, H); act: (B, 5H)."""
    B, H = c_prev.shape
    for b in range(B):
        for j in range(H):
            i = _sigmoid(xg[b, j] + gates[b, j])
            f = _sigmoid(xg[b, H + j] + gates[b, H + j])
            g = math.tanh(xg[b, 2 * H + j] + gates[b, 2 * H + j])
            o = _sigmoid(xg[b, 3 * H + j] + gates[b, 3 * H + j])
            c = f * c_prev[b, j] + i * g
            tc = math.tanh(c)
            c_out[b, j] = c
            h_out[b, j] = o * tc
            act[b, j] = i
            act[b, H + j] = f
            act[b, 2 * H + j] = g
            act[b, 3 * H + j] = o
            act[b, 4 * H + j] = tc


@njit(cache=True)
def _gru_step(xg, gates, b_hn, h_prev, h_out, act):
    """xg, gates: (B, 3H) rows r, z, n; b_hn: (H,); h_prev, h_out: (B, H); act: (B, 4H)."""
    B, H = h_prev.shape
    for b in range(B):
        for j in range(H):
            r = _sigmoid(xg[b, j] + gates[b, j])
            z = _sigmoid(xg[b, H + j] + gates[b, H + j])
            hn = gates[b, 2 * H + j] + b_hn[j]
            n = math.tanh(xg[b, 2 * H + j] + r * hn)
            h_out[b, j] = (1.0 - z) * n + z * h_prev[b, j]
            act[b, j] = r
            act[b, H + j] = z
            act[b, 2 * H + j] = n
            act[b, 3 * H + j] = hn


@njit(cache=True)
def _rnn_step(xg, gates, h_out):
    """Elman: h = tanh(xg + h_prev @ W_h). All (B, H)."""
    B, H = h_out.shape
    for b in range(B):
        for j in range(H):
            h_out[b, j] = math.tanh(xg[b, j] + gates[b, j])


# ---------------------------------------------------------------------------------------------
# one time step of each cell, backward. dh: (B, H) gradient w.r.t. h_t (from above plus from the
# next step). Each writes the gradient w.r.t. the pre-activations into dx (input side) and dhg
# (recurrent side, for GRU only, where they differ).


@njit(cache=True)
def _lstm_step_back(dh, dc_next, c_prev, act, dx):
    """dc_next: (B, H) in: dL/dc_t from step t+1, out: dL/dc_{t-1}. dx: (B, 4H)."""
    B, H = dh.shape
    for b in range(B):
        for j in range(H):
            i = act[b, j]
            f = act[b, H + j]
            g = act[b, 2 * H + j]
            o = act[b, 3 * H + j]
            tc = act[b, 4 * H + j]
            d_h = dh[b, j]
            dc = dc_next[b, j] + d_h * o * (1.0 - tc * tc)
            dx[b, j] = dc * g * i * (1.0 - i)
            dx[b, H + j] = dc * c_prev[b, j] * f * (1.0 - f)
            dx[b, 2 * H + j] = dc * i * (1.0 - g * g)
            dx[b, 3 * H + j] = d_h * tc * o * (1.0 - o)
            dc_next[b, j] = dc * f


@njit(cache=True)
def _gru_step_back(dh, h_prev, act, dx, dhg, dh_direct):
    """dx, dhg: (B, 3H); dh_direct: (B, H) out, the part of dL/dh_{t-1} that skips W_h."""
    B, H = dh.shape
    for b in range(B):
        for j in range(H):
            r = act[b, j]
            z = act[b, H + j]
            n = act[b, 2 * H + j]
            hn = act[b, 3 * H + j]
            d_h = dh[b, j]
            dn = d_h * (1.0 - z) * (1.0 - n * n)
            dr = dn * hn * r * (1.0 - r)
            dz = d_h * (h_prev[b, j] - n) * z * (1.0 - z)
            dx[b, j] = dr
            dx[b, H + j] = dz
            dx[b, 2 * H + j] = dn
            dhg[b, j] = dr
            dhg[b, H + j] = dz
            dhg[b, 2 * H + j] = dn * r
            dh_direct[b, j] = d_h * z


@njit(cache=True)
def _rnn_step_back(dh, h, dx):
    B, H = dh.shape
    for b in range(B):
        for j in range(H):
            dx[b, j] = dh[b, j] * (1.0 - h[b, j] * h[b, j])


# ---------------------------------------------------------------------------------------------
# one layer over the whole window


@njit(cache=True)
def _layer_forward(cell, xg, W_h, b_hn, hs, cs, acts, gates):
    """xg: (T, B, GH) input projection with bias; hs: (T+1, B, H) with hs[0] = h0 on entry;
    cs: (T+1, B, H) likewise for LSTM; acts: (T, B, S*H); gates: (B, GH) scratch."""
    T = xg.shape[0]
    for t in range(T):
        np.dot(hs[t], W_h, gates)  # (B, H) @ (H, GH): the only per-step GEMM
        if cell == LSTM:
            _lstm_step(xg[t], gates, cs[t], hs[t + 1], cs[t + 1], acts[t])
        elif cell == GRU:
            _gru_step(xg[t], gates, b_hn, hs[t], hs[t + 1], acts[t])
        else:
            _rnn_step(xg[t], gates, hs[t + 1])


@njit(cache=True)
def _layer_backward(cell, dH, W_h, hs, cs, acts, dh_next, dc_next, dX, dHG, tmp):
    """dH: (T, B, H) gradient w.r.t. this layer's outputs hs[1:] from above (overwritten: it
    becomes the running dL/dh_t). dh_next, dc_next: (B, H), in: gradient w.r.t. the final
    states, out: gradient w.r.t. the initial states. dX, dHG: (T, B, GH) out: gradient w.r.t.
    the input-side and recurrent-side pre-activations (dHG is filled for GRU only)."""
    T = dH.shape[0]
    B, H = dh_next.shape
    WhT = W_h.T
    for t in range(T - 1, -1, -1):
        dh = dH[t]
        for b in range(B):
            for j in range(H):
                dh[b, j] += dh_next[b, j]
        if cell == LSTM:
            _lstm_step_back(dh, dc_next, cs[t], acts[t], dX[t])
            np.dot(dX[t], WhT, dh_next)
        elif cell == GRU:
            _gru_step_back(dh, hs[t], acts[t], dX[t], dHG[t], tmp)
            np.dot(dHG[t], WhT, dh_next)
            for b in range(B):
                for j in range(H):
                    dh_next[b, j] += tmp[b, j]
        else:
            _rnn_step_back(dh, hs[t + 1], dX[t])
            np.dot(dX[t], WhT, dh_next)


@njit(cache=True)
def _layer_input(hs, masks, layer, use_dropout, out):
    """The input of layer+1 (or of the output layer): hs[layer, 1:], times the inverted-dropout
    mask when dropout is on (then written into ``out``). (T, B, H)."""
    x = hs[layer, 1:]
    if not use_dropout:
        return x
    m = masks[layer]
    T, B, H = x.shape
    for t in range(T):
        for b in range(B):
            for j in range(H):
                out[t, b, j] = x[t, b, j] * m[t, b, j]
    return out


@njit(cache=True)
def _add_bias_rows(y, bias):
    """y: (N, K) += bias (K,) on every row."""
    N, K = y.shape
    for n in range(N):
        for k in range(K):
            y[n, k] += bias[k]


@njit(cache=True)
def _add_col_sums(y, out):
    """out (K,) += column sums of y (N, K)."""
    N, K = y.shape
    for n in range(N):
        for k in range(K):
            out[k] += y[n, k]


# ---------------------------------------------------------------------------------------------
# the whole model over one (T, B) window


@njit(cache=True)
def model_forward(cell, params, offs, ids, targets, h0, c0, masks, use_dropout,
                  hs, cs, acts, xg, gates, xin, logits, probs):
    """Forward pass of the window; returns the mean cross-entropy in nats per character.

    ids, targets: (T, B) ints. h0, c0: (L, B, H) initial states. masks: (L, T, B, H) inverted
    dropout masks applied to each layer's output (used when use_dropout). Writes hs (L, T+1, B, H)
    and cs (L, T+1 or 1, B, H) whose last step is the final state; acts (L, T, B, S*H);
    logits and probs (T*B, V). xg (T, B, GH), gates (B, GH), xin (T, B, H) are scratch.
    """
    T, B = ids.shape
    L, _, H = h0.shape
    V = logits.shape[1]
    GH = xg.shape[2]
    for layer in range(L):
        s = SLOTS_PER_LAYER * layer
        W_h = _mat(params, offs, s + 1, H)
        bias = _vec(params, offs, s + 2)
        b_hn = _vec(params, offs, s + 3)
        if layer == 0:
            W_x = _mat(params, offs, s, V)
            for t in range(T):  # one-hot input: the projection is a row gather
                for b in range(B):
                    row = W_x[ids[t, b]]
                    for k in range(GH):
                        xg[t, b, k] = row[k] + bias[k]
        else:
            W_x = _mat(params, offs, s, H)
            x = _layer_input(hs, masks, layer - 1, use_dropout, xin)
            xg2 = xg.reshape((T * B, GH))
            np.dot(x.reshape((T * B, H)), W_x, xg2)  # all T steps in one GEMM
            _add_bias_rows(xg2, bias)
        hs[layer, 0] = h0[layer]
        cs[layer, 0] = c0[layer]
        _layer_forward(cell, xg, W_h, b_hn, hs[layer], cs[layer], acts[layer], gates)

    W_y = _mat(params, offs, SLOTS_PER_LAYER * L, H)
    b_y = _vec(params, offs, SLOTS_PER_LAYER * L + 1)
    y = _layer_input(hs, masks, L - 1, use_dropout, xin)
    np.dot(y.reshape((T * B, H)), W_y, logits)
    _add_bias_rows(logits, b_y)
    return _softmax_xent(logits, targets.reshape(T * B), probs)


@njit(cache=True)
def _softmax_xent(logits, targets, probs):
    """Mean of -log softmax(logits)[target] over rows; probs gets the softmax. (N, V)."""
    N, V = logits.shape
    total = 0.0
    for n in range(N):
        m = logits[n, 0]
        for k in range(1, V):
            m = max(m, logits[n, k])
        s = 0.0
        for k in range(V):
            e = math.exp(logits[n, k] - m)
            probs[n, k] = e
            s += e
        inv = 1.0 / s
        for k in range(V):
            probs[n, k] *= inv
        total += math.log(s) + m - logits[n, targets[n]]
    return total / N


@njit(cache=True)
def model_backward(cell, params, grads, offs, ids, targets, masks, use_dropout,
                   hs, cs, acts, xin, probs, dhT, dcT, dh0, dc0,
                   dlogits, dX, dHG, dH, tmp):
    """Backward pass of the window last run through model_forward (same hs, cs, acts, probs).

    Adds dL/dparams into grads (same layout as params), where L is the mean loss plus
    <hT, dhT> + <cT, dcT>: dhT, dcT (L, B, H) are the gradients flowing into the final states
    (zero for a window's last use; the next window's dh0 when a window is split). Writes dh0,
    dc0 (L, B, H): the gradients w.r.t. the initial states. dlogits (T*B, V), dX, dHG
    (T, B, GH), dH (T, B, H), tmp (B, H) and xin (T, B, H) are scratch.
    """
    T, B = ids.shape
    L = hs.shape[0]
    H = hs.shape[3]
    N, V = dlogits.shape
    GH = dX.shape[2]

    # output layer and loss: dlogits = (softmax - onehot) / N
    inv_n = 1.0 / N
    tflat = targets.reshape(N)
    for n in range(N):
        for k in range(V):
            dlogits[n, k] = probs[n, k] * inv_n
        dlogits[n, tflat[n]] -= inv_n
    W_y = _mat(params, offs, SLOTS_PER_LAYER * L, H)
    dW_y = _mat(grads, offs, SLOTS_PER_LAYER * L, H)
    y = _layer_input(hs, masks, L - 1, use_dropout, xin).reshape((N, H))
    dW_y += np.dot(y.T, dlogits)
    _add_col_sums(dlogits, _vec(grads, offs, SLOTS_PER_LAYER * L + 1))
    np.dot(dlogits, W_y.T, dH.reshape((N, H)))

    for layer in range(L - 1, -1, -1):
        if use_dropout:
            dH *= masks[layer]
        s = SLOTS_PER_LAYER * layer
        W_h = _mat(params, offs, s + 1, H)
        dh_next = dh0[layer]
        dc_next = dc0[layer]
        dh_next[:] = dhT[layer]
        dc_next[:] = dcT[layer]
        _layer_backward(cell, dH, W_h, hs[layer], cs[layer], acts[layer],
                        dh_next, dc_next, dX, dHG, tmp)

        # weight gradients for all T steps at once
        dX2 = dX.reshape((N, GH))
        dR2 = dHG.reshape((N, GH)) if cell == GRU else dX2
        dW_h = _mat(grads, offs, s + 1, H)
        dW_h += np.dot(hs[layer, :T].reshape((N, H)).T, dR2)
        _add_col_sums(dX2, _vec(grads, offs, s + 2))
        if cell == GRU:
            db_hn = _vec(grads, offs, s + 3)
            for n in range(N):
                for j in range(H):
                    db_hn[j] += dR2[n, 2 * H + j]
        if layer == 0:
            dW_x = _mat(grads, offs, s, V)
            for t in range(T):  # scatter-add: the transpose of the row gather
                for b in range(B):
                    row = dW_x[ids[t, b]]
                    for k in range(GH):
                        row[k] += dX[t, b, k]
        else:
            W_x = _mat(params, offs, s, H)
            dW_x = _mat(grads, offs, s, H)
            x = _layer_input(hs, masks, layer - 1, use_dropout, xin).reshape((N, H))
            dW_x += np.dot(x.T, dX2)
            np.dot(dX2, W_x.T, dH.reshape((N, H)))  # gradient w.r.t. the layer below's output


# ---------------------------------------------------------------------------------------------
# optimizers over the flat buffer


@njit(cache=True)
def global_norm(grads):
    """Euclidean norm of the whole gradient buffer, accumulated in float64."""
    s = 0.0
    for i in range(grads.size):
        g = np.float64(grads[i])
        s += g * g
    return math.sqrt(s)


@njit(cache=True)
def clip_grad_norm(grads, max_norm):
    """Scale grads in place so their global norm is at most max_norm (as torch's
    clip_grad_norm_: coefficient max_norm / (norm + 1e-6)). Returns the norm before clipping."""
    norm = global_norm(grads)
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        for i in range(grads.size):
            grads[i] *= coef
    return norm


@njit(cache=True)
def adam_step(params, grads, m, v, step, lr, beta1, beta2, eps):
    """One Adam update (step counts from 1), the arithmetic of torch.optim.Adam."""
    bias_correction1 = 1.0 - beta1 ** step
    bias_correction2_sqrt = math.sqrt(1.0 - beta2 ** step)
    step_size = lr / bias_correction1
    for i in range(params.size):
        g = grads[i]
        m[i] += (1.0 - beta1) * (g - m[i])
        v[i] = v[i] * beta2 + (1.0 - beta2) * g * g
        params[i] -= step_size * m[i] / (math.sqrt(v[i]) / bias_correction2_sqrt + eps)


@njit(cache=True)
def sgd_step(params, grads, velocity, lr, momentum):
    """SGD with (heavy-ball) momentum, as torch.optim.SGD with dampening 0."""
    for i in range(params.size):
        velocity[i] = momentum * velocity[i] + grads[i]
        params[i] -= lr * velocity[i]
