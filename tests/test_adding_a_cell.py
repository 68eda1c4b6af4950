"""docs/adding-a-cell.md, followed step by step: a copy of the charrnn package gets a toy cell,
`ugrnn` (the update-gate RNN of Collins et al. 2017), by the doc's edits only: its record in
cells.py, and its id, forward step, backward step and two dispatch branches in kernels/cpu.py.
The copy must then train it, sample it, list it in --help and match central differences.

Each edit is made at an exact anchor of the real files and asserted to be there once, and each
piece of code inserted is asserted to appear word for word in the doc: when the files or the
doc change, this test fails rather than proving an outdated recipe. The copy's kernels compile
from scratch (their own numba cache): about a minute on two cores.
"""

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

from charrnn.cells import CELLS

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "adding-a-cell.md"
TOY = "ugrnn"
# what the doc's recipe touches (CUDA, docs, README and tests/reference.py are for a real cell)
TOUCHED = {"cells.py", "kernels/cpu.py"}

RECORD = '''\
    CellSpec("ugrnn", 9, gates=2, stored_acts=2, forget_block=0, cuda_kernels=False,
             description="update-gate RNN (Collins et al. 2017): h = g*h_prev + (1-g)*c"),
'''

CONSTANT = "UGRNN = 9\n"

STEP = '''\
@kernel
def _ugrnn_step(xg, gates, h_prev, h_out, act):
    """Update-gate RNN: g = sigmoid(a_g), c = tanh(a_c), h = g * h_prev + (1 - g) * c.
    xg, gates: (B, 2H) blocks g, c; h_prev, h_out: (B, H); act: (B, 2H) out: g, c."""
    B, H = h_prev.shape
    for b in range(B):
        x, a, hp, ho, s = xg[b], gates[b], h_prev[b], h_out[b], act[b]
        for k in range(H):
            s[k] = _sigmoid(x[k] + a[k])  # g
        for k in range(H, 2 * H):
            s[k] = _tanh(x[k] + a[k])  # c
        for j in range(H):
            c = s[H + j]
            ho[j] = c + s[j] * (hp[j] - c)
'''

STEP_BRANCH = '''\
    elif cell == UGRNN:
        _ugrnn_step(xg, gates, h_prev, h_out, act)
'''

STEP_BACK = '''\
@kernel
def _ugrnn_step_back(dh, h_prev, act, dx, dh_direct):
    """dx: (B, 2H) out: the g, c pre-activation gradients; dh_direct: (B, H) out, the part of
    dL/dh_{t-1} that skips W_h (h_prev reaches h through g * h_prev)."""
    B, H = dh.shape
    one = _one(dh[0, 0])
    for b in range(B):
        d, hp, s, g, dd = dh[b], h_prev[b], act[b], dx[b], dh_direct[b]
        for j in range(H):
            u = s[j]
            g[j] = d[j] * (hp[j] - s[H + j]) * (u - u * u)
        for j in range(H):
            c = s[H + j]
            g[H + j] = d[j] * (one - s[j]) * (one - c * c)
        for j in range(H):
            dd[j] = d[j] * s[j]
'''

BACK_BRANCH = '''\
        elif cell == UGRNN:
            _ugrnn_step_back(dh, hs[t], acts[t], dX[t], tmp)
            matmul_packed(dX[t], P, dh_next)  # @ W_h.T (P: its panels)
            for b in range(B):
                for j in range(H):
                    dh_next[b, j] += tmp[b, j]
'''

# (file, anchor, code, where): the code goes before or after the anchor, which must occur once
FORWARD_END = ("# ---- end of the cells' forward steps: a new cell's step function goes above "
               "this line ----\n")
BACKWARD_END = ("# ---- end of the cells' backward steps: a new cell's step backward goes above "
                "this line ----\n")
STEP_ELSE = ("    # a new cell's branch goes here: an id without one is refused, never run as "
             "another cell\n    else:\n        raise ValueError(\"no CPU step for this cell "
             "id\")\n")
BACK_ELSE = ("        # a new cell's branch goes here: an id without one is refused, never run as "
             "another cell\n        else:\n            raise ValueError(\"no CPU backward step for "
             "this cell id\")\n")


