"""Numba CPU kernels: the whole-window forward and backward of the model, and the optimizers.

Conventions (after llm.c): outputs and workspaces are arguments, nothing is allocated per time
step, backward *adds* into the gradient buffer. Every kernel compiles for float32 (training) and
float64 (gradient checks); numba specialises on the dtype of the arrays passed in.

Shapes: T time steps, B streams, H hidden units, V vocabulary, L layers, G gates per cell
(LSTM and peephole LSTM 4, coupled LSTM and the GRUs 3, RNN, IRNN and Jordan 1). All
parameters live in one flat buffer; ``offs`` holds the slot boundaries of its named views (see
charrnn/model.py and docs/model.md):

    slot 4*l + 0   W_x   (In_l, G*H)   In_0 = V (row gather), In_l = H above
    slot 4*l + 1   W_h   (H, G*H)
    slot 4*l + 2   b     (G*H,)
    slot 4*l + 3   extra: GRU b_hn (H,), peephole LSTM p (3H,: i, f, o), classic GRU W_hn
                   (H, H) (its W_h is (H, 2H): r, z), layer-normalised GRU: its gains
                   (3H,) then b_hn (H,); empty otherwise
    slot 4*L + 0   W_y   (H, V)
    slot 4*L + 1   b_y   (V,)

Memory kept from forward for backward (torch-rnn style accounting), per layer and per step:
    hs     B*H           hidden states (plus h0)
    cs     B*H           LSTM-family cell states (plus c0); one slot only for the others
    acts   B*S*H         LSTM, peephole: i, f, g, o, tanh(c) (S=5); coupled: f, g, o, tanh(c)
                         (S=4); GRU: r, z, n, W_hn h + b_hn (S=4); classic GRU: r, z, n (S=3),
                         with r * h_prev kept in its cs; layer-normalised GRU: the GRU's four,
                         then x W_x before its normalisation (S=7); RNN, IRNN: nothing (S=0;
                         the derivative comes from hs)
plus, once for the whole model, logits and probabilities (T*B*V each). Scratch reused across
layers: xg, dX, dHG (T*B*G*H each), xin and dH (T*B*H each), gates (B*G*H), tmp (B*H).
"""

import functools
import math
import os
import platform
from pathlib import Path

import numpy as np

if not os.access(Path(__file__).parent, os.W_OK) and "NUMBA_CACHE_DIR" not in os.environ:
    # installed read-only: keep compiled kernels in the user's cache (read by numba at import)
    os.environ["NUMBA_CACHE_DIR"] = str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "charrnn" / "numba")

from . import scipy_blas  # noqa: E402

scipy_blas.preload()  # in the command line's process only: see scipy_blas.py


def _loop_features(host: str) -> str | None:
    """The CPU features numba should compile for, given the host's (numba's "+a,-b" string), or
    None to leave them. On most Intel cores with AVX-512, LLVM's tuning keeps loops 256 bits
    wide ("prefer-256-bit", which spares older chips' clocks); the register tile below runs
    512-bit vectors all the same, so the loops around it (the exp, the gate loops, the sums)
    may too: faster where measured (BENCHMARKS.md, "Loops as wide as the registers")."""
    if "+avx512f" in host.split(","):
        return host + ",-prefer-256-bit"
    return None


def _full_width_loops() -> None:
    """Compile every kernel of this process for _loop_features, unless the user chose the CPU
    (NUMBA_CPU_NAME or NUMBA_CPU_FEATURES). Called before this module makes its first kernel:
    numba's compiler reads the features when the process's first @njit function is made."""
    from numba.core import config
    from numba.core.codegen import get_host_cpu_features

    if config.CPU_NAME is None and config.CPU_FEATURES is None:
        config.CPU_FEATURES = _loop_features(get_host_cpu_features())


_full_width_loops()

from llvmlite import ir  # noqa: E402
from numba import njit, types  # noqa: E402
from numba.core import cgutils  # noqa: E402
from numba.extending import intrinsic, overload  # noqa: E402

# error_model="numpy": a float division by zero gives inf/nan instead of raising, which removes
# the branch that otherwise stops LLVM from vectorising every loop containing a division.
kernel = functools.partial(njit, cache=True, nogil=True, error_model="numpy")

# The cells' kernel ids: charrnn/cells.py's `kernel_id`s, written here as literals because numba's
# disk cache does not notice a changed global of another file (tests/test_cells.py checks them).
# Append-only: a new cell takes the next id (docs/adding-a-cell.md).
LSTM = 0
GRU = 1
RNN = 2
IRNN = 3
LSTM_COUPLED = 4
LSTM_PEEPHOLE = 5
GRU_CLASSIC = 6
JORDAN = 7
GRU_LN = 8

LN_EPS = 1e-5  # gru-ln: added to the variance, as PyTorch's LayerNorm does

SLOTS_PER_LAYER = 4


# ---------------------------------------------------------------------------------------------
# views into the flat parameter buffer


@kernel
def _mat(buf, offs, slot, rows):
    """Slot ``slot`` of ``buf`` as a C-contiguous (rows, n // rows) matrix."""
    a = offs[slot]
    b = offs[slot + 1]
    return buf[a:b].reshape((rows, (b - a) // rows))


@kernel
def _vec(buf, offs, slot):
    return buf[offs[slot]:offs[slot + 1]]


# ---------------------------------------------------------------------------------------------
# nonlinearities. float32 uses a branch-free rational tanh that LLVM can vectorise (the pip
# llvmlite has no SVML, so math.tanh/math.exp stay scalar calls, ~60 ns per LSTM unit);
# float64 (gradient checks, parity tests) keeps the exact libm functions.

_TANH_CLAMP = np.float32(7.90531110763549805)  # beyond this tanh rounds to +-1 in float32


@kernel(inline="always")
def _tanh_f32(x):
    """tanh to within 4e-7 absolute: Eigen's odd (13, 6) rational approximation."""
    x = min(max(x, -_TANH_CLAMP), _TANH_CLAMP)
    x2 = x * x
    p = np.float32(-2.76076847742355e-16)
    p = p * x2 + np.float32(2.00018790482477e-13)
    p = p * x2 + np.float32(-8.60467152213735e-11)
    p = p * x2 + np.float32(5.12229709037114e-08)
    p = p * x2 + np.float32(1.48572235717979e-05)
    p = p * x2 + np.float32(6.37261928875436e-04)
    p = p * x2 + np.float32(4.89352455891786e-03)
    q = np.float32(1.19825839466702e-06)
    q = q * x2 + np.float32(1.18534705686654e-04)
    q = q * x2 + np.float32(2.26843463243900e-03)
    q = q * x2 + np.float32(4.89352518554385e-03)
    return x * p / q


def _tanh(x):
    return math.tanh(x)


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


@overload(_tanh, inline="always")
def _tanh_impl(x):
    if x == types.float32:
        return lambda x: _tanh_f32(x)
    return lambda x: math.tanh(x)


@overload(_sigmoid, inline="always")
def _sigmoid_impl(x):
    if x == types.float32:  # sigmoid(x) = (1 + tanh(x / 2)) / 2: one approximation for both
        half = np.float32(0.5)
        return lambda x: half + half * _tanh_f32(half * x)
    return lambda x: 1.0 / (1.0 + math.exp(-x))


def _one(x):
    return 1.0


@overload(_one, inline="always")
def _one_impl(x):
    """1 in the precision of x, so float32 arithmetic is not promoted to float64."""
    if x == types.float32:
        return lambda x: np.float32(1.0)
    return lambda x: 1.0


# exp(x) for x <= 0 in float64 within one unit in the last place: x = n ln 2 + r, |r| <= ln 2 / 2,
# exp(r) by its Taylor polynomial to r^13 (the next term is below 1e-17), times 2^n made from its
# bits. Unlike math.exp (a libm call per element), LLVM vectorises it: drawing from a vocabulary
# of 4,000 characters, and training's softmax over it, spend a fraction of the time they did
# (BENCHMARKS.md, "Sampling a batch: one product for every row").
_INV_LN2 = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # ln 2 in two parts, so that n * _LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10
_EXP_FLOOR = -708.0  # exp(-708) is still a normal float64, so 2^n has an exponent field


@kernel(inline="always", fastmath={"contract"})
def _exp_parts(x):
    """exp(x) for x <= 0 as (its mantissa part, the bits of its power of two as an int64), the
    power applied by _exp_shifted's second loop; (0, 0) below exp(-708)."""
    under = x < _EXP_FLOOR
    x = max(x, _EXP_FLOOR)
    n = math.floor(x * _INV_LN2 + 0.5)
    r = (x - n * _LN2_HI) - n * _LN2_LO
    p = 1.0 / 6227020800.0
    p = p * r + 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    return p * r + 1.0, 0 if under else (np.int64(n) + 1023) << 52  # the bits of 2^n (or 0)


@kernel(fastmath={"contract"})
def _exp_shifted(logits, m, temperature, probs, powers):
    """probs[k] = exp((logits[k] - m) / temperature) for logits (V,) <= m, temperature > 0,
    and 0 where that is below exp(-708) (a weight no sum of a vocabulary notices; 0 as libm's
    exp gives -inf, so such an id is never drawn), computed in float64 and stored in probs's
    dtype; powers: (V,) int64 scratch. Each element alone: a slice gives the bits the whole
    array gives there."""
    V = logits.size
    if temperature == 1.0:  # x / 1 is x: the same bits without a division per element
        for k in range(V):
            probs[k], powers[k] = _exp_parts(logits[k] - m)
    else:
        for k in range(V):
            probs[k], powers[k] = _exp_parts((logits[k] - m) / temperature)
    scale = powers.view(np.float64)
    for k in range(V):
        probs[k] *= scale[k]


@kernel
def _max_value(a, lo, hi):
    """The largest of a[lo:hi] (hi > lo), the value one loop from a[lo] keeping the best so far
    finds (a NaN a[lo] stays; NaN elsewhere is skipped; a zero's sign aside), with eight such
    maxima side by side, so that eight compares are in flight rather than one chain (the
    compare does not vectorise; the speed of each: BENCHMARKS.md, "Loops as wide as the
    registers")."""
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = a[lo]
    k = lo + 1
    while k + 8 <= hi:
        m0 = max(m0, a[k])
        m1 = max(m1, a[k + 1])
        m2 = max(m2, a[k + 2])
        m3 = max(m3, a[k + 3])
        m4 = max(m4, a[k + 4])
        m5 = max(m5, a[k + 5])
        m6 = max(m6, a[k + 6])
        m7 = max(m7, a[k + 7])
        k += 8
    for j in range(k, hi):
        m0 = max(m0, a[j])
    return max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))


@kernel(fastmath={"reassoc"})
def _sum(a):
    """The sum of a (1-d), vectorised (in an order of LLVM's choosing, the same every call)."""
    total = 0.0
    for k in range(a.size):
        total += a[k]
    return total


# ---------------------------------------------------------------------------------------------
# One time step of each cell. Per stream b, several short loops over the hidden units, each
# touching two or three arrays: LLVM vectorises those (a single fused loop over six arrays needs
# too many runtime alias checks and stays scalar and far slower: BENCHMARKS.md, "Figures behind
# the code").
# A loop over one block of a row runs over range(H) with the block's offset in the index, never
# over range(2 * H, 3 * H): inside the steps, numba and LLVM made the second form several times
# slower (BENCHMARKS.md, "The gate loops and the packing of rows").
#
# Forward: gates (B, G*H) holds h_prev @ W_h on entry and is used as scratch.


@kernel
def _lstm_step(xg, gates, c_prev, h_out, c_out, act):
    """xg, gates: (B, 4H) blocks i, f, g, o; c_prev, h_out, c_out: (B, H);
    act: (B, 5H) out: i, f, g, o, tanh(c)."""
    B, H = c_prev.shape
    for b in range(B):
        x, a, cp, ho, co, s = xg[b], gates[b], c_prev[b], h_out[b], c_out[b], act[b]
        for k in range(4 * H):
            a[k] += x[k]
        for k in range(2 * H):
            s[k] = _sigmoid(a[k])  # i, f
        for j in range(H):
            s[2 * H + j] = _tanh(a[2 * H + j])  # g
        for j in range(H):
            s[3 * H + j] = _sigmoid(a[3 * H + j])  # o
        for j in range(H):
            co[j] = s[H + j] * cp[j] + s[j] * s[2 * H + j]  # c = f * c_prev + i * g
        for j in range(H):
            s[4 * H + j] = _tanh(co[j])
        for j in range(H):
            ho[j] = s[3 * H + j] * s[4 * H + j]  # h = o * tanh(c)


@kernel
def _gru_step(xg, gates, b_hn, h_prev, h_out, act):
    """xg, gates: (B, 3H) blocks r, z, n; b_hn: (H,); h_prev, h_out: (B, H);
    act: (B, 4H) out: r, z, n, W_hn h + b_hn."""
    B, H = h_prev.shape
    for b in range(B):
        x, a, hp, ho, s = xg[b], gates[b], h_prev[b], h_out[b], act[b]
        for k in range(2 * H):
            s[k] = _sigmoid(x[k] + a[k])  # r, z
        for j in range(H):
            s[3 * H + j] = a[2 * H + j] + b_hn[j]
        # n's pre-activation goes through a (scratch): a loop that reads s where it writes s
        # stays scalar (BENCHMARKS.md, "The gate loops and the packing of rows")
        for j in range(H):
            a[2 * H + j] = x[2 * H + j] + s[j] * s[3 * H + j]
        for j in range(H):
            s[2 * H + j] = _tanh(a[2 * H + j])  # n
        for j in range(H):
            n = s[2 * H + j]
            ho[j] = n + s[H + j] * (hp[j] - n)  # (1 - z) * n + z * h_prev


