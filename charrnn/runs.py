"""Run directories: where a training run writes, and the record of the most recent run, which
`charrnn sample` uses when no model is named."""

import fcntl
import os
from pathlib import Path

RUNS_DIR = Path("runs")
LOCK = "train.lock"


class RunLocked(Exception):
    """Another process is training into the run directory."""


def lock_run_dir(run_dir: Path):
    """Hold an exclusive lock on run_dir/train.lock for as long as the returned file is open.

    flock locks die with their process, so a lock file left by a crashed or killed run is
    simply taken over; the PID written into it only makes the refusal message useful."""
    path = Path(run_dir) / LOCK
    while True:
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            pid = f.read().strip() or "unknown"
            f.close()
            raise RunLocked(f"{run_dir} is being trained by another charrnn process (pid "
                            f"{pid}); wait for it to finish or choose another --out") from None
        if _same_file(f, path):
            break
        f.close()  # a failed run removed the file between our open and our lock: lock anew
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def _same_file(f, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(f.fileno()), os.stat(path))
    except OSError:
        return False


def make_dirs(path: Path) -> list[Path]:
    """Create the directory path and its missing parents; returns the directories it created,
    outermost first, so that a command that fails can remove them again."""
    path = Path(path)
    new = [d for d in reversed([path, *path.parents]) if not d.exists()]
    path.mkdir(parents=True, exist_ok=True)
    return new


def remove_new_dirs(new: list[Path]) -> None:
    """Remove the directories make_dirs created, innermost first, while they are empty."""
    for d in reversed(new):
        try:
            d.rmdir()
        except OSError:  # not empty (someone else's files) or gone: leave the rest
            return


def remove_stale_temporaries(run_dir: Path) -> None:
    """Checkpoint temporaries left by a process killed while saving (never the real files)."""
    for tmp in Path(run_dir).glob(".*.npz.*.tmp"):
        tmp.unlink(missing_ok=True)


def state_dir() -> Path:
    """Per-user state: $CHARRNN_STATE_DIR, else $XDG_STATE_HOME/charrnn, else ~/.local/state/charrnn."""
    if os.environ.get("CHARRNN_STATE_DIR"):
        return Path(os.environ["CHARRNN_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "charrnn"


def record_last_run(run_dir: Path) -> None:
    """Remember run_dir for `charrnn sample` without a MODEL. The path is stored as the bytes
    the file system knows it by, so a name that is not UTF-8 round-trips."""
    d = state_dir()
    tmp = d / f".last_run.{os.getpid()}"
    try:
        d.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(os.fsencode(Path(run_dir).resolve()) + b"\n")
        os.replace(tmp, d / "last_run")
    except OSError:  # a read-only home must not stop training; `sample RUN` still works
        tmp.unlink(missing_ok=True)


def last_run() -> Path | None:
    try:
        data = (state_dir() / "last_run").read_bytes().rstrip(b"\n")
    except OSError:
        return None
    return Path(os.fsdecode(data)) if data else None


def new_run_dir(corpus: Path) -> Path:
    """runs/<corpus name>, or runs/<corpus name>-2, -3, ... if taken."""
    stem = Path(corpus).stem or "run"
    candidate, n = RUNS_DIR / stem, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = RUNS_DIR / f"{stem}-{n}"
    return candidate
