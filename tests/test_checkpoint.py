"""Checkpoints round-trip, and anything wrong with a file is a CheckpointError, never a crash or
a pickle load."""

import io
import json
import zipfile

import numpy as np
import pytest

from charrnn import checkpoint as ckpt_io
from charrnn.checkpoint import Checkpoint, CheckpointError
from charrnn.model import ModelConfig, ParamLayout


def make(cell="lstm", V=5, H=3, L=2):
    config = ModelConfig(vocab_size=V, cell=cell, layers=L, hidden=H)
    size = ParamLayout(config).size
    rng = np.random.default_rng(0)
    return Checkpoint(config=config.to_dict(),
                      vocab=np.array([10, 32, 97, 98, 0x1F600][:V], np.uint32),
                      params=rng.normal(size=size).astype(np.float32),
                      arrays={"adam.m": rng.normal(size=size).astype(np.float32),
                              "state.h": np.zeros((L, 2, H), np.float32)},
                      train={"step": 7, "rng": np.random.default_rng(1).bit_generator.state})


def test_round_trip(tmp_path):
    ck = make()
    path = tmp_path / "a.npz"
    ckpt_io.save(path, ck)
    back = ckpt_io.load(path)
    assert back.config == ck.config
    assert np.array_equal(back.vocab, ck.vocab) and np.array_equal(back.params, ck.params)
    assert np.array_equal(back.arrays["adam.m"], ck.arrays["adam.m"])
    assert back.train["step"] == 7
    assert back.train["rng"] == ck.train["rng"]  # 128-bit PCG64 state survives JSON
    assert [p.name for p in tmp_path.iterdir()] == ["a.npz"]  # no temporary left behind


def test_save_replaces_atomically(tmp_path, monkeypatch):
    path = tmp_path / "a.npz"
    ckpt_io.save(path, make())
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_io.np, "savez", fail)
    with pytest.raises(OSError):
        ckpt_io.save(path, make(H=4))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.npz"]


def rewrite(path, mutate):
    """Load the members of an npz, let mutate change the dict, write it back."""
    with np.load(path, allow_pickle=False) as z:
        members = {k: z[k] for k in z.files}
    mutate(members)
    with open(path, "wb") as f:
        np.savez(f, **members)


def set_meta(members, change):
    meta = json.loads(members["meta"].tobytes())
    change(meta)
    members["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "model.npz"
    ckpt_io.save(path, make())
    return path


@pytest.mark.parametrize("damage,message", [
    (lambda m: set_meta(m, lambda d: d.update(version=99)), "newer charrnn"),
    (lambda m: set_meta(m, lambda d: d.update(format="other")), "not a charrnn checkpoint"),
    (lambda m: set_meta(m, lambda d: d["config"].update(hidden=4)), "weights have shape"),
    (lambda m: set_meta(m, lambda d: d["config"].update(cell="transformer")), "bad model config"),
    (lambda m: m.update(params=m["params"][:-1]), "does not match its metadata"),
    (lambda m: m.update(params=m["params"] + 1), "checksum"),
    (lambda m: m.pop("meta"), "no metadata"),
    (lambda m: set_meta(m, lambda d: d.pop("version")), "no format version"),
    (lambda m: set_meta(m, lambda d: d["config"].update(hidden=3.0)), "bad model config"),
    (lambda m: set_meta(m, lambda d: d.update(train=[1])), "malformed training state"),
    (lambda m: set_meta(m, lambda d: d["train"].update(history=[{"step": [1]}])),
     "malformed training state"),
    (lambda m: set_meta(m, lambda d: d["train"].update(best_val_loss="low")),
     "malformed training state"),
    (lambda m: set_meta(m, lambda d: d.update(arrays=[])), "malformed array list"),
])
def test_damaged_checkpoints_are_refused(saved, damage, message):
    rewrite(saved, damage)
    with pytest.raises(CheckpointError, match=message):
        ckpt_io.load(saved)


def test_surrogate_code_points_are_refused(tmp_path):
    ck = make()
    ck.vocab = np.array([10, 32, 97, 0xD800, 0xDC00], np.uint32)  # lone surrogates: not text
    ckpt_io.save(tmp_path / "s.npz", ck)
    with pytest.raises(CheckpointError, match="Unicode characters"):
        ckpt_io.load(tmp_path / "s.npz")


def test_object_arrays_are_never_unpickled(saved):
    class Boom:
        def __reduce__(self):
            return (print, ("pickle ran",))

    def add_object(members):
        members["params"] = np.array([Boom()], dtype=object)

    buf = io.BytesIO()
    with np.load(saved, allow_pickle=False) as z:
        members = {k: z[k] for k in z.files}
    add_object(members)
    np.savez(buf, **members)  # savez pickles the object array
    saved.write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="not a readable"):
        ckpt_io.load(saved)