@kernel
def _rnn_step(xg, gates, h_out):
    """Elman: h = tanh(xg + h_prev @ W_h). All (B, H)."""
    B, H = h_out.shape
    for b in range(B):
        x, a, ho = xg[b], gates[b], h_out[b]
        for j in range(H):
            ho[j] = _tanh(x[j] + a[j])


@kernel
def _irnn_step(xg, gates, h_out):
    """ReLU RNN (Le et al. 2015): h = max(0, xg + h_prev @ W_h). All (B, H)."""
    B, H = h_out.shape
    zero = _one(h_out[0, 0]) - _one(h_out[0, 0])
    for b in range(B):
        x, a, ho = xg[b], gates[b], h_out[b]
        for j in range(H):
            ho[j] = max(x[j] + a[j], zero)


@kernel
def _coupled_step(xg, gates, c_prev, h_out, c_out, act):
    """LSTM with coupled gates, i = 1 - f. xg, gates: (B, 3H) blocks f, g, o;
    act: (B, 4H) out: f, g, o, tanh(c)."""
    B, H = c_prev.shape
    for b in range(B):
        x, a, cp, ho, co, s = xg[b], gates[b], c_prev[b], h_out[b], c_out[b], act[b]
        for k in range(3 * H):
            a[k] += x[k]
        for k in range(H):
            s[k] = _sigmoid(a[k])  # f
        for j in range(H):
            s[H + j] = _tanh(a[H + j])  # g
        for j in range(H):
            s[2 * H + j] = _sigmoid(a[2 * H + j])  # o
        for j in range(H):
            g = s[H + j]
            co[j] = g + s[j] * (cp[j] - g)  # f * c_prev + (1 - f) * g
        for j in range(H):
            s[3 * H + j] = _tanh(co[j])
        for j in range(H):
            ho[j] = s[2 * H + j] * s[3 * H + j]


@kernel
def _peephole_step(xg, gates, p, c_prev, h_out, c_out, act):
    """LSTM with peepholes (Gers & Schmidhuber 2000): i and f also see p_i * c_prev and
    p_f * c_prev, o sees p_o * c_t. p: (3H,) blocks i, f, o; otherwise as _lstm_step."""
    B, H = c_prev.shape
    for b in range(B):
        x, a, cp, ho, co, s = xg[b], gates[b], c_prev[b], h_out[b], c_out[b], act[b]
        for k in range(4 * H):
            a[k] += x[k]
        for j in range(H):
            a[j] += p[j] * cp[j]
        for j in range(H):
            a[H + j] += p[H + j] * cp[j]
        for k in range(2 * H):
            s[k] = _sigmoid(a[k])  # i, f
        for j in range(H):
            s[2 * H + j] = _tanh(a[2 * H + j])  # g
        for j in range(H):
            co[j] = s[H + j] * cp[j] + s[j] * s[2 * H + j]
        for j in range(H):
            a[3 * H + j] += p[2 * H + j] * co[j]
        for j in range(H):
            s[3 * H + j] = _sigmoid(a[3 * H + j])  # o
        for j in range(H):
            s[4 * H + j] = _tanh(co[j])
        for j in range(H):
            ho[j] = s[3 * H + j] * s[4 * H + j]


@kernel
def _gru_classic_step(xg, W_h, W_hn_flat, h_prev, h_out, rh, act, gates):
    """Cho et al. (2014): r, z = sigmoid(x W_x + h_prev W_h + b), n = tanh(x W_xn + (r * h_prev)
    W_hn + b_n), h = (1 - z) * h_prev + z * n. xg: (B, 3H) blocks r, z, n; W_h: (H, 2H);
    W_hn_flat: (H*H,); rh: (B, H) out: r * h_prev; act: (B, 3H) out: r, z, n;
    gates: (B, 3H) scratch, used as the (B, 2H) and (B, H) products."""
    B, H = h_prev.shape
    flat = gates.reshape(B * 3 * H)
    grz = flat[:B * 2 * H].reshape((B, 2 * H))
    gn = flat[B * 2 * H:].reshape((B, H))
    _matmul(h_prev, W_h, grz)
    for b in range(B):
        x, a, hp, q, s = xg[b], grz[b], h_prev[b], rh[b], act[b]
        for k in range(2 * H):
            s[k] = _sigmoid(x[k] + a[k])  # r, z
        for j in range(H):
            q[j] = s[j] * hp[j]
    _matmul(rh, W_hn_flat.reshape((H, H)), gn)  # the second GEMM: the reset state through W_hn
    for b in range(B):
        x, a, hp, ho, s = xg[b], gn[b], h_prev[b], h_out[b], act[b]
        for j in range(H):
            s[2 * H + j] = _tanh(x[2 * H + j] + a[j])
        for j in range(H):
            ho[j] = hp[j] + s[H + j] * (s[2 * H + j] - hp[j])


# ---- end of the cells' forward steps: a new cell's step function goes above this line ----
# (docs/adding-a-cell.md). Then, if it carries c, its id in has_cell_state; and its branch in
# _cell_step.


@kernel
def has_cell_state(cell):
    return cell == LSTM or cell == LSTM_COUPLED or cell == LSTM_PEEPHOLE


@kernel
def _cell_step(cell, xg, gates, extra, h_prev, c_prev, h_out, c_out, act):
    """One step of any cell: gates holds h_prev @ W_h on entry; extra is the layer's
    cell-specific vector (GRU b_hn, peephole weights)."""
    if cell == LSTM:
        _lstm_step(xg, gates, c_prev, h_out, c_out, act)
    elif cell == LSTM_PEEPHOLE:
        _peephole_step(xg, gates, extra, c_prev, h_out, c_out, act)
    elif cell == LSTM_COUPLED:
        _coupled_step(xg, gates, c_prev, h_out, c_out, act)
    elif cell == GRU:
        _gru_step(xg, gates, extra, h_prev, h_out, act)
    elif cell == GRU_LN:  # the GRU's step on the normalised input; b_hn after the gains
        _gru_step(xg, gates, extra[3 * h_prev.shape[1]:], h_prev, h_out, act)
    elif cell == IRNN:
        _irnn_step(xg, gates, h_out)
    elif cell == RNN:
        _rnn_step(xg, gates, h_out)
    # a new cell's branch goes here: an id without one is refused, never run as another cell
    else:
        raise ValueError("no CPU step for this cell id")


# Backward: dh (B, H) is the gradient w.r.t. h_t (from above plus from step t+1). Each writes
# the gradient w.r.t. the pre-activations into dx (input side) and, for GRU, where the recurrent
# side differs, into dhg.


@kernel(inline="always")
def _lstm_ifg_grads(dc, cp, s, g, H, one):
    """One stream's gradients w.r.t. the i, f, g pre-activations, given dc = dL/dc_t.
    s: the stored i, f, g, o, tanh(c) row; g: the (4H,) gradient row."""
    for j in range(H):
        i = s[j]
        g[j] = dc[j] * s[2 * H + j] * (i - i * i)
    for j in range(H):
        f = s[H + j]
        g[H + j] = dc[j] * cp[j] * (f - f * f)
    for j in range(H):
        gg = s[2 * H + j]
        g[2 * H + j] = dc[j] * s[j] * (one - gg * gg)


@kernel
def _lstm_step_back(dh, dc_next, c_prev, act, dx):
    """dc_next: (B, H) in: dL/dc_t from step t+1, out: dL/dc_{t-1}. dx: (B, 4H)."""
    B, H = dh.shape
    one = _one(dh[0, 0])
    for b in range(B):
        d, dc, cp, s, g = dh[b], dc_next[b], c_prev[b], act[b], dx[b]
        for j in range(H):  # dc += dh * o * (1 - tanh(c)^2)
            dc[j] += d[j] * s[3 * H + j] * (one - s[4 * H + j] * s[4 * H + j])
        _lstm_ifg_grads(dc, cp, s, g, H, one)
        for j in range(H):
            o = s[3 * H + j]
            g[3 * H + j] = d[j] * s[4 * H + j] * (o - o * o)
        for j in range(H):
            dc[j] *= s[H + j]


@kernel
def _gru_step_back(dh, h_prev, act, dx, dhg, dh_direct):
    """dx, dhg: (B, 3H); dh_direct: (B, H) out, the part of dL/dh_{t-1} that skips W_h."""
    B, H = dh.shape
    one = _one(dh[0, 0])
    for b in range(B):
        d, hp, s, gx, gh, dd = dh[b], h_prev[b], act[b], dx[b], dhg[b], dh_direct[b]
        for j in range(H):  # dn: through h = (1 - z) * n + z * h_prev and n = tanh(.)
            n = s[2 * H + j]
            gx[2 * H + j] = d[j] * (one - s[H + j]) * (one - n * n)
        for j in range(H):  # dr: n's pre-activation has r * hn
            r = s[j]
            gx[j] = gx[2 * H + j] * s[3 * H + j] * (r - r * r)
        for j in range(H):  # dz
            z = s[H + j]
            gx[H + j] = d[j] * (hp[j] - s[2 * H + j]) * (z - z * z)
        for k in range(2 * H):
            gh[k] = gx[k]
        for j in range(H):
            gh[2 * H + j] = gx[2 * H + j] * s[j]
        for j in range(H):
            dd[j] = d[j] * s[H + j]


@kernel
def _rnn_step_back(dh, h, dx):
    B, H = dh.shape
    one = _one(dh[0, 0])
    for b in range(B):
        d, hh, g = dh[b], h[b], dx[b]
        for j in range(H):
            g[j] = d[j] * (one - hh[j] * hh[j])


@kernel
def _irnn_step_back(dh, h, dx):
    B, H = dh.shape
    zero = _one(dh[0, 0]) - _one(dh[0, 0])
    for b in range(B):
        d, hh, g = dh[b], h[b], dx[b]
        for j in range(H):
            g[j] = d[j] if hh[j] > zero else zero


@kernel
def _coupled_step_back(dh, dc_next, c_prev, act, dx):
    """As _lstm_step_back for i = 1 - f; dx: (B, 3H) blocks f, g, o."""
    B, H = dh.shape
    one = _one(dh[0, 0])
    for b in range(B):
        d, dc, cp, s, g = dh[b], dc_next[b], c_prev[b], act[b], dx[b]
        for j in range(H):
            dc[j] += d[j] * s[2 * H + j] * (one - s[3 * H + j] * s[3 * H + j])
        for j in range(H):
            f = s[j]
            g[j] = dc[j] * (cp[j] - s[H + j]) * (f - f * f)
        for j in range(H):
            gg = s[H + j]
            g[H + j] = dc[j] * (one - s[j]) * (one - gg * gg)
        for j in range(H):
            o = s[2 * H + j]
            g[2 * H + j] = d[j] * s[3 * H + j] * (o - o * o)
        for j in range(H):
            dc[j] *= s[j]


@kernel
def _peephole_step_back(dh, dc_next, c_prev, act, p, dx):
    """As _lstm_step_back, plus the peephole paths: o's pre-activation feeds dc_t through p_o,
    i's and f's feed dc_{t-1} through p_i and p_f."""
    B, H = dh.shape
    one = _one(dh[0, 0])
    for b in range(B):
        d, dc, cp, s, g = dh[b], dc_next[b], c_prev[b], act[b], dx[b]
        for j in range(H):
            o = s[3 * H + j]
            g[3 * H + j] = d[j] * s[4 * H + j] * (o - o * o)
        for j in range(H):
            tc = s[4 * H + j]
            dc[j] += d[j] * s[3 * H + j] * (one - tc * tc) + g[3 * H + j] * p[2 * H + j]
        _lstm_ifg_grads(dc, cp, s, g, H, one)
        for j in range(H):
            dc[j] = dc[j] * s[H + j] + g[j] * p[j] + g[H + j] * p[H + j]


@kernel
def _gru_classic_layer_backward(dH, W_h, W_hn_flat, hs, acts, dh_next, dX, dHG, tmp):
    """The classic GRU's time loop backward (two recurrent GEMMs per step). dX (T, B, 3H) gets
    the pre-activation gradients r, z, n; dHG, as one flat buffer, gets the (T*B, 2H) r, z
    block followed by the (T*B, H) n block: the operands of the weight-gradient GEMMs."""
    T, B, H = dH.shape
    one = _one(dH[0, 0, 0])
    WhT = np.ascontiguousarray(W_h.T)  # (2H, H)
    WhnT = np.ascontiguousarray(W_hn_flat.reshape((H, H)).T)
    flat = dHG.reshape(dHG.size)
    for t in range(T - 1, -1, -1):
        dh = dH[t]
        for b in range(B):
            for j in range(H):
                dh[b, j] += dh_next[b, j]
        drz = flat[t * B * 2 * H:(t + 1) * B * 2 * H].reshape((B, 2 * H))
        dn = flat[(T * 2 + t) * B * H:(T * 2 + t + 1) * B * H].reshape((B, H))
        for b in range(B):
            d, hp, s, g, q, e = dh[b], hs[t, b], acts[t, b], dX[t, b], drz[b], dn[b]
            for j in range(H):  # n's pre-activation: h = h_prev + z * (n - h_prev)
                n = s[2 * H + j]
                e[j] = d[j] * s[H + j] * (one - n * n)
                g[2 * H + j] = e[j]
            for j in range(H):
                z = s[H + j]
                g[H + j] = d[j] * (s[2 * H + j] - hp[j]) * (z - z * z)
                q[H + j] = g[H + j]
        np.dot(dn, WhnT, tmp)  # dL/d(r * h_prev)
        for b in range(B):
            hp, s, g, q, dq = hs[t, b], acts[t, b], dX[t, b], drz[b], tmp[b]
            for j in range(H):
                r = s[j]
                g[j] = dq[j] * hp[j] * (r - r * r)
                q[j] = g[j]
        np.dot(drz, WhT, dh_next)
        for b in range(B):
            d, s, dn_, dq = dh[b], acts[t, b], dh_next[b], tmp[b]
            for j in range(H):
                dn_[j] += d[j] * (one - s[H + j]) + dq[j] * s[j]