def edits() -> list[tuple[str, str, str, str]]:
    last = max(CELLS.values(), key=lambda spec: spec.kernel_id)
    last_constant = f"{last.name.upper().replace('-', '_')} = {last.kernel_id}\n"
    return [
        ("cells.py", "\n)}\n\nCELL_NAMES = tuple(CELLS)\n", RECORD, "before_inner"),
        ("kernels/cpu.py", last_constant, CONSTANT, "after"),
        ("kernels/cpu.py", FORWARD_END, STEP + "\n\n", "before"),
        ("kernels/cpu.py", STEP_ELSE, STEP_BRANCH, "before"),
        ("kernels/cpu.py", BACKWARD_END, STEP_BACK + "\n\n", "before"),
        ("kernels/cpu.py", BACK_ELSE, BACK_BRANCH, "before"),
    ]


def apply(package: Path) -> None:
    for name, anchor, code, where in edits():
        path = package / name
        text = path.read_text()
        assert text.count(anchor) == 1, f"{name}: the anchor {anchor!r} is gone: update the doc"
        if where == "after":
            new = anchor + code
        elif where == "before":
            new = code + anchor
        else:  # inside the registry's closing "\n)}": after the last record's newline
            new = "\n" + code + anchor[1:]
        path.write_text(text.replace(anchor, new))


def changed_files(original: Path, copy: Path) -> set[str]:
    """Paths (relative, with /) that differ between the two trees, added or removed included;
    compiled files left out."""
    def files(root):
        return {p.relative_to(root).as_posix() for p in root.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts}
    a, b = files(original), files(copy)
    same = {f for f in a & b if filecmp.cmp(original / f, copy / f, shallow=False)}
    return (a | b) - same


CHECK = r'''
"""Run in the patched copy: the toy cell against its equations and central differences."""
import sys
import warnings

import numpy as np
from numba.core.errors import NumbaPerformanceWarning

warnings.simplefilter("error", NumbaPerformanceWarning)  # as pytest's configuration does

import charrnn
from charrnn.cells import CELLS
from charrnn.kernels import cpu
from charrnn.model import Model, ModelConfig, Workspace

assert charrnn.__file__.startswith(sys.argv[1]), charrnn.__file__  # the copy, not the repo
spec = CELLS["ugrnn"]
assert cpu.UGRNN == spec.kernel_id
V, H, T, B = 5, 3, 4, 2


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def reference(w, layers, ids, targets, h0):
    """The cell's equations in numpy: (mean loss, hT)."""
    x = np.eye(V)[ids]
    hT = h0.copy()
    for layer in range(layers):
        W_x, W_h, b = (w[f"l{layer}.{k}"] for k in ("W_x", "W_h", "b"))
        h, outs = h0[layer], []
        for t in range(T):
            a = x[t] @ W_x + h @ W_h + b
            g, c = sigmoid(a[:, :H]), np.tanh(a[:, H:])
            h = g * h + (1 - g) * c
            outs.append(h)
        hT[layer] = h
        x = np.stack(outs)
    z = x @ w["out.W"] + w["out.b"]
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, targets[..., None], -1).mean(), hT


def central(f, x, eps=1e-5):
    grad, flat = np.zeros(x.size), x.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        grad[i] = (fp - fm) / (2 * eps)
    return grad.reshape(x.shape)


def scaled_error(a, e):
    """The largest error relative to the array's largest entry: an entry near 0 carries the
    differences' own error (about 1e-11 here), which an entrywise relative error magnifies."""
    return float(np.abs(a - e).max() / np.abs(e).max())


for layers in (1, 2):
    config = ModelConfig(vocab_size=V, cell="ugrnn", layers=layers, hidden=H)
    model = Model(config, dtype=np.float64, seed=1)
    # what reads the record: the layout, the initialisation, the workspace
    w = model.weights
    assert w["l0.W_x"].shape == (V, 2 * H) and w["l0.W_h"].shape == (H, 2 * H)
    assert (w["l0.b"][:H] == 1).all() and (np.abs(w["l0.b"][H:]) < 1).all()  # forget_block=0
    assert Workspace(config, T, B, np.float64).acts.shape == (layers, T, B, 2 * H)
    rng = np.random.default_rng(layers)
    model.params[:] = rng.uniform(-0.8, 0.8, model.params.size)
    ids, targets = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    h0 = rng.uniform(-0.9, 0.9, (layers, B, H))
    dhT = rng.normal(size=(layers, B, H))

    # the forward is this cell's equations: a branch computing another cell would still have
    # gradients that match their central differences
    loss = model.forward(ids, targets, h0)
    ref_loss, ref_hT = reference(w, layers, ids, targets, h0)
    assert abs(loss - ref_loss) < 1e-12, (loss, ref_loss)
    assert np.allclose(model.final_state()[0], ref_hT, rtol=0, atol=1e-12)

    def objective():
        value = model.forward(ids, targets, h0)
        return value + float((model.final_state()[0] * dhT).sum())

    objective()
    model.grads[:] = 0
    dh0, _ = model.backward(dhT)
    for name, view in w.items():
        numeric = central(objective, view)
        assert np.abs(numeric).max() > 0, name
        assert scaled_error(model.grad_views[name], numeric) < 1e-7, (layers, name)
    assert scaled_error(dh0, central(objective, h0)) < 1e-7, layers
print("toy cell checked")
'''


