"""CUDA kernels (numba-cuda): the same model as charrnn/kernels/cpu.py, on an NVIDIA GPU.

Imported only for ``--device cuda`` and by the tests (which run it under numba's CUDA simulator,
NUMBA_ENABLE_CUDASIM=1, and compile every kernel to PTX for sm_90 without a GPU).

Shapes and slot layout are those of kernels/cpu.py and docs/model.md. Every kernel takes device
arrays and works for float32 (training) and float64 (the tests); only the GEMM has a typed
shared-memory tile, so it is built once per dtype. One thread per output element unless said
otherwise. ``SIGNATURES`` lists each kernel's float32 argument types, for the PTX check.
"""

import math

from numba import config, cuda, float32, float64

SIMULATED = bool(config.ENABLE_CUDASIM)
# Small blocks under the simulator, so that even tiny test shapes run several blocks.
TILE = 4 if SIMULATED else 16  # GEMM tile edge: TILE x TILE threads, two TILE x TILE tiles
BLOCK = 8 if SIMULATED else 256  # threads per block of the elementwise kernels

# The cells' kernel ids, as in kernels/cpu.py (charrnn/cells.py's `kernel_id`s; append-only).
LSTM, GRU, RNN, IRNN, LSTM_COUPLED, LSTM_PEEPHOLE, GRU_CLASSIC, JORDAN, GRU_LN = range(9)
LN_EPS = 1e-5  # gru-ln's variance epsilon, as kernels/cpu.py

SIGNATURES: dict = {}  # kernel name -> (kernel, float32 argument types as a numba signature)

F2 = "float32[:, :]"
F1 = "float32[:]"


def _kernel(signature: str):
    """cuda.jit the function and record its float32 signature for the PTX check."""
    def wrap(fn):
        k = cuda.jit(fn)
        SIGNATURES[fn.__name__] = (fn, signature)
        return k
    return wrap


