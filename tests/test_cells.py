"""The cell registry (charrnn/cells.py) against what it describes: the kernels' integer ids
(both kernel files define their own, for numba's disk cache), the CPU kernels' cell-state test,
the parameter layout, the FLOP count, and the cells users are told about (--help, docs)."""

import ast
from pathlib import Path

import pytest

from charrnn import CELL_NAMES
from charrnn.cells import CELLS
from charrnn.kernels import cpu
from charrnn.model import ModelConfig, ParamLayout

ROOT = Path(__file__).resolve().parent.parent


def constant_name(cell: str) -> str:
    return cell.upper().replace("-", "_")


def kernel_ids(path: Path) -> dict[str, int]:
    """The module-level integer constants of a kernel file, read from its source (importing
    cuda/kernels.py needs numba-cuda): `LSTM = 0` and `LSTM, GRU = range(2)` alike."""
    ids = {}
    for node in ast.parse(path.read_text()).body:
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            continue
        target, value = node.targets[0], node.value
        if isinstance(target, ast.Name) and isinstance(value, ast.Constant) \
                and type(value.value) is int:
            ids[target.id] = value.value
        elif isinstance(target, ast.Tuple) and isinstance(value, ast.Call) \
                and getattr(value.func, "id", None) == "range":
            for k, name in enumerate(target.elts):
                ids[name.id] = k
    return ids


@pytest.mark.parametrize("kernel_file", ["kernels/cpu.py", "cuda/kernels.py"])
def test_registry_ids_are_the_kernels(kernel_file):
    ids = kernel_ids(ROOT / "charrnn" / kernel_file)
    for name, spec in CELLS.items():
        assert ids.get(constant_name(name)) == spec.kernel_id, (kernel_file, name)


def test_ids_are_distinct_and_append_only():
    assert sorted(s.kernel_id for s in CELLS.values()) == list(range(len(CELLS)))
    assert CELL_NAMES == tuple(CELLS)


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_cell_state_as_the_kernels_see_it(cell):
    assert bool(cpu.has_cell_state(CELLS[cell].kernel_id)) == CELLS[cell].has_cell_state


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_layout_follows_the_spec(cell):
    spec, H, V = CELLS[cell], 5, 7
    layers = 1 if spec.single_layer else 2
    shapes = ParamLayout(ModelConfig(vocab_size=V, cell=cell, layers=layers, hidden=H)).shapes
    assert shapes["l0.W_x"] == (V, spec.gates * H)
    assert shapes["l0.W_h"][0] == (V if spec.output_recurrence else H)
    if spec.extra_name is not None:
        assert shapes[f"l0.{spec.extra_name}"] == spec.extra_shape(H)
    else:
        assert shapes["l0.extra"] == (0,)
    if spec.single_layer:
        with pytest.raises(ValueError, match="one layer"):
            ModelConfig(vocab_size=V, cell=cell, layers=2, hidden=H)


def test_flops_per_char_by_hand():
    """LSTM 2 x 128, V 65: per layer a (128 x 512) recurrent product, the second layer's
    (128 x 512) input product, the (128 x 65) output; x 2 for multiply-adds, x 3 for backward."""
    macs = 2 * 128 * 512 + 128 * 512 + 128 * 65
    assert CELLS["lstm"].flops_per_char(2, 128, 65) == 6 * macs
    # jordan's recurrence reads the output: a (65 x 128) product
    assert CELLS["jordan"].flops_per_char(1, 128, 65) == 6 * (65 * 128 + 128 * 65)


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_every_cell_is_told_about(cell, monkeypatch, capsys):
    from .test_cli import call_main
    monkeypatch.setenv("COLUMNS", "400")
    code, out, _ = call_main(monkeypatch, capsys, "train", "--help")
    assert code == 0 and cell in out
    assert f"`{cell}`" in (ROOT / "docs" / "model.md").read_text()
    assert f"`{cell}`" in (ROOT / "README.md").read_text()


def test_a_cell_without_cuda_kernels_is_refused_on_cuda_and_runs_on_the_cpu(monkeypatch):
    """A new cell starts with cuda_kernels=False (docs/adding-a-cell.md): the CUDA kernels
    cannot refuse an id they do not know, so the host does."""
    import dataclasses

    from charrnn import cells, device
    monkeypatch.setitem(cells.CELLS, "gru", dataclasses.replace(cells.CELLS["gru"],
                                                                cuda_kernels=False))
    monkeypatch.setattr(device, "cuda_problem", lambda: None)  # as on a machine with a GPU
    assert device.resolve("auto", "gru") == "cpu"
    assert device.resolve("auto", "lstm") == "cuda"
    with pytest.raises(device.DeviceError, match="--cell gru has no CUDA kernels yet"):
        device.resolve("cuda", "gru")
    assert device.resolve("cuda", "lstm") == "cuda"
