"""The model on an NVIDIA GPU: the same parameters, layout and arithmetic as charrnn/model.py,
with weights, gradients and activations resident on the device.

``CudaModel`` has Model's interface: ``forward`` returns the mean loss of a (T, B) window,
``backward`` adds the gradients into the device buffer ``grads`` and returns (dh0, dc0).
Each layer's time loop is one persistent cooperative launch (cuda/kernels.py,
layer_forward_persistent / layer_backward_persistent) when its slice of W_h fits in a block's
shared memory; otherwise one tiled GEMM (h_{t-1} @ W_h) and one fused cell kernel per step. The
input projections and weight gradients are GEMMs over all T*B rows.
"""

import numpy as np
from numba import cuda

from ..device import DeviceError
from ..model import ModelConfig, ParamLayout, init_params
from . import kernels as K


def _on_device(a) -> bool:
    return hasattr(a, "copy_to_host")  # a device array (or the simulator's stand-in)


def _layer_of(state, layer):
    """state[layer] (B, W), from a device array as a view, from the host as a contiguous copy."""
    return state[layer] if _on_device(state) else np.ascontiguousarray(state[layer])


def require_kernels(config: ModelConfig) -> None:
    """Refuse a cell whose step is not written for CUDA: the kernels would not run it."""
    if not config.spec.cuda_kernels:
        raise DeviceError(f"--cell {config.cell} has no CUDA kernels yet; use --device cpu")

class DeviceWorkspace:
    """Device arrays for one (T, B) window (as model.Workspace)."""

    def __init__(self, config: ModelConfig, T: int, B: int, dtype):
        L, H, V = config.layers, config.hidden, config.vocab_size
        GH, W = config.gates * H, config.state_width  # W: V for jordan, whose state is y
        new = lambda *shape: cuda.to_device(np.zeros(shape, dtype))  # noqa: E731
        self.hs = new(L, T + 1, B, W)  # jordan: y_0 .. y_T
        self.cs = new(L, T + 1, B, W)  # LSTMs: c; classic GRU: r * h_prev
        self.acts = new(L, T, B, max(config.spec.stored_acts, 1) * H)
        self.hw = new(B, GH)
        self.xg = new(T * B, GH)
        self.xin = new(L, T * B, H)  # each layer's output after dropout (the next one's input)
        self.logits = new(T * B, V)
        self.probs = new(T * B, V)
        self.dX = new(T * B, GH)
        self.dHG = new(T * B, GH)
        self.dH = new(T * B, H)
        self.gn = new(B, H)  # classic GRU: rh @ W_hn; jordan: y_{t-1} @ W_h
        self.tmp = new(B, H)
        self.mask_none = new(B, H)
        self.dh, self.dc = new(B, H), new(B, H)  # backward's running dL/dh_t, dL/dc_t
        self.ids = cuda.to_device(np.zeros(T * B, np.int32))  # the window, copied in per step
        self.targets = cuda.to_device(np.zeros(T * B, np.int32))
        if config.spec.two_gemm_step:  # the weight-gradient operands of its two GEMMs
            self.drz, self.dn = new(T * B, 2 * H), new(T * B, H)
        self.loss = cuda.to_device(np.zeros(1, np.float64))
        if config.cell == "gru-ln":  # its row gather: the bias comes after the normalisation
            self.zero_bias = new(GH)