def test_the_doc_adds_a_working_cell(tmp_path):
    doc = DOC.read_text()
    for _, _, code, _ in edits():
        assert code.strip("\n") in doc, f"the doc no longer shows:\n{code}"
    assert max(s.kernel_id for s in CELLS.values()) + 1 == 9, "the doc's toy id is not the next"
    assert TOY not in CELLS

    package = tmp_path / "src" / "charrnn"
    shutil.copytree(ROOT / "charrnn", package, ignore=shutil.ignore_patterns("__pycache__"))
    apply(package)
    assert changed_files(ROOT / "charrnn", package) == TOUCHED

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. " * 120)
    script = tmp_path / "check_toy.py"
    script.write_text(CHECK)
    env = {**os.environ, "PYTHONPATH": str(package.parent), "COLUMNS": "400",
           "NO_COLOR": "1", "CHARRNN_STATE_DIR": str(tmp_path / "state")}
    env.pop("NUMBA_DISABLE_JIT", None)

    def cache(name):  # one numba cache each: the two processes compile side by side
        return {**env, "NUMBA_CACHE_DIR": str(tmp_path / name)}

    # cwd: `python -m` puts the working directory first on sys.path, so not the repository's
    train = subprocess.Popen(
        [sys.executable, "-m", "charrnn", "train", str(corpus), "--cell", TOY, "--layers", "2",
         "--hidden", "8", "--seq-len", "8", "--batch-size", "2", "--max-steps", "3",
         "--device", "cpu", "--out", str(tmp_path / "run")],
        cwd=package.parent, env=cache("numba-train"), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        check = subprocess.run([sys.executable, str(script), str(package)], check=False,
                               cwd=package.parent, env=cache("numba-check"),
                               capture_output=True, text=True, timeout=600)
        out, err = train.communicate(timeout=600)
    finally:
        train.kill()
    assert check.returncode == 0, check.stdout + check.stderr
    assert "toy cell checked" in check.stdout
    assert train.returncode == 0, out + err
    assert "stopped at step 3" in out + err, out + err  # the report goes to stderr
    assert (tmp_path / "run" / "latest.npz").exists()

    helped = subprocess.run([sys.executable, "-m", "charrnn", "train", "--help"], check=False,
                            cwd=package.parent, env=cache("numba-help"), capture_output=True,
                            text=True, timeout=120)
    assert helped.returncode == 0, helped.stderr
    assert TOY in helped.stdout, helped.stdout  # the real package has no such cell

    # its record says it has no CUDA kernels yet: --device cuda is refused in one line, before
    # anything is made
    on_cuda = subprocess.run(
        [sys.executable, "-m", "charrnn", "train", str(corpus), "--cell", TOY, "--device",
         "cuda", "--out", str(tmp_path / "cuda-run")], check=False, cwd=package.parent,
        env=cache("numba-help"), capture_output=True, text=True, timeout=120)
    assert on_cuda.returncode == 1 and "no CUDA kernels" in on_cuda.stderr, on_cuda.stderr
    assert not (tmp_path / "cuda-run").exists()
