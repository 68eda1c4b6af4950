"""Parity with PyTorch: torch.nn.LSTM/GRU/RNN + nn.Linear with our weights copied in must give the
same logits, loss, final states and gradients (float64: 1e-9, float32: 1e-4, relative to the
largest magnitude of each array)."""

import numpy as np
import pytest

from .conftest import Problem, scaled_error

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch==2.13.0)")

TORCH_CELLS = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN,
               "irnn": torch.nn.RNN}
TOLERANCE = {np.float64: 1e-9, np.float32: 1e-4}


def torch_rnn(problem, first_layer, num_layers):
    """A torch recurrent module holding layers first_layer .. first_layer + num_layers - 1."""
    config, w = problem.config, problem.model.weights
    H, V = config.hidden, config.vocab_size
    n_in = V if first_layer == 0 else H
    kwargs = {"rnn": {"nonlinearity": "tanh"}, "irnn": {"nonlinearity": "relu"}}.get(config.cell, {})
    module = TORCH_CELLS[config.cell](n_in, H, num_layers, **kwargs)
    module = module.to(torch.from_numpy(w["out.W"]).dtype)
    with torch.no_grad():
        for k in range(num_layers):
            layer = first_layer + k
            getattr(module, f"weight_ih_l{k}").copy_(torch.from_numpy(w[f"l{layer}.W_x"].T))
            getattr(module, f"weight_hh_l{k}").copy_(torch.from_numpy(w[f"l{layer}.W_h"].T))
            getattr(module, f"bias_ih_l{k}").copy_(torch.from_numpy(w[f"l{layer}.b"]))
            b_hh = getattr(module, f"bias_hh_l{k}")
            b_hh.zero_()
            if config.cell == "gru":  # b_hn sits inside r * (W_hn h + b_hn)
                b_hh[2 * H:] = torch.from_numpy(w[f"l{layer}.b_hn"])
    return module


def torch_objective(problem):
    """The Problem's objective in torch; returns (objective, loss, logits, hT, cT, modules, h0, c0).

    Without dropout, one multi-layer module; with dropout, one single-layer module per layer
    with our fixed masks applied between them (torch cannot take a given mask)."""
    cfg, p = problem.config, problem
    L, V = cfg.layers, cfg.vocab_size
    h0 = torch.from_numpy(p.h0.copy()).requires_grad_()
    c0 = torch.from_numpy(p.c0.copy()).requires_grad_()
    x = torch.nn.functional.one_hot(torch.from_numpy(p.ids), V).to(h0.dtype)
    stacks = [(0, L)] if p.masks is None else [(layer, 1) for layer in range(L)]
    modules, h_fin, c_fin = [], [], []
    for first, n in stacks:
        module = torch_rnn(p, first, n)
        modules.append(module)
        state = (h0[first:first + n], c0[first:first + n])
        x, out_state = module(x, state if cfg.cell == "lstm" else state[0])
        h_fin.append(out_state[0] if cfg.cell == "lstm" else out_state)
        c_fin.append(out_state[1] if cfg.cell == "lstm" else state[1])
        if p.masks is not None:
            x = x * torch.from_numpy(p.masks[first])
    linear = torch.nn.Linear(cfg.hidden, V).to(h0.dtype)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(p.model.weights["out.W"].T))
        linear.bias.copy_(torch.from_numpy(p.model.weights["out.b"]))
    modules.append(linear)
    logits = linear(x)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V),
                                             torch.from_numpy(p.targets).reshape(-1))
    hT, cT = torch.cat(h_fin), torch.cat(c_fin)
    objective = loss + (hT * torch.from_numpy(p.dhT)).sum() + (cT * torch.from_numpy(p.dcT)).sum()
    objective.backward()
    return objective, loss, logits, hT, cT, modules, h0, c0


def torch_grads(problem, modules):
    """The torch gradients in our names and layouts."""
    cfg = problem.config
    H = cfg.hidden
    rnn_modules, linear = modules[:-1], modules[-1]
    per_layer = [(m, k) for m in rnn_modules for k in range(m.num_layers)]
    out = {}
    for layer, (m, k) in enumerate(per_layer):
        out[f"l{layer}.W_x"] = getattr(m, f"weight_ih_l{k}").grad.numpy().T
        out[f"l{layer}.W_h"] = getattr(m, f"weight_hh_l{k}").grad.numpy().T
        out[f"l{layer}.b"] = getattr(m, f"bias_ih_l{k}").grad.numpy()
        if cfg.cell == "gru":
            out[f"l{layer}.b_hn"] = getattr(m, f"bias_hh_l{k}").grad.numpy()[2 * H:]
    out["out.W"] = linear.weight.grad.numpy().T
    out["out.b"] = linear.bias.grad.numpy()
    return out


