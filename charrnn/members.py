"""Training an ensemble's members (ensemble.py) one after another, each an ordinary run: the
first in the run directory itself, member k (from 2) in RUN_DIR/members/k, with the first's
options (its shape, stop and regularisation, as given or chosen) but --seed plus k - 1. So
member k is the model `charrnn train --seed S+k-1` with those options would train, and each
resumes as any run does.

After each member past the first reaches its limit, ENSEMBLE in the run directory is rewritten
with every finished member's best weights, and its validation loss is said. Under --minutes,
another member starts only while the time left covers the last member's: a member cut short by
the clock would pull the average down.

Who decides: sizing.choose_sizes chooses how many at most (--members); rank 0's clock decides
whether another starts, for every rank.
"""

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import checkpoint as ckpt_io
from .distributed import World
from .ensemble import ENSEMBLE, ensemble_checkpoint
from .options import TrainOptions
from .runs import record_last_run
from .schedule import FINISHED_EPOCHS, REACHED_STEPS
from .train import TrainingError
from .train_state import BudgetUsedUp, options_from_checkpoint
from .words import plural

MEMBERS_DIR = "members"


def member_dir(run_dir: Path, k: int) -> Path:
    """Member k's run directory (k from 1): the run directory itself for the first."""
    return Path(run_dir) if k == 1 else Path(run_dir) / MEMBERS_DIR / str(k)


def member_options(first: TrainOptions, k: int, minutes: float | None) -> TrainOptions:
    """Member k's options: the first member's with --seed plus k - 1, and the minutes left."""
    return dataclasses.replace(first, seed=first.seed + k - 1, members=1, minutes=minutes)


@dataclass
class Member:
    """A member to train: which, its options, and its checkpoint to go on with (None: fresh)."""
    k: int
    opts: TrainOptions
    resume: ckpt_io.Checkpoint | None = None


def resumed_member(run_dir: Path, first: ckpt_io.Checkpoint, given: dict
                   ) -> tuple[Member, TrainOptions]:
    """Where `--resume` goes on: the first member whose budget is not used up (with the
    options given now), and the first member's options. Raises BudgetUsedUp when every member
    the run trains has used its budget up: --members as given now, else as many as the first
    member's options say or as the run has begun (a resume given --members added some)."""
    first_opts = options_from_checkpoint(first, given, check_budget=False)
    if given.get("members") is None:
        begun = 1
        while (member_dir(run_dir, begun + 1) / ckpt_io.LATEST).exists():
            begun += 1
        first_opts.members = max(first_opts.members, begun)
    for k in range(1, first_opts.members + 1):
        path = member_dir(run_dir, k) / ckpt_io.LATEST
        if k > 1 and not path.exists():
            return Member(k, member_options(first_opts, k, first_opts.minutes)), first_opts
        ck = first if k == 1 else ckpt_io.load(path)
        try:
            opts = options_from_checkpoint(ck, {**given, "members": None} if k > 1 else given)
        except BudgetUsedUp:
            if k == first_opts.members:
                if k == 1:
                    raise
                raise BudgetUsedUp(f"the run has trained all its {k} members: give --members "
                                   f"{k + 1} to train one more") from None
            continue
        return Member(k, opts, ck), first_opts
    raise AssertionError("unreachable: members >= 1")


def finished(summary: dict) -> bool:
    """Whether a member's run reached its own limit (its steps or epochs), not the clock's, a
    signal's or an early stop's."""
    return summary["stopped_by"].startswith((REACHED_STEPS + " ", FINISHED_EPOCHS + " "))


def train_members(member: Member, first_opts: TrainOptions | None, *,
                  train_one: Callable[[Member], tuple[dict, TrainOptions]],
                  val_loss: Callable[[list], float | None], run_dir: Path, world: World,
                  say: Callable[[str], None],
                  should_stop: Callable[[], bool] = lambda: False) -> dict:
    """Train `member`, then the members after it that the first's options ask for
    (first_opts; None: a new run's first member, whose options are chosen as it starts), while
    each finishes and (under --minutes) the time left covers the last one's. train_one(member)
    trains one and returns its summary and options as trained; val_loss(members' checkpoints)
    is the validation loss of their ensemble, None without a validation text (rank 0 calls
    it). should_stop(): a signal came; no member starts after it. Returns the last member's
    summary (stopped_by "interrupted" after a signal)."""
    started = time.monotonic()
    while True:
        total = member.opts.members if first_opts is None else first_opts.members
        if total is not None and total > 1:
            say(f"member {member.k} of {total} (seed {member.opts.seed})")
        member_started = time.monotonic()
        summary, opts = train_one(member)
        if world.root and member.k > 1:  # `sample` with no MODEL reads the whole run
            record_last_run(run_dir)
        first_opts = first_opts or opts
        total = first_opts.members
        if not finished(summary):
            return summary
        if member.k > 1:
            _write_ensemble(run_dir, member.k, val_loss, world, say)
        if member.k == total:
            return summary
        took = time.monotonic() - member_started
        minutes = None
        if first_opts.minutes is not None and not math.isinf(first_opts.minutes):
            left = first_opts.minutes * 60 - (time.monotonic() - started)
            minutes = world.share(left / 60 if world.root else None)
            if world.share(left < took if world.root else None):
                say(f"stopped after {plural(member.k, 'member')}: the {minutes:.1f} minutes "
                    f"left would not train another (the last took {took / 60:.1f})")
                return summary
        if world.share(should_stop() if world.root else None):
            return {**summary, "stopped_by": "interrupted"}
        member = Member(member.k + 1, member_options(first_opts, member.k + 1, minutes))


def _best(directory: Path) -> Path:
    """A member's best checkpoint, else its latest."""
    best = directory / ckpt_io.BEST
    return best if best.exists() else directory / ckpt_io.LATEST


def _write_ensemble(run_dir: Path, k: int, val_loss: Callable[[list], float], world: World,
                    say: Callable[[str], None]) -> None:
    """ENSEMBLE of members 1 to k (each's best checkpoint), with their validation loss."""
    if not world.root:
        return
    members = [ckpt_io.load(_best(member_dir(run_dir, j))) for j in range(1, k + 1)]
    loss = val_loss(members)
    first = members[0].train
    train = {"options": first.get("options"), "corpus": first.get("corpus"),
             "best_val_loss": loss,
             "ensemble": {"members": [{"run_dir": str(member_dir(run_dir, j)),
                                       "step": m.train.get("step"),
                                       "best_val_loss": m.train.get("best_val_loss")}
                                      for j, m in enumerate(members, 1)]}}
    path = Path(run_dir) / ENSEMBLE
    try:
        ckpt_io.save(path, ensemble_checkpoint(members, train))
    except OSError as e:
        raise TrainingError(f"could not save {path}: {e.strerror or e}; the members' own "
                            f"checkpoints are intact") from None
    if loss is None:
        say(f"ensemble of {k} members saved in {path}")
        return
    alone = min(m.train.get("best_val_loss") or math.inf for m in members)
    say(f"ensemble of {k} members: validation loss {loss:.4f} nats (the best member alone: "
        f"{alone:.4f}); saved in {path}")
