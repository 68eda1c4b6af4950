"""The one place where a training run reads the clock and its validation history to decide:
each step's learning rate, whether the run stops before the step (a budget used up, a signal),
and, after a validation, whether it stops early. Nothing else in training reads the clock to
decide anything, so a run over several processes can make these decisions once and share them.

Numba-free: `charrnn train --resume` prints the schedule-change note before anything compiles.
"""

import math
import time
from dataclasses import dataclass
from typing import Callable

from .options import TrainOptions, flag

WARMUP_FRACTION, MAX_WARMUP_STEPS = 0.02, 100
# the cosine's floor, as a fraction of --lr; why 2%: BENCHMARKS.md, "The 60-minute point"
FINAL_LR_FRACTION = 0.02
PLATEAU_FACTOR = 0.5  # the cosine schedule's lr is multiplied by this per validation without gain
BUDGETS = ("max_steps", "epochs", "minutes")
# why a run stops (StepPlan.reason): members.py goes on to the next member only after one of
# OWN_ENDS (the run reached its own end), not after the clock or a signal
STEPS, EPOCHS, EARLY, MINUTES, SIGNAL = "steps", "epochs", "early", "minutes", "signal"
OWN_ENDS = (STEPS, EPOCHS, EARLY)


def scheduled_lr(opts: TrainOptions, step: int, total_steps: int | None,
                 progress: float) -> float:
    """The learning rate of step `step` (from 0) in a run that has used `progress` (0 to 1) of its
    budget (the larger of the steps and the --minutes used, so the decay ends with whichever
    budget ends first): a linear warm-up over the first 2% of the budget (at most 100 steps),
    times a cosine decay from --lr to FINAL_LR_FRACTION of it at the end of the budget."""
    if opts.lr_schedule == "constant":
        return opts.lr
    warmup = MAX_WARMUP_STEPS if total_steps is None else \
        max(1, min(MAX_WARMUP_STEPS, int(WARMUP_FRACTION * total_steps)))
    # a --minutes budget ends the warm-up at 2% of the time too: 100 steps of a 10-minute
    # 2 x 512 run would be an eighth of it
    ramp = min(1.0, max((step + 1) / warmup, progress / WARMUP_FRACTION))
    low = FINAL_LR_FRACTION * opts.lr
    decay = low + 0.5 * (opts.lr - low) * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return ramp * decay


def validation_losses(history: list[dict]) -> list[float]:
    return [h["val_loss"] for h in history if h.get("val_loss") is not None]


def validations_without_gain(history: list[dict]) -> int:
    """Validations in the whole run that did not beat every one before them."""
    best, count = math.inf, 0
    for loss in validation_losses(history):
        if loss < best:
            best = loss
        else:
            count += 1
    return count


def evals_without_improvement(history: list[dict]) -> int:
    """Validations since the best one (0 when the last was the best)."""
    vals = validation_losses(history)
    if not vals:
        return 0
    best = min(range(len(vals)), key=lambda i: (vals[i], -i))  # the last of equal minima
    return len(vals) - 1 - best


@dataclass(frozen=True)
class StepPlan:
    """What the pacer decided before a step: its learning rate, or why the run stops instead."""
    lr: float
    stop: str | None = None  # why the run stops, in words
    reason: str | None = None  # and as one of STEPS, EPOCHS, EARLY, MINUTES, SIGNAL


class Pacer:
    """Decides each step's learning rate and the stop, from the run's options, its counters,
    its validation history and (for --minutes) the time since ``start()``.

    should_stop() says whether a signal asked the run to stop (it reads no clock)."""

    def __init__(self, opts: TrainOptions, steps_per_epoch: int,
                 should_stop: Callable[[], bool] = lambda: False,
                 clock: Callable[[], float] = time.perf_counter):
        self.opts, self.steps_per_epoch = opts, steps_per_epoch
        self.should_stop, self.clock = should_stop, clock
        self.started = None  # clock() when this invocation's loop began
        self.early = None  # why validation stopped the run early (after_validation)

    def start(self) -> None:
        self.started = self.clock()

    def total_steps(self) -> int | None:
        """The step budget (--max-steps, --epochs in steps), whichever is smaller; None when
        only --minutes limits the run."""
        o = self.opts
        limits = []
        if o.max_steps is not None:
            limits.append(o.max_steps)
        if o.epochs is not None:
            limits.append(o.epochs * self.steps_per_epoch)
        return min(limits) if limits else None

    def _minutes_used(self) -> float:
        """The fraction of the --minutes budget this invocation has used (0 without one)."""
        if self.opts.minutes is None or self.started is None:
            return 0.0
        return (self.clock() - self.started) / (self.opts.minutes * 60)

    def plan(self, step: int, epoch: int, history: list[dict]) -> StepPlan:
        """The decision before step `step + 1`: stop (a budget is used up, a validation stopped
        the run early, a signal came), else its learning rate."""
        o = self.opts
        used = self._minutes_used()
        if o.max_steps is not None and step >= o.max_steps:
            return StepPlan(0.0, f"reached its step limit ({o.max_steps:,})", STEPS)
        if o.epochs is not None and epoch >= o.epochs:
            return StepPlan(0.0, f"finished {o.epochs} epochs", EPOCHS)
        if used >= 1.0:
            return StepPlan(0.0, f"used the --minutes {o.minutes:g} budget", MINUTES)
        if self.early:
            return StepPlan(0.0, self.early, EARLY)
        if self.should_stop():
            return StepPlan(0.0, "interrupted", SIGNAL)
        return StepPlan(self.learning_rate(step, history, used))

    def learning_rate(self, step: int, history: list[dict], minutes_used: float | None = None
                      ) -> float:
        """Step `step`'s learning rate under --lr-schedule (see scheduled_lr); under cosine, also
        halved for every validation so far that was not a new best."""
        total = self.total_steps()
        progress = step / total if total else 0.0
        used = self._minutes_used() if minutes_used is None else minutes_used
        lr = scheduled_lr(self.opts, step, total, max(progress, used))
        if self.opts.lr_schedule == "cosine":
            # A long budget keeps the cosine near its peak for long, and there a 2 x 512 model's
            # validation loss rose from the third epoch on (60-minute run, BENCHMARKS.md).
            lr *= PLATEAU_FACTOR ** validations_without_gain(history)
        return lr

    def after_validation(self, history: list[dict]) -> None:
        """After a validation of the --eval-every cadence: whether the run stops early
        (--patience), said by the next plan()."""
        patience = self.opts.patience
        if patience and evals_without_improvement(history) >= patience:
            self.early = f"no better validation loss in {patience} evaluations (early stop)"


def schedule_change(saved: dict, opts: TrainOptions) -> str | None:
    """The line a resumed run prints when its new budget moves the cosine schedule's horizon
    (the learning rate decays to the end of the budget): from there on it is not the run a
    straight one with that budget would have been. None when nothing moved."""
    changed = [f"{flag(name)} {_shown(saved.get(name))} -> {_shown(getattr(opts, name))}"
               for name in BUDGETS if saved.get(name) != getattr(opts, name)]
    if opts.lr_schedule != "cosine" or not changed:
        return None
    return (f"note: the budget changed ({', '.join(changed)}): the cosine schedule now decays "
            f"to the new end, so the steps from here differ from a straight run's with either "
            f"budget (--lr-schedule constant resumes exactly)")


def _shown(value) -> str:
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