# ---- end of the cells' backward steps: a new cell's step backward goes above this line ----
# (docs/adding-a-cell.md). Then its branch in _layer_backward, and in model_backward the
# gradient of its extra array, if it has one.


# ---------------------------------------------------------------------------------------------
# the per-step products: a register tile written in LLVM IR (kept in this file: numba's cache
# only notices changes to the file of the cached function, so a kernel called from here must
# live here)
#
# Every time step multiplies a thin (B, K) state by a recurrent matrix: forward by W_h, backward
# by W_h.T, and a sampling step by every matrix of the model. BLAS reaches about half of a core's
# peak on such thin shapes and repacks the matrix on every call; tiles written as numba loops
# reach about 60%, because LLVM will not keep an outer-product tile in vector registers when it
# is written as scalars. So the tile is written in LLVM IR with explicit vector types (the
# intrinsic below), the way BLAS writes its micro-kernels in assembly:
#
#   C[i:i+rows, j:j+NR] = A[i:i+rows, :] @ P[p]       P[p] (K, NR): a panel of the matrix
#
# For each k, two vector loads of the panel's row k, one broadcast of A[r, k] per row, and
# 2 * rows fused multiply-adds into accumulators that stay in registers for the whole of K.
# The matrix is packed once (per window in training, per stepper in sampling) into panels of
# NR columns, K rows each, contiguous and zero-padded past its last column (pack_panels), so the
# tile reads its panel as one sequential stream.
#
# Training's large products (the input projections and output layer of a whole window, the
# weight gradients, the gradients through W_x and W_y) go through the same tile (tile_gemm),
# blocked for the caches, rather than BLAS, which was much slower on them where measured
# (BENCHMARKS.md, "Training's large products through the tile").
#
# The tile's shape comes from the CPU numba compiles for: vectors as wide as its registers
# (AVX-512: 16 float32), two per tile row, and as many rows as the accumulators that fit beside
# the panel's two vectors, a broadcast and a spare (32 registers: 14 rows; AVX2's 16: 6).
# Speed beside the loop tiles and BLAS: BENCHMARKS.md, "A register tile in LLVM IR".
#
# Each accumulator is one chain of fused multiply-adds over k = 0..K-1 from zero, the same
# instructions whatever the number of rows in its tile, so C[i, j] has the same bits whatever
# M, i and the tiling: a sampling batch can be split across threads in any way without
# changing one bit of any stream's text.


def _target_features() -> set[str]:
    """The CPU features numba compiles for: NUMBA_CPU_FEATURES where set (none for
    NUMBA_CPU_NAME=generic, a portable build), else the host's as numba reads them (without AVX
    where numba turns it off)."""
    from numba.core import config
    from numba.core.codegen import get_host_cpu_features

    flat = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    return {f[1:] for f in flat.split(",") if f.startswith("+")}


def _vector_registers(features: set[str]) -> tuple[int, int]:
    """(bits per vector register, number of them)."""
    if "avx512f" in features:
        return 512, 32
    if "avx" in features:
        return 256, 16
    return 128, 16  # SSE2, NEON (which has 32; 16 is the safe side)


def _fused_multiply_add(features: set[str]) -> str:
    """llvm.fma where the CPU has one (always fused: the same rounding in every tile), else
    llvm.fmuladd (without one, LLVM makes it a multiply and an add, alike in every tile)."""
    return "llvm.fma" if features & {"fma", "neon"} else "llvm.fmuladd"


_FEATURES = _target_features()  # (read once: numba flattens the host's features each time)
VECTOR_BITS, VECTOR_REGISTERS = _vector_registers(_FEATURES)
_FMA = _fused_multiply_add(_FEATURES)
TILE_VECTORS = 2  # vectors per tile row: a panel is 2 vectors wide
TILE_ROWS = (VECTOR_REGISTERS - TILE_VECTORS - 2) // TILE_VECTORS
PANEL_BYTES = TILE_VECTORS * VECTOR_BITS // 8  # one row of a panel
CACHE_LINE = 64  # bytes (x86-64 and ARMv8 alike)
PANEL_ALIGN = CACHE_LINE  # panels start on a cache line


def _emit_tile(builder, vt, fma, A, lda, ka, P, C, ldc, K, ncols, rows, panels=1,
               accumulate=None, ahead=None):
    """IR for one tile of `rows` rows by `panels` panels side by side: the loop over k, then the
    stores (all columns, or for one panel the first ncols through a buffer: the last panel of a
    matrix whose width is no multiple of NR). A[r, k] is at A + r * lda + k * ka (ka = 1: rows
    contiguous; lda = 1: A is the transpose of a row-major array). accumulate (an i64, nonzero:
    add to C instead of overwriting it) or None: overwrite. ahead (a pointer to a panel of K
    rows, for one panel only) or None: the tile first prefetches its lines of C, for writing
    (all NR columns: a prefetch past C's last column never faults), and each k prefetches row
    k of `ahead` into L2, so that neither waits on memory (_tile_ahead)."""
    assert ahead is None or panels == 1
    i64 = ir.IntType(64)
    W = vt.count
    NR = TILE_VECTORS * W
    n_vec = panels * TILE_VECTORS  # accumulators per row
    elem_bytes = 8 if isinstance(vt.element, ir.DoubleType) else 4
    vptr = vt.as_pointer()
    zero = ir.Constant(vt, None)
    const = functools.partial(ir.Constant, i64)
    fn = builder.function
    start = builder.block
    loop = fn.append_basic_block(f"tile{rows}x{panels}.k")
    stores = fn.append_basic_block(f"tile{rows}x{panels}.stores")
    # a panel row's lines, and for a row of C that need not start on a line, its last element's
    line_starts = list(range(0, NR, CACHE_LINE // elem_bytes))
    if ahead is not None:
        for r in range(rows):
            for offset in line_starts + [NR - 1]:
                _prefetch(builder, builder.gep(C, [builder.add(builder.mul(const(r), ldc),
                                                               const(offset))]), write=True)
    builder.cbranch(builder.icmp_signed(">", K, const(0)), loop, stores)

    builder.position_at_end(loop)  # (rows, n_vec) accumulators += A[:, k] x P[k]
    k = builder.phi(i64)
    k.add_incoming(const(0), start)
    acc = [[builder.phi(vt) for _ in range(n_vec)] for _ in range(rows)]
    for row in acc:
        for a in row:
            a.add_incoming(zero, start)
    panel_row = builder.mul(k, const(NR))
    panel_size = builder.mul(K, const(NR))
    b = []
    for q in range(panels):
        row_start = builder.add(builder.mul(panel_size, const(q)), panel_row)
        b += [builder.load(builder.bitcast(builder.gep(P, [builder.add(row_start, const(v * W))]),
                                           vptr), align=elem_bytes)
              for v in range(TILE_VECTORS)]
    if ahead is not None:  # (panels start on a line)
        for offset in line_starts:
            _prefetch(builder, builder.gep(ahead, [builder.add(panel_row, const(offset))]),
                      write=False, into_l2=True)
    undef = ir.Constant(vt, ir.Undefined)
    lane0 = ir.Constant(ir.IntType(32), 0)
    splat = ir.Constant(ir.VectorType(ir.IntType(32), W), [0] * W)
    new = []
    for r in range(rows):
        x = builder.load(builder.gep(A, [builder.add(builder.mul(const(r), lda),
                                                     builder.mul(k, ka))]))
        xs = builder.shuffle_vector(builder.insert_element(undef, x, lane0), undef, splat)
        new.append([builder.call(fma, [xs, b[v], acc[r][v]]) for v in range(n_vec)])
    k_next = builder.add(k, const(1))
    end = builder.block
    k.add_incoming(k_next, end)
    for r in range(rows):
        for v in range(n_vec):
            acc[r][v].add_incoming(new[r][v], end)
    builder.cbranch(builder.icmp_signed("<", k_next, K), loop, stores)

    builder.position_at_end(stores)
    out = []
    for r in range(rows):
        row = []
        for v in range(n_vec):
            s = builder.phi(vt)
            s.add_incoming(zero, start)
            s.add_incoming(new[r][v], end)
            row.append(s)
        out.append(row)
    adding = [False] if accumulate is None else [False, True]
    done = fn.append_basic_block(f"tile{rows}x{panels}.done")
    blocks = {(add, whole): fn.append_basic_block(f"tile{rows}x{panels}.{add:d}{whole:d}")
              for add in adding for whole in (False, True)}
    is_whole = builder.icmp_signed("==", ncols, const(panels * NR))
    if accumulate is None:
        builder.cbranch(is_whole, blocks[False, True], blocks[False, False])
    else:
        overwrite = fn.append_basic_block(f"tile{rows}x{panels}.overwrite")
        add = fn.append_basic_block(f"tile{rows}x{panels}.add")
        builder.cbranch(builder.icmp_signed("!=", accumulate, const(0)), add, overwrite)
        builder.position_at_end(overwrite)
        builder.cbranch(is_whole, blocks[False, True], blocks[False, False])
        builder.position_at_end(add)
        builder.cbranch(is_whole, blocks[True, True], blocks[True, False])
    for (add, whole), block in blocks.items():
        builder.position_at_end(block)
        if whole:
            for r in range(rows):
                for v in range(n_vec):
                    at = builder.bitcast(builder.gep(C, [builder.add(builder.mul(const(r), ldc),
                                                                     const(v * W))]), vptr)
                    value = out[r][v]
                    if add:
                        value = builder.fadd(builder.load(at, align=elem_bytes), value)
                    builder.store(value, at, align=elem_bytes)
        elif panels == 1:  # (several panels are always whole: the callers see to it)
            buffer = cgutils.alloca_once(builder, vt, size=TILE_VECTORS)
            for r in range(rows):
                row_start = builder.gep(C, [builder.mul(const(r), ldc)])
                if add:
                    cgutils.raw_memcpy(builder, buffer, row_start, ncols, elem_bytes)
                for v in range(TILE_VECTORS):
                    at = builder.gep(buffer, [const(v)])
                    value = builder.fadd(builder.load(at), out[r][v]) if add else out[r][v]
                    builder.store(value, at, align=elem_bytes)
                cgutils.raw_memcpy(builder, row_start, buffer, ncols, elem_bytes)
        builder.branch(done)
    builder.position_at_end(done)


def _prefetch(builder, pointer, write, into_l2=False):
    """A prefetch of pointer's line, for reading or writing: into L1, or into L2 but not L1
    (x86: prefetcht0 or prefetchw, prefetcht1)."""
    i32 = ir.IntType(32)
    byte_pointer = ir.IntType(8).as_pointer()
    prefetch = builder.module.declare_intrinsic(  # named for the pointer type ("p0" or "p0i8")
        "llvm.prefetch", [byte_pointer],
        fnty=ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32]))
    builder.call(prefetch, [builder.bitcast(pointer, byte_pointer), ir.Constant(i32, int(write)),
                            ir.Constant(i32, 2 if into_l2 else 3), ir.Constant(i32, 1)])


def _fma_declaration(builder, vt):
    bits = 64 if isinstance(vt.element, ir.DoubleType) else 32
    name = f"{_FMA}.v{vt.count}f{bits}"
    return builder.module.globals.get(name) or ir.Function(
        builder.module, ir.FunctionType(vt, [vt, vt, vt]), name)


