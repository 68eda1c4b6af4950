"""The model: its configuration, the flat parameter buffer with named views, initialisation, and
forward/backward over a (T, B) window, dispatched to the @njit kernels.

Every array's name, shape and meaning is documented in docs/model.md (the checkpoint contract).
Importing this module imports numba; ``import charrnn`` does not import this module.
"""

from dataclasses import asdict, dataclass

import numpy as np

from .cells import CELLS, DEFAULT_CELL, CellSpec
from .kernels import cpu
from .parallel import StreamSplitter, row_ranges


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    cell: str = DEFAULT_CELL
    layers: int = 2
    hidden: int = 128
    dropout: float = 0.0

    def __post_init__(self):
        for name in ("vocab_size", "layers", "hidden"):
            if type(getattr(self, name)) is not int:
                raise ValueError(f"{name} must be an integer")
        if type(self.dropout) not in (int, float):
            raise ValueError("dropout must be a number")
        if type(self.cell) is not str or self.cell not in CELLS:
            raise ValueError(f"unknown cell {self.cell!r}; choose from {', '.join(CELLS)}")
        if self.vocab_size < 1 or self.layers < 1 or self.hidden < 1:
            raise ValueError("vocab_size, layers and hidden must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        if self.spec.single_layer and self.layers != 1:
            raise ValueError(f"a {self.cell} network has one layer (its recurrence runs through "
                             f"the output): use --layers 1")

    @property
    def spec(self) -> CellSpec:
        return CELLS[self.cell]

    @property
    def kernel_id(self) -> int:
        return self.spec.kernel_id

    @property
    def gates(self) -> int:
        return self.spec.gates

    @property
    def has_cell_state(self) -> bool:
        return self.spec.has_cell_state

    @property
    def state_width(self) -> int:
        """Width of the carried state: H, or V where the recurrence runs through the output."""
        return self.spec.recurrent_width(self.hidden, self.vocab_size)

    def to_dict(self) -> dict:
        return asdict(self)


class ParamLayout:
    """Names, shapes and offsets of the parameter arrays inside the one flat buffer.

    The order is the kernels' slot order: per layer W_x, W_h, b and the cell's extra array
    (GRU b_hn, peephole LSTM peep, classic GRU W_hn, gru-ln ln_gain_b_hn; empty for the other
    cells), then W_y, b_y.
    """

    def __init__(self, config: ModelConfig):
        V, H, GH = config.vocab_size, config.hidden, config.gates * config.hidden
        shapes = []
        spec = config.spec
        extra, extra_shape = spec.extra_name or "extra", spec.extra_shape
        GH_h = spec.recurrent_columns(H)  # gru-classic: its n block has its own W_hn
        rec_in = spec.recurrent_width(H, V)  # jordan's recurrent input is y_{t-1}
        for layer in range(config.layers):
            n_in = V if layer == 0 else H
            shapes += [
                (f"l{layer}.W_x", (n_in, GH)),
                (f"l{layer}.W_h", (rec_in, GH_h)),
                (f"l{layer}.b", (GH,)),
                (f"l{layer}.{extra}", extra_shape(H)),
            ]
        shapes += [("out.W", (H, V)), ("out.b", (V,))]
        sizes = [int(np.prod(shape)) for _, shape in shapes]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.shapes = dict(shapes)
        self.size = int(self.offsets[-1])

    def recurrent_slices(self) -> tuple[slice, ...]:
        """Where each layer's recurrent matrix W_h lies in the flat buffer (what --weight-drop
        masks)."""
        return tuple(slice(int(self.offsets[k]), int(self.offsets[k + 1]))
                     for k, name in enumerate(self.shapes) if name.endswith(".W_h"))

    def views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Named views (no copies) into ``flat``."""
        out = {}
        for k, (name, shape) in enumerate(self.shapes.items()):
            if np.prod(shape) > 0:
                out[name] = flat[self.offsets[k]:self.offsets[k + 1]].reshape(shape)
        return out


def orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    """A random (n, n) orthogonal matrix, uniformly distributed (QR of a Gaussian matrix with
    the signs of R's diagonal folded into Q)."""
    q, r = np.linalg.qr(rng.normal(size=(n, n)))
    return q * np.sign(np.diag(r))


def init_params(config: ModelConfig, rng: np.random.Generator, dtype=np.float32) -> np.ndarray:
    """Weights and biases ~ U(-1/sqrt(H), 1/sqrt(H)), PyTorch's default, except: layer 0's input
    rows ~ U(-1, 1), the variance an embedding (N(0, 1)) times PyTorch's input matrix gives
    each pre-activation, where one-hot rows at the default scale start 16x weaker at H = 256
    and learnt far slower (tinyshakespeare, 200 steps: 2.00 against 2.39 nats); each
    gate's (H, H) block of the recurrent matrices orthogonal, so the recurrence neither shrinks
    nor grows a state at the start (Saxe et al., 2014); the LSTMs' forget-gate bias 1, so they
    remember by default (Jozefowicz et al., 2015); gru-ln's layer-norm gains 1. IRNN:
    recurrent matrices the identity and biases zero (Le, Jaitly & Hinton, 2015). Jordan's
    recurrent matrix (V, H) keeps the uniform default."""
    layout = ParamLayout(config)
    H = config.hidden
    bound = 1.0 / np.sqrt(H)
    flat = rng.uniform(-bound, bound, layout.size).astype(dtype)
    views = layout.views(flat)
    W_x0 = views["l0.W_x"]
    W_x0[:] = rng.uniform(-1.0, 1.0, W_x0.shape)
    for layer in range(config.layers):
        W_h, b = views[f"l{layer}.W_h"], views[f"l{layer}.b"]
        spec = config.spec
        if spec.identity_init:
            W_h[:] = np.eye(H)
            b[:] = 0
            continue
        if spec.output_recurrence:  # W_h is (V, H): no square blocks to make orthogonal
            continue
        for g in range(W_h.shape[1] // H):
            W_h[:, g * H:(g + 1) * H] = orthogonal(rng, H)
        if spec.two_gemm_step:
            views[f"l{layer}.{spec.extra_name}"][:] = orthogonal(rng, H)
        if spec.forget_block is not None:  # gate blocks: i, f, g, o (coupled: f, g, o)
            b[spec.forget_block * H:(spec.forget_block + 1) * H] = 1.0
        if spec.unit_gain_blocks:  # gru-ln's gains: 1, so it starts as plain normalisation
            views[f"l{layer}.{spec.extra_name}"][:spec.unit_gain_blocks * H] = 1.0
    return flat


def vocab_axes(config: ModelConfig) -> dict[str, int]:
    """The parameter arrays with one entry per character, and the axis it lies on: the first
    layer's input rows, the output layer's columns and biases, and, where the recurrence reads
    the last output (jordan), the recurrent matrix's rows."""
    axes = {"l0.W_x": 0, "out.W": 1, "out.b": 0}
    if config.spec.output_recurrence:
        axes["l0.W_h"] = 0
    return axes


# the output bias of a character the parent model never saw: with its output weights zero, its
# probability starts near e^-30 of the others', so the model predicts as its parent did
NEW_CHAR_BIAS = -30.0


def transplant(params: np.ndarray, config: ModelConfig, codepoints: np.ndarray, into: "Model",
               into_codepoints: np.ndarray) -> None:
    """Copy a trained model's weights (params of config, over the vocabulary codepoints) into
    `into`, whose vocabulary into_codepoints holds every one of those characters and maybe
    more: known characters keep their trained rows and columns, moved to their new ids; a new
    character keeps its freshly initialised input row, and gets output weights of zero and the
    bias NEW_CHAR_BIAS. Every other array is copied as it is (the shapes must agree)."""
    rows = np.searchsorted(into_codepoints, codepoints)  # each old id's new id
    if len(rows) and (rows.max() >= len(into_codepoints)
                      or np.any(into_codepoints[rows] != codepoints)):
        raise ValueError("the new vocabulary must hold every character of the old one")
    new = np.ones(len(into_codepoints), bool)
    new[rows] = False
    old = ParamLayout(config).views(params)
    axes = vocab_axes(into.config)
    for name, view in into.weights.items():
        axis = axes.get(name)
        if axis is None:
            view[...] = old[name]
            continue
        index = [slice(None)] * view.ndim
        index[axis] = rows
        view[tuple(index)] = old[name]
        if name in ("out.W", "l0.W_h"):  # what a new character sends forward starts at zero
            index[axis] = new
            view[tuple(index)] = 0
        elif name == "out.b":
            view[new] = NEW_CHAR_BIAS


class Workspace:
    """Arrays for one (T, B) window: what forward keeps for backward, and scratch."""

    def __init__(self, config: ModelConfig, T: int, B: int, dtype):
        L, H, V = config.layers, config.hidden, config.vocab_size
        GH = config.gates * H
        # cs holds the LSTMs' cell states and the classic GRU's r * h; the others never write it
        T_c = T + 1 if config.has_cell_state or config.spec.keeps_cell_buffer else 1
        new = lambda *shape: np.zeros(shape, dtype)  # noqa: E731
        W = config.state_width
        self.hs = new(L, T + 1, B, W)  # the carried state per step: h (jordan: its output y)
        self.cs = new(L, T_c, B, W)
        self.acts = new(L, T, B, config.spec.stored_acts * H)
        self.xg = new(T, B, GH)
        self.gates = new(B, GH)
        self.xin = new(T, B, H)
        self.logits = new(T * B, V)
        self.probs = new(T * B, V)
        self.dlogits = new(T * B, V)
        self.dX = new(T, B, GH)
        self.dHG = new(T, B, GH) if config.spec.gate_grad_buffer else new(1, 1, GH)
        self.dH = new(T, B, H)
        self.tmp = new(B, H)


class Shard:
    """A share of the window's streams (rows b0:b1) with its own workspace; shards after the
    first also have their own gradient buffer, summed into the model's after backward."""

    def __init__(self, config: ModelConfig, T: int, rows: tuple[int, int], grads, dtype):
        self.rows = slice(*rows)
        self.ws = Workspace(config, T, rows[1] - rows[0], dtype)
        self.grads = grads
        self.loss = 0.0
        self.inputs = None  # (ids, targets, masks) of the last forward, contiguous

    def take(self, a: np.ndarray, axis: int) -> np.ndarray:
        """This shard's streams of ``a`` along ``axis``, contiguous (no copy for one shard)."""
        index = (slice(None),) * axis + (self.rows,)
        return np.ascontiguousarray(a[index])


class Model:
    """A character-level RNN language model over one flat parameter buffer.

    ``forward(ids, targets, h0, c0)`` runs a (T, B) window and returns the mean loss in nats per
    character; ``backward(dhT, dcT)`` then adds the gradients into ``grads`` and returns the
    gradients w.r.t. h0 and c0. ``params`` and ``grads`` share the layout of ``layout``.

    The B streams are split into shards run on the threads of ``splitter`` (see
    charrnn/parallel.py); each shard's loss and gradients are its share of the whole window's
    mean (the kernels divide by the whole T*B), so the sums are the whole window's.
    """

    def __init__(self, config: ModelConfig, params: np.ndarray | None = None,
                 dtype=np.float32, seed: int = 0, splitter: StreamSplitter | None = None):
        self.config = config
        self.splitter = splitter or _default_splitter()
        self.layout = ParamLayout(config)
        if params is None:
            params = init_params(config, np.random.default_rng(seed), dtype)
        if params.shape != (self.layout.size,):
            raise ValueError(f"parameter buffer has shape {params.shape}, "
                             f"expected ({self.layout.size},)")
        self.params = np.ascontiguousarray(params)
        self.dtype = self.params.dtype
        self.grads = np.zeros_like(self.params)
        self.weights = self.layout.views(self.params)
        self.grad_views = self.layout.views(self.grads)
        self._shards: list[Shard] = []
        self._window = None  # (T, B, use_dropout) of the last forward, for backward
        self._panels = [None, None]  # every layer's W_h, and W_h.T, packed for a window

    def zero_state(self, B: int) -> tuple[np.ndarray, np.ndarray]:
        """Initial (h, c), each (L, B, H); c is unused (stays zero) outside the LSTM family."""
        shape = (self.config.layers, B, self.config.state_width)
        return np.zeros(shape, self.dtype), np.zeros(shape, self.dtype)

    def dropout_masks(self, rng: np.random.Generator, T: int, B: int) -> np.ndarray:
        """Inverted-dropout masks (L, T, B, H) with entries 0 or 1 / (1 - p), one per layer and
        stream, the same at every step of the window: variational ("locked") dropout (Gal &
        Ghahramani 2016), which drops a unit for a whole stretch of text rather than a
        different one at every character (which of the two trained better: BENCHMARKS.md,
        "Quality")."""
        p = self.config.dropout
        keep = rng.random((self.config.layers, 1, B, self.config.hidden)) >= p
        return np.repeat((keep / (1.0 - p)).astype(self.dtype), T, axis=1)

    def _shards_for(self, T: int, B: int) -> list[Shard]:
        ranges = row_ranges(B, self.splitter.parts(B))
        shards = self._shards
        if [(sh.rows.start, sh.rows.stop) for sh in shards] != ranges or \
                shards[0].ws.xg.shape[0] != T:
            shards = self._shards = [
                Shard(self.config, T, rows, self.grads if k == 0 else np.zeros_like(self.grads),
                      self.dtype)
                for k, rows in enumerate(ranges)]
        return shards

    def forward(self, ids, targets, h0=None, c0=None, masks=None, streams=None) -> float:
        """Mean cross-entropy (nats/char) of predicting targets (T, B) from ids (T, B).

        masks: (L, T, B, H) dropout masks, or None for no dropout (evaluation). streams: the
        number of streams the mean is over (default B): a rank of a run over several processes
        (distributed.py) holds B of them, and its loss and gradients are its share of the
        whole window's, summed across ranks.
        After the call, ``final_state()`` gives (hT, cT) and ``logits()`` the (T, B, V) logits.
        """
        ids = np.ascontiguousarray(ids, dtype=np.int32)
        targets = np.ascontiguousarray(targets, dtype=np.int32)
        if ids.ndim != 2 or ids.shape != targets.shape:
            raise ValueError(f"ids {ids.shape} and targets {targets.shape} must be equal (T, B)")
        T, B = ids.shape
        V = self.config.vocab_size
        if min(ids.min(), targets.min()) < 0 or max(ids.max(), targets.max()) >= V:
            raise ValueError(f"character ids must lie in [0, {V})")
        zh, zc = self.zero_state(B)
        h0 = zh if h0 is None else np.asarray(h0, dtype=self.dtype)
        c0 = zc if c0 is None else np.asarray(c0, dtype=self.dtype)
        use_dropout = masks is not None
        if masks is None:
            masks = np.ones((1, 1, 1, 1), self.dtype)  # never read
        masks = np.asarray(masks, dtype=self.dtype)
        cell = self.config.kernel_id
        shards = self._shards_for(T, B)
        total = T * (B if streams is None else streams)
        panels = self._packed_recurrent(transposed=False)

        def run(shard: Shard) -> None:
            ws = shard.ws
            shard.inputs = (shard.take(ids, 1), shard.take(targets, 1),
                            shard.take(masks, 2) if use_dropout else masks)
            shard.loss = cpu.model_forward(cell, self.params, self.layout.offsets, panels,
                                           *shard.inputs[:2], shard.take(h0, 1),
                                           shard.take(c0, 1), shard.inputs[2], use_dropout,
                                           ws.hs, ws.cs, ws.acts, ws.xg, ws.gates, ws.xin,
                                           ws.logits, ws.probs, total)

        self.splitter.map(run, shards)
        self._window = (T, B, use_dropout, total)
        return float(sum(shard.loss for shard in shards))

    def _packed_recurrent(self, transposed: bool) -> np.ndarray:
        """Every layer's W_h (forward), or W_h.T (backward), in panels (cpu.pack_recurrent),
        packed from the weights as they are now, once for all the shards of a window."""
        c = self.config
        L, H, GH = c.layers, c.hidden, c.gates * c.hidden
        K, N = (H, GH) if c.spec.packs_recurrent else (0, 0)  # (0, 0): never read
        if transposed:
            K, N = N, K
        if self._panels[transposed] is None:
            self._panels[transposed] = cpu.new_layer_panels(L, K, N, self.params)
        cpu.pack_recurrent(c.kernel_id, self.params, self.layout.offsets, H, transposed,
                           self._panels[transposed])
        return self._panels[transposed]

    def final_state(self) -> tuple[np.ndarray, np.ndarray]:
        """(hT, cT) of the last forward, each (L, B, H), as copies."""
        h = np.concatenate([sh.ws.hs[:, -1] for sh in self._shards], axis=1)
        if not self.config.has_cell_state:
            return h, np.zeros_like(h)
        return h, np.concatenate([sh.ws.cs[:, -1] for sh in self._shards], axis=1)

    def logits(self) -> np.ndarray:
        """Logits of the last forward, (T, B, V), as a copy."""
        T, B = self._window[:2]
        return np.concatenate([sh.ws.logits.reshape(T, sh.rows.stop - sh.rows.start, -1)
                               for sh in self._shards], axis=1)

    def backward(self, dhT=None, dcT=None) -> tuple[np.ndarray, np.ndarray]:
        """Add dLoss/dparams into ``grads`` for the last forward; return (dh0, dc0).

        dhT, dcT (L, B, H): gradients flowing into the final states from a later part of the
        window (None: zero, the end of a truncated-BPTT window)."""
        if self._window is None:
            raise RuntimeError("backward() needs a forward() first")
        T, B, use_dropout, total = self._window
        zh, zc = self.zero_state(B)
        dhT = zh if dhT is None else np.asarray(dhT, dtype=self.dtype)
        dcT = zc if dcT is None else np.asarray(dcT, dtype=self.dtype)
        dh0, dc0 = self.zero_state(B)
        cell = self.config.kernel_id
        panels = self._packed_recurrent(transposed=True)

        def run(shard: Shard) -> None:
            ws = shard.ws
            if shard.grads is not self.grads:
                shard.grads[:] = 0
            ids, targets, masks = shard.inputs
            dh, dc = self.zero_state(targets.shape[1])
            cpu.model_backward(cell, self.params, shard.grads, self.layout.offsets, panels,
                               ids, targets, masks, use_dropout,
                               ws.hs, ws.cs, ws.acts, ws.xin, ws.probs,
                               shard.take(dhT, 1), shard.take(dcT, 1), dh, dc,
                               ws.dlogits, ws.dX, ws.dHG, ws.dH, ws.tmp, total)
            dh0[:, shard.rows] = dh
            dc0[:, shard.rows] = dc

        self.splitter.map(run, self._shards)
        for shard in self._shards[1:]:
            self.grads += shard.grads
        return dh0, dc0


_SPLITTER = None


def _default_splitter() -> StreamSplitter:
    """One pool of worker threads shared by every model in the process."""
    global _SPLITTER
    if _SPLITTER is None:
        _SPLITTER = StreamSplitter()
    return _SPLITTER
