"""Adam, SGD and global-norm clipping over the flat buffer, against the paper's formulas and
against torch.optim + clip_grad_norm_ on the same gradients."""

import numpy as np
import pytest

from charrnn import optim
from charrnn.optim import SGD, Adam, clip_grad_norm
from charrnn.parallel import StreamSplitter

from . import reference
from .conftest import scaled_error

STEPS = 6


def random_grads(n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    # mixed scales: some steps are clipped, some are not
    return [(rng.normal(size=n) * scale).astype(dtype) for scale in (0.1, 3.0, 0.5, 10.0, 0.01, 1.0)]


def test_adam_matches_the_paper():
    rng = np.random.default_rng(1)
    params = rng.normal(size=50)
    grads = random_grads(50, np.float64)
    expected = reference.adam(params, grads, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8)
    opt = Adam(50, np.float64, lr=0.01)
    p = params.copy()
    for g in grads:
        opt.step(p, g.copy())
    assert opt.steps == STEPS
    assert scaled_error(p, expected) < 1e-12
    assert np.abs(p - params).max() > 1e-3  # it moved


def test_adam_on_the_threads_gives_one_threads_bits(monkeypatch):
    """Over a splitter the buffer is cut into one range per thread (from ADAM_MIN_PART weights
    a part): the weights and moments are those of one thread, to the bit."""
    monkeypatch.setattr(optim, "ADAM_MIN_PART", 7)
    rng = np.random.default_rng(6)
    params = rng.normal(size=31).astype(np.float32)
    one = Adam(31, lr=0.01, weight_decay=0.1)
    split = Adam(31, lr=0.01, weight_decay=0.1, splitter=StreamSplitter(threads=3))
    assert len(split._ranges) == 3 and len(one._ranges) == 1
    p, q = params.copy(), params.copy()
    for g in random_grads(31, np.float32, seed=7):
        one.step(p, g.copy())
        split.step(q, g.copy())
    assert np.array_equal(p, q) and np.array_equal(one.m, split.m)
    assert np.array_equal(one.v, split.v) and np.abs(p - params).max() > 1e-3
    monkeypatch.setattr(optim, "ADAM_MIN_PART", 16)  # two parts of at least 16 at most
    assert len(Adam(31, splitter=StreamSplitter(threads=3))._ranges) == 1
    assert len(Adam(32, splitter=StreamSplitter(threads=3))._ranges) == 2


def test_weight_decay_shrinks_the_weights_before_the_adam_step():
    """AdamW's decoupled decay (Loshchilov and Hutter 2019): the step with weight decay wd at
    rate lr is Adam's step from the weights times 1 - lr * wd, with the same moments, whatever
    the gradient."""
    rng = np.random.default_rng(4)
    params = rng.normal(size=30)
    decayed, plain, undecayed = (Adam(30, np.float64, lr=0.02, weight_decay=wd)
                                 for wd in (0.7, 0.0, 0.0))
    p, q, r = params.copy(), params.copy(), params.copy()
    for step, g in enumerate(random_grads(30, np.float64, seed=5)):
        lr = 0.02 / (1 + step)  # a schedule changes the rate, and the decay with it
        decayed.lr = plain.lr = undecayed.lr = lr
        decayed.step(p, g.copy())
        q *= 1 - lr * 0.7
        plain.step(q, g.copy())
        undecayed.step(r, g.copy())
        assert scaled_error(p, q) < 1e-14
    assert np.array_equal(decayed.m, plain.m) and np.array_equal(decayed.v, plain.v)
    assert np.abs(p - r).max() > 1e-3  # the decay moved the weights


def test_clip_scales_to_max_norm_only_when_above():
    g = np.array([3.0, 4.0], np.float32)
    assert clip_grad_norm(g, 10.0) == pytest.approx(5.0)
    assert g.tolist() == [3.0, 4.0]
    assert clip_grad_norm(g, 1.0) == pytest.approx(5.0)
    assert np.linalg.norm(g) == pytest.approx(1.0, rel=1e-5)
    assert g[1] / g[0] == pytest.approx(4 / 3)


def test_optimizer_state_round_trips():
    grads = random_grads(20, np.float32)
    a, b = Adam(20, lr=0.01), Adam(20, lr=0.01)
    pa = np.ones(20, np.float32)
    for g in grads[:3]:
        a.step(pa, g)
    pb = pa.copy()
    b.load_state({k: np.copy(v) for k, v in a.state().items()})
    for g in grads[3:]:
        a.step(pa, g)
        b.step(pb, g)
    assert np.array_equal(pa, pb)


def _torch():
    return pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch==2.13.0)")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_step_with_clipping_matches_torch(name, dtype):
    torch = _torch()
    n, max_norm = 40, 2.0
    params = np.random.default_rng(2).normal(size=n).astype(dtype)
    t_param = torch.nn.Parameter(torch.from_numpy(params.copy()))
    if name == "adam":
        ours = Adam(n, dtype, lr=0.01, betas=(0.8, 0.99), eps=1e-6)
        theirs = torch.optim.Adam([t_param], lr=0.01, betas=(0.8, 0.99), eps=1e-6)
    elif name == "adamw":
        ours = Adam(n, dtype, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=3.0)
        theirs = torch.optim.AdamW([t_param], lr=0.01, betas=(0.8, 0.99), eps=1e-6,
                                   weight_decay=3.0)
    else:
        ours = SGD(n, dtype, lr=0.05, momentum=0.9)
        theirs = torch.optim.SGD([t_param], lr=0.05, momentum=0.9)
    p = params.copy()
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for g in random_grads(n, dtype, seed=3):
        g_ours = g.copy()
        norm = clip_grad_norm(g_ours, max_norm)
        ours.step(p, g_ours)
        t_param.grad = torch.from_numpy(g.copy())
        t_norm = torch.nn.utils.clip_grad_norm_([t_param], max_norm)
        theirs.step()
        assert norm == pytest.approx(t_norm.item(), rel=tol)
        assert scaled_error(g_ours, t_param.grad.numpy()) < tol
        assert scaled_error(p, t_param.detach().numpy()) < tol
