"""The hand-written forward and backward against the equations and against central differences."""

import numpy as np
import pytest

from charrnn.model import Model, ModelConfig, ParamLayout

from . import reference
from .conftest import Problem, rel_error, stacks


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_forward_matches_reference(cell, layers, dropout):
    stacks(cell, layers)
    p = Problem(cell, layers, dropout)
    loss = p.model.forward(p.ids, p.targets, p.h0, p.c0, p.masks)
    hT, cT = p.model.final_state()
    ref_loss, ref_logits, ref_hT, ref_cT = reference.forward(
        p.model.weights, cell, p.ids, p.targets, p.h0, p.c0, p.masks)
    assert abs(loss - ref_loss) < 1e-12
    assert np.allclose(p.model.logits(), ref_logits, rtol=0, atol=1e-12)
    assert np.allclose(hT, ref_hT, rtol=0, atol=1e-12)
    assert np.allclose(cT, ref_cT, rtol=0, atol=1e-12)


def central_differences(f, x, eps=1e-5):
    """dF/dx for every entry of the array x (perturbed in place and restored)."""
    grad = np.zeros(x.shape)
    flat = x.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        grad.reshape(-1)[i] = (fp - fm) / (2 * eps)
    return grad


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_gradients_match_central_differences(cell, layers, dropout):
    stacks(cell, layers)
    p = Problem(cell, layers, dropout, T=6, B=2)
    grads, dh0, dc0 = p.analytic()
    for name, view in p.model.weights.items():
        numeric = central_differences(p.objective, view)
        assert rel_error(grads[name], numeric) < 1e-6, name
        assert np.abs(numeric).max() > 0, f"{name} does not affect the loss"
    assert rel_error(dh0, central_differences(p.objective, p.h0)) < 1e-6
    if p.config.has_cell_state:
        assert rel_error(dc0, central_differences(p.objective, p.c0)) < 1e-6
    else:
        assert not dc0.any()


@pytest.mark.parametrize("split", [1, 3, 5])
def test_split_window_gives_the_same_gradient(cell, split):
    """Truncated BPTT is exact: a window run as two pieces, with the state carried forward and
    the initial-state gradient of the second piece fed back into the first, gives the gradient
    of the whole window."""
    T = 6
    p = Problem(cell, layers=1 if cell == "jordan" else 2, T=T, B=3)
    m = p.model
    whole = m.forward(p.ids, p.targets, p.h0, p.c0)
    m.grads[:] = 0
    dh0_whole, dc0_whole = m.backward()
    g_whole = m.grads.copy()

    first, second = slice(0, split), slice(split, T)
    m.forward(p.ids[first], p.targets[first], p.h0, p.c0)
    h_mid, c_mid = m.final_state()
    loss2 = m.forward(p.ids[second], p.targets[second], h_mid, c_mid)
    m.grads[:] = 0
    dh_mid, dc_mid = m.backward()
    g_second = m.grads.copy()
    loss1 = m.forward(p.ids[first], p.targets[first], p.h0, p.c0)
    m.grads[:] = 0
    dh0, dc0 = m.backward(dh_mid * (T - split) / split, dc_mid * (T - split) / split)
    # each piece's loss is a mean over its own steps: weight the pieces by their lengths
    combined = (m.grads * split + g_second * (T - split)) / T
    assert abs((loss1 * split + loss2 * (T - split)) / T - whole) < 1e-12
    assert rel_error(combined, g_whole) < 1e-10
    assert rel_error(dh0 * split / T, dh0_whole) < 1e-10
    assert rel_error(dc0 * split / T, dc0_whole) < 1e-10


def test_backward_adds_into_grads(cell):
    p = Problem(cell, layers=1 if cell == "jordan" else 2)
    grads, _, _ = p.analytic()
    p.model.backward(p.dhT, p.dcT)  # a second backward of the same window adds again
    for name, g in p.model.grad_views.items():
        assert np.allclose(g, 2 * grads[name], rtol=1e-12, atol=0)


def test_flat_buffer_views_share_memory():
    config = ModelConfig(vocab_size=5, cell="gru", layers=2, hidden=3)
    layout = ParamLayout(config)
    flat = np.arange(layout.size, dtype=np.float32)
    views = layout.views(flat)
    assert sum(v.size for v in views.values()) == layout.size
    assert views["l0.W_x"].shape == (5, 9) and views["l1.W_x"].shape == (3, 9)
    assert views["l1.b_hn"].shape == (3,) and views["out.W"].shape == (3, 5)
    views["out.b"][:] = -1
    assert (flat[-5:] == -1).all()
    lstm = ParamLayout(ModelConfig(5, "lstm", 1, 3))
    assert "l0.b_hn" not in lstm.views(np.zeros(lstm.size))


def test_float32_forward_matches_float64():
    p = Problem("lstm", layers=2, dropout=0.3)
    m32 = Model(p.config, params=p.model.params.astype(np.float32))
    loss32 = m32.forward(p.ids, p.targets, p.h0, p.c0, p.masks)
    loss64 = p.model.forward(p.ids, p.targets, p.h0, p.c0, p.masks)
    assert m32.params.dtype == np.float32
    assert abs(loss32 - loss64) < 1e-5 * abs(loss64)


@pytest.mark.parametrize("bad", [{"cell": "transformer"}, {"hidden": 0}, {"dropout": 1.0},
                                 {"hidden": 16.0}, {"layers": True}, {"dropout": "0.1"}])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        ModelConfig(vocab_size=5, **bad)


def test_forward_rejects_ids_outside_vocab():
    m = Model(ModelConfig(vocab_size=4, hidden=3, layers=1))
    with pytest.raises(ValueError, match="ids"):
        m.forward(np.array([[4]]), np.array([[0]]))


def test_float32_nonlinearities_are_accurate():
    from numba import njit

    from charrnn.kernels import cpu

    @njit
    def apply(x, tanh_out, sigmoid_out):
        for i in range(x.size):
            tanh_out[i] = cpu._tanh(x[i])
            sigmoid_out[i] = cpu._sigmoid(x[i])

    x = np.linspace(-30, 30, 200_001).astype(np.float32)
    t, s = np.empty_like(x), np.empty_like(x)
    apply(x, t, s)
    exact = x.astype(np.float64)
    assert np.abs(t - np.tanh(exact)).max() < 5e-7
    assert np.abs(s - 1 / (1 + np.exp(-exact))).max() < 5e-7
    assert np.abs(t).max() <= 1 and s.min() >= 0 and s.max() <= 1