class CudaModel:
    def __init__(self, config: ModelConfig, params: np.ndarray | None = None,
                 dtype=np.float32, seed: int = 0, persistent: bool = True):
        require_kernels(config)
        self.config = config
        self.layout = ParamLayout(config)
        if params is None:
            params = init_params(config, np.random.default_rng(seed), dtype)
        self.dtype = np.dtype(params.dtype)
        self.params = cuda.to_device(np.ascontiguousarray(params))
        self.grads = cuda.to_device(np.zeros_like(params))
        self.weights = self.layout.views(self.params)  # device views, no copies
        self.grad_views = self.layout.views(self.grads)
        self.cell = config.kernel_id
        self.normalised = self.cell == K.GRU_LN  # gru-ln: its input normalised, bias after
        self.step_cell = K.GRU if self.normalised else self.cell  # gru-ln's step is the GRU's
        self._empty = cuda.to_device(np.zeros(1, self.dtype))  # the extra of cells without one
        self.plan = self._persistent_plan() if persistent else None  # None: a launch per step
        self._ws = None
        self._window = None

    def _persistent_plan(self):
        """(blocks, units per block) for the persistent time loops, or None. A cooperative
        grid must be co-resident: one block per multiprocessor always is (128 threads, at most
        48 KiB of shared memory). The simulator runs cooperative grids of one block only (its
        grid barrier is a block barrier)."""
        H, GH = self.config.hidden, self.config.gates * self.config.hidden
        if not self.config.spec.persistent_cuda:
            return None  # two GEMMs per step, or the output inside the loop: a launch per step
        if K.SIMULATED:
            max_blocks = 1
        else:
            max_blocks = cuda.get_current_device().MULTIPROCESSOR_COUNT
        return K.persistent_plan(H, GH, max_blocks, self.dtype.itemsize)

    def zero_state(self, B: int):
        shape = (self.config.layers, B, self.config.state_width)
        return np.zeros(shape, self.dtype), np.zeros(shape, self.dtype)

    def _extra(self, layer: int, grads: bool = False):
        """The layer's cell-specific array (GRU b_hn, peepholes, classic GRU W_hn, gru-ln's gains
        and b_hn), or a dummy."""
        name = self.config.spec.extra_name
        if name is None:
            return self._empty
        views = self.grad_views if grads else self.weights
        return views[f"l{layer}.{name}"]

    def _step_extra(self, layer: int):
        """What the step kernels read as the extra array: gru-ln's b_hn, after its gains."""
        extra = self._extra(layer)
        return extra[3 * self.config.hidden:] if self.normalised else extra

    def _gains(self, layer: int, grads: bool = False):
        """gru-ln's (3H,) gains of the normalised input (or their gradient)."""
        return self._extra(layer, grads)[:3 * self.config.hidden]

    def forward(self, ids, targets, h0=None, c0=None, masks=None, loss_sum=None):
        """Model.forward on the device. h0, c0 may be host or device arrays. With loss_sum (a
        device float64 (1,) array), the window's mean loss is added to it there and nothing
        comes back (returns None): the trainer reads it once per logging interval."""
        ids = np.ascontiguousarray(ids, dtype=np.int32)
        targets = np.ascontiguousarray(targets, dtype=np.int32)
        T, B = ids.shape
        L, H = self.config.layers, self.config.hidden
        N = T * B
        ws = self._ws
        if ws is None or ws.xg.shape[0] != N or ws.hw.shape[0] != B:
            ws = self._ws = DeviceWorkspace(self.config, T, B, self.dtype)
        zh, zc = self.zero_state(B)
        h0 = zh if h0 is None else h0 if _on_device(h0) else np.asarray(h0, self.dtype)
        c0 = zc if c0 is None else c0 if _on_device(c0) else np.asarray(c0, self.dtype)
        ws.ids.copy_to_device(ids.reshape(N))
        ws.targets.copy_to_device(targets.reshape(N))
        d_ids, d_targets = ws.ids, ws.targets
        d_masks = None if masks is None else cuda.to_device(
            np.ascontiguousarray(masks, self.dtype).reshape(L, N, H))
        self._window = (T, B, d_ids, d_targets, d_masks)
        K.fill[1, 1](ws.loss, 0.0)
        if self.cell == K.JORDAN:
            self._jordan_forward(ws, T, B, d_ids, d_targets, d_masks, h0)
            return self._loss(ws, N, loss_sum)
        w = self.weights
        normalised, step_cell = self.normalised, self.step_cell
        for layer in range(L):
            W_x, W_h, b = w[f"l{layer}.W_x"], w[f"l{layer}.W_h"], w[f"l{layer}.b"]
            hs, cs, acts = ws.hs[layer], ws.cs[layer], ws.acts[layer]
            if layer == 0:
                K.gather_bias[K.grid(ws.xg.size)](W_x, ws.zero_bias if normalised else b, d_ids,
                                                  ws.xg)
            else:
                K.gemm(ws.xin[layer - 1], W_x, ws.xg)
                if not normalised:
                    K.add_bias[K.grid(ws.xg.size)](ws.xg, b)
            if normalised:
                K.input_layer_norm[N, K.LN_THREADS](ws.xg, self._gains(layer), b,
                                                    acts.reshape(N, acts.shape[2]))
            hs[0].copy_to_device(_layer_of(h0, layer))
            cs[0].copy_to_device(_layer_of(c0, layer))
            extra = self._step_extra(layer)
            if self.plan is not None:
                K.layer_forward_persistent(step_cell, ws.xg, W_h, extra, hs, cs, acts, ws.hw,
                                           self.plan)
            for t in range(T if self.plan is None else 0):
                if self.cell == K.GRU_CLASSIC:
                    self._gru_classic_step(ws, layer, t, B)
                    continue
                K.gemm(hs[t], W_h, ws.hw)
                K.cell_forward[K.grid(B * H)](step_cell, ws.xg[t * B:(t + 1) * B], ws.hw, extra,
                                              hs[t], cs[t], hs[t + 1], cs[t + 1], acts[t])
            out = hs[1:].reshape(N, H)
            if d_masks is None:
                ws.xin[layer].copy_to_device(out)
            else:
                K.mul[K.grid(N * H)](out, d_masks[layer], ws.xin[layer])
        K.gemm(ws.xin[L - 1], w["out.W"], ws.logits)
        K.add_bias[K.grid(ws.logits.size)](ws.logits, w["out.b"])
        K.softmax_xent[K.grid(N)](ws.logits, d_targets, ws.probs, ws.loss)
        return self._loss(ws, N, loss_sum)

    @staticmethod
    def _loss(ws, N, loss_sum):
        if loss_sum is None:
            return float(ws.loss.copy_to_host()[0]) / N
        K.accumulate_mean[1, 1](ws.loss, N, loss_sum)
        return None

    def _gru_classic_step(self, ws, layer, t, B):
        H = self.config.hidden
        hs, cs, acts = ws.hs[layer], ws.cs[layer], ws.acts[layer]
        xg, hw = ws.xg[t * B:(t + 1) * B], ws.hw[:, :2 * H]
        K.gemm(hs[t], self.weights[f"l{layer}.W_h"], hw)
        K.gru_classic_rz[K.grid(B * H)](xg, hw, hs[t], cs[t + 1], acts[t])
        K.gemm(cs[t + 1], self._extra(layer).reshape(H, H), ws.gn)
        K.gru_classic_n[K.grid(B * H)](xg, ws.gn, hs[t], hs[t + 1], acts[t])

    def _jordan_forward(self, ws, T, B, d_ids, d_targets, d_masks, y0):
        """One layer whose recurrent input is y_{t-1}: the output layer runs inside the loop."""
        H, w = self.config.hidden, self.weights
        ys, hs, hd = ws.hs[0], ws.acts[0], ws.xin[0]
        ys[0].copy_to_device(_layer_of(y0, 0))
        for t in range(T):
            rows = slice(t * B, (t + 1) * B)
            K.gemm(ys[t], w["l0.W_h"], ws.gn)
            K.jordan_hidden[K.grid(B * H)](w["l0.W_x"], w["l0.b"], d_ids[rows], ws.gn, hs[t])
            if d_masks is None:
                hd[rows].copy_to_device(hs[t])
            else:
                K.mul[K.grid(B * H)](hs[t], d_masks[0, rows], hd[rows])
            K.gemm(hd[rows], w["out.W"], ws.logits[rows])
            K.add_bias[K.grid(ws.logits[rows].size)](ws.logits[rows], w["out.b"])
            K.softmax_xent[K.grid(B)](ws.logits[rows], d_targets[rows], ws.probs[rows], ws.loss)
            ys[t + 1].copy_to_device(ws.probs[rows])

    def _jordan_backward(self, ws, T, B, d_ids, d_targets, d_masks, dyT):
        H, w, g = self.config.hidden, self.weights, self.grad_views
        N = T * B
        hs, ys = ws.acts[0], ws.hs[0]
        dl, dA = ws.probs, ws.dX  # the step's probabilities become its logits' gradient
        dy = cuda.to_device(np.ascontiguousarray(dyT[0]))  # once per window: jordan's y state
        for t in range(T - 1, -1, -1):
            rows = slice(t * B, (t + 1) * B)
            K.jordan_dlogits[K.grid(B)](ws.probs[rows], dy, d_targets[rows], 1.0 / N, dl[rows])
            K.gemm(dl[rows], w["out.W"], ws.tmp, tb=1)
            mask = ws.mask_none if d_masks is None else d_masks[0, rows]
            K.jordan_dhidden[K.grid(B * H)](ws.tmp, hs[t], mask, int(d_masks is not None),
                                            dA[rows])
            K.gemm(dA[rows], w["l0.W_h"], dy, tb=1)
        hd = ws.xin[0]
        K.gemm(hd, dl, g["out.W"], ta=1, accumulate=1)
        K.add_col_sums[K.grid(dl.shape[1])](dl, g["out.b"])
        V = self.config.vocab_size
        K.gemm(ys[:T].reshape(N, V), dA, g["l0.W_h"], ta=1, accumulate=1)
        K.add_col_sums[K.grid(H)](dA, g["l0.b"])
        K.scatter_add_rows[K.grid(dA.size)](dA, d_ids, g["l0.W_x"])
        return dy

    def last_states(self):
        """Device views (L of them, each (B, W)) of the final h and c of the last forward."""
        ws = self._ws
        T = ws.hs.shape[1] - 1
        return ([ws.hs[layer, T] for layer in range(ws.hs.shape[0])],
                [ws.cs[layer, T] for layer in range(ws.cs.shape[0])])

    def final_state(self):
        ws = self._ws
        h = ws.hs[:, -1].copy_to_host()
        c = ws.cs[:, -1].copy_to_host() if self.config.has_cell_state else np.zeros_like(h)
        return h, c

    def logits(self):
        T, B = self._window[:2]
        return self._ws.logits.copy_to_host().reshape(T, B, -1)

    def backward(self, dhT=None, dcT=None, initial_grads=True):
        """Model.backward on the device; with initial_grads=False the gradients w.r.t. the
        initial state stay there (returns None), so nothing comes back to the host."""
        T, B, d_ids, d_targets, d_masks = self._window
        L, H = self.config.layers, self.config.hidden
        N = T * B
        ws, w, g = self._ws, self.weights, self.grad_views
        upstream = dhT is not None or dcT is not None  # else zero, set on the device
        zh, zc = self.zero_state(B)
        dhT = zh if dhT is None else np.asarray(dhT, self.dtype)
        dcT = zc if dcT is None else np.asarray(dcT, self.dtype)
        if self.cell == K.JORDAN:
            dh0, dc0 = self.zero_state(B)
            dy = self._jordan_backward(ws, T, B, d_ids, d_targets, d_masks, dhT)
            if not initial_grads:
                return None
            dh0[0] = dy.copy_to_host()
            return dh0, dc0
        dlogits = ws.probs  # probs are not needed after this: reuse them for the gradient
        K.xent_grad[K.grid(dlogits.size)](ws.probs, d_targets, 1.0 / N, dlogits)
        K.gemm(ws.xin[L - 1], dlogits, g["out.W"], ta=1, accumulate=1)
        K.add_col_sums[K.grid(dlogits.shape[1])](dlogits, g["out.b"])
        K.gemm(dlogits, w["out.W"], ws.dH, tb=1)
        dh0, dc0 = self.zero_state(B)
        d_dh, d_dc = ws.dh, ws.dc
        normalised, step_cell = self.normalised, self.step_cell
        gru = step_cell == K.GRU  # dHG: the recurrent side's own gradients
        for layer in range(L - 1, -1, -1):
            if d_masks is not None:
                K.mul[K.grid(N * H)](ws.dH, d_masks[layer], ws.dH)
            W_h = w[f"l{layer}.W_h"]
            hs, cs, acts = ws.hs[layer], ws.cs[layer], ws.acts[layer]
            extra = self._step_extra(layer)
            if upstream:
                d_dh.copy_to_device(np.ascontiguousarray(dhT[layer]))
                d_dc.copy_to_device(np.ascontiguousarray(dcT[layer]))
            else:
                K.fill[K.grid(B * H)](d_dh.reshape(B * H), 0.0)
                K.fill[K.grid(B * H)](d_dc.reshape(B * H), 0.0)
            if self.plan is not None:
                K.layer_backward_persistent(step_cell, ws.dH, W_h, extra, hs, cs, acts, ws.dX,
                                            ws.dHG, d_dh, d_dc, self.plan)
            for t in range(T - 1, -1, -1) if self.plan is None else ():
                rows = slice(t * B, (t + 1) * B)
                if self.cell == K.GRU_CLASSIC:
                    self._gru_classic_step_back(ws, layer, t, rows, d_dh)
                    continue
                K.cell_backward[K.grid(B * H)](step_cell, ws.dH[rows], d_dh, d_dc, cs[t], hs[t],
                                               hs[t + 1], extra, acts[t], ws.dX[rows],
                                               ws.dHG[rows])
                K.gemm(ws.dHG[rows] if gru else ws.dX[rows], W_h, d_dh, tb=1, accumulate=gru)
            if initial_grads:
                dh0[layer] = d_dh.copy_to_host()
                dc0[layer] = d_dc.copy_to_host()
            dR = ws.dHG if gru else ws.drz if self.cell == K.GRU_CLASSIC else ws.dX
            K.gemm(hs[:T].reshape(N, H), dR, g[f"l{layer}.W_h"], ta=1, accumulate=1)
            if self.cell == K.GRU_CLASSIC:  # dW_hn = (r * h_prev)^T dn
                K.gemm(cs[1:].reshape(N, H), ws.dn, self._extra(layer, grads=True).reshape(H, H),
                       ta=1, accumulate=1)
            K.add_col_sums[K.grid(ws.dX.shape[1])](ws.dX, g[f"l{layer}.b"])
            if gru:  # b_hn (gru-ln: after its 3H gains)
                K.add_col_sums[K.grid(H)](ws.dHG[:, 2 * H:],
                                          self._extra(layer, grads=True)[-H:])
            elif self.cell == K.LSTM_PEEPHOLE:
                K.peephole_grads[K.grid(H)](ws.dX, cs[:T].reshape(N, H),
                                            cs[1:].reshape(N, H), self._extra(layer, grads=True))
            if normalised:  # dX becomes dL/d(x W_x); dHG, free now, the gains' rows
                K.input_layer_norm_back[N, K.LN_THREADS](ws.dX, acts.reshape(N, acts.shape[2]),
                                                         self._gains(layer), ws.dHG)
                K.add_col_sums[K.grid(3 * H)](ws.dHG, self._gains(layer, grads=True))
            if layer == 0:
                K.scatter_add_rows[K.grid(ws.dX.size)](ws.dX, d_ids, g["l0.W_x"])
            else:
                K.gemm(ws.xin[layer - 1], ws.dX, g[f"l{layer}.W_x"], ta=1, accumulate=1)
                K.gemm(ws.dX, w[f"l{layer}.W_x"], ws.dH, tb=1)
        if not initial_grads:
            return None
        if not self.config.has_cell_state:
            dc0[:] = 0
        return dh0, dc0

    def _gru_classic_step_back(self, ws, layer, t, rows, d_dh):
        H = self.config.hidden
        B = rows.stop - rows.start
        hs, acts = ws.hs[layer], ws.acts[layer]
        dH, dX, drz, dn = ws.dH[rows], ws.dX[rows], ws.drz[rows], ws.dn[rows]
        K.gru_classic_back_nz[K.grid(B * H)](dH, d_dh, hs[t], acts[t], dX, drz, dn)
        K.gemm(dn, self._extra(layer).reshape(H, H), ws.tmp, tb=1)  # dL/d(r * h_prev)
        K.gru_classic_back_r[K.grid(B * H)](hs[t], acts[t], ws.tmp, dX, drz)
        K.gemm(drz, self.weights[f"l{layer}.W_h"], d_dh, tb=1)
        K.gru_classic_back_h[K.grid(B * H)](dH, acts[t], ws.tmp, d_dh)
