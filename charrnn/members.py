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
from .ensemble import ENSEMBLE, ensemble_checkpoint, member_params
from .options import TrainOptions
from .schedule import OWN_ENDS, SIGNAL
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


def member_as_given(run_dir: Path, k: int, first_opts: TrainOptions, given: dict,
                    minutes: float | None) -> Member | None:
    """Member k as this invocation trains it, with the options given now (the seed given is
    member 1's) and, past the first, the minutes left: from its checkpoint, or fresh where it
    has none; None where its budget is used up."""
    path = member_dir(run_dir, k) / ckpt_io.LATEST
    if not path.exists():
        return Member(k, member_options(first_opts, k, minutes))
    given = {**given, "members": None}
    if given.get("seed") is not None:
        given["seed"] += k - 1
    ck = ckpt_io.load(path)
    try:
        opts = options_from_checkpoint(ck, given)
    except BudgetUsedUp:
        return None
    return Member(k, dataclasses.replace(opts, minutes=minutes), ck)


def begun(run_dir: Path) -> int:
    """How many members the run has begun (each one's directory holds a checkpoint)."""
    k = 1
    while (member_dir(run_dir, k + 1) / ckpt_io.LATEST).exists():
        k += 1
    return k


def resumed_member(run_dir: Path, first: ckpt_io.Checkpoint, given: dict
                   ) -> tuple[Member, TrainOptions]:
    """Where `--resume` goes on, and the first member's options: the first member whose budget
    is not used up (with the options given now) of as many as the run trains (--members as
    given now, else as the first member's options say or the run has begun). Where every one
    has used its budget up but the ensemble file is missing or older than a member (its
    writing failed), the last member, to write it again; else raises BudgetUsedUp."""
    first_opts = options_from_checkpoint(first, given, check_budget=False)
    most = max(first_opts.members, begun(run_dir))
    if given.get("members") is None:
        first_opts.members = most
    try:
        member = Member(1, options_from_checkpoint(first, given), first)
    except BudgetUsedUp:
        if most == 1:
            raise
        member = None
    for k in range(2, first_opts.members + 1):
        if member is not None:
            break
        member = member_as_given(run_dir, k, first_opts, given, first_opts.minutes)
    if member is not None:
        return member, first_opts
    if not ensemble_is_current(run_dir, most):
        ck = ckpt_io.load(member_dir(run_dir, most) / ckpt_io.LATEST)
        first_opts.members = most
        return Member(most, options_from_checkpoint(ck, {}, check_budget=False), ck), \
            first_opts
    raise BudgetUsedUp(f"the run has trained all its {most} members: give --members "
                       f"{most + 1} to train one more")


def ensemble_is_current(run_dir: Path, n: int) -> bool:
    """Whether the run's ENSEMBLE holds its n members as they stand (written after each)."""
    path = Path(run_dir) / ENSEMBLE
    if not path.exists():
        return False
    written = path.stat().st_mtime_ns
    members = [_best(member_dir(run_dir, k)) for k in range(1, n + 1)]
    return (all(m.stat().st_mtime_ns <= written for m in members)
            and len(member_params(ckpt_io.load(path))) == n)


def finished(summary: dict) -> bool:
    """Whether a member's run reached its own end: its steps or epochs, or an early stop (not
    the clock or a signal)."""
    return summary["stop_reason"] in OWN_ENDS


def train_members(member: Member, first_opts: TrainOptions | None, given: dict, *,
                  train_one: Callable[[Member], tuple[dict, TrainOptions]],
                  val_loss: Callable[[list], float | None], run_dir: Path, world: World,
                  say: Callable[[str], None],
                  clock: Callable[[], float] = time.monotonic) -> dict:
    """Train `member`, then the members after it that the first's options ask for
    (first_opts; None: a new run's first member, whose options are chosen as it starts), while
    each finishes and (under --minutes) the time left covers the last one's; given: the
    options given now. train_one(member) trains one and returns its summary and options as
    trained; val_loss(members' checkpoints) is the validation loss of their ensemble, None
    without a validation text (rank 0 calls it). Returns the last member's summary."""
    started = clock()
    while True:
        total = member.opts.members if first_opts is None else first_opts.members
        if total is not None and total > 1:
            say(f"member {member.k} of {total} (seed {member.opts.seed})")
        member_started = clock()
        summary, opts = train_one(member)
        first_opts = first_opts or opts
        total = first_opts.members
        if not finished(summary):
            if total > 1 and summary["stop_reason"] != SIGNAL:
                say(f"member {member.k} ended before its limit ({summary['stopped_by']}); the "
                    f"ensemble holds the members before it (--resume goes on with it)")
            return summary
        if member.k > 1:
            _write_ensemble(run_dir, member.k, val_loss, world, say)
        took = clock() - member_started
        minutes = None
        if first_opts.minutes is not None and not math.isinf(first_opts.minutes):
            left = first_opts.minutes * 60 - (clock() - started)
            minutes = world.share(left / 60 if world.root else None)
        later = None
        for k in range(member.k + 1, total + 1):  # (one already finished is passed over)
            later = member_as_given(run_dir, k, first_opts, given, minutes)  # (every rank's
            if later is not None:  # own, as each reads the checkpoint it resumes)
                break
        if later is None:
            return summary
        if minutes is not None and minutes * 60 < took:
            say(f"stopped after {plural(member.k, 'member')}: the {minutes:.1f} minutes left "
                f"would not train another (the last took {took / 60:.1f}; --resume trains "
                f"it)")
            return summary
        member = later


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
             "step": first.get("step"), "epoch": first.get("epoch"), "best_val_loss": loss,
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
