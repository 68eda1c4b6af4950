"""Checkpoints: one self-contained .npz (model config, vocabulary, weights, optimizer state,
training progress, RNG state) with its JSON metadata stored inside as a uint8 array.

Saved atomically (temporary file, fsync, os.replace), so a crash never leaves a half-written
checkpoint under the real name. Loaded with allow_pickle=False and validated: every problem is
a CheckpointError with one clear line. The format is described in docs/checkpoint.md.
"""

import json
import os
import zipfile
import zlib
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import numpy as np

FORMAT = "charrnn-checkpoint"
VERSION = 1
LATEST = "latest.npz"
BEST = "best.npz"
ENSEMBLE = "ensemble.npz"  # a run of several members: all of them (ensemble.py)
MEMBERS = "ensemble.members"  # an ensemble's (K - 1, P) weights of the members after the first


class CheckpointError(Exception):
    """A checkpoint that cannot be used, as one line for the user."""


@dataclass
class Checkpoint:
    """config: ModelConfig fields; vocab: (V,) uint32 code points; params: the flat buffer;
    arrays: further named arrays (optimizer moments, carried state); train: JSON-able progress."""

    config: dict
    vocab: np.ndarray
    params: np.ndarray
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    train: dict = field(default_factory=dict)


def _crc(a: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(a).view(np.uint8).reshape(-1))