def grid(n: int) -> tuple[int, int]:
    """(blocks, threads) for n elementwise threads."""
    return max(1, (n + BLOCK - 1) // BLOCK), BLOCK


# ---------------------------------------------------------------------------------------------
# GEMM: C = op(A) @ op(B) (+ C when accumulate), op = transpose when ta / tb is 1.
# Classic shared-memory tiling: each block computes a TILE x TILE tile of C, staging TILE x TILE
# tiles of op(A) and op(B) through shared memory.


def _make_gemm(dtype):
    def gemm(A, B, C, ta, tb, accumulate):
        sA = cuda.shared.array((TILE, TILE), dtype)
        sB = cuda.shared.array((TILE, TILE), dtype)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        row = cuda.blockIdx.y * TILE + ty
        col = cuda.blockIdx.x * TILE + tx
        M, N = C.shape
        K = A.shape[0] if ta else A.shape[1]
        acc = dtype(0.0)
        for k0 in range(0, K, TILE):
            ka = k0 + tx
            if row < M and ka < K:
                sA[ty, tx] = A[ka, row] if ta else A[row, ka]
            else:
                sA[ty, tx] = 0.0
            kb = k0 + ty
            if col < N and kb < K:
                sB[ty, tx] = B[col, kb] if tb else B[kb, col]
            else:
                sB[ty, tx] = 0.0
            cuda.syncthreads()
            for k in range(TILE):
                acc += sA[ty, k] * sB[k, tx]
            cuda.syncthreads()
        if row < M and col < N:
            if accumulate:
                C[row, col] += acc
            else:
                C[row, col] = acc
    gemm.__name__ = f"gemm_{dtype}"
    return gemm


_GEMM = {}
for _dtype in (float32, float64):
    _fn = _make_gemm(_dtype)
    _GEMM[str(_dtype)] = cuda.jit(_fn)
SIGNATURES["gemm"] = (_make_gemm(float32), f"void({F2}, {F2}, {F2}, int64, int64, int64)")


def gemm(A, B, C, ta=0, tb=0, accumulate=0):
    """C (M, N) = op(A) @ op(B), or += with accumulate; all device arrays of one dtype."""
    M, N = C.shape
    blocks = ((N + TILE - 1) // TILE, (M + TILE - 1) // TILE)
    _GEMM[str(C.dtype)][blocks, (TILE, TILE)](A, B, C, ta, tb, accumulate)


# ---------------------------------------------------------------------------------------------
# elementwise helpers


@cuda.jit(device=True, inline=True)
def _sigmoid(x):
    # through tanh, as the CPU kernels: no overflow for large |x| (exp would, in the simulator)
    return 0.5 + 0.5 * math.tanh(0.5 * x)


@_kernel(f"void({F2}, {F1}, int32[:], {F2})")
def gather_bias(W, b, ids, out):
    """out (N, K) = W[ids[n]] + b: layer 0's input projection of one-hot characters."""
    i = cuda.grid(1)
    N, K = out.shape
    if i < N * K:
        n, k = i // K, i % K
        out[n, k] = W[ids[n], k] + b[k]


@_kernel(f"void({F2}, {F1})")
def add_bias(Y, b):
    """Y (N, K) += b on every row."""
    i = cuda.grid(1)
    N, K = Y.shape
    if i < N * K:
        Y[i // K, i % K] += b[i % K]


@_kernel(f"void({F2}, {F1})")
def add_col_sums(Y, out):
    """out (K,) += column sums of Y (N, K); one thread per column."""
    k = cuda.grid(1)
    N, K = Y.shape
    if k < K:
        s = out[k] - out[k]
        for n in range(N):
            s += Y[n, k]
        out[k] += s


@_kernel(f"void({F2}, int32[:], {F2})")
def scatter_add_rows(dX, ids, dW):
    """dW[ids[n]] += dX[n] (the transpose of gather_bias); rows repeat, so atomically."""
    i = cuda.grid(1)
    N, K = dX.shape
    if i < N * K:
        n, k = i // K, i % K
        cuda.atomic.add(dW, (ids[n], k), dX[n, k])


@_kernel(f"void({F2}, {F2}, {F2})")
def mul(x, m, out):
    """out = x * m elementwise (dropout masks); out may be x."""
    i = cuda.grid(1)
    N, K = out.shape
    if i < N * K:
        n, k = i // K, i % K
        out[n, k] = x[n, k] * m[n, k]


# ---------------------------------------------------------------------------------------------
# one time step of a cell: hw (B, G*H) = h_prev @ W_h from the GEMM; xg (B, G*H) the input
# projection with bias; one thread per (stream, hidden unit). act as kernels/cpu.py stores it.
# A new cell's CUDA code is a branch in _cell_unit and in _cell_unit_backward (and, storing
# 1 to 3 activations, in _store_acts, which stores only 4 or 5): docs/adding-a-cell.md. An id
# without a branch runs the Elman step (a kernel cannot raise): the host refuses a cell whose
# record says cuda_kernels=False (cuda.model.require_kernels, device.resolve).


@cuda.jit(device=True, inline=True)
def _cell_unit(cell, xg, hw, extra, hp, cp, j, H):
    """Hidden unit j of one stream: xg, hw (G*H,) rows of the input projection and of
    h_prev @ W_h; hp, cp its previous h and c. Returns (h, c, a0, a1, a2, a3, a4): the new
    state and the activations kernels/cpu.py stores for backward (unused ones are 0)."""
    if cell == LSTM or cell == LSTM_PEEPHOLE:
        a_i = xg[j] + hw[j]
        a_f = xg[H + j] + hw[H + j]
        if cell == LSTM_PEEPHOLE:
            a_i += extra[j] * cp
            a_f += extra[H + j] * cp
        ig = _sigmoid(a_i)
        fg = _sigmoid(a_f)
        gg = math.tanh(xg[2 * H + j] + hw[2 * H + j])
        c = fg * cp + ig * gg
        a_o = xg[3 * H + j] + hw[3 * H + j]
        if cell == LSTM_PEEPHOLE:
            a_o += extra[2 * H + j] * c
        og = _sigmoid(a_o)
        tc = math.tanh(c)
        return og * tc, c, ig, fg, gg, og, tc
    if cell == LSTM_COUPLED:
        fg = _sigmoid(xg[j] + hw[j])
        gg = math.tanh(xg[H + j] + hw[H + j])
        og = _sigmoid(xg[2 * H + j] + hw[2 * H + j])
        c = gg + fg * (cp - gg)
        tc = math.tanh(c)
        return og * tc, c, fg, gg, og, tc, 0.0 * tc
    if cell == GRU:
        r = _sigmoid(xg[j] + hw[j])
        z = _sigmoid(xg[H + j] + hw[H + j])
        hn = hw[2 * H + j] + extra[j]
        n = math.tanh(xg[2 * H + j] + r * hn)
        return n + z * (hp - n), 0.0 * n, r, z, n, hn, 0.0 * n
    # a new cell's branch goes here (the else below is the Elman step: the host refuses a cell
    # whose record says cuda_kernels=False)
    if cell == IRNN:
        h = max(xg[j] + hw[j], 0.0 * hp)
    else:
        h = math.tanh(xg[j] + hw[j])
    return h, 0.0 * h, 0.0 * h, 0.0 * h, 0.0 * h, 0.0 * h, 0.0 * h


@cuda.jit(device=True, inline=True)
def _store_acts(act, b, j, H, a0, a1, a2, a3, a4):
    S = act.shape[1] // H  # activations stored per unit: 5, 4 (gru-ln: 7, the GRU's 4 first)
    # or (RNN, IRNN: a dummy) 1
    if S >= 4:
        act[b, j] = a0
        act[b, H + j] = a1
        act[b, 2 * H + j] = a2
        act[b, 3 * H + j] = a3
    if S == 5:
        act[b, 4 * H + j] = a4


@_kernel(f"void(int64, {F2}, {F2}, {F1}, {F2}, {F2}, {F2}, {F2}, {F2})")
def cell_forward(cell, xg, hw, extra, h_prev, c_prev, h_out, c_out, act):
    i = cuda.grid(1)
    B, H = h_out.shape
    if i >= B * H:
        return
    b, j = i // H, i % H
    h, c, a0, a1, a2, a3, a4 = _cell_unit(cell, xg[b], hw[b], extra, h_prev[b, j],
                                          c_prev[b, j], j, H)
    h_out[b, j] = h
    c_out[b, j] = c
    _store_acts(act, b, j, H, a0, a1, a2, a3, a4)


@cuda.jit(device=True, inline=True)
def _cell_unit_backward(cell, dh, dh_next, dc_next, c_prev, h_prev, h_new, extra, act, dx, dhg,
                        b, j, H):
    """Stream b, hidden unit j of one step backward (arrays as for cell_backward; dx, dhg are
    the step's (B, G*H) rows)."""
    d = dh[b, j] + dh_next[b, j]
    dh[b, j] = d
    if cell == LSTM or cell == LSTM_PEEPHOLE:
        ig, fg, gg = act[b, j], act[b, H + j], act[b, 2 * H + j]
        og, tc = act[b, 3 * H + j], act[b, 4 * H + j]
        d_o = d * tc * (og - og * og)
        dc = dc_next[b, j] + d * og * (1.0 - tc * tc)
        if cell == LSTM_PEEPHOLE:
            dc += d_o * extra[2 * H + j]
        cp = c_prev[b, j]
        d_i = dc * gg * (ig - ig * ig)
        d_f = dc * cp * (fg - fg * fg)
        dx[b, j] = d_i
        dx[b, H + j] = d_f
        dx[b, 2 * H + j] = dc * ig * (1.0 - gg * gg)
        dx[b, 3 * H + j] = d_o
        dc = dc * fg
        if cell == LSTM_PEEPHOLE:
            dc += d_i * extra[j] + d_f * extra[H + j]
        dc_next[b, j] = dc
    elif cell == LSTM_COUPLED:
        fg, gg, og, tc = act[b, j], act[b, H + j], act[b, 2 * H + j], act[b, 3 * H + j]
        dc = dc_next[b, j] + d * og * (1.0 - tc * tc)
        dx[b, j] = dc * (c_prev[b, j] - gg) * (fg - fg * fg)
        dx[b, H + j] = dc * (1.0 - fg) * (1.0 - gg * gg)
        dx[b, 2 * H + j] = d * tc * (og - og * og)
        dc_next[b, j] = dc * fg
    elif cell == GRU:
        r, z, n, hn = act[b, j], act[b, H + j], act[b, 2 * H + j], act[b, 3 * H + j]
        dn = d * (1.0 - z) * (1.0 - n * n)
        dr = dn * hn * (r - r * r)
        dz = d * (h_prev[b, j] - n) * (z - z * z)
        dx[b, j] = dr
        dx[b, H + j] = dz
        dx[b, 2 * H + j] = dn
        dhg[b, j] = dr
        dhg[b, H + j] = dz
        dhg[b, 2 * H + j] = dn * r
        dh_next[b, j] = d * z
    elif cell == IRNN:
        dx[b, j] = d if h_new[b, j] > 0.0 else 0.0
    # a new cell's branch goes here (the else below is the Elman backward: the host refuses a
    # cell whose record says cuda_kernels=False)
    else:
        h = h_new[b, j]
        dx[b, j] = d * (1.0 - h * h)


@_kernel(f"void(int64, {F2}, {F2}, {F2}, {F2}, {F2}, {F2}, {F1}, {F2}, {F2}, {F2})")
def cell_backward(cell, dh, dh_next, dc_next, c_prev, h_prev, h_new, extra, act, dx, dhg):
    """One step backward. dh (B, H): gradient from above, in; becomes dL/dh_t. dh_next (B, H):
    in, dL/dh_t through the recurrence (the previous call's GEMM); out, for the GRU, the part
    of dL/dh_{t-1} that skips W_h (the GEMM then adds the rest). dc_next (B, H): dL/dc_t in,
    dL/dc_{t-1} out. dx, dhg (B, G*H): gradients w.r.t. the input- and recurrent-side
    pre-activations (dhg for the GRU only)."""
    i = cuda.grid(1)
    B, H = dh.shape
    if i < B * H:
        _cell_unit_backward(cell, dh, dh_next, dc_next, c_prev, h_prev, h_new, extra, act, dx,
                            dhg, i // H, i % H, H)


# ---------------------------------------------------------------------------------------------
# gru-ln's input side (its step is the GRU's): each H-block of a row of x W_x normalised apart,
# one block of LN_THREADS threads per row, reducing through shared memory.

LN_THREADS = 8 if SIMULATED else 128  # threads per row's block (a power of two)
SAMPLE_THREADS = 8 if SIMULATED else 256  # sample_steps' block, one per stream (a power of two)
REDUCE_SLOTS = max(LN_THREADS, SAMPLE_THREADS)  # _block_sum's shared array: a slot a thread


@cuda.jit(device=True, inline=True)
def _block_sum(value, shared, tid, nthreads):
    """The sum of `value` over the block's threads, returned to each (shared: float64, at
    least nthreads long; nthreads a power of two; barriers inside)."""
    shared[tid] = value
    cuda.syncthreads()
    stride = nthreads // 2
    while stride > 0:
        if tid < stride:
            shared[tid] += shared[tid + stride]
        cuda.syncthreads()
        stride //= 2
    total = shared[0]
    cuda.syncthreads()
    return total


@cuda.jit(device=True, inline=True)
def _block_stats(v, start, H, shared, tid, nthreads):
    """Mean and 1/std of v[start:start + H], computed by the block's threads together."""
    part = 0.0
    for j in range(start + tid, start + H, nthreads):
        part += v[j]
    mean = _block_sum(part, shared, tid, nthreads) / H
    part = 0.0
    for j in range(start + tid, start + H, nthreads):
        d = v[j] - mean
        part += d * d
    return mean, 1.0 / math.sqrt(_block_sum(part, shared, tid, nthreads) / H + LN_EPS)


@cuda.jit(device=True)
def _layer_norm_row(v, gain, bias, shared, tid, nthreads):
    """v (3H,) = gain * normalised(v) + bias in place, each H-block apart (by the block)."""
    H = v.shape[0] // 3
    for g in range(3):
        mean, rstd = _block_stats(v, g * H, H, shared, tid, nthreads)
        for j in range(g * H + tid, (g + 1) * H, nthreads):
            v[j] = gain[j] * ((v[j] - mean) * rstd) + bias[j]
    cuda.syncthreads()


@_kernel(f"void({F2}, {F1}, {F1}, {F2})")
def input_layer_norm(xg, gain, bias, acts):
    """xg (N, 3H): x W_x on entry, kept in acts[:, 4H:7H] (N, 7H); then normalised in place,
    times gain, plus bias. Grid: one block of LN_THREADS per row."""
    n = cuda.blockIdx.x
    tid, nthreads = cuda.threadIdx.x, cuda.blockDim.x
    shared = cuda.shared.array(REDUCE_SLOTS, float64)
    GH = xg.shape[1]
    H = GH // 3
    for k in range(tid, GH, nthreads):
        acts[n, 4 * H + k] = xg[n, k]
    cuda.syncthreads()
    _layer_norm_row(xg[n], gain, bias, shared, tid, nthreads)


@_kernel(f"void({F2}, {F2}, {F1}, {F2})")
def input_layer_norm_back(dX, acts, gain, dgain_rows):
    """dX (N, 3H): dL/d(normalised input with gain and bias) in, dL/d(x W_x) out; dgain_rows
    (N, 3H) out: dL/dgain per row (their column sums are the gains' gradient). Grid: one
    block of LN_THREADS per row."""
    n = cuda.blockIdx.x
    tid, nthreads = cuda.threadIdx.x, cuda.blockDim.x
    shared = cuda.shared.array(REDUCE_SLOTS, float64)
    H = dX.shape[1] // 3
    d, v = dX[n], acts[n, 4 * H:7 * H]
    for g in range(3):
        mean, rstd = _block_stats(v, g * H, H, shared, tid, nthreads)
        part_g = 0.0  # this thread's share of the sums of dL/du and dL/du * u
        part_gu = 0.0
        for j in range(g * H + tid, (g + 1) * H, nthreads):
            u = (v[j] - mean) * rstd
            dgain_rows[n, j] = d[j] * u
            du = d[j] * gain[j]
            part_g += du
            part_gu += du * u
        mean_g = _block_sum(part_g, shared, tid, nthreads) / H
        mean_gu = _block_sum(part_gu, shared, tid, nthreads) / H
        for j in range(g * H + tid, (g + 1) * H, nthreads):
            u = (v[j] - mean) * rstd
            d[j] = (d[j] * gain[j] - mean_g - u * mean_gu) * rstd


# ---------------------------------------------------------------------------------------------
# the classic GRU (Cho et al. 2014): the reset gate applies before W_hn, so a step takes two
# GEMMs with a kernel after each. act rows: r, z, n; rh = r * h_prev is kept for dW_hn.


@_kernel(f"void({F2}, {F2}, {F2}, {F2}, {F2})")
def gru_classic_rz(xg, hw, h_prev, rh, act):
    """hw (B, 2H) = h_prev @ W_h: r, z = sigmoid(xg + hw); rh = r * h_prev."""
    i = cuda.grid(1)
    B, H = h_prev.shape
    if i < B * H:
        b, j = i // H, i % H
        r = _sigmoid(xg[b, j] + hw[b, j])
        act[b, j] = r
        act[b, H + j] = _sigmoid(xg[b, H + j] + hw[b, H + j])
        rh[b, j] = r * h_prev[b, j]


@_kernel(f"void({F2}, {F2}, {F2}, {F2}, {F2})")
def gru_classic_n(xg, gn, h_prev, h_out, act):
    """gn (B, H) = rh @ W_hn: n = tanh(xg_n + gn); h = h_prev + z * (n - h_prev)."""
    i = cuda.grid(1)
    B, H = h_prev.shape
    if i < B * H:
        b, j = i // H, i % H
        n = math.tanh(xg[b, 2 * H + j] + gn[b, j])
        act[b, 2 * H + j] = n
        hp = h_prev[b, j]
        h_out[b, j] = hp + act[b, H + j] * (n - hp)


@_kernel(f"void({F2}, {F2}, {F2}, {F2}, {F2}, {F2}, {F2})")
def gru_classic_back_nz(dh, dh_next, h_prev, act, dx, drz, dn):
    """d = dh + dh_next (written back to dh); the gradients of n's and z's pre-activations into
    dx (B, 3H), z's also into drz (B, 2H), n's into dn (B, H)."""
    i = cuda.grid(1)
    B, H = dh.shape
    if i < B * H:
        b, j = i // H, i % H
        d = dh[b, j] + dh_next[b, j]
        dh[b, j] = d
        z, n = act[b, H + j], act[b, 2 * H + j]
        e = d * z * (1.0 - n * n)
        dx[b, 2 * H + j] = e
        dn[b, j] = e
        g = d * (n - h_prev[b, j]) * (z - z * z)
        dx[b, H + j] = g
        drz[b, H + j] = g


@_kernel(f"void({F2}, {F2}, {F2}, {F2}, {F2})")
def gru_classic_back_r(h_prev, act, drh, dx, drz):
    """drh (B, H) = dn @ W_hn^T = dL/d(r * h_prev): r's pre-activation gradient."""
    i = cuda.grid(1)
    B, H = h_prev.shape
    if i < B * H:
        b, j = i // H, i % H
        r = act[b, j]
        g = drh[b, j] * h_prev[b, j] * (r - r * r)
        dx[b, j] = g
        drz[b, j] = g


@_kernel(f"void({F2}, {F2}, {F2}, {F2})")
def gru_classic_back_h(dh, act, drh, dh_next):
    """dh_next (B, H) holds drz @ W_h^T: add the paths that skip W_h, through (1 - z) and r."""
    i = cuda.grid(1)
    B, H = dh.shape
    if i < B * H:
        b, j = i // H, i % H
        dh_next[b, j] += dh[b, j] * (1.0 - act[b, H + j]) + drh[b, j] * act[b, j]


# ---------------------------------------------------------------------------------------------
# the Jordan network: the recurrent input is the previous step's output distribution y (B, V)


@_kernel(f"void({F2}, {F1}, int32[:], {F2}, {F2})")
def jordan_hidden(W_x, b, ids, yw, h):
    """h (B, H) = tanh(W_x[ids] + yw + b), yw = y_{t-1} @ W_h."""
    i = cuda.grid(1)
    B, H = h.shape
    if i < B * H:
        n, j = i // H, i % H
        h[n, j] = math.tanh(W_x[ids[n], j] + yw[n, j] + b[j])


@_kernel(f"void({F2}, {F2}, int32[:], float64, {F2})")
def jordan_dlogits(probs, dy, targets, inv_n, dlogits):
    """The gradient w.r.t. step t's logits (B, V): the loss's (softmax - onehot) * inv_n plus
    dy = dL/dy_t carried back through the softmax's Jacobian. One thread per row."""
    n = cuda.grid(1)
    B, V = probs.shape
    if n < B:
        s = probs[n, 0] - probs[n, 0]
        for k in range(V):
            s += dy[n, k] * probs[n, k]
        for k in range(V):
            p = probs[n, k]
            dlogits[n, k] = p * (dy[n, k] - s) + p * inv_n
        dlogits[n, targets[n]] -= inv_n


@_kernel(f"void({F2}, {F2}, {F2}, int64, {F2})")
def jordan_dhidden(dhd, h, mask, use_mask, dA):
    """dA (B, H) = dL/dh (after dropout: times the mask) through tanh."""
    i = cuda.grid(1)
    B, H = h.shape
    if i < B * H:
        b, j = i // H, i % H
        m = mask[b, j] if use_mask else 1.0
        hh = h[b, j]
        dA[b, j] = dhd[b, j] * m * (1.0 - hh * hh)


# ---------------------------------------------------------------------------------------------
# Persistent time loops (Diamos et al., "Persistent RNNs", 2016): one cooperative launch runs a
# layer's whole window. Block k owns hidden units j0 .. j0+units and keeps the slice of W_h
# those units need in shared memory for the whole launch: forward, the G columns g*H + j of
# each unit (its gate products); backward, the row j of each unit (its share of dh_{t-1}).
# Forward, a step reads all of h_{t-1}, so the grid synchronises once per step; backward, each
# block's units feed only its own units' next step, and the grid synchronises once per step
# so that every unit's pre-activation gradients are in before any block forms dh_{t-1}.
# Where the slice does not fit (SMEM_BYTES), the caller launches per step instead.

SMEM_BYTES = 48 * 1024  # static shared memory per block for the W_h slice: the CUDA limit


def _make_persistent(dtype):
    smem = SMEM_BYTES * 8 // dtype.bitwidth  # elements: 12K in float32, 6K in float64

    def layer_forward_persistent(cell, xg, W_h, extra, hs, cs, acts, hw, units):
        """xg (T*B, GH) input projection with bias; W_h (H, GH); hs, cs (T+1, B, H) with the
        initial state in [0]; acts (T, B, S*H) out; hw (B, GH) scratch."""
        sW = cuda.shared.array(smem, dtype)
        grid = cuda.cg.this_grid()
        T, B, H = acts.shape[0], hs.shape[1], hs.shape[2]
        GH = W_h.shape[1]
        G = GH // H
        j0 = cuda.blockIdx.x * units
        nj = min(units, H - j0)
        tid, nt = cuda.threadIdx.x, cuda.blockDim.x
        for e in range(tid, H * G * nj, nt):  # sW[(i * G + g) * nj + u] = W_h[i, g*H + j0 + u]
            u, g, i = e % nj, (e // nj) % G, e // (nj * G)
            sW[e] = W_h[i, g * H + j0 + u]
        cuda.syncthreads()
        for t in range(T):
            for e in range(tid, B * G * nj, nt):
                u, g, b = e % nj, (e // nj) % G, e // (nj * G)
                acc = sW[0] - sW[0]
                for i in range(H):
                    acc += hs[t, b, i] * sW[(i * G + g) * nj + u]
                hw[b, g * H + j0 + u] = acc
            cuda.syncthreads()  # this block's gate products are in
            for e in range(tid, B * nj, nt):
                b, j = e // nj, j0 + e % nj
                h, c, a0, a1, a2, a3, a4 = _cell_unit(cell, xg[t * B + b], hw[b], extra,
                                                      hs[t, b, j], cs[t, b, j], j, H)
                hs[t + 1, b, j] = h
                cs[t + 1, b, j] = c
                _store_acts(acts[t], b, j, H, a0, a1, a2, a3, a4)
            grid.sync()  # all of h_t is in before any block reads it

    def layer_backward_persistent(cell, dH, W_h, extra, hs, cs, acts, dX, dHG, dh_next,
                                  dc_next, units):
        """dH (T*B, H): gradient from above (becomes dL/dh_t); dX, dHG (T*B, GH) out;
        dh_next, dc_next (B, H): in, the gradients w.r.t. the final state; out, w.r.t. the
        initial state."""
        sW = cuda.shared.array(smem, dtype)
        grid = cuda.cg.this_grid()
        T, B, H = acts.shape[0], hs.shape[1], hs.shape[2]
        GH = W_h.shape[1]
        j0 = cuda.blockIdx.x * units
        nj = min(units, H - j0)
        tid, nt = cuda.threadIdx.x, cuda.blockDim.x
        for e in range(tid, nj * GH, nt):  # sW[u * GH + k] = W_h[j0 + u, k]
            sW[e] = W_h[j0 + e // GH, e % GH]
        cuda.syncthreads()
        gru = cell == GRU
        for t in range(T - 1, -1, -1):
            rows = slice(t * B, (t + 1) * B)
            dx, dhg = dX[rows], dHG[rows]
            for e in range(tid, B * nj, nt):
                _cell_unit_backward(cell, dH[rows], dh_next, dc_next, cs[t], hs[t], hs[t + 1],
                                    extra, acts[t], dx, dhg, e // nj, j0 + e % nj, H)
            grid.sync()  # every unit's pre-activation gradients for step t are in
            for e in range(tid, B * nj, nt):
                b, u = e // nj, e % nj
                acc = sW[0] - sW[0]
                for k in range(GH):
                    acc += (dhg[b, k] if gru else dx[b, k]) * sW[u * GH + k]
                if gru:  # its direct path, d * z, is already in dh_next
                    dh_next[b, j0 + u] += acc
                else:
                    dh_next[b, j0 + u] = acc
            cuda.syncthreads()  # a block's units feed only its own units' next step

    return layer_forward_persistent, layer_backward_persistent


_PERSISTENT = {}
for _dtype in (float32, float64):
    _fw, _bw = _make_persistent(_dtype)
    _PERSISTENT[str(_dtype)] = (cuda.jit(_fw), cuda.jit(_bw))
_fw, _bw = _make_persistent(float32)
F3 = "float32[:, :, :]"
SIGNATURES["layer_forward_persistent"] = (
    _fw, f"void(int64, {F2}, {F2}, {F1}, {F3}, {F3}, {F3}, {F2}, int64)")
SIGNATURES["layer_backward_persistent"] = (
    _bw, f"void(int64, {F2}, {F2}, {F1}, {F3}, {F3}, {F3}, {F2}, {F2}, {F2}, {F2}, int64)")
PERSISTENT_THREADS = 4 if SIMULATED else 128


def persistent_plan(H: int, GH: int, max_blocks: int,
                    itemsize: int = 4) -> tuple[int, int] | None:
    """(blocks, units per block) for a persistent launch over H units, or None where W_h's
    slice per block (itemsize bytes an element) cannot fit in SMEM_BYTES with at most
    max_blocks co-resident blocks."""
    units = max(1, -(-H // max_blocks))
    if units * GH * itemsize > SMEM_BYTES:
        return None
    return -(-H // units), units


def layer_forward_persistent(cell, xg, W_h, extra, hs, cs, acts, hw, plan):
    blocks, units = plan
    kernel = _PERSISTENT[str(hs.dtype)][0]
    kernel[blocks, PERSISTENT_THREADS](cell, xg, W_h, extra, hs, cs, acts, hw, units)


def layer_backward_persistent(cell, dH, W_h, extra, hs, cs, acts, dX, dHG, dh_next, dc_next,
                              plan):
    blocks, units = plan
    kernel = _PERSISTENT[str(hs.dtype)][1]
    kernel[blocks, PERSISTENT_THREADS](cell, dH, W_h, extra, hs, cs, acts, dX, dHG, dh_next,
                                       dc_next, units)


@_kernel(f"void({F2}, {F2}, {F2}, {F1})")
def peephole_grads(dX, c_prev, c_new, dp):
    """dp (3H,) += the peephole weights' gradients over all rows: p_i and p_f multiply c_{t-1}
    (c_prev, (N, H)), p_o multiplies c_t (c_new). dX: (N, 4H). One thread per hidden unit."""
    j = cuda.grid(1)
    N, H = c_prev.shape
    if j < H:
        si = dp[j] - dp[j]
        sf = si
        so = si
        for n in range(N):
            si += dX[n, j] * c_prev[n, j]
            sf += dX[n, H + j] * c_prev[n, j]
            so += dX[n, 3 * H + j] * c_new[n, j]
        dp[j] += si
        dp[H + j] += sf
        dp[2 * H + j] += so


# ---------------------------------------------------------------------------------------------
# loss


@_kernel(f"void({F2}, int32[:], {F2}, float64[:])")
def softmax_xent(logits, targets, probs, loss):
    """probs = softmax of each row of logits (N, V); loss[0] += the rows' summed
    cross-entropy (one thread per row, atomically, in float64)."""
    n = cuda.grid(1)
    N, V = logits.shape
    if n < N:
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
        cuda.atomic.add(loss, 0, math.log(s) + m - logits[n, targets[n]])


@_kernel("void(float64[:], int64, float64[:])")
def accumulate_mean(loss, n, total):
    """total[0] += loss[0] / n (one thread): a window's mean loss kept on the device."""
    if cuda.grid(1) == 0:
        total[0] += loss[0] / n


@_kernel(f"void({F2}, int32[:], float64, {F2})")
def xent_grad(probs, targets, inv_n, dlogits):
    """dlogits = (softmax - onehot(target)) * inv_n."""
    i = cuda.grid(1)
    N, V = probs.shape
    if i < N * V:
        n, k = i // V, i % V
        g = probs[n, k]
        if k == targets[n]:
            g -= 1.0
        dlogits[n, k] = g * inv_n


# ---------------------------------------------------------------------------------------------
# optimizer over the flat buffer


@_kernel(f"void({F1}, float64[:])")
def sum_squares(x, out):
    """out[0] += sum of x**2, in float64 (a grid-stride loop per thread, then one atomic)."""
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    s = 0.0
    for i in range(start, x.size, stride):
        g = float64(x[i])
        s += g * g
    cuda.atomic.add(out, 0, s)


@_kernel(f"void({F1}, float64)")
def fill(x, value):
    """x[:] = value (any dtype; the signature is float32's)."""
    i = cuda.grid(1)
    if i < x.size:
        x[i] = value


@_kernel(f"void({F1}, float64[:], float64)")
def clip_by_norm(grads, norm_sq, max_norm):
    """grads *= max_norm / (norm + 1e-6) when that is below 1 (torch's clip_grad_norm_), with
    the squared norm from sum_squares still on the device. A non-finite norm scales nothing."""
    i = cuda.grid(1)
    if i < grads.size:
        coef = max_norm / (math.sqrt(norm_sq[0]) + 1e-6)
        if coef < 1.0:
            grads[i] *= coef


@_kernel("void(float64[:], float64[:], int32[:])")
def note_nonfinite(norm_sq, loss, flag):
    """flag[0] = 1 once the gradient norm or the running loss is not finite (one thread)."""
    if cuda.grid(1) == 0:
        if not (math.isfinite(norm_sq[0]) and math.isfinite(loss[0])):
            flag[0] = 1


@_kernel(f"void({F1}, {F1}, {F1}, {F1}, float64, float64, float64, float64, float64, "
         f"float64, float64[:])")
def adam_step(params, grads, m, v, step_size, bias_correction2_sqrt, beta1, beta2, eps, keep,
              norm_sq):
    """One Adam update with the arithmetic of torch.optim.Adam, or AdamW (as
    kernels/cpu.adam_step); step_size = lr / (1 - beta1**step), keep = 1 - lr * weight_decay.
    Skipped when the gradient norm is not finite, so a bad step never reaches the weights (the
    trainer reports it at its next read-back)."""
    i = cuda.grid(1)
    if i < params.size and math.isfinite(norm_sq[0]):
        g = grads[i]
        m[i] += (1.0 - beta1) * (g - m[i])
        v[i] = v[i] * beta2 + (1.0 - beta2) * g * g
        params[i] = params[i] * keep - step_size * m[i] / (math.sqrt(v[i]) / bias_correction2_sqrt
                                                            + eps)


@_kernel(f"void({F1}, {F1}, float64)")
def average_weights(average, params, weight):
    """average += weight * (params - average): the running average of the weights
    (averaging.WeightAverage.update, weight = 1 - decay)."""
    i = cuda.grid(1)
    if i < params.size:
        average[i] += weight * (params[i] - average[i])


# ---------------------------------------------------------------------------------------------
# sampling: one launch advances every stream through a whole chunk of characters. Block b owns
# stream b for the chunk: its threads share the gate products of each layer, meet at a barrier,
# update their hidden units, and thread 0 draws the next character. Nothing returns to the host
# until the chunk is done.


@cuda.jit(device=True, inline=True)
def _draw(logits, temperature, top_k, top_p, u, probs, taken):
    """kernels/cpu._draw on one thread (with the device's exp, where the CPU's is its own,
    within an ulp): the id drawn from logits (V,) with uniform u; probs
    (V,) float64 and taken (V,) int32 scratch. Top-k/top-p take the most likely ids in order,
    by repeated selection (V is a vocabulary: small)."""
    V = logits.size
    best = 0
    for k in range(1, V):
        if logits[k] > logits[best]:
            best = k
    if temperature == 0.0:
        return best
    m = logits[best]
    total = 0.0
    for k in range(V):
        probs[k] = math.exp((logits[k] - m) / temperature)
        total += probs[k]
        taken[k] = 0
    if (top_k <= 0 or top_k >= V) and top_p >= 1.0:
        target = u * total
        acc = 0.0
        for k in range(V):
            acc += probs[k]
            if acc > target:
                return k
        return best
    keep = V if top_k <= 0 else min(top_k, V)
    top_k_mass = 0.0
    for i in range(keep):  # mark the top `keep` ids; their order is recovered below
        pick = -1
        for k in range(V):
            if taken[k] == 0 and (pick < 0 or probs[k] > probs[pick]):
                pick = k
        taken[pick] = i + 1  # rank, from 1
        top_k_mass += probs[pick]
    kept = 0.0
    n = 0
    while n < keep:
        for k in range(V):
            if taken[k] == n + 1:
                kept += probs[k]
        n += 1
        if kept >= top_p * top_k_mass:
            break
    target = u * kept
    acc = 0.0
    for rank in range(1, n + 1):
        for k in range(V):
            if taken[k] == rank:
                acc += probs[k]
                if acc > target:
                    return k
    return best


@cuda.jit(device=True)
def _layer_sample_step(cell, params, offs, layer, xt, h, c, xg, hw, b, tid, nthreads, shared):
    """One layer of one step for stream b, by the threads of its block: the gate products
    (input side into xg, recurrent side into hw), a barrier, the cell update of h, c.
    shared: _block_sum's array (gru-ln)."""
    L, B, H = h.shape
    GH = xg.shape[1]
    s = 4 * layer
    W_x, W_h = params[offs[s]:offs[s + 1]], params[offs[s + 1]:offs[s + 2]]
    bias, extra = params[offs[s + 2]:offs[s + 3]], params[offs[s + 3]:offs[s + 4]]
    GH_h = W_h.size // H  # the classic GRU's W_h has only the r, z columns
    normalised = cell == GRU_LN  # its bias comes after the normalisation
    for k in range(tid, GH, nthreads):
        a = bias[k] - bias[k] if normalised else bias[k]  # zero in the arrays' precision
        if layer == 0:
            a += W_x[xt * GH + k]
        else:
            for i in range(H):
                a += h[layer - 1, b, i] * W_x[i * GH + k]
        r = a - a
        if k < GH_h:
            for i in range(H):
                r += h[layer, b, i] * W_h[i * GH_h + k]
        xg[b, k] = a
        hw[b, k] = r
    cuda.syncthreads()  # every gate product is in before any unit changes h
    if normalised:  # then the GRU's step, b_hn after the 3H gains
        _layer_norm_row(xg[b], extra[:GH], bias, shared, tid, nthreads)
        cell, extra = GRU, extra[GH:]
    if cell == GRU_CLASSIC:
        for j in range(tid, H, nthreads):  # r and z; r * h_prev into hw's n block
            r = _sigmoid(xg[b, j] + hw[b, j])
            xg[b, H + j] = _sigmoid(xg[b, H + j] + hw[b, H + j])  # z, in place
            hw[b, 2 * H + j] = r * h[layer, b, j]
        cuda.syncthreads()
        for j in range(tid, H, nthreads):  # n through W_hn, then h
            gn = hw[b, 0] - hw[b, 0]
            for i in range(H):
                gn += hw[b, 2 * H + i] * extra[i * H + j]
            nn = math.tanh(xg[b, 2 * H + j] + gn)
            hp = h[layer, b, j]
            h[layer, b, j] = hp + xg[b, H + j] * (nn - hp)
        cuda.syncthreads()
        return
    for j in range(tid, H, nthreads):
        hj, cj, a0, a1, a2, a3, a4 = _cell_unit(cell, xg[b], hw[b], extra, h[layer, b, j],
                                                c[layer, b, j], j, H)
        h[layer, b, j] = hj
        c[layer, b, j] = cj
    cuda.syncthreads()


@cuda.jit(device=True)
def _jordan_sample_step(params, offs, xt, y, hid, logits, b, tid, nthreads):
    """One step of the Jordan network for stream b: hid[b] (H,) = tanh(W_x[x] + y @ W_h + b),
    its logits, and the new state y[0, b] = their softmax (thread 0)."""
    V = logits.shape[1]
    H = hid.shape[1]
    W_x, W_h = params[offs[0]:offs[1]], params[offs[1]:offs[2]]
    bias = params[offs[2]:offs[3]]
    W_y, b_y = params[offs[4]:offs[5]], params[offs[5]:offs[6]]
    for j in range(tid, H, nthreads):
        a = bias[j] + W_x[xt * H + j]
        for k in range(V):
            a += y[0, b, k] * W_h[k * H + j]
        hid[b, j] = math.tanh(a)
    cuda.syncthreads()
    for k in range(tid, V, nthreads):
        a = b_y[k]
        for j in range(H):
            a += hid[b, j] * W_y[j * V + k]
        logits[b, k] = a
    cuda.syncthreads()
    if tid == 0:
        m = logits[b, 0]
        for k in range(1, V):
            m = max(m, logits[b, k])
        total = m - m
        for k in range(V):
            e = math.exp(logits[b, k] - m)
            y[0, b, k] = e
            total += e
        for k in range(V):
            y[0, b, k] /= total
    cuda.syncthreads()


@_kernel(f"void(int64, {F1}, int64[:], int32[:], float32[:, :, :], float32[:, :, :], "
         f"int32[:, :], float64[:], int64[:], float64[:], float64[:, :], int32[:, :], "
         f"{F2}, {F2}, {F2}, float64[:, :], int32[:, :])")
def sample_steps(cell, params, offs, x, h, c, forced, temperature, top_k, top_p, uniforms, out,
                 xg, hw, logits, probs, taken):
    """n = out.shape[0] steps for every stream; grid: one block per stream. Step t advances
    stream b on x[b] and writes its next id to out[t, b] and x[b]: forced[t, b] (n, B) where
    that is >= 0 (a prompt character; the output layer is skipped), else one drawn from the
    prediction with temperature[b], top_k[b] (0: all) and top_p[b] (each (B,)) and
    uniforms[t, b]. h, c (L, B, H): the state, advanced in place. xg, hw (B, G*H), logits
    (B, V), probs (B, V), taken (B, V): scratch."""
    b = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nthreads = cuda.blockDim.x  # a power of two (gru-ln's sums)
    shared = cuda.shared.array(REDUCE_SLOTS, float64)
    L, B, H = h.shape
    V = logits.shape[1]
    for t in range(out.shape[0]):
        xt = x[b]
        feeding = forced[t, b] >= 0
        if cell == JORDAN:  # the state is y; the output layer is part of the step
            _jordan_sample_step(params, offs, xt, h, xg, logits, b, tid, nthreads)
        else:
            for layer in range(L):
                _layer_sample_step(cell, params, offs, layer, xt, h, c, xg, hw, b, tid, nthreads,
                                   shared)
            if not feeding:
                s = 4 * L
                W_y, b_y = params[offs[s]:offs[s + 1]], params[offs[s + 1]:offs[s + 2]]
                for k in range(tid, V, nthreads):
                    a = b_y[k]
                    for i in range(H):
                        a += h[L - 1, b, i] * W_y[i * V + k]
                    logits[b, k] = a
                cuda.syncthreads()
        if tid == 0:
            if feeding:
                nxt = forced[t, b]
            else:
                nxt = _draw(logits[b], temperature[b], top_k[b], top_p[b], uniforms[t, b],
                            probs[b], taken[b])
            x[b] = nxt
            out[t, b] = nxt
        cuda.syncthreads()
