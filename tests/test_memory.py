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
