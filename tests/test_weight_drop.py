"""DropConnect on the recurrent matrices (--weight-drop, charrnn/weight_drop.py) and the locked
dropout masks: the masks' shape and rates, the gradient of the masked model against float64
central differences for every cell, the engine's step against the same step done by hand, and
the weights put back bit for bit."""

import numpy as np
import pytest

from charrnn.engine import CpuEngine
from charrnn.model import Model, ModelConfig
from charrnn.optim import Adam, clip_grad_norm
from charrnn.weight_drop import WeightDrop

from .conftest import Problem, rel_error, stacks
from .test_model import central_differences


def masked_problem(cell, layers, p=0.4, dropout=0.0, seed=0):
    problem = Problem(cell, layers, dropout, T=4, B=2, H=3, V=5, seed=seed)
    mask = WeightDrop(problem.model.layout, p).draw(np.random.default_rng(seed + 7),
                                                    problem.model.dtype)
    return problem, mask


def test_the_mask_covers_every_recurrent_matrix_and_nothing_else():
    config = ModelConfig(vocab_size=7, cell="lstm", layers=3, hidden=6)
    model = Model(config, dtype=np.float64)
    drop = WeightDrop(model.layout, 0.25)
    assert drop.size == 3 * 6 * 24
    marked = np.zeros(model.params.size, bool)
    for where in drop.slices:
        marked[where] = True
    for name, view in model.layout.views(np.arange(model.params.size)).items():
        assert marked[view.ravel()].all() == name.endswith(".W_h"), name
        assert marked[view.ravel()].any() == name.endswith(".W_h"), name


def test_the_mask_drops_p_of_the_weights_and_scales_the_rest():
    model = Model(ModelConfig(vocab_size=9, cell="gru", layers=2, hidden=40), dtype=np.float32)
    mask = WeightDrop(model.layout, 0.3).draw(np.random.default_rng(0), np.float32)
    values = np.unique(mask.values)
    np.testing.assert_allclose(values, [0.0, 1 / 0.7], rtol=1e-6)
    dropped = np.mean(mask.values == 0)
    assert abs(dropped - 0.3) < 0.01  # 9,600 draws: the standard error is 0.005


@pytest.mark.parametrize("layers", [1, 2])
def test_gradients_of_the_masked_model_match_central_differences(cell, layers):
    """f(theta) = objective(theta with W_h * m); its gradient is the kernels' gradient of the
    masked weights, times m on W_h: the path the engine takes."""
    stacks(cell, layers)
    p, mask = masked_problem(cell, layers)
    model = p.model
    with mask.applied(model.params, model.grads):
        p.analytic()  # leaves the masked matrices' gradients in model.grads
    analytic = model.grads.copy()

    def f() -> float:
        with mask.applied(model.params, model.grads):
            return p.objective()

    numeric = central_differences(f, model.params)
    # the floor: an entry near 1e-6 carries the differences' own error of about 1e-10
    assert rel_error(analytic, numeric, floor=1e-4) < 1e-6
    dropped = np.concatenate([analytic[where][mask.values[m] == 0] for where, m in mask.parts()])
    assert dropped.size > 0 and np.all(dropped == 0)  # a dropped weight learns nothing


def test_the_weights_come_back_bit_for_bit_even_after_an_error():
    p, mask = masked_problem("gru", 2)
    before = p.model.params.copy()
    with mask.applied(p.model.params, p.model.grads):
        assert not np.array_equal(p.model.params, before)
    np.testing.assert_array_equal(p.model.params, before)
    with pytest.raises(RuntimeError):
        with mask.applied(p.model.params, p.model.grads):
            raise RuntimeError("a step that failed")
    np.testing.assert_array_equal(p.model.params, before)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_the_engine_step_is_the_masked_step_done_by_hand(dropout):
    p, mask = masked_problem("lstm", 2, dropout=dropout)
    engine = CpuEngine(Model(p.config, params=p.model.params.copy()), Adam(p.model.params.size),
                       p.h0.copy(), p.c0.copy())
    loss = engine.step(p.ids, p.targets, p.masks, 1e-2, 0.5, weight_mask=mask)

    by_hand = p.model
    masked = by_hand.params.copy()
    for where, m in mask.parts():
        masked[where] *= mask.values[m]
    probe = Model(p.config, params=masked)
    expected_loss = probe.forward(p.ids, p.targets, p.h0, p.c0, p.masks)
    probe.backward()
    grads = probe.grads.copy()
    for where, m in mask.parts():
        grads[where] *= mask.values[m]
    clip_grad_norm(grads, 0.5)
    adam = Adam(by_hand.params.size, lr=1e-2)
    params = by_hand.params.copy()
    adam.step(params, grads)
    assert loss == pytest.approx(expected_loss, rel=1e-12)
    np.testing.assert_allclose(engine.model.params, params, rtol=0, atol=1e-12)
    np.testing.assert_allclose(engine.h, probe.final_state()[0], rtol=0, atol=1e-12)


def test_dropout_masks_are_locked_over_the_window():
    model = Model(ModelConfig(vocab_size=5, cell="gru", layers=2, hidden=50, dropout=0.4))
    masks = model.dropout_masks(np.random.default_rng(1), 6, 8)  # (L, T, B, H)
    assert masks.shape == (2, 6, 8, 50)
    for t in range(1, 6):
        np.testing.assert_array_equal(masks[:, t], masks[:, 0])
    assert not np.array_equal(masks[0, :, 0], masks[0, :, 1])  # streams differ
    assert not np.array_equal(masks[0], masks[1])  # layers differ
    np.testing.assert_allclose(np.unique(masks), [0.0, 1 / 0.6], rtol=1e-6)
    assert abs(np.mean(masks[:, 0] == 0) - 0.4) < 0.04  # 800 draws


def test_a_run_with_weight_drop_says_so_and_resumes_with_it(tmp_path):
    from .test_cli import run_cli
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat. " * 40)
    out = tmp_path / "run"
    args = ["train", corpus, "--out", out, "--hidden", "8", "--batch-size", "4", "--seq-len",
            "8", "--weight-drop", "0.2"]
    code, _, err = run_cli(*args, "--max-steps", "3")
    assert code == 0, err
    code, shown, err = run_cli("info", out)
    assert code == 0 and "weight drop 0.2," in shown, err
    code, _, err = run_cli("train", corpus, "--out", out, "--resume", "--max-steps", "5",
                           "--weight-drop", "0.3")
    assert code == 2 and "--weight-drop cannot change" in err
