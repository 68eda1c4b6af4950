"""The memory check: the cgroup's room counts its reclaimable page cache, small needs are
taken to fit without asking, and a need past the room is one NotEnoughMemory line."""

import pytest

from charrnn import memory
from charrnn.memory import ALWAYS_FITS, NotEnoughMemory, check_fits


def test_cgroup_room_counts_inactive_page_cache(tmp_path):
    (tmp_path / "memory.max").write_text("1000000\n")
    (tmp_path / "memory.current").write_text("900000\n")
    (tmp_path / "memory.stat").write_text("anon 500000\nfile 400000\ninactive_file 300000\n")
    assert memory._cgroup_room(tmp_path) == 1000000 - 900000 + 300000
    (tmp_path / "memory.max").write_text("max\n")
    assert memory._cgroup_room(tmp_path) is None


def test_small_needs_fit_without_asking(monkeypatch):
    def never(): raise AssertionError("asked the system for a small need")
    monkeypatch.setattr(memory, "available_bytes", never)
    check_fits(ALWAYS_FITS, "a preview", "--length")


def test_a_need_past_the_room_is_refused(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 2 * ALWAYS_FITS)
    check_fits(2 * ALWAYS_FITS, "this", "--hidden")
    with pytest.raises(NotEnoughMemory, match="needs about 256 MiB of memory and 128 MiB is "
                                              "available: choose a smaller --hidden"):
        check_fits(4 * ALWAYS_FITS, "this", "--hidden")


@pytest.mark.parametrize("cell", ["lstm", "gru-classic", "jordan"])
def test_the_sampling_estimate_holds_the_packed_weights(cell):
    """The stepper's packed copy of the weights, every matrix padded to whole panels (at its
    worst on narrow matrices), fits in what sampling_bytes counts for it."""
    from charrnn.kernels import cpu
    from charrnn.model import Model, ModelConfig
    from charrnn.stepper import packed_weights

    assert memory.PANEL_PADDING >= cpu.PANEL_BYTES // 4  # float32 panels on this CPU
    config = ModelConfig(vocab_size=7, cell=cell, layers=1 if cell == "jordan" else 3, hidden=5)
    assert packed_weights(Model(config)).flat.nbytes <= memory.sampling_bytes(config, 0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_training_estimate_holds_the_packed_recurrent_matrices(cell):
    """A window's packed W_h and W_h.T (every one padded to whole panels, at its worst on
    narrow matrices), with the weights, gradients, Adam's moments and the workspace, fit in
    what training_bytes counts."""
    import numpy as np

    from charrnn.model import Model, ModelConfig, Workspace

    config = ModelConfig(vocab_size=7, cell=cell, layers=3, hidden=5)
    model = Model(config)
    T, B = 4, 3
    ids = np.zeros((T, B), np.int64)
    model.forward(ids, ids)
    model.backward()
    packed = sum(p.nbytes for p in model._panels)
    assert packed >= 2 * 3 * 5 * 5 * 4  # both were packed
    ws = Workspace(config, T, B, np.float32)
    workspace = sum(a.nbytes for a in vars(ws).values())
    assert 4 * model.params.nbytes + packed + workspace <= memory.training_bytes(config, T, B)


@pytest.mark.parametrize("cell", ["gru-classic", "jordan"])
def test_cells_with_their_own_recurrent_products_pack_nothing_and_count_nothing(cell,
                                                                                 monkeypatch):
    """The classic GRU and Jordan multiply through their own kernels: training packs no W_h for
    them, and the estimate holds no room for it (wider padding of packed matrices leaves it
    as it is, where it grows a packing cell's)."""
    import numpy as np

    from charrnn.model import Model, ModelConfig

    config = ModelConfig(vocab_size=7, cell=cell, layers=1, hidden=5)
    model = Model(config)
    ids = np.zeros((4, 3), np.int64)
    model.forward(ids, ids)
    model.backward()
    assert sum(p.nbytes for p in model._panels) == 0
    packing = ModelConfig(vocab_size=7, cell="gru", layers=1, hidden=5)
    before = [memory.training_bytes(c, 4, 3) for c in (config, packing)]
    monkeypatch.setattr(memory, "PANEL_PADDING", 1000)
    after = [memory.training_bytes(c, 4, 3) for c in (config, packing)]
    assert after[0] == before[0] and after[1] > before[1]
