"""Whether the arrays a command is about to make fit in the memory this process may use, checked
before they are made: `--hidden 100000` is one clear line, not numpy's MemoryError after the
run directory exists. The estimates count the large arrays only, so they err on the side of
letting a run start."""

import os
import resource
from pathlib import Path

from .model import ModelConfig, ParamLayout

SAMPLE_CHUNK = 256  # characters per sampling call (stepper.CHUNK): its draws and output ids
# Needs up to this much are taken to fit without reading the system's figures: a preview, a
# sample or a bench repeat asks every time, and no machine that runs charrnn lacks this much.
ALWAYS_FITS = 64 << 20


class NotEnoughMemory(Exception):
    """The arrays a command needs do not fit, as one line for the user."""


def training_bytes(config: ModelConfig, T: int, B: int, itemsize: int = 4, *,
                   averaged: bool = False, weight_drop: bool = False) -> int:
    """The weights, their gradients and Adam's two moments (and, averaged, the running average
    and its step: averaging.py), the recurrent matrices and their transposes packed for a
    window (Model._packed_recurrent), one (T, B) window's workspace (model.Workspace) and
    dropout masks, and with weight drop the recurrent matrices' mask and saved copy
    (weight_drop.py)."""
    L, H, V, W = config.layers, config.hidden, config.vocab_size, config.state_width
    GH = config.gates * H
    workspace = (2 * L * (T + 1) * B * W + L * T * B * config.spec.stored_acts * H
                 + 3 * T * B * GH + 2 * T * B * H + 3 * T * B * V)
    masks = L * T * B * H if config.dropout else 0
    layout = ParamLayout(config)
    copies = 6 if averaged else 4
    recurrent = sum(w.stop - w.start for w in layout.recurrent_slices()) if weight_drop else 0
    packed = (L * (H * (GH + PANEL_PADDING) + GH * (H + PANEL_PADDING))
              if config.spec.packs_recurrent else 0)
    return itemsize * (copies * layout.size + packed + workspace + masks + 2 * recurrent)


PANEL_PADDING = 32  # columns a packed matrix may gain, at most (cpu.matmul_packed's panels)


def sampling_bytes(config: ModelConfig, B: int, itemsize: int = 4, members: int = 1) -> int:
    """B streams' state and scratch (stepper.CpuStepper), a chunk's draws and ids, and the
    stepper's packed copy of the weights (each multiplied matrix, H rows but layer 0's input,
    padded to whole panels), and its stacked copy of an ensemble's members' weights: each
    member has its own state, logits and packed weights. A single model's streams may also run
    in halves (halves.py): their state twice more, the two threads' scratch (as much as one
    thread's in all), logits, and gru-ln's whole input projections."""
    L, H, V, W = config.layers, config.hidden, config.vocab_size, config.state_width
    GH = config.gates * H
    scratch = 2 * GH + config.spec.stored_acts * H + 2 * H
    per_stream = members * (2 * L * W + V) + scratch
    if members == 1:
        per_stream += 2 * L * H + scratch + 2 * H + V + (3 * GH if config.cell == "gru-ln" else 0)
    size = ParamLayout(config).size
    packed = members * (size + 2 * L * H * PANEL_PADDING) + (size * members if members > 1
                                                             else 0)
    return itemsize * (B * per_stream + packed) + 12 * SAMPLE_CHUNK * B


def available_bytes() -> int | None:
    """The least of: the system's available memory, the cgroup's room, and the room left under
    this process's address-space and data limits. None where none of them can be read."""
    known = []
    meminfo = _read_kib("/proc/meminfo", "MemAvailable:")
    if meminfo is not None:
        known.append(meminfo)
    cgroup = _cgroup_room()
    if cgroup is not None:
        known.append(cgroup)
    for limit, used in ((resource.RLIMIT_AS, "VmSize:"), (resource.RLIMIT_DATA, "VmData:")):
        soft = resource.getrlimit(limit)[0]
        if soft != resource.RLIM_INFINITY:
            known.append(max(0, soft - (_read_kib("/proc/self/status", used) or 0)))
    if not known:
        try:
            known.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            return None
    return min(known)


def _read_kib(path: str, key: str) -> int | None:
    """A 'key: N kB' line of a /proc file, in bytes."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room(base: Path = Path("/sys/fs/cgroup")) -> int | None:
    """What this process's cgroup (v2) can still give, when it has a limit: memory.max less
    memory.current, whose page cache the kernel reclaims before it refuses memory (the inactive
    file pages of memory.stat; a memory-mapped corpus and written checkpoints fill it)."""
    try:
        limit = (base / "memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int((base / "memory.current").read_text())
    except (OSError, ValueError):
        return None
    return max(0, int(limit) - used + (_stat_bytes(base / "memory.stat", "inactive_file") or 0))


def _stat_bytes(path: Path, key: str) -> int | None:
    """A 'key N' line of a cgroup stat file (bytes)."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return None


def size_text(n: int) -> str:
    if n >= 2**30:
        return f"{n / 2**30:,.1f} GiB"
    return f"{n / 2**20:,.0f} MiB"


def check_fits(needed: int, what: str, smaller: str) -> None:
    """Raise NotEnoughMemory unless `needed` bytes fit; `what` needs them, `smaller` says which
    options make it smaller."""
    if needed <= ALWAYS_FITS:
        return
    room = available_bytes()
    if room is not None and needed > room:
        raise NotEnoughMemory(f"{what} needs about {size_text(needed)} of memory and "
                              f"{size_text(room)} is available: choose a smaller {smaller}")