def _vector_type(context, float_type):
    ft = context.get_value_type(float_type)
    return ir.VectorType(ft, VECTOR_BITS // (64 if isinstance(ft, ir.DoubleType) else 32))


def _tile_codegen(context, builder, signature, args):
    """_tile's and _tile_ahead's IR: the arguments in _tile's order, _tile_ahead's `ahead`
    between `accumulate` and `zero`."""
    a_ptr, lda, ka, p_ptr, K, c_ptr, ldc, ncols, rows, accumulate = args[:10]
    with_ahead = len(args) == 12
    vt = _vector_type(context, signature.args[-1])
    fma = _fma_declaration(builder, vt)
    A, P, C = (builder.inttoptr(p, vt.element.as_pointer()) for p in (a_ptr, p_ptr, c_ptr))
    ahead = builder.inttoptr(args[10], vt.element.as_pointer()) if with_ahead else None
    after = builder.function.append_basic_block("tile.after")
    switch = builder.switch(rows, after)  # one tile per row count, chosen at run time
    for r in range(1, TILE_ROWS + 1):
        block = builder.function.append_basic_block(f"tile.rows{r}")
        switch.add_case(ir.Constant(ir.IntType(64), r), block)
        builder.position_at_end(block)
        _emit_tile(builder, vt, fma, A, lda, ka, P, C, ldc, K, ncols, r,
                   accumulate=accumulate, ahead=ahead)
        builder.branch(after)
    builder.position_at_end(after)
    return context.get_dummy_value()


@intrinsic
def _tile(typingctx, a_ptr, lda, ka, p_ptr, k, c_ptr, ldc, ncols, rows, accumulate, zero):
    """C[r, c] = sum_k A[r, k] P[k, c] (accumulate nonzero: C[r, c] += that sum) for r < rows
    (1..TILE_ROWS), c < ncols (<= NR): A, P and C given by the addresses of their first
    elements, A by its strides in elements (A[r, k] at r * lda + k * ka), C by its row stride,
    P contiguous (K, NR); `zero` a 0 of the arrays' float type. The caller checks the bounds."""
    return types.void(*(types.intp,) * 10, zero), _tile_codegen


@intrinsic
def _tile_ahead(typingctx, a_ptr, lda, ka, p_ptr, k, c_ptr, ldc, ncols, rows, accumulate, ahead,
                zero):
    """_tile, prefetching its lines of C and, row by row as it reads P, the panel at address
    `ahead` (K rows too: the panel the caller reads next, or P itself after the last) into L2:
    for the products whose panels outgrow L2 (tile_gemm's, and matmul_packed's of copied rows).
    Every tile of a panel asks for the next one; after the first, the lines are there. The
    same multiply-adds as _tile (BENCHMARKS.md, "Prefetching the large products")."""
    return types.void(*(types.intp,) * 11, zero), _tile_codegen


ROW_TILE_PANELS = 4  # one row's tile: 4 panels side by side, 8 chains to hide the FMA latency


@intrinsic
def _row_tile(typingctx, a_ptr, p_ptr, k, c_ptr, zero):
    """C[0, c] = sum_k A[0, k] P[k, c] for c < ROW_TILE_PANELS * NR: ROW_TILE_PANELS whole
    panels, one after another from p_ptr, for one row. A tile of one row has only two
    accumulators, so its multiply-adds would wait on each other; side by side, four panels
    give eight independent chains. Each chain the same as in _tile: the same bits."""
    sig = types.void(types.intp, types.intp, types.intp, types.intp, zero)

    def codegen(context, builder, signature, args):
        a_ptr, p_ptr, K, c_ptr, _ = args
        vt = _vector_type(context, signature.args[-1])
        A, P, C = (builder.inttoptr(p, vt.element.as_pointer()) for p in (a_ptr, p_ptr, c_ptr))
        width = ir.Constant(ir.IntType(64), ROW_TILE_PANELS * TILE_VECTORS * vt.count)
        one = ir.Constant(ir.IntType(64), 1)
        _emit_tile(builder, vt, _fma_declaration(builder, vt), A, K, one, P, C, width, K, width,
                   1, ROW_TILE_PANELS)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _transpose_block(typingctx, src, lda, rows, dst, ldd, zero):
    """dst[j * ldd + r] = src[r * lda + j] for j < W, r < W (W: a vector's lanes of the
    arrays' float type), 0 for r >= rows: `rows` (1..W) rows of W elements, from src (rows
    lda elements apart), into W rows of dst (ldd apart), each src row a column. In registers:
    the rows loaded as vectors, then log2(W) rounds of shuffles, each swapping the off-diagonal
    blocks of every pair of vectors b apart (b = W/2, ..., 1), then W whole stores in the
    order of j (where ldd < W, each over the lanes of the one before past ldd). Its speed
    against a copy element by element: BENCHMARKS.md, "The rows' copy in registers". The
    addresses and strides are the caller's to check."""
    sig = types.void(types.intp, types.intp, types.intp, types.intp, types.intp, zero)

    def codegen(context, builder, signature, args):
        src, lda, rows, dst, ldd, _ = args
        vt = _vector_type(context, signature.args[-1])
        W = vt.count
        elem_bytes = 8 if isinstance(vt.element, ir.DoubleType) else 4
        i64 = ir.IntType(64)
        S, D = (builder.inttoptr(p, vt.element.as_pointer()) for p in (src, dst))
        vectors = []
        for r in range(W):  # row r, or zeros past `rows` (nothing read there)
            before = builder.block
            load = builder.function.append_basic_block(f"transpose.load{r}")
            loaded = builder.function.append_basic_block(f"transpose.row{r}")
            builder.cbranch(builder.icmp_signed("<", ir.Constant(i64, r), rows), load, loaded)
            builder.position_at_end(load)
            at = builder.gep(S, [builder.mul(ir.Constant(i64, r), lda)])
            row = builder.load(builder.bitcast(at, vt.as_pointer()), align=elem_bytes)
            builder.branch(loaded)
            builder.position_at_end(loaded)
            v = builder.phi(vt)
            v.add_incoming(row, load)
            v.add_incoming(ir.Constant(vt, None), before)
            vectors.append(v)
        lanes = ir.VectorType(ir.IntType(32), W)
        b = W // 2
        while b >= 1:  # swap the b-wide off-diagonal blocks of vectors i and i + b
            swapped = list(vectors)
            for i in (i for i in range(W) if not i & b):
                x, y = vectors[i], vectors[i + b]
                swapped[i] = builder.shuffle_vector(x, y, ir.Constant(
                    lanes, [j if not j & b else W + j - b for j in range(W)]))
                swapped[i + b] = builder.shuffle_vector(x, y, ir.Constant(
                    lanes, [j + b if not j & b else W + j for j in range(W)]))
            vectors = swapped
            b //= 2
        for j, v in enumerate(vectors):
            at = builder.gep(D, [builder.mul(ir.Constant(i64, j), ldd)])
            builder.store(v, builder.bitcast(at, vt.as_pointer()), align=elem_bytes)
        return context.get_dummy_value()

    return sig, codegen


@kernel
def _aligned(n, like):
    """An uninitialised (n,) array of like's dtype starting on a cache line."""
    raw = np.empty(n + PANEL_ALIGN // like.itemsize, like.dtype)
    start = (-raw.ctypes.data) % PANEL_ALIGN // like.itemsize
    return raw[start:start + n]


@kernel
def new_panels(K, N, like):
    """An uninitialised (ceil(N / NR), K, NR) array of panels of like's dtype, starting on a
    cache line."""
    NR = PANEL_BYTES // like.itemsize
    return _aligned((N + NR - 1) // NR * K * NR, like).reshape(((N + NR - 1) // NR, K, NR))


@kernel
def pack_panels(W, P):
    """P[p, k, c] = W[k, p * NR + c], zero past W's last column: W (K, N), any strides (pass
    M.T to pack the transpose of M), into P from new_panels."""
    K, N = W.shape
    n_panels, _, NR = P.shape
    if P.shape[1] != K or n_panels != (N + NR - 1) // NR:
        raise ValueError("pack_panels: shapes do not match")
    for p in range(n_panels):
        j0 = p * NR
        if j0 + NR <= N:  # a whole panel: no test per element, so the copy vectorises
            for k in range(K):
                for c in range(NR):
                    P[p, k, c] = W[k, j0 + c]
        else:
            for k in range(K):
                for c in range(NR):
                    P[p, k, c] = W[k, j0 + c] if j0 + c < N else 0


@kernel
def packed(W):
    """W (K, N) in new panels."""
    P = new_panels(W.shape[0], W.shape[1], W)
    pack_panels(W, P)
    return P


@kernel
def new_layer_panels(L, K, N, like):
    """An uninitialised (L, ceil(N / NR), K, NR) array: L matrices' panels (new_panels)."""
    NR = PANEL_BYTES // like.itemsize
    n = (N + NR - 1) // NR
    return _aligned(L * n * K * NR, like).reshape((L, n, K, NR))


@kernel
def pack_recurrent(cell, params, offs, H, transposed, panels):
    """Every layer's W_h (H, GH), or its transpose, into its panels panels[layer]
    (new_layer_panels): once per window, read by every shard (each its own copy would double
    what the caches must hold: W_h is 16 MB at 1024 x 4096). Nothing for the cells whose
    recurrent products are their own (the classic GRU, Jordan)."""
    if cell == GRU_CLASSIC or cell == JORDAN:
        return
    for layer in range(panels.shape[0]):
        W_h = _mat(params, offs, SLOTS_PER_LAYER * layer + 1, H)
        pack_panels(W_h.T if transposed else W_h, panels[layer])


# From this many panels up (N >= PACK_MIN_PANELS * NR), matmul_packed copies A's rows first;
# below, it reads them where they are: the copy costs a pass over A, which fewer panels do not
# repay (measured: BENCHMARKS.md, "The gate loops and the packing of rows";
# benchmarks/large_products.py).
PACK_MIN_PANELS = 8


@kernel
def copies_rows(n_panels):
    """Whether matmul_packed copies several rows of A before multiplying them by n_panels
    panels."""
    return n_panels >= PACK_MIN_PANELS


@kernel
def matmul_packed(A, P, C):
    """C (M, N) = A (M, K) @ W, for P the panels of W (K, N). Rows of A and C contiguous (any
    row stride); each C[i, j] has the same bits whatever M and i. Several rows are first
    copied tile by tile (_pack_tiles) where W has PACK_MIN_PANELS panels or more; one row,
    or rows against fewer panels, are read where they are (the same multiply-adds, so the
    same bits)."""
    M, K = A.shape
    N = C.shape[1]
    n_panels, _, NR = P.shape
    size = A.itemsize
    if C.shape[0] != M or P.shape[1] != K or n_panels != (N + NR - 1) // NR \
            or NR * size != PANEL_BYTES:
        raise ValueError("matmul_packed: shapes do not match")
    if M == 0 or N == 0:
        return
    if K == 0:
        C[:] = 0
        return
    if (A.strides[1] != size or C.strides[1] != size or P.strides[2] != size
            or P.strides[1] != NR * size or (n_panels > 1 and P.strides[0] != K * NR * size)):
        raise ValueError("matmul_packed: strides do not match")
    a0, c0, p0 = A.ctypes.data, C.ctypes.data, P.ctypes.data
    z = A.dtype.type(0)
    if M == 1:  # one row: whole panels four at a time, then what is left one by one
        whole = N // NR
        for p in range(0, whole - whole % ROW_TILE_PANELS, ROW_TILE_PANELS):
            _row_tile(a0, p0 + p * K * NR * size, K, c0 + p * NR * size, z)
        for p in range(whole - whole % ROW_TILE_PANELS, n_panels):
            _tile(a0, K, 1, p0 + p * K * NR * size, K, c0 + p * NR * size, 0,
                  min(NR, N - p * NR), 1, 0, z)
        return
    _rows_times_panels(A, P, C, copies_rows(n_panels))


@kernel
def _rows_times_panels(A, P, C, copy_rows):
    """matmul_packed's product of several rows (arguments checked there): A's rows copied
    tile by tile first (copy_rows: _pack_tiles), then each panel read once and used by every
    tile; or read where they are, tile by tile, the tile's rows staying in cache while the
    panels pass. The same multiply-adds either way."""
    M, K = A.shape
    N = C.shape[1]
    n_panels, _, NR = P.shape
    size = A.itemsize
    ldc = C.strides[0] // size
    a0, c0, p0 = A.ctypes.data, C.ctypes.data, P.ctypes.data
    z = A.dtype.type(0)
    tiles = (M + TILE_ROWS - 1) // TILE_ROWS
    if not copy_rows:
        lda = A.strides[0] // size
        i = 0
        for t in range(tiles):
            rows = (M - i) // (tiles - t)
            for p in range(n_panels):
                j = p * NR
                _tile(a0 + i * lda * size, lda, 1, p0 + p * K * NR * size, K,
                      c0 + (i * ldc + j) * size, ldc, min(NR, N - j), rows, 0, z)
            i += rows
        return
    A_tiles = _aligned(rows_copy_size(M, K, A), A)
    _pack_tiles(A, A_tiles)
    _tiles_times_panels(A_tiles, M, P, C)


@kernel
def _tiles_times_panels(A_tiles, M, P, C):
    """C (M, N) = A @ W for A's M rows copied tile by tile (_pack_tiles) into A_tiles and P the
    panels of W (K, N): each panel read from memory once, then from cache by each tile, the
    next panel fetched into L2 meanwhile (_tile_ahead)."""
    K = P.shape[1]
    N = C.shape[1]
    n_panels, _, NR = P.shape
    size = A_tiles.itemsize
    ldc = C.strides[0] // size
    c0, p0 = C.ctypes.data, P.ctypes.data
    z = A_tiles.dtype.type(0)
    tiles = (M + TILE_ROWS - 1) // TILE_ROWS
    for p in range(n_panels):
        j = p * NR
        i = 0
        for t in range(tiles):  # tiles of nearly equal height: 25 rows are 12 + 13, not 14 + 11
            rows = (M - i) // (tiles - t)
            # A_tiles' address is taken here, in the loop, not once before it: numba frees an
            # array after the last line that names it, and an address kept past that would
            # read freed memory (tests/test_gemm.py, the copy of many rows)
            _tile_ahead(A_tiles.ctypes.data + i * K * size, 1, rows, p0 + p * K * NR * size,
                        K, c0 + (i * ldc + j) * size, ldc, min(NR, N - j), rows, 0,
                        p0 + min(p + 1, n_panels - 1) * K * NR * size, z)
            i += rows


@kernel
def _lanes(like):
    """Elements of like's float type in a vector register."""
    return VECTOR_BITS // 8 // like.itemsize


@kernel
def rows_copy_size(M, K, like):
    """Elements of the buffer _pack_tiles copies M rows of K into: M * K and a vector's lanes
    of like's float type past them, where the last tile's last vector of rows may spill."""
    return M * K + _lanes(like)


@kernel
def _copy_ks(A, out, i, rows, k0):
    """A's rows i to i + rows - 1 at ks k0 onwards, into out k-major (_pack_tiles' layout)."""
    for k in range(k0, A.shape[1]):
        for r in range(rows):
            out[i * A.shape[1] + k * rows + r] = A[i + r, k]


@kernel
def _pack_tiles(A, out):
    """A (M, K), any strides, into out (rows_copy_size(M, K, A)) tile by tile (the heights
    matmul_packed and tile_gemm cut M rows into), each tile's rows k-major: A[i, k] of a tile
    of `rows` rows from row i1 at i1 * K + k * rows + (i - i1). A tile then reads one stream of
    A instead of one per row (the speed it buys: BENCHMARKS.md, "Training's large products
    through the tile" and "The weight gradients' rows packed").

    Rows that lie contiguous are turned in registers, W rows by W ks at a time (W: a vector's
    lanes; _transpose_block), each k's vector stored whole at k * rows: past the tile's rows
    its lanes spill into the next k's first rows, which are stored after it (the ks in order,
    the groups of W rows from the last to the first), or past the last k into what comes
    next (the next block of ks, the ks past whole vectors, the next tile, the buffer's last
    W elements). The tiles read rows padded to whole vectors slower (BENCHMARKS.md, "The
    rows' copy in registers")."""
    M, K = A.shape
    size = A.itemsize
    W = _lanes(A)
    tiles = (M + TILE_ROWS - 1) // TILE_ROWS
    by_rows = A.strides[1] <= A.strides[0]  # read A in the order it lies in memory
    in_vectors = A.strides[1] == size  # (and its rows contiguous: whole vectors of a row)
    lda = A.strides[0] // size
    k_vectors = K - K % W  # the ks that fill whole vectors
    z = A.dtype.type(0)
    i = 0
    for t in range(tiles):
        rows = (M - i) // (tiles - t)
        start = i * K
        if by_rows and in_vectors:
            last_group = (rows - 1) // W * W
            for k in range(0, k_vectors, W):
                for g in range(last_group, -1, -W):  # the first W rows last: see above
                    _transpose_block(A.ctypes.data + ((i + g) * lda + k) * size, lda,
                                     min(W, rows - g),
                                     out.ctypes.data + (start + k * rows + g) * size, rows, z)
            _copy_ks(A, out, i, rows, k_vectors)  # the ks past whole vectors
        elif by_rows:
            for r in range(rows):
                a = A[i + r]
                for k in range(K):
                    out[start + k * rows + r] = a[k]
        else:  # a transpose's rows lie side by side
            _copy_ks(A, out, i, rows, 0)
        i += rows


def _cache_bytes(level: int, default: int) -> int:
    """One core's data cache at `level` (1 or 2) as Linux reports it, else `default`."""
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    try:
        for index in root.glob("index*"):
            kind = (index / "type").read_text().strip()
            if int((index / "level").read_text()) == level and kind in ("Data", "Unified"):
                text = (index / "size").read_text().strip().upper()
                scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
                return int(text.rstrip("KM")) * scale
    except (OSError, ValueError):
        pass
    return default


# tile_gemm's blocks, from this machine's caches (the blocking of GotoBLAS and BLIS): a slice
# of a panel (K_BLOCK rows) of a third more than L1, read from L2, where the tiles of the
# panel before fetched it (_tile_ahead); a block of A (rows by K_BLOCK) a sixteenth of L2.
# Those fractions were the fastest of those measured (BENCHMARKS.md, "Training's large
# products through the tile" and "Prefetching the large products"): fewer, longer blocks of k
# mean fewer passes over C.
K_BLOCK = max(16, _cache_bytes(1, 32 << 10) * 4 // 3 // PANEL_BYTES)
ROWS_BLOCK_BYTES = _cache_bytes(2, 256 << 10) // 16


@kernel
def tile_gemm(A, B, C, a_transposed, b_transposed, beta):
    """C = op(A) @ op(B) + beta * C, op(X) = X.T where asked, beta 0 or 1, through the register
    tile: C (M, N) with contiguous rows, op(A) (M, K) and op(B) (K, N) any strides. op(B) is
    packed K_BLOCK rows at a time; the sums over k are split at the blocks (so a row's bits
    depend on K, not on M: unlike matmul_packed, not for the sampler). Against
    PACK_MIN_PANELS panels or more, each block of op(A)'s rows is copied tile by tile first
    (_pack_tiles; the same multiply-adds): a tile then reads one stream, not one per row or,
    for a transpose, one line per k, lines a power of two apart that share a cache set."""
    M, N = C.shape
    op_a = A.T if a_transposed else A
    op_b = B.T if b_transposed else B
    K = op_a.shape[1]
    if op_a.shape[0] != M or op_b.shape[0] != K or op_b.shape[1] != N:
        raise ValueError("tile_gemm: shapes do not match")
    if beta != 0 and beta != 1:
        raise ValueError("tile_gemm: beta must be 0 or 1")
    size = C.itemsize
    if A.itemsize != size or B.itemsize != size:
        raise ValueError("tile_gemm: types do not match")
    if C.strides[1] != size and N > 1:
        raise ValueError("tile_gemm: strides do not match (C's rows must be contiguous)")
    if M == 0 or N == 0:
        return
    if K == 0:
        if beta == 0:
            C[:] = 0
        return
    NR = PANEL_BYTES // size
    n_panels = (N + NR - 1) // NR
    lda, ka = op_a.strides[0] // size, op_a.strides[1] // size  # op(A)[r, k] at r*lda + k*ka
    ldc = C.strides[0] // size
    kc_max = min(K, K_BLOCK)
    rows_block = max(TILE_ROWS, ROWS_BLOCK_BYTES // (kc_max * size) // TILE_ROWS * TILE_ROWS)
    buffer = _aligned(n_panels * kc_max * NR, C)
    copy_rows = copies_rows(n_panels)
    rows_buffer = _aligned(rows_copy_size(rows_block, kc_max, C) if copy_rows else 0, C)
    a0, c0, p0 = A.ctypes.data, C.ctypes.data, buffer.ctypes.data
    z = C.dtype.type(0)
    for k0 in range(0, K, kc_max):
        kc = min(kc_max, K - k0)
        pack_panels(op_b[k0:k0 + kc], buffer[:n_panels * kc * NR].reshape((n_panels, kc, NR)))
        add = 1 if beta == 1 or k0 > 0 else 0
        for i0 in range(0, M, rows_block):
            rows_here = min(rows_block, M - i0)
            tiles = (rows_here + TILE_ROWS - 1) // TILE_ROWS
            if copy_rows:
                _pack_tiles(op_a[i0:i0 + rows_here, k0:k0 + kc], rows_buffer)
            for p in range(n_panels):  # a panel's slice from L2 (the panel before fetched it)
                j = p * NR
                i = i0
                for t in range(tiles):
                    rows = (i0 + rows_here - i) // (tiles - t)
                    if copy_rows:  # the tile's rows k-major from its place in rows_buffer
                        a, a_rows, a_k = rows_buffer.ctypes.data + (i - i0) * kc * size, 1, rows
                    else:
                        a, a_rows, a_k = a0 + (i * lda + k0 * ka) * size, lda, ka
                    _tile_ahead(a, a_rows, a_k, p0 + p * kc * NR * size, kc,
                                c0 + (i * ldc + j) * size, ldc, min(NR, N - j), rows, add,
                                p0 + min(p + 1, n_panels - 1) * kc * NR * size, z)
                    i += rows


FEW_ROWS = 4  # up to this many rows, matmul_few_rows; above it, BLAS (measured: BENCHMARKS.md)
# one row against a matrix larger than this (more than a core's L2 holds beside the rest) is
# bound by memory bandwidth, and OpenBLAS's gemv streams it with every core, faster than one
# core's register tile or matmul_few_rows (BENCHMARKS.md, "Sampling a few streams" and "A
# register tile in LLVM IR"; benchmarks/few_rows_product.py). Only _matmul (the classic GRU's
# and Jordan's own products) goes by it; the sampler's other one-row products go through the
# register tile, on two cores in halves where the stepper measured that faster (halves.py).
ONE_ROW_MAX_BYTES = 1 << 20


@kernel(fastmath={"contract"})
def matmul_few_rows(A, W, C):
    """C = A @ W for a few rows: A (M, K), W (K, N), C (M, N), all C-contiguous.

    Each row of C is built from four rows of W at a time (one load and one store of C per four
    multiply-adds), the inner loop over N contiguous, so LLVM vectorises it. OpenBLAS packs all of
    W for every product, which makes it several times slower for M = 2 to 4 (a small batch of
    samples); for M = 1 the two are level while W fits a core's cache (see ONE_ROW_MAX_BYTES)."""
    M, K = A.shape
    N = W.shape[1]
    if W.shape[0] != K or C.shape[0] != M or C.shape[1] != N:  # np.dot's check, kept
        raise ValueError("matmul_few_rows: shapes do not match")
    K4 = K - K % 4
    for i in range(M):
        a, c = A[i], C[i]
        for j in range(N):
            c[j] = 0
        for k in range(0, K4, 4):
            x0, x1, x2, x3 = a[k], a[k + 1], a[k + 2], a[k + 3]
            w0, w1, w2, w3 = W[k], W[k + 1], W[k + 2], W[k + 3]
            for j in range(N):
                c[j] += x0 * w0[j] + x1 * w1[j] + x2 * w2[j] + x3 * w3[j]
        for k in range(K4, K):
            x0, w0 = a[k], W[k]
            for j in range(N):
                c[j] += x0 * w0[j]


@kernel
def _matmul(A, W, C):
    """C = A @ W: matmul_few_rows for up to FEW_ROWS rows, else (or for one row and a large W)
    BLAS."""
    M = A.shape[0]
    if M <= FEW_ROWS and not (M == 1 and W.size * W.itemsize > ONE_ROW_MAX_BYTES):
        matmul_few_rows(A, W, C)
    else:
        np.dot(A, W, C)


# ---------------------------------------------------------------------------------------------
# one layer over the whole window


@kernel
def _layer_forward(cell, xg, W_h, P, extra, hs, cs, acts, gates):
    """xg: (T, B, GH) input projection with bias; P: W_h's panels (pack_recurrent); hs:
    (T+1, B, H) with hs[0] = h0 on entry; cs: (T+1, B, H) likewise for the LSTM family (else
    (1, B, H), never written); acts: (T, B, S*H); gates: (B, GH) scratch."""
    T = xg.shape[0]
    if cell == GRU_CLASSIC:
        for t in range(T):
            _gru_classic_step(xg[t], W_h, extra, hs[t], hs[t + 1], cs[t + 1], acts[t], gates)
        return
    with_c = has_cell_state(cell)
    for t in range(T):
        matmul_packed(hs[t], P, gates)  # (B, H) @ (H, GH): the only per-step GEMM
        c_prev, c_out = (cs[t], cs[t + 1]) if with_c else (cs[0], cs[0])
        _cell_step(cell, xg[t], gates, extra, hs[t], c_prev, hs[t + 1], c_out, acts[t])


@kernel
def _layer_backward(cell, dH, W_h, P, extra, hs, cs, acts, dh_next, dc_next, dX, dHG, tmp):
    """P: the panels of W_h.T (pack_recurrent). dH: (T, B, H) gradient w.r.t. this layer's
    outputs hs[1:] from above (overwritten: it becomes the running dL/dh_t). dh_next,
    dc_next: (B, H), in: gradient w.r.t. the final states, out: gradient w.r.t. the initial
    states. dX, dHG: (T, B, GH) out: gradient w.r.t. the input-side and recurrent-side
    pre-activations (dHG is filled for GRU only)."""
    if cell == GRU_CLASSIC:
        _gru_classic_layer_backward(dH, W_h, extra, hs, acts, dh_next, dX, dHG, tmp)
        return
    T = dH.shape[0]
    B, H = dh_next.shape
    for t in range(T - 1, -1, -1):
        dh = dH[t]
        for b in range(B):
            for j in range(H):
                dh[b, j] += dh_next[b, j]
        if cell == LSTM:
            _lstm_step_back(dh, dc_next, cs[t], acts[t], dX[t])
            matmul_packed(dX[t], P, dh_next)  # @ W_h.T (P: its panels)
        elif cell == LSTM_PEEPHOLE:
            _peephole_step_back(dh, dc_next, cs[t], acts[t], extra, dX[t])
            matmul_packed(dX[t], P, dh_next)  # @ W_h.T (P: its panels)
        elif cell == LSTM_COUPLED:
            _coupled_step_back(dh, dc_next, cs[t], acts[t], dX[t])
            matmul_packed(dX[t], P, dh_next)  # @ W_h.T (P: its panels)
        elif cell == IRNN:
            _irnn_step_back(dh, hs[t + 1], dX[t])
            matmul_packed(dX[t], P, dh_next)  # @ W_h.T (P: its panels)
        elif cell == GRU or cell == GRU_LN:
            _gru_step_back(dh, hs[t], acts[t], dX[t], dHG[t], tmp)
            matmul_packed(dHG[t], P, dh_next)  # @ W_h.T (P: its panels)
            for b in range(B):
                for j in range(H):
                    dh_next[b, j] += tmp[b, j]
        elif cell == RNN:
            _rnn_step_back(dh, hs[t + 1], dX[t])
            matmul_packed(dX[t], P, dh_next)  # @ W_h.T (P: its panels)
        # a new cell's branch goes here: an id without one is refused, never run as another cell
        else:
            raise ValueError("no CPU backward step for this cell id")


@kernel
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


@kernel
def _add_bias_rows(y, bias):
    """y: (N, K) += bias (K,) on every row."""
    N, K = y.shape
    for n in range(N):
        for k in range(K):
            y[n, k] += bias[k]


@kernel
def _add_col_sums(y, out):
    """out (K,) += column sums of y (N, K)."""
    N, K = y.shape
    for n in range(N):
        for k in range(K):
            out[k] += y[n, k]


# ---------------------------------------------------------------------------------------------
# the Jordan network: one layer whose recurrent input is the previous step's output
# distribution, so the output layer runs inside the time loop and the state is y (B, V)


@kernel
def _softmax_rows(logits, out):
    """out = softmax of each row of logits (B, V)."""
    B, V = logits.shape
    for b in range(B):
        m = _max_value(logits[b], 0, V)
        total = 0.0
        for k in range(V):
            out[b, k] = math.exp(logits[b, k] - m)
            total += out[b, k]
        inv = 1.0 / total
        for k in range(V):
            out[b, k] *= inv


@kernel
def _jordan_hidden(params, offs, x, y_prev, h, gates):
    """h (B, H) = tanh(W_x[x] + y_prev @ W_h + b); y_prev: (B, V)."""
    B, H = h.shape
    V = y_prev.shape[1]
    W_x = _mat(params, offs, 0, V)
    bias = _vec(params, offs, 2)
    _matmul(y_prev, _mat(params, offs, 1, V), gates)
    for b in range(B):
        row, a, hh = W_x[x[b]], gates[b], h[b]
        for j in range(H):
            hh[j] = _tanh(a[j] + row[j] + bias[j])


@kernel
def _jordan_forward(params, offs, ids, targets, y0, masks, use_dropout, ys, acts, gates, xin,
                    logits, probs, n_total):
    """ys (1, T+1, B, V): y_0 and every step's output distribution; acts (1, T, B, H): h_t."""
    T, B = ids.shape
    V = logits.shape[1]
    H = acts.shape[3]
    W_y = _mat(params, offs, SLOTS_PER_LAYER, H)
    b_y = _vec(params, offs, SLOTS_PER_LAYER + 1)
    lg = logits.reshape((T, B, V))
    pr = probs.reshape((T, B, V))
    ys[0, 0] = y0[0]
    total = 0.0
    for t in range(T):
        h = acts[0, t]
        _jordan_hidden(params, offs, ids[t], ys[0, t], h, gates)
        hd = h
        if use_dropout:
            hd = xin[t]
            for b in range(B):
                for j in range(H):
                    hd[b, j] = h[b, j] * masks[0, t, b, j]
        np.dot(hd, W_y, lg[t])
        _add_bias_rows(lg[t], b_y)
        _softmax_rows(lg[t], pr[t])
        ys[0, t + 1] = pr[t]
        for b in range(B):
            total -= math.log(pr[t, b, targets[t, b]])
    return total / n_total


@kernel
def _jordan_backward(params, grads, offs, ids, targets, masks, use_dropout, ys, acts, xin,
                     probs, dyT, dy0, dlogits, dA, tmp, n_total):
    """The gradient flows back through every y_{t-1}: the softmax's Jacobian carries dL/dy_t
    into the logits of step t. dA (T, B, H): pre-activation gradients; tmp (B, H) scratch."""
    T, B = ids.shape
    N, V = dlogits.shape
    H = acts.shape[3]
    W_y = _mat(params, offs, SLOTS_PER_LAYER, H)
    WyT = np.ascontiguousarray(W_y.T)
    WhT = np.ascontiguousarray(_mat(params, offs, 1, V).T)  # (H, V)
    pr = probs.reshape((T, B, V))
    dl = dlogits.reshape((T, B, V))
    dy = dy0[0]
    dy[:] = dyT[0]
    inv_n = 1.0 / n_total
    for t in range(T - 1, -1, -1):
        for b in range(B):
            p, d, g = pr[t, b], dy[b], dl[t, b]
            s = 0.0
            for k in range(V):
                s += d[k] * p[k]
            for k in range(V):
                g[k] = p[k] * (d[k] - s) + p[k] * inv_n
            g[targets[t, b]] -= inv_n
        np.dot(dl[t], WyT, tmp)  # dL/dh_t (after dropout)
        h = acts[0, t]
        for b in range(B):
            for j in range(H):
                m = masks[0, t, b, j] if use_dropout else 1.0
                dA[t, b, j] = tmp[b, j] * m * (1.0 - h[b, j] * h[b, j])
        np.dot(dA[t], WhT, dy)  # dL/dy_{t-1}
    hd = acts[0] if not use_dropout else xin
    if use_dropout:
        for t in range(T):
            for b in range(B):
                for j in range(H):
                    hd[t, b, j] = acts[0, t, b, j] * masks[0, t, b, j]
    dW_y = _mat(grads, offs, SLOTS_PER_LAYER, H)
    dW_y += np.dot(hd.reshape((N, H)).T, dlogits)
    _add_col_sums(dlogits, _vec(grads, offs, SLOTS_PER_LAYER + 1))
    dA2 = dA.reshape((N, H))
    dW_h = _mat(grads, offs, 1, V)
    dW_h += np.dot(ys[0, :T].reshape((N, V)).T, dA2)
    _add_col_sums(dA2, _vec(grads, offs, 2))
    dW_x = _mat(grads, offs, 0, V)
    for t in range(T):
        for b in range(B):
            row = dW_x[ids[t, b]]
            for j in range(H):
                row[j] += dA[t, b, j]


# ---------------------------------------------------------------------------------------------
# the whole model over one (T, B) window


# ---------------------------------------------------------------------------------------------
# gru-ln's input side: x W_x normalised over each gate's H units (Ba et al. 2016), once for the
# whole window before the time loop, so the recurrent step stays the GRU's


@kernel(inline="always")
def _gather_row(row, bias, bare, out):
    """out = row (bare: gru-ln, whose bias comes after its normalisation) or row + bias."""
    if bare:
        out[:] = row
    else:
        for k in range(row.size):
            out[k] = row[k] + bias[k]


@kernel(inline="always", fastmath={"reassoc"})
def _block_stats(v, start, H):
    """Mean and 1/std of v[start:start + H] (two passes: the variance of the centred values)."""
    mean = 0.0
    for j in range(H):
        mean += v[start + j]
    mean /= H
    var = 0.0
    for j in range(H):
        d = v[start + j] - mean
        var += d * d
    return mean, 1.0 / math.sqrt(var / H + LN_EPS)


@kernel(fastmath={"reassoc"})  # sums vectorised, as _sum
def layer_norm_rows(rows, gain, bias):
    """rows (N, 3H) = gain * normalised(rows) + bias in place, each row's three H-blocks
    normalised apart. gain, bias: (3H,)."""
    N, GH = rows.shape
    H = GH // 3
    for n in range(N):
        v = rows[n]
        for g in range(3):
            mean, rstd = _block_stats(v, g * H, H)
            for i in range(H):
                j = g * H + i
                v[j] = gain[j] * ((v[j] - mean) * rstd) + bias[j]


@kernel
def _input_layer_norm(xg, gain, bias, acts):
    """xg (T, B, 3H): x W_x on entry, kept in acts[..., 4H:7H] for backward; then normalised
    in place as layer_norm_rows."""
    T, B, GH = xg.shape
    H = GH // 3
    for t in range(T):
        for b in range(B):
            acts[t, b, 4 * H:7 * H] = xg[t, b]
    layer_norm_rows(xg.reshape((T * B, GH)), gain, bias)


@kernel(fastmath={"reassoc"})  # sums vectorised, as _sum
def _input_layer_norm_back(dX, acts, gain, dgain):
    """dX (T, B, 3H): dL/d(normalised input with gain and bias) on entry, dL/d(x W_x) on exit;
    dgain (3H,) += dL/dgain. The statistics are recomputed from the kept x W_x."""
    T, B, GH = dX.shape
    H = GH // 3
    for t in range(T):
        for b in range(B):
            d, v = dX[t, b], acts[t, b, 4 * H:7 * H]
            for g in range(3):
                mean, rstd = _block_stats(v, g * H, H)
                mean_g = 0.0  # means over the block of dL/du and of dL/du * u
                mean_gu = 0.0
                for i in range(H):
                    j = g * H + i
                    u = (v[j] - mean) * rstd
                    dgain[j] += d[j] * u
                    du = d[j] * gain[j]
                    mean_g += du
                    mean_gu += du * u
                mean_g /= H
                mean_gu /= H
                for i in range(H):
                    j = g * H + i
                    u = (v[j] - mean) * rstd
                    d[j] = (d[j] * gain[j] - mean_g - u * mean_gu) * rstd


@kernel
def model_forward(cell, params, offs, panels, ids, targets, h0, c0, masks, use_dropout,
                  hs, cs, acts, xg, gates, xin, logits, probs, n_total):
    """Forward pass of the window; returns its summed cross-entropy in nats over n_total (T*B
    for the mean per character; the whole batch's T*B when this window is a shard of its streams).
    panels: every layer's W_h packed (pack_recurrent's forward).

    ids, targets: (T, B) ints. h0, c0: (L, B, H) initial states. masks: (L, T, B, H) inverted
    dropout masks applied to each layer's output (used when use_dropout). Writes hs (L, T+1, B, H)
    and cs (L, T+1 or 1, B, H) whose last step is the final state; acts (L, T, B, S*H);
    logits and probs (T*B, V). xg (T, B, GH), gates (B, GH), xin (T, B, H) are scratch.
    """
    if cell == JORDAN:
        return _jordan_forward(params, offs, ids, targets, h0, masks, use_dropout, hs, acts,
                               gates, xin, logits, probs, n_total)
    T, B = ids.shape
    L, _, H = h0.shape
    V = logits.shape[1]
    GH = xg.shape[2]
    for layer in range(L):
        s = SLOTS_PER_LAYER * layer
        W_h = _mat(params, offs, s + 1, H)
        bias = _vec(params, offs, s + 2)
        extra = _vec(params, offs, s + 3)
        normalised = cell == GRU_LN  # its bias comes after the normalisation
        if layer == 0:
            W_x = _mat(params, offs, s, V)
            for t in range(T):  # one-hot input: the projection is a row gather
                for b in range(B):
                    _gather_row(W_x[ids[t, b]], bias, normalised, xg[t, b])
        else:
            W_x = _mat(params, offs, s, H)
            x = _layer_input(hs, masks, layer - 1, use_dropout, xin)
            xg2 = xg.reshape((T * B, GH))
            tile_gemm(x.reshape((T * B, H)), W_x, xg2, False, False, 0)  # all T steps in one GEMM
            if not normalised:
                _add_bias_rows(xg2, bias)
        if normalised:
            _input_layer_norm(xg, extra[:GH], bias, acts[layer])
        hs[layer, 0] = h0[layer]
        cs[layer, 0] = c0[layer]
        _layer_forward(cell, xg, W_h, panels[layer], extra, hs[layer], cs[layer], acts[layer],
                       gates)

    W_y = _mat(params, offs, SLOTS_PER_LAYER * L, H)
    b_y = _vec(params, offs, SLOTS_PER_LAYER * L + 1)
    y = _layer_input(hs, masks, L - 1, use_dropout, xin)
    tile_gemm(y.reshape((T * B, H)), W_y, logits, False, False, 0)
    return _softmax_xent(logits, b_y, targets.reshape(T * B), probs) / n_total


@kernel
def _softmax_xent(logits, bias, targets, probs):
    """logits (N, V) += bias (V,) on every row; then the sum of -log softmax(logits)[target]
    over rows, and probs gets the softmax. The bias is added row by row here, not in a pass of
    its own, so that a row is brought from memory once, not twice, where the logits are larger
    than the caches (a vocabulary of thousands)."""
    N, V = logits.shape
    powers = np.empty(V, np.int64)
    total = 0.0
    for n in range(N):
        row = logits[n]
        for k in range(V):
            row[k] += bias[k]
        m = _max_value(row, 0, V)
        _exp_shifted(row, m, 1.0, probs[n], powers)  # vectorised, unlike math.exp
        s = _sum(probs[n])
        inv = 1.0 / s
        for k in range(V):
            probs[n, k] *= inv
        total += math.log(s) + m - logits[n, targets[n]]
    return total


@kernel
def model_backward(cell, params, grads, offs, panels, ids, targets, masks, use_dropout,
                   hs, cs, acts, xin, probs, dhT, dcT, dh0, dc0,
                   dlogits, dX, dHG, dH, tmp, n_total):
    """Backward pass of the window last run through model_forward (same hs, cs, acts, probs).
    panels: every layer's W_h.T packed (pack_recurrent's backward).

    Adds dL/dparams into grads (same layout as params), where L is the summed loss over n_total
    (as model_forward) plus <hT, dhT> + <cT, dcT>: dhT, dcT (L, B, H) are the gradients flowing
    into the final states (zero for a window's last use; the next window's dh0 when a window is
    split). Writes dh0,
    dc0 (L, B, H): the gradients w.r.t. the initial states. dlogits (T*B, V), dX, dHG
    (T, B, GH), dH (T, B, H), tmp (B, H) and xin (T, B, H) are scratch.
    """
    if cell == JORDAN:
        _jordan_backward(params, grads, offs, ids, targets, masks, use_dropout, hs, acts, xin,
                         probs, dhT, dh0, dlogits, dX, tmp, n_total)
        return
    T, B = ids.shape
    L = hs.shape[0]
    H = hs.shape[3]
    N, V = dlogits.shape
    GH = dX.shape[2]

    # output layer and loss: dlogits = (softmax - onehot) / n_total, and b_y's gradient, its
    # column sums, added row by row as each row is made (in the order _add_col_sums adds)
    inv_n = 1.0 / n_total
    tflat = targets.reshape(N)
    db_y = _vec(grads, offs, SLOTS_PER_LAYER * L + 1)
    for n in range(N):
        row = dlogits[n]
        for k in range(V):
            row[k] = probs[n, k] * inv_n
        row[tflat[n]] -= inv_n
        for k in range(V):
            db_y[k] += row[k]
    W_y = _mat(params, offs, SLOTS_PER_LAYER * L, H)
    dW_y = _mat(grads, offs, SLOTS_PER_LAYER * L, H)
    y = _layer_input(hs, masks, L - 1, use_dropout, xin).reshape((N, H))
    tile_gemm(y, dlogits, dW_y, True, False, 1)  # dW_y += y.T @ dlogits
    tile_gemm(dlogits, W_y, dH.reshape((N, H)), False, True, 0)  # dH = dlogits @ W_y.T

    for layer in range(L - 1, -1, -1):
        if use_dropout:
            dH *= masks[layer]
        s = SLOTS_PER_LAYER * layer
        W_h = _mat(params, offs, s + 1, H)
        dh_next = dh0[layer]
        dc_next = dc0[layer]
        dh_next[:] = dhT[layer]
        dc_next[:] = dcT[layer]
        _layer_backward(cell, dH, W_h, panels[layer], _vec(params, offs, s + 3), hs[layer],
                        cs[layer], acts[layer], dh_next, dc_next, dX, dHG, tmp)

        # weight gradients for all T steps at once
        dX2 = dX.reshape((N, GH))
        if cell == GRU or cell == GRU_LN:
            dR2 = dHG.reshape((N, GH))
        elif cell == GRU_CLASSIC:
            dR2 = dHG.reshape(dHG.size)[:N * 2 * H].reshape((N, 2 * H))
            dn = dHG.reshape(dHG.size)[N * 2 * H:].reshape((N, H))
            dW_hn = _vec(grads, offs, s + 3).reshape((H, H))
            # dW_hn += (r h_prev)^T dn
            tile_gemm(cs[layer, 1:].reshape((N, H)), dn, dW_hn, True, False, 1)
        else:
            dR2 = dX2
        dW_h = _mat(grads, offs, s + 1, H)
        tile_gemm(hs[layer, :T].reshape((N, H)), dR2, dW_h, True, False, 1)  # dW_h += h.T @ dR
        _add_col_sums(dX2, _vec(grads, offs, s + 2))
        if cell == GRU or cell == GRU_LN:
            d_extra = _vec(grads, offs, s + 3)
            db_hn = d_extra[d_extra.size - H:]  # gru-ln: after its 3H gains
            for n in range(N):
                for j in range(H):
                    db_hn[j] += dR2[n, 2 * H + j]
        elif cell == LSTM_PEEPHOLE:  # p_i, p_f multiply c_{t-1}; p_o multiplies c_t
            dp = _vec(grads, offs, s + 3)
            c = cs[layer]
            for t in range(T):
                for b in range(B):
                    for j in range(H):
                        dp[j] += dX[t, b, j] * c[t, b, j]
                        dp[H + j] += dX[t, b, H + j] * c[t, b, j]
                        dp[2 * H + j] += dX[t, b, 3 * H + j] * c[t + 1, b, j]
        if cell == GRU_LN:  # dX becomes dL/d(x W_x), what W_x's gradients need
            _input_layer_norm_back(dX, acts[layer], _vec(params, offs, s + 3)[:GH],
                                   _vec(grads, offs, s + 3)[:GH])
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
            tile_gemm(x, dX2, dW_x, True, False, 1)  # dW_x += x.T @ dX
            # gradient w.r.t. the layer below's output
            tile_gemm(dX2, W_x, dH.reshape((N, H)), False, True, 0)  # dH = dX @ W_x.T


# ---------------------------------------------------------------------------------------------
# generation: one step at a time, nothing stored for backward


@kernel
def _panels(panels, panel_offs, slot, K):
    """The panels of the matrix in `slot` (K rows) inside the stepper's buffer of panels."""
    flat = panels[panel_offs[slot]:panel_offs[slot + 1]]
    NR = PANEL_BYTES // panels.itemsize
    return flat.reshape((flat.size // (K * NR), K, NR))


@kernel
def _step(cell, params, offs, panels, panel_offs, x, h, c, xg, gates, act, h_new, c_new,
          logits):
    """Advance the state (L, B, H) h and c in place on input ids x (B,); write logits (B, V).

    panels, panel_offs: the multiplied matrices packed (_panels), the same bits for a row in
    any batch (matmul_packed). xg, gates: (B, GH), act: (B, S*H), h_new, c_new: (B, H)
    scratch. The cell writes into h_new/c_new and they are copied back: in-place updates would
    alias and not vectorise."""
    if cell == JORDAN:  # h holds y_{t-1} (1, B, V); h_new serves as the hidden layer
        _jordan_hidden(params, offs, x, h[0], h_new, gates)
        _matmul(h_new, _mat(params, offs, SLOTS_PER_LAYER, h_new.shape[1]), logits)
        _add_bias_rows(logits, _vec(params, offs, SLOTS_PER_LAYER + 1))
        _softmax_rows(logits, h[0])
        return
    L, B, H = h.shape
    V = logits.shape[1]
    for layer in range(L):
        s = SLOTS_PER_LAYER * layer
        W_h = _mat(params, offs, s + 1, H)
        bias = _vec(params, offs, s + 2)
        extra = _vec(params, offs, s + 3)
        normalised = cell == GRU_LN  # its bias comes after the normalisation
        if layer == 0:
            W_x = _mat(params, offs, s, V)
            for b in range(B):
                _gather_row(W_x[x[b]], bias, normalised, xg[b])
        else:
            matmul_packed(h[layer - 1], _panels(panels, panel_offs, s, H), xg)
            if not normalised:
                _add_bias_rows(xg, bias)
        if normalised:
            layer_norm_rows(xg, extra[:bias.size], bias)
        if cell == GRU_CLASSIC:  # c_new serves as its r * h scratch
            _gru_classic_step(xg, W_h, extra, h[layer], h_new, c_new, act, gates)
        else:
            matmul_packed(h[layer], _panels(panels, panel_offs, s + 1, H), gates)
            _cell_step(cell, xg, gates, extra, h[layer], c[layer], h_new, c_new, act)
        h[layer] = h_new
        if has_cell_state(cell):
            c[layer] = c_new
    matmul_packed(h[L - 1], _panels(panels, panel_offs, SLOTS_PER_LAYER * L, H), logits)
    _add_bias_rows(logits, _vec(params, offs, SLOTS_PER_LAYER * L + 1))


@kernel
def _draw(logits, temperature, top_k, top_p, u, probs, powers):
    """One character id from logits (V,): greedy when temperature == 0, else from
    softmax(logits / temperature) restricted to the top_k most likely (top_k 0: all), then,
    renormalised, to the smallest set whose probability reaches top_p; u in [0, 1) is the
    uniform draw. probs (V,) float64, powers (V,) int64: scratch."""
    best = _first_max(logits, 0, logits.size)
    if temperature == 0.0:
        return best
    _exp_shifted(logits, logits[best], temperature, probs, powers)
    return _draw_from(probs, _sum(probs), best, top_k, top_p, u)


@kernel
def _first_max(a, lo, hi):
    """The first index in lo..hi of a's largest value. NaN is never the largest, but from 0 a
    NaN a[0] stays the answer (as in a loop that keeps the best so far from a[0]); from lo > 0
    it is skipped, so that the answer for 0..V is the better of those for 0..c and c..V (the
    first on a tie; _better). hi > lo."""
    best = lo
    if lo > 0:
        while best + 1 < hi and a[best] != a[best]:
            best += 1
    m = _max_value(a, best, hi)  # the value first, then where it first is: no chain of compares
    if m != m:  # a NaN where the search starts: no later element is larger
        return best
    while a[best] != m:
        best += 1
    return best


@kernel
def _better(a, first, second):
    """The better of _first_max's answers for two ranges, `first`'s before `second`'s (either
    -1: an empty range)."""
    if first < 0 or (second >= 0 and a[second] > a[first]):
        return second
    return first


@kernel
def _draw_from(probs, total, best, top_k, top_p, u):
    """_draw's id from probs (V,) float64, its exp'd weights (their sum total, best the id of
    the largest)."""
    V = probs.size
    if (top_k <= 0 or top_k >= V) and top_p >= 1.0:
        target = u * total
        acc = 0.0
        for k in range(V):
            acc += probs[k]
            if acc > target:
                return k
        return best  # rounding left target beyond the sum
    order = np.argsort(-probs)  # most likely first
    keep = V if top_k <= 0 else min(top_k, V)
    top_k_mass = 0.0  # top-p applies to the top-k distribution, renormalised
    for i in range(keep):
        top_k_mass += probs[order[i]]
    kept = 0.0
    n = 0
    while n < keep:
        kept += probs[order[n]]
        n += 1
        if kept >= top_p * top_k_mass:
            break
    target = u * kept
    acc = 0.0
    for i in range(n):
        acc += probs[order[i]]
        if acc > target:
            return order[i]
    return order[0]


@kernel
def _mix(logits, b, probs, acc, powers, mixed):
    """mixed (V,) = log of the mean over the K members of softmax(logits[k, b]), logits
    (K, B, V): an ensemble's prediction as logits (their softmax is the mean of the members'
    probabilities; at a temperature, that mean to the power 1 / temperature, renormalised).
    probs, acc (V,) float64 and powers (V,) int64: scratch."""
    K, _, V = logits.shape
    acc[:] = 0.0
    for k in range(K):
        row = logits[k, b]
        best = _first_max(row, 0, V)
        _exp_shifted(row, row[best], 1.0, probs, powers)
        total = _sum(probs)
        for v in range(V):
            acc[v] += probs[v] / total
    for v in range(V):
        mixed[v] = math.log(acc[v] / K) if acc[v] > 0.0 else -np.inf


@kernel
def generate(cell, params, offs, panels, panel_offs, x, h, c, forced, temperature, top_k,
             top_p, uniforms, out, xg, gates, act, h_new, c_new, logits, probs, powers, acc,
             mixed):
    """Step every stream out.shape[0] times, each step on its last id x[b], and write the
    stream's next id to out (n, B) and x: forced[t, b] where that is >= 0 (a prompt character
    fed in the same batched step as the other streams' draws), else an id drawn from the
    prediction with temperature[b] (float64), top_k[b] (int64, 0: all), top_p[b] (float64) and
    uniforms[t, b] in [0, 1).

    The model is K members (an ensemble; K = 1: one model) of one config: params (K, P),
    panels (K, n), h, c (K, L, B, H): each member's state after the ids before x, updated;
    logits (K, B, V). With K > 1 the draw is from the mean of the members' probabilities
    (_mix, into mixed (V,); acc (V,) float64 scratch); with one, from its logits as they
    are."""
    n, B = out.shape
    K = params.shape[0]
    for t in range(n):
        for k in range(K):
            _step(cell, params[k], offs, panels[k], panel_offs, x, h[k], c[k], xg, gates, act,
                  h_new, c_new, logits[k])
        for b in range(B):
            if forced[t, b] >= 0:
                x[b] = forced[t, b]
                out[t, b] = x[b]
                continue
            if K == 1:
                row = logits[0, b]
            else:
                _mix(logits, b, probs, acc, powers, mixed)
                row = mixed
            x[b] = _draw(row, temperature[b], top_k[b], top_p[b], uniforms[t, b], probs,
                         powers)
            out[t, b] = x[b]


# ---------------------------------------------------------------------------------------------
# Streams on two threads by units. One row's step is a few products of a vector by matrices
# that outgrow one core's cache, too little work to split by streams; a few rows split by
# streams leave each thread a thin product; many rows of a wide model have each thread read all
# of every matrix. So each of two threads takes half of every layer's hidden units (their
# columns in every gate block) for every row, then half of the output columns (one row) or half
# of the rows' outputs and draws (several), and the two meet after each layer and after the
# logits or draws. A meeting must cost well under a microsecond, so it is a spin on a counter
# the other thread writes (numba has no CPU atomics: the intrinsics below). A thread kept
# waiting (its partner lost its core to another process) yields between looks; where the
# threads keep waiting on each other (GIVE_UP_CYCLES, WAITING_SHARE) both finish the step and
# hand the rest of the chunk to one thread (the caller's). Each column is the same chain of
# multiply-adds as in matmul_packed for the whole row, and each unit's gate arithmetic the
# same, so the halves give the same bits as one thread.

SPIN_CYCLES = 1 << 16  # a wait longer than this (tens of microseconds) yields between looks
# The halves give up on a chunk once a thread has waited more than GIVE_UP_CYCLES (about a
# millisecond) in all and more than WAITING_SHARE of the time since the start: one thread alone
# would then be about as fast. A moment's hiccup does not stop them; a busy machine soon does.
GIVE_UP_CYCLES = 1 << 22
WAITING_SHARE = 0.5
BEST = 3  # the word of a thread's sync row that holds its columns' largest logit's id


@intrinsic
def _load_acquire(typingctx, address):
    """The int64 at `address`, read with acquire ordering (the other thread's writes before
    its matching release are then seen)."""
    def codegen(context, builder, signature, args):
        ptr = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
        return builder.load_atomic(ptr, "acquire", 8)

    return types.int64(types.intp), codegen


@intrinsic
def _store_release(typingctx, address, value):
    """Write the int64 `value` at `address` with release ordering."""
    def codegen(context, builder, signature, args):
        ptr = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
        builder.store_atomic(args[1], ptr, "release", 8)
        return context.get_dummy_value()

    return types.void(types.intp, types.int64), codegen


_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


@intrinsic
def _spin_pause(typingctx):
    """The x86 pause hint in a spin loop (nothing elsewhere)."""
    def codegen(context, builder, signature, args):
        if _X86:
            pause = builder.module.declare_intrinsic("llvm.x86.sse2.pause",
                                                     fnty=ir.FunctionType(ir.VoidType(), []))
            builder.call(pause, [])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def _cycles(typingctx):
    """The CPU's cycle counter (rdtsc on x86)."""
    def codegen(context, builder, signature, args):
        read = builder.module.declare_intrinsic("llvm.readcyclecounter",
                                                fnty=ir.FunctionType(ir.IntType(64), []))
        return builder.call(read, [])

    return types.int64(), codegen


@intrinsic
def _yield_core(typingctx):
    """sched_yield(): let another runnable thread have this core."""
    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module,
                                            ir.FunctionType(ir.IntType(32), []), "sched_yield")
        builder.call(fn, [])
        return context.get_dummy_value()

    return types.void(), codegen


@kernel
def _meet(sync, me, count):
    """Thread `me` (0 or 1) has done its part up to meeting number `count`: publish that in
    sync[me, 0] and wait until the other has too. sync (2, 16) int64, a row per thread (a cache
    line each). Returns the cycles waited."""
    row = sync.strides[0]
    _store_release(sync.ctypes.data + me * row, count)
    other = sync.ctypes.data + (1 - me) * row
    start = _cycles()
    while True:
        for _ in range(64):
            if _load_acquire(other) >= count:
                return _cycles() - start
            _spin_pause()
        if _cycles() - start > SPIN_CYCLES:
            _yield_core()


@kernel
def _own_blocks(row, u0, Hm, H, out):
    """out[g * Hm + j] = row[g * H + u0 + j]: units u0..u0 + Hm of each H-block of row."""
    for g in range(row.size // H):
        for j in range(Hm):
            out[g * Hm + j] = row[g * H + u0 + j]


@kernel
def _own_columns(A, P, u0, u1, H, C, width, offset):
    """For each H-block g of the matrix whose panels are P: C[:, offset + g * width + j] =
    (A @ W)[:, g * H + u0 + j] for j < u1 - u0, u0 and H multiples of the panel width. Several
    rows of A are copied for the tiles once for all the blocks, where matmul_packed would copy
    them for each (copies_rows); the same multiply-adds either way."""
    M, K = A.shape
    NR = P.shape[2]
    blocks = P.shape[0] * NR // H
    if M > 1 and copies_rows((u1 - u0) // NR):
        A_tiles = _aligned(rows_copy_size(M, K, A), A)
        _pack_tiles(A, A_tiles)
        for g in range(blocks):
            c = offset + g * width
            _tiles_times_panels(A_tiles, M, P[(g * H + u0) // NR:(g * H + u1) // NR],
                                C[:, c:c + u1 - u0])
        return
    for g in range(blocks):
        c = offset + g * width
        matmul_packed(A, P[(g * H + u0) // NR:(g * H + u1) // NR], C[:, c:c + u1 - u0])


@kernel
def generate_half(me, units, columns, give_up, waiting_share, cell, params, offs, panels,
                  panel_offs, x, hs, c, forced, temperature, top_k, top_p, uniforms, out, sync,
                  shared, logits, probs, extra, row, xg, gates, act, h_prev, c_prev, h_new,
                  c_new, powers):
    """Thread me's (0 or 1) half of `generate` for B streams of one model: hidden units
    units[me]..units[me + 1] of every layer for every stream; then, for one stream, logits
    columns columns[me]..columns[me + 1] (multiples of the panel width), and for several, the
    output layer and the draws of half of the streams (rows B * me // 2..B * (me + 1) // 2).
    Both threads run it at once with the same arguments but their own scratch, and meet
    through sync ((2, 16) int64, zero): after each layer (its h is whole) and after the
    logits or draws; for one stream each has then found its columns' largest logit, and,
    drawing at a temperature, they meet once more after each has exp'd its columns, and both
    draw the same id from the whole (only thread 0 writes out).

    hs (2, L, B, H): the state in hs[0] on entry, each step reading one and writing the other;
    c (L, B, H) updated in place (each thread its own units). x (B,): the last ids; one
    stream: each thread its own copy; several: one array, each thread writing its streams'.
    shared (B, GH): gru-ln's input projection before its normalisation, whole; logits (B, V);
    probs (V,) float64: one stream: one array, each half exp'ing its columns; several: each
    thread its own. Own scratch: extra (L, E * Hm) the layer's extra vector's units of this
    half (_own_blocks), row (B, GH), xg, gates (B, G * Hm), act (B, S * Hm), h_prev, c_prev,
    h_new, c_new (B, Hm), powers (V,) int64. Returns the steps done: all of out's, or fewer
    where a thread waited over give_up cycles in all and over waiting_share of the time
    (GIVE_UP_CYCLES, WAITING_SHARE; the state is then hs[steps % 2] and c, x the last ids)."""
    n, B = out.shape
    L, H = hs.shape[1], hs.shape[3]
    V = logits.shape[1]
    u0, u1, v0, v1 = units[me], units[me + 1], columns[me], columns[me + 1]
    b0, b1 = B * me // 2, B * (me + 1) // 2
    Hm = u1 - u0
    NR = PANEL_BYTES // params.itemsize
    normalised = cell == GRU_LN
    output = _panels(panels, panel_offs, SLOTS_PER_LAYER * L, H)
    b_y = _vec(params, offs, SLOTS_PER_LAYER * L + 1)
    one = B == 1
    met = 1
    _meet(sync, me, met)  # both started (how late the other was is not counted)
    start = _cycles()
    waited = 0
    for t in range(n):
        now, after = t % 2, 1 - t % 2
        for layer in range(L):
            s = SLOTS_PER_LAYER * layer
            bias = _vec(params, offs, s + 2)
            if layer == 0:  # the input rows gathered: a few H each, cheaper than a meeting
                W_x = _mat(params, offs, s, V)
                for b in range(B):
                    if normalised:  # normalised over whole blocks: each thread whole rows
                        row[b] = W_x[x[b]]
                    else:
                        _own_blocks(W_x[x[b]], u0, Hm, H, xg[b])
            elif normalised:  # the halves meet first
                _own_columns(hs[after, layer - 1], _panels(panels, panel_offs, s, H),
                             u0, u1, H, shared, H, u0)
                met += 1
                waited += _meet(sync, me, met)
                row[:] = shared
            else:
                _own_columns(hs[after, layer - 1], _panels(panels, panel_offs, s, H),
                             u0, u1, H, xg, Hm, 0)
            if normalised:
                layer_norm_rows(row, _vec(params, offs, s + 3)[:3 * H], bias)
                for b in range(B):
                    _own_blocks(row[b], u0, Hm, H, xg[b])
            else:  # + b, as _gather_row and _add_bias_rows
                for b in range(B):
                    for g in range(xg.shape[1] // Hm):
                        for j in range(Hm):
                            xg[b, g * Hm + j] += bias[g * H + u0 + j]
            _own_columns(hs[now, layer], _panels(panels, panel_offs, s + 1, H),
                         u0, u1, H, gates, Hm, 0)
            h_prev[:] = hs[now, layer, :, u0:u1]
            c_prev[:] = c[layer, :, u0:u1]
            _cell_step(cell, xg, gates, extra[layer], h_prev, c_prev, h_new, c_new, act)
            hs[after, layer, :, u0:u1] = h_new
            if has_cell_state(cell):
                c[layer, :, u0:u1] = c_new
            met += 1
            waited += _meet(sync, me, met)
        if one and v1 > v0:  # one stream: this half's columns
            matmul_packed(hs[after, L - 1], output[v0 // NR:(v1 + NR - 1) // NR],
                          logits[:, v0:v1])
            _add_bias_rows(logits[:, v0:v1], b_y[v0:v1])
        draws = forced[t, 0] < 0
        if one and draws:  # the draw's elementwise work in halves too: at 4,000 columns it
            # is not small
            sync[me, BEST] = _first_max(logits[0], v0, v1) if v1 > v0 else -1
        if not one and b1 > b0:  # several: this half's streams, whole
            matmul_packed(hs[after, L - 1, b0:b1], output, logits[b0:b1])
            _add_bias_rows(logits[b0:b1], b_y)
            for b in range(b0, b1):
                if forced[t, b] >= 0:
                    x[b] = forced[t, b]
                else:
                    x[b] = _draw(logits[b], temperature[b], top_k[b], top_p[b],
                                 uniforms[t, b], probs, powers)
                out[t, b] = x[b]
        slow = waited > give_up and waited > waiting_share * (_cycles() - start)
        decisions = sync.ctypes.data + 8 * (1 + t % 2)  # this step's word in each row
        _store_release(decisions + me * sync.strides[0], 1 if slow else 0)
        met += 1
        waited += _meet(sync, me, met)
        stop = _load_acquire(decisions) + _load_acquire(decisions + sync.strides[0]) > 0
        if one and not draws:
            x[0] = forced[t, 0]
        elif one:
            best = _better(logits[0], sync[0, BEST], sync[1, BEST])
            if temperature[0] == 0.0:
                x[0] = best
            else:
                if v1 > v0:
                    _exp_shifted(logits[0, v0:v1], logits[0, best], temperature[0],
                                 probs[v0:v1], powers[v0:v1])
                met += 1
                waited += _meet(sync, me, met)
                x[0] = _draw_from(probs, _sum(probs), best, top_k[0], top_p[0], uniforms[t, 0])
        if one and me == 0:
            out[t, 0] = x[0]
        if stop:
            return t + 1
    return n


@kernel
def matmul(a, b, out):
    """out = a @ b through the BLAS the kernels use (for measuring its speed)."""
    np.dot(a, b, out)


# ---------------------------------------------------------------------------------------------
# optimizers over the flat buffer


# reassoc lets LLVM vectorise the sum (eight times faster at 3.3M parameters); float64 keeps it
# accurate in any order.
@kernel(fastmath={"reassoc"})
def global_norm(grads):
    """Euclidean norm of the whole gradient buffer, accumulated in float64."""
    s = 0.0
    for i in range(grads.size):
        g = np.float64(grads[i])
        s += g * g
    return math.sqrt(s)


@kernel
def clip_grad_norm(grads, max_norm):
    """Scale grads in place so their global norm is at most max_norm (as torch's
    clip_grad_norm_: coefficient max_norm / (norm + 1e-6)). Returns the norm before clipping."""
    norm = global_norm(grads)
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        for i in range(grads.size):
            grads[i] *= coef
    return norm


@kernel
def adam_step(params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay):
    """One Adam update (step counts from 1), the arithmetic of torch.optim.Adam, or of
    torch.optim.AdamW with weight_decay above 0: the weights shrink by lr * weight_decay first."""
    bias_correction1 = 1.0 - beta1 ** step
    bias_correction2_sqrt = math.sqrt(1.0 - beta2 ** step)
    step_size = lr / bias_correction1
    keep = 1.0 - lr * weight_decay
    for i in range(params.size):
        g = grads[i]
        m[i] += (1.0 - beta1) * (g - m[i])
        v[i] = v[i] * beta2 + (1.0 - beta2) * g * g
        params[i] = params[i] * keep - step_size * m[i] / (math.sqrt(v[i]) / bias_correction2_sqrt
                                                            + eps)


@kernel
def sgd_step(params, grads, velocity, lr, momentum):
    """SGD with (heavy-ball) momentum, as torch.optim.SGD with dampening 0."""
    for i in range(params.size):
        velocity[i] = momentum * velocity[i] + grads[i]
        params[i] -= lr * velocity[i]