@pytest.mark.parametrize("cell", list(TORCH_CELLS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_matches_torch(cell, layers, dropout, dtype):
    p = Problem(cell, layers, dropout, T=7, B=3, H=8, V=10, dtype=dtype, seed=3)
    p.model.params[:] *= 0.5
    grads, dh0, dc0 = p.analytic()
    loss = p.model.forward(p.ids, p.targets, p.h0, p.c0, p.masks)
    hT, cT = p.model.final_state()

    _, t_loss, t_logits, t_hT, t_cT, modules, t_h0, t_c0 = torch_objective(p)
    tol = TOLERANCE[dtype]
    assert abs(loss - t_loss.item()) <= tol * abs(t_loss.item())
    assert scaled_error(p.model.logits(), t_logits.detach().numpy()) <= tol
    assert scaled_error(hT, t_hT.detach().numpy()) <= tol
    if cell == "lstm":
        assert scaled_error(cT, t_cT.detach().numpy()) <= tol
    for name, g in torch_grads(p, modules).items():
        assert scaled_error(grads[name], g) <= tol, name
    assert scaled_error(dh0, t_h0.grad.numpy()) <= tol
    if cell == "lstm":
        assert scaled_error(dc0, t_c0.grad.numpy()) <= tol


@pytest.mark.parametrize("cell", list(TORCH_CELLS))
@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_weight_drop_matches_torch_with_the_masked_matrices(cell, dropout):
    """--weight-drop: torch given W_h * m, its gradient of that matrix times m is ours of W_h
    (float64)."""
    from charrnn.weight_drop import WeightDrop
    p = Problem(cell, 2, dropout, T=7, B=3, H=8, V=10, seed=4)
    p.model.params[:] *= 0.5
    mask = WeightDrop(p.model.layout, 0.3).draw(np.random.default_rng(5), np.float64)
    with mask.applied(p.model.params, p.model.grads):
        _, dh0, _ = p.analytic()  # leaves the masked matrices' gradients in model.grads
        *_, modules, t_h0, _ = torch_objective(p)
    expected = torch_grads(p, modules)
    multipliers = np.zeros(p.model.params.size)
    for where, m in mask.parts():
        multipliers[where] = mask.values[m]
    masks = p.model.layout.views(multipliers)
    for layer in range(2):
        expected[f"l{layer}.W_h"] = expected[f"l{layer}.W_h"] * masks[f"l{layer}.W_h"]
    ours = p.model.grad_views
    for name, g in expected.items():
        assert scaled_error(ours[name], g) <= TOLERANCE[np.float64], name
    assert scaled_error(dh0, t_h0.grad.numpy()) <= TOLERANCE[np.float64]


def torch_gru_ln_objective(p):
    """The Problem's objective for gru-ln written with torch's layer_norm and autograd: each
    H-block of x W_x through F.layer_norm with its gains and the bias b, then the GRU's
    equations. Returns (loss, logits, hT, the leaf tensors by our names, h0)."""
    cfg, F = p.config, torch.nn.functional
    H, V = cfg.hidden, cfg.vocab_size
    w = {k: torch.from_numpy(v.copy()).requires_grad_() for k, v in p.model.weights.items()}
    h0 = torch.from_numpy(p.h0.copy()).requires_grad_()
    x = F.one_hot(torch.from_numpy(p.ids), V).to(h0.dtype)  # (T, B, V)
    finals = []
    for layer in range(cfg.layers):
        W_x, W_h, b = (w[f"l{layer}.{k}"] for k in ("W_x", "W_h", "b"))
        gain, b_hn = w[f"l{layer}.ln_gain_b_hn"][:3 * H], w[f"l{layer}.ln_gain_b_hn"][3 * H:]
        v = x @ W_x  # (T, B, 3H)
        ax = torch.cat([F.layer_norm(v[..., g * H:(g + 1) * H], (H,),
                                     gain[g * H:(g + 1) * H], b[g * H:(g + 1) * H], eps=1e-5)
                        for g in range(3)], dim=-1)
        h, outs = h0[layer], []
        for t in range(x.shape[0]):
            ah = h @ W_h
            r = torch.sigmoid(ax[t, :, :H] + ah[:, :H])
            z = torch.sigmoid(ax[t, :, H:2 * H] + ah[:, H:2 * H])
            n = torch.tanh(ax[t, :, 2 * H:] + r * (ah[:, 2 * H:] + b_hn))
            h = (1 - z) * n + z * h
            outs.append(h)
        finals.append(h)
        x = torch.stack(outs)
        if p.masks is not None:
            x = x * torch.from_numpy(p.masks[layer])
    logits = x @ w["out.W"] + w["out.b"]
    loss = F.cross_entropy(logits.reshape(-1, V), torch.from_numpy(p.targets).reshape(-1))
    hT = torch.stack(finals)
    (loss + (hT * torch.from_numpy(p.dhT)).sum()).backward()
    return loss, logits, hT, w, h0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_gru_ln_matches_torch_layer_norm(layers, dropout, dtype):
    """gru-ln against torch.nn.functional.layer_norm and torch's autograd (torch has no
    layer-normalised GRU module): loss, logits, final state and every gradient."""
    p = Problem("gru-ln", layers, dropout, T=7, B=3, H=8, V=10, dtype=dtype, seed=3)
    grads, dh0, _ = p.analytic()
    loss = p.model.forward(p.ids, p.targets, p.h0, p.c0, p.masks)
    hT, _ = p.model.final_state()
    t_loss, t_logits, t_hT, leaves, t_h0 = torch_gru_ln_objective(p)
    tol = TOLERANCE[dtype]
    assert abs(loss - t_loss.item()) <= tol * abs(t_loss.item())
    assert scaled_error(p.model.logits(), t_logits.detach().numpy()) <= tol
    assert scaled_error(hT, t_hT.detach().numpy()) <= tol
    for name, leaf in leaves.items():
        assert scaled_error(grads[name], leaf.grad.numpy()) <= tol, name
    assert scaled_error(dh0, t_h0.grad.numpy()) <= tol