def test_truncated_and_flipped_files(saved):
    data = saved.read_bytes()
    for cut in (0, 10, len(data) // 2, len(data) - 1):
        saved.write_bytes(data[:cut])
        with pytest.raises(CheckpointError):
            ckpt_io.load(saved)
    rng = np.random.default_rng(0)
    for _ in range(30):
        flipped = bytearray(data)
        i = int(rng.integers(len(data)))
        flipped[i] ^= 1 << int(rng.integers(8))
        saved.write_bytes(bytes(flipped))
        try:
            back = ckpt_io.load(saved)
        except CheckpointError:
            continue
        # a flip that loads cleanly can only have hit bytes that carry no data
        assert np.array_equal(back.params, make().params)


@pytest.mark.parametrize("keep", [lambda n: 10, lambda n: n // 2, lambda n: n - 1])
def test_truncated_checkpoint_is_called_truncated(saved, keep):
    data = saved.read_bytes()  # starts with the zip magic PK\x03\x04; its directory is at the end
    saved.write_bytes(data[:keep(len(data))])
    with pytest.raises(CheckpointError) as e:
        ckpt_io.load(saved)
    assert str(e.value) == (f"{saved} is a truncated or damaged checkpoint (the end of its zip "
                            "archive is missing or corrupt)")
    assert "pickle" not in str(e.value)


def test_empty_checkpoint_is_called_empty(saved):
    saved.write_bytes(b"")
    with pytest.raises(CheckpointError) as e:
        ckpt_io.load(saved)
    assert str(e.value) == f"{saved} is empty, not a charrnn checkpoint"


@pytest.mark.parametrize("change,problem", [
    (lambda c: c.update(foo=1), "unknown key 'foo'"),
    (lambda c: c.update(foo=1, bar=2), "unknown keys 'bar', 'foo'"),
    (lambda c: c.pop("vocab_size"), "missing key 'vocab_size'"),
])
def test_config_keys_are_named_in_words(saved, change, problem):
    rewrite(saved, lambda m: set_meta(m, lambda d: change(d["config"])))
    with pytest.raises(CheckpointError) as e:
        ckpt_io.load(saved)
    assert str(e.value) == f"{saved}: bad model config in checkpoint: {problem}"


def test_not_a_zip_and_missing_and_directory(tmp_path):
    (tmp_path / "text.npz").write_text("hello")
    for path, message in [(tmp_path / "text.npz", "not an .npz file"),
                          (tmp_path / "missing.npz", "no such checkpoint"),
                          (tmp_path, "is a directory")]:
        with pytest.raises(CheckpointError, match=message):
            ckpt_io.load(path)


def test_resolve_prefers_best_in_a_run_directory(tmp_path):
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        ckpt_io.resolve(tmp_path)
    ckpt_io.save(tmp_path / "latest.npz", make())
    assert ckpt_io.resolve(tmp_path).name == "latest.npz"
    ckpt_io.save(tmp_path / "best.npz", make())
    assert ckpt_io.resolve(tmp_path).name == "best.npz"
    assert zipfile.is_zipfile(ckpt_io.resolve(tmp_path))