def save(path: Path, ckpt: Checkpoint) -> None:
    """Write ckpt to path atomically: a reader sees the old file or the new one, never a mix."""
    path = Path(path)
    arrays = {"vocab": ckpt.vocab.astype(np.uint32), "params": ckpt.params, **ckpt.arrays}
    meta = {
        "format": FORMAT, "version": VERSION, "config": ckpt.config, "train": ckpt.train,
        "arrays": {k: {"shape": list(a.shape), "dtype": a.dtype.str, "crc32": _crc(a)}
                   for k, a in arrays.items()},
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(path: Path) -> Checkpoint:
    """Read and validate a checkpoint; raises CheckpointError naming the problem."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    _check_zip(path)
    try:
        meta, arrays = _read(path)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged file can raise almost anything
        raise CheckpointError(f"{path} is not a readable charrnn checkpoint "
                              f"(truncated or corrupt?): {_short(e)}") from None
    ckpt = Checkpoint(config=meta.get("config"), vocab=arrays.pop("vocab", None),
                      params=arrays.pop("params", None), arrays=arrays,
                      train=meta.get("train") or {})
    _validate(path, ckpt)
    return ckpt


ZIP_MAGIC = b"PK\x03\x04"  # the first bytes of an .npz (a zip archive)


def _check_zip(path: Path) -> None:
    """Refuse what is not a whole zip archive before np.load sees it: np.load would try it as a
    pickle and advise unpickling, never to be done. A file that starts like a zip but has no
    central directory at its end is an .npz cut short (an interrupted copy) or damaged."""
    try:
        with open(path, "rb") as f:
            magic = f.read(len(ZIP_MAGIC))
            is_zip = magic == ZIP_MAGIC and zipfile.is_zipfile(f)
    except OSError as e:
        raise CheckpointError(f"{path}: {e.strerror or e}") from None
    if not magic:
        raise CheckpointError(f"{path} is empty, not a charrnn checkpoint")
    if magic != ZIP_MAGIC:
        raise CheckpointError(f"{path} is not a charrnn checkpoint (not an .npz file)")
    if not is_zip:
        raise CheckpointError(f"{path} is a truncated or damaged checkpoint (the end of its zip "
                              "archive is missing or corrupt)")


def _read(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The metadata and arrays, each checked against the metadata's shape, dtype and CRC."""
    with np.load(path, allow_pickle=False) as npz:
        if "meta" not in npz.files:
            raise CheckpointError(f"{path} is not a charrnn checkpoint (no metadata)")
        meta = json.loads(npz["meta"].tobytes().decode())
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a charrnn checkpoint")
        version = meta.get("version")
        if type(version) is not int or version < 1:
            raise CheckpointError(f"{path} is not a charrnn checkpoint (no format version)")
        if version > VERSION:
            raise CheckpointError(f"{path} was written by a newer charrnn (format version "
                                  f"{version}; this one reads up to {VERSION}): upgrade charrnn")
        specs = meta.get("arrays")
        if not isinstance(specs, dict) or not all(isinstance(v, dict) for v in specs.values()):
            raise CheckpointError(f"{path}: malformed array list in the metadata")
        from .train_state import readable_meta  # the training schema's owner
        if not readable_meta(meta.get("train", {})):
            raise CheckpointError(f"{path}: malformed training state in the metadata")
        arrays = {name: npz[name] for name in specs}
    for name, a in arrays.items():
        spec = specs[name]
        if list(a.shape) != spec.get("shape") or a.dtype.str != spec.get("dtype"):
            raise CheckpointError(f"{path}: array {name!r} does not match its metadata")
        if _crc(a) != spec.get("crc32"):
            raise CheckpointError(f"{path}: array {name!r} is corrupt (checksum mismatch)")
    return meta, arrays


def _short(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _validate(path: Path, ckpt: Checkpoint) -> None:
    """Shapes and dtypes against the config: the arrays must make the model the config says."""
    from .model import ModelConfig, ParamLayout  # numba is needed only once a file is valid

    if ckpt.vocab is None or ckpt.params is None or not isinstance(ckpt.config, dict):
        raise CheckpointError(f"{path}: checkpoint lacks its config, vocabulary or weights")
    keys_problem = _config_keys_problem(ckpt.config, ModelConfig)
    if keys_problem:
        raise CheckpointError(f"{path}: bad model config in checkpoint: {keys_problem}")
    try:
        config = ModelConfig(**ckpt.config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad model config in checkpoint: {_short(e)}") from None
    v = ckpt.vocab
    if v.dtype != np.uint32 or v.ndim != 1 or len(v) != config.vocab_size:
        raise CheckpointError(f"{path}: vocabulary does not match the model config")
    surrogates = (v >= 0xD800) & (v <= 0xDFFF)
    if len(v) and (np.any(np.diff(v.astype(np.int64)) <= 0) or v[-1] > 0x10FFFF
                   or surrogates.any()):
        raise CheckpointError(f"{path}: vocabulary is not a sorted set of Unicode characters")
    size = ParamLayout(config).size
    if ckpt.params.dtype not in (np.float32, np.float64) or ckpt.params.shape != (size,):
        raise CheckpointError(f"{path}: weights have shape {ckpt.params.shape} and dtype "
                              f"{ckpt.params.dtype}; the config needs ({size},) floats")
    if not np.all(np.isfinite(ckpt.params)):
        raise CheckpointError(f"{path}: weights contain NaN or infinity")
    members = ckpt.arrays.get(MEMBERS)
    if members is not None and (members.dtype != ckpt.params.dtype or members.ndim != 2
                                or members.shape[1] != size or not len(members)):
        raise CheckpointError(f"{path}: the ensemble's members have shape {members.shape} and "
                              f"dtype {members.dtype}; the config needs (K, {size}) "
                              f"{ckpt.params.dtype}")
    if members is not None and not np.all(np.isfinite(members)):
        raise CheckpointError(f"{path}: the ensemble's weights contain NaN or infinity")


def _config_keys_problem(config: dict, cls) -> str | None:
    """Keys of config that the dataclass cls does not have, or required ones it lacks, in words:
    cls(**config) would say so in Python's terms ("__init__() got an unexpected keyword ...")."""
    unknown = sorted(set(config) - {f.name for f in fields(cls)})
    missing = [f.name for f in fields(cls) if f.name not in config
               and f.default is MISSING and f.default_factory is MISSING]
    for what, keys in (("unknown", unknown), ("missing", missing)):
        if keys:
            return f"{what} key{'s' if len(keys) > 1 else ''} {', '.join(map(repr, keys))}"
    return None


def resolve(model: Path, ensemble: bool = True) -> Path:
    """A checkpoint file as given, or a run directory's ensemble of its members (a run of
    several; not without `ensemble`), else its best, else its latest checkpoint."""
    model = Path(model)
    if model.is_dir():
        for name in (ENSEMBLE, BEST, LATEST)[0 if ensemble else 1:]:
            if (model / name).exists():
                return model / name
        raise CheckpointError(f"{model} holds no checkpoint ({BEST} or {LATEST})")
    return model
