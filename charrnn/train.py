"""The training loop: B contiguous streams, windows of T characters, hidden state carried between
windows (truncated BPTT), Adam with global-norm clipping, periodic validation, checkpoints and
metrics.jsonl. It never prints: it reports through a Reporter, so the CLI decides what is shown.

Everything that decides the next step lives in the checkpoint (weights, optimizer moments, RNG
state, data position, carried state, the running loss sum), so a resumed run continues exactly.
"""

import functools
import json
import math
import os
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, fields
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from . import checkpoint as ckpt_io
from . import memory, sizing
from .batches import stream_matrix, window, windows
from .model import Model, ModelConfig
from .optim import Adam, clip_grad_norm
from .options import DEFAULT_EVAL_EVERY, TrainOptions, flag
from .runs import (LOCK, lock_run_dir, make_dirs, record_last_run, remove_new_dirs,
                   remove_stale_temporaries)
from .sample import SampleOptions, generate
from .tokenizer import CorpusError, Vocab, read_corpus, split
from .words import plural

METRICS = "metrics.jsonl"
CORPUS_IDS = "corpus.ids"  # the encoded corpus of a large text (tokenizer.read_corpus)
# what a run writes besides its checkpoints, removed in this order (the lock last) when it
# fails before saving one
RUN_FILES = (METRICS, CORPUS_IDS, CORPUS_IDS + ".tmp", LOCK)
MAX_EVAL_CHARS = 500_000  # validation reads at most this much of the held-out text


class TrainingError(Exception):
    """Training cannot go on; one line for the user. What was saved stays as it was."""


SPEED_PROBE_STEPS = 25  # time steps of the window timed to choose the model's width
WARMUP_FRACTION, MAX_WARMUP_STEPS = 0.02, 100
# 10-minute tinyshakespeare (GRU 2 x 512, 706 steps): 1.442 nats/char against 1.451 with 0.1
FINAL_LR_FRACTION = 0.02
PLATEAU_FACTOR = 0.5  # the cosine schedule's lr is multiplied by this per validation without gain


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


# options that shape the model or the data stream: a resumed run must keep them
FIXED_ON_RESUME = ("cell", "layers", "hidden", "dropout", "seq_len", "batch_size", "val_frac",
                   "seed")


class Reporter(Protocol):
    def start(self, info: dict) -> None: ...
    def step(self, metrics: dict) -> None: ...
    def evaluated(self, metrics: dict, preview: str) -> None: ...
    def message(self, text: str) -> None: ...
    def finish(self, summary: dict) -> None: ...


def fit_sizes(n_train: int, batch_size: int, seq_len: int) -> tuple[int, int, list[str]]:
    """Batch size and window length that the training text can fill, shrunk if needed, with
    the warnings to show. Needs at least 2 characters (one input, one target)."""
    warnings = []
    B, T = batch_size, seq_len
    if n_train < B * (T + 1):
        B = max(1, n_train // (T + 1))
        if B == 1 and n_train < T + 1:
            T = n_train - 1
        warnings.append(f"the training text ({n_train} characters) is too small for "
                        f"--batch-size {batch_size} --seq-len {seq_len}; using --batch-size {B} "
                        f"--seq-len {T}")
    return B, T, warnings


def evaluate(model: Model, ids: np.ndarray, batch_size: int, seq_len: int,
             max_chars: int | None = None) -> float:
    """Mean loss (nats/char) over ids (the first max_chars of them, if given), read as up to
    batch_size streams with state carried."""
    ids = ids[:max_chars]
    B = max(1, min(batch_size, len(ids) // (seq_len + 1)))
    h, c = model.zero_state(B)
    total = count = 0.0
    for x, y in windows(stream_matrix(ids, B), seq_len):
        total += model.forward(x, y, h, c) * x.size
        count += x.size
        h, c = model.final_state()
    return total / count


class Run:
    """One training run: the corpus, model, optimizer and where the stream stands."""

    def __init__(self, corpus: Path, run_dir: Path, opts: TrainOptions,
                 resume: ckpt_io.Checkpoint | None = None, encoding="utf-8", errors="strict",
                 device: str = "cpu", compiling: AbstractContextManager = nullcontext()):
        self.corpus, self.run_dir = Path(corpus), Path(run_dir)
        self.device = device
        self.gpu = None  # a DeviceTrainer when training on CUDA
        self._pulled_at = None  # the step whose GPU state the host copies hold
        self._lock = None
        self._new_dirs = make_dirs(self.run_dir)
        self._old_files = {p.name for p in self.run_dir.iterdir()}
        try:
            self._lock = lock_run_dir(self.run_dir)
            remove_stale_temporaries(self.run_dir)
            train_ids = self._load_corpus(opts, resume, encoding, errors)
            with compiling:  # a width chosen by timing a step compiles the kernels first
                self._build(train_ids, opts, resume)
            if device == "cuda":
                from .cuda.train import DeviceTrainer
                self.gpu = DeviceTrainer(self.model, self.optimizer, self.h, self.c)
        except BaseException:
            self.abandon()
            raise

    def abandon(self) -> None:
        """Release the run directory after a failure. A run that saved no checkpoint leaves
        nothing behind: the files and directories it made are removed (never one that was
        there before), so a bad option or corpus does not number the next run -2. A run that
        found the directory locked by another trainer touches nothing of it."""
        if self._lock is None:
            return
        saved = any((self.run_dir / name).exists() for name in (ckpt_io.LATEST, ckpt_io.BEST))
        if not saved:
            # removed while the lock is held, the lock file last: a trainer that opened it
            # meanwhile finds it gone once it has the lock, and opens a new one
            for name in RUN_FILES:
                if name not in self._old_files:
                    (self.run_dir / name).unlink(missing_ok=True)
        self.release()
        if not saved:
            remove_new_dirs(self._new_dirs)

    def _load_corpus(self, opts, resume, encoding, errors) -> np.ndarray:
        """Read and split the corpus (with the resumed run's vocabulary); returns the training
        ids."""
        vocab = Vocab(resume.vocab) if resume is not None else None
        self.vocab, ids = read_corpus(self.corpus, encoding=encoding, errors=errors,
                                      vocab=vocab, workdir=self.run_dir)
        self.n_chars = len(ids)
        train_ids, self.val_ids = split(ids, opts.val_frac)
        if len(train_ids) < 2:
            raise CorpusError(f"{self.corpus} is too small to train on: "
                              f"{plural(len(ids), 'character')}, of which {len(train_ids)} "
                              f"remain for training after --val-frac {opts.val_frac}; at least "
                              f"2 are needed")
        if resume is not None:
            saved = (resume.train.get("corpus") or {}).get("chars")
            if saved != self.n_chars:
                raise ckpt_io.CheckpointError(
                    f"the run was trained on a text of {saved} characters; {self.corpus} has "
                    f"{self.n_chars}: resume with the same corpus")
        return train_ids

    def _build(self, train_ids: np.ndarray, opts: TrainOptions, resume) -> None:
        """Streams, model, optimizer and RNG: fresh, or as the resumed checkpoint left them."""
        B, T, self.warnings = fit_sizes(len(train_ids), opts.batch_size, opts.seq_len)
        if resume is None:
            opts.batch_size, opts.seq_len = B, T
        self.opts = opts
        self.streams = stream_matrix(train_ids, opts.batch_size)  # (S, B)
        if opts.eval_every is None:  # a small corpus is validated at least once an epoch
            opts.eval_every = min(DEFAULT_EVAL_EVERY, self.steps_per_epoch)
        self.notes = []
        if resume is None:  # a resumed run keeps the sizes and limits it was given or chose
            self._size(len(train_ids))
        config = ModelConfig(vocab_size=len(self.vocab), cell=opts.cell, layers=opts.layers,
                             hidden=opts.hidden, dropout=opts.dropout)
        self._check_memory(config)
        self.model = Model(config, seed=opts.seed)
        self.optimizer = Adam(self.model.params.size, lr=opts.lr)
        self.rng = np.random.default_rng(opts.seed)
        self.h, self.c = self.model.zero_state(opts.batch_size)
        self.step = self.epoch = self.position = 0
        self.elapsed = 0.0
        self.best_val, self.best_step = math.inf, None  # the best validation ever made
        self.loss_sum, self.loss_count = 0.0, 0
        self.history: list[dict] = []
        self.started = None  # perf_counter() when this invocation's loop began (--minutes)
        self._warm = False
        if resume is not None:
            self._restore(resume)

    def _size(self, n_train: int) -> None:
        """The width, the dropout and, for a --minutes run without dropout, the step limit, where
        the options leave them to be chosen from the budget (sizing.py); said in self.notes."""
        o = self.opts
        budget = self._budget(n_train)
        if o.hidden is None:
            o.hidden = self._choose_hidden(n_train, budget)
        time_alone = o.minutes is not None and o.epochs is None and o.max_steps is None
        if time_alone and not o.dropout:
            self._stop_where_it_stops_learning(budget(o.hidden))
        if o.dropout is None:
            o.dropout = self._choose_dropout(n_train, budget(o.hidden))

    def _budget(self, n_train: int):
        """budget(hidden): the training characters this run can see at that width (sizing.py),
        under the run's limits at the time of the call. Each width's speed is timed once, and
        only when --minutes limits the run and a choice needs it."""
        o = self.opts
        # On a GPU the time budget is left out: a CPU timing says nothing of the GPU's speed,
        # and timing the GPU trainer is not built.
        speed = functools.cache(self._training_speed) if self.device == "cpu" else None

        def budget(hidden: int) -> float:
            return sizing.budget_chars(hidden, n_train=n_train, batch_size=o.batch_size,
                                       seq_len=o.seq_len, epochs=o.epochs,
                                       max_steps=o.max_steps, minutes=o.minutes,
                                       chars_per_second=speed)
        return budget

    def _choose_hidden(self, n_train: int, budget) -> int:
        """The width for a run that did not give --hidden (sizing.py), said in self.notes."""
        o = self.opts
        hidden = sizing.choose_hidden(o.cell, o.layers, len(self.vocab), budget)
        limits = [f"{o.epochs} epochs" if o.epochs is not None else "",
                  f"{o.max_steps} steps" if o.max_steps is not None else "",
                  f"{o.minutes:g} minutes" if o.minutes is not None else ""]
        self.notes.append(f"model: {o.layers} x {hidden} {o.cell}, the widest that "
                          f"{' or '.join(filter(None, limits))} on {n_train:,} training "
                          f"characters can train (--hidden to choose)")
        return hidden

    def _choose_dropout(self, n_train: int, chars: float) -> float:
        """The dropout for a run that did not give --dropout, whose budget at its width is
        ``chars`` training characters (sizing.py); said in self.notes when it is on."""
        o = self.opts
        params = sizing.parameter_count(o.cell, o.layers, o.hidden, len(self.vocab))
        dropout = sizing.choose_dropout(chars, n_train, params)
        if dropout:
            self.notes.append(f"dropout {dropout:g}: the budget allows {chars / n_train:.0f} "
                              f"epochs, {chars / params:.0f} characters per parameter, enough "
                              f"to overfit without it (--dropout to choose)")
        return dropout

    def _stop_where_it_stops_learning(self, chars: float) -> None:
        """A --minutes run without dropout whose budget (``chars`` training characters, inf when
        the speed is not timed) goes past what its model can learn from (sizing.useful_steps)
        gets --max-steps there, so its schedule decays to that point instead of overfitting at
        a high rate for the rest of the time; said in self.notes."""
        o = self.opts
        params = sizing.parameter_count(o.cell, o.layers, o.hidden, len(self.vocab))
        chars_per_step = o.batch_size * o.seq_len
        steps = sizing.useful_steps(self.steps_per_epoch, chars_per_step, params)
        if chars <= steps * chars_per_step:
            return
        o.max_steps = steps
        self.notes.append(f"stops after {steps:,} steps ({steps / self.steps_per_epoch:.1f} "
                          f"epochs, {steps * chars_per_step / params:.1f} characters per "
                          f"parameter) unless the {o.minutes:g} minutes run out first: past "
                          f"that, this model without dropout overfits (--max-steps, --epochs, "
                          f"or --dropout above 0 to train longer)")

    def _training_speed(self, hidden: int) -> float:
        """Training characters per second of this run's cell at this width. Times a short
        window (forward and backward) and the update (clip and Adam) apart, the best of three
        each (the first also compiles the kernels on a first run ever, or loads them from the
        cache; the best is the one least disturbed), and scales the window to --seq-len: the
        update's cost is per step, so timing it with a short window alone underestimated the
        speed by about 10% at 2 x 512."""
        o = self.opts
        dropout = o.dropout or 0.0  # None: not chosen yet, so timed without
        config = ModelConfig(vocab_size=len(self.vocab), cell=o.cell, layers=o.layers,
                             hidden=hidden, dropout=dropout)
        self._check_memory(config)
        model = Model(config, seed=o.seed)
        optimizer = Adam(model.params.size, lr=o.lr)
        T = min(o.seq_len, SPEED_PROBE_STEPS, self.streams.shape[0] - 1)
        x, y = self.streams[:T], self.streams[1:T + 1]
        masks = model.dropout_masks(np.random.default_rng(0), T, o.batch_size) \
            if dropout else None
        window_s = update_s = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            model.forward(x, y, masks=masks)
            model.grads[:] = 0
            model.backward()
            t1 = time.perf_counter()
            clip_grad_norm(model.grads, o.grad_clip)
            optimizer.step(model.params, model.grads)
            t2 = time.perf_counter()
            window_s, update_s = min(window_s, t1 - t0), min(update_s, t2 - t1)
        steps = min(o.seq_len, self.streams.shape[0] - 1)  # a real window's time steps
        return steps * o.batch_size / (window_s * steps / T + update_s)

    def _check_memory(self, config: ModelConfig) -> None:
        """Refuse, before any array is made, a model whose training does not fit in memory."""
        o = self.opts
        memory.check_fits(memory.training_bytes(config, o.seq_len, o.batch_size),
                          f"training a {config.layers} x {config.hidden} {config.cell} at batch "
                          f"{o.batch_size} x {o.seq_len}",
                          "--hidden, --layers, --batch-size or --seq-len")

    def release(self) -> None:
        """Let another `charrnn train` use the run directory."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil((self.streams.shape[0] - 1) / self.opts.seq_len)

    def checkpoint(self) -> ckpt_io.Checkpoint:
        return ckpt_io.Checkpoint(
            config=self.model.config.to_dict(), vocab=self.vocab.codepoints,
            params=self.model.params,
            arrays={"adam.m": self.optimizer.m, "adam.v": self.optimizer.v,
                    "state.h": self.h, "state.c": self.c},
            train={"options": asdict(self.opts), "step": self.step, "epoch": self.epoch,
                   "position": self.position, "elapsed_s": self.elapsed,
                   "best_val_loss": None if math.isinf(self.best_val) else self.best_val,
                   "best_step": self.best_step,
                   "adam_steps": self.optimizer.steps, "rng": self.rng.bit_generator.state,
                   "loss_sum": self.loss_sum, "loss_count": self.loss_count,
                   "history": self.history,
                   "corpus": {"path": str(self.corpus), "chars": self.n_chars}})

    def _restore(self, ck: ckpt_io.Checkpoint) -> None:
        """Put the saved training state back; anything missing or malformed is refused."""
        t = ck.train

        def bad(what):
            return ckpt_io.CheckpointError(f"the checkpoint cannot resume training: {what}")

        shapes = {"adam.m": self.model.params.shape, "adam.v": self.model.params.shape,
                  "state.h": self.h.shape, "state.c": self.c.shape}
        for name, shape in shapes.items():
            if name not in ck.arrays or ck.arrays[name].shape != shape:
                raise bad(f"{name} is missing or not of shape {shape}")
        counters = ("step", "epoch", "position", "adam_steps", "loss_count")
        for name in counters:
            if type(t.get(name)) is not int or t[name] < 0:
                raise bad(f"{name} is missing or not a non-negative integer")
        numbers = ("elapsed_s", "loss_sum")
        if not all(isinstance(t.get(k), (int, float)) for k in numbers):
            raise bad("elapsed_s or loss_sum is missing or not a number")
        if t.get("best_val_loss") is not None and not isinstance(t["best_val_loss"], (int, float)):
            raise bad("best_val_loss is not a number")
        if t.get("best_step") is not None and type(t["best_step"]) is not int:
            raise bad("best_step is not an integer")
        if t["position"] >= self.streams.shape[0] - 1:
            raise bad("its data position lies beyond this corpus (was it trained on another "
                      "text?)")
        try:
            self.rng.bit_generator.state = t["rng"]
        except (KeyError, TypeError, ValueError):
            raise bad("the random generator state is missing or malformed") from None
        self.model.params[:] = ck.params
        self.optimizer.load_state({"m": ck.arrays["adam.m"], "v": ck.arrays["adam.v"],
                                   "steps": t["adam_steps"]})
        self.h[:] = ck.arrays["state.h"]
        self.c[:] = ck.arrays["state.c"]
        self.step, self.epoch, self.position = t["step"], t["epoch"], t["position"]
        self.elapsed, self.history = float(t["elapsed_s"]), list(t.get("history", []))
        self.best_val = math.inf if t.get("best_val_loss") is None else float(t["best_val_loss"])
        self.best_step = t.get("best_step")
        self.loss_sum, self.loss_count = float(t["loss_sum"]), t["loss_count"]

    # -----------------------------------------------------------------------------------------

    def stop_reason(self, started: float) -> str | None:
        """Which budget is used up (--max-steps, --epochs, --minutes since `started`), or None."""
        o = self.opts
        if o.max_steps is not None and self.step >= o.max_steps:
            return f"reached its step limit ({o.max_steps:,})"
        if o.epochs is not None and self.epoch >= o.epochs:
            return f"finished {o.epochs} epochs"
        if o.minutes is not None and time.perf_counter() - started >= o.minutes * 60:
            return f"used the --minutes {o.minutes:g} budget"
        return None

    def learning_rate(self) -> float:
        """This step's learning rate under --lr-schedule (see scheduled_lr); under cosine, also
        halved for every validation so far that was not a new best."""
        total = self.total_steps()
        progress = self.step / total if total else 0.0
        if self.opts.minutes is not None and self.started is not None:
            used = (time.perf_counter() - self.started) / (self.opts.minutes * 60)
            progress = max(progress, used)
        lr = scheduled_lr(self.opts, self.step, total, progress)
        if self.opts.lr_schedule == "cosine":
            # A long budget keeps the cosine near its peak for long, and there a 2 x 512 model's
            # validation loss rose from the third epoch on (60-minute run, BENCHMARKS.md).
            lr *= PLATEAU_FACTOR ** self.validations_without_gain()
        return lr

    def _validation_losses(self) -> list[float]:
        return [h["val_loss"] for h in self.history if h.get("val_loss") is not None]

    def validations_without_gain(self) -> int:
        """Validations in the whole run that did not beat every one before them."""
        best, count = math.inf, 0
        for loss in self._validation_losses():
            if loss < best:
                best = loss
            else:
                count += 1
        return count

    def evals_without_improvement(self) -> int:
        """Validations since the best one (0 when the last was the best)."""
        vals = self._validation_losses()
        if not vals:
            return 0
        best = min(range(len(vals)), key=lambda i: (vals[i], -i))  # the last of equal minima
        return len(vals) - 1 - best

    def total_steps(self) -> int | None:
        o = self.opts
        limits = []
        if o.max_steps is not None:
            limits.append(o.max_steps)
        if o.epochs is not None:
            limits.append(o.epochs * self.steps_per_epoch)
        return min(limits) if limits else None

    def train_step(self) -> tuple[float | None, int]:
        """One window: forward, backward, clip, Adam; advances the stream. Returns the loss
        (None on the GPU, which keeps it until ``sync_loss``) and the number of characters it
        trained on."""
        model = self.model
        x, y = window(self.streams, self.position, self.opts.seq_len)
        t = x.shape[0]
        self.optimizer.lr = self.learning_rate()
        masks = model.dropout_masks(self.rng, t, x.shape[1]) if self.opts.dropout > 0 else None
        if self.gpu is not None:
            self.gpu.step(x, y, masks, self.opts.grad_clip)
            loss = None
        else:
            loss = model.forward(x, y, self.h, self.c, masks)
            if not math.isfinite(loss):
                raise TrainingError(f"the loss became {loss} at step {self.step + 1}; stopped "
                                    f"without saving it (try a lower --lr)")
            model.grads[:] = 0
            model.backward()
            norm = clip_grad_norm(model.grads, self.opts.grad_clip)
            if not math.isfinite(norm):
                raise TrainingError(f"the gradients became {norm} at step {self.step + 1}; "
                                    f"stopped without saving them (try a lower --lr)")
            self.optimizer.step(model.params, model.grads)
        self.step += 1
        self.position += t
        if self.position >= self.streams.shape[0] - 1:  # epoch done: start the streams again from a clean state
            self.epoch += 1
            self.position = 0
            self.h, self.c = model.zero_state(x.shape[1])
            if self.gpu is not None:
                self.gpu.reset_state()
        elif self.gpu is None:
            self.h, self.c = model.final_state()
        return loss, x.size

    def sync_loss(self) -> None:
        """Add the GPU's loss sum since the last call to loss_sum; a step whose loss or
        gradient norm was not finite (its update was skipped on the device) stops the run."""
        if self.gpu is None:
            return
        total, finite = self.gpu.take_loss()
        if not finite:
            raise TrainingError(f"the loss or the gradients became non-finite by step "
                                f"{self.step}; stopped without saving them (try a lower --lr)")
        self.loss_sum += total

    def synced_host_model(self) -> Model:
        """The model with the current weights (and the run its carried state and loss sum) on
        the host, copied back from the GPU."""
        if self.gpu is not None and self._pulled_at != self.step:
            self.sync_loss()
            self.h, self.c = self.gpu.pull()
            self._pulled_at = self.step  # a validation and the save after it copy once
        return self.model

    def warm_up(self) -> None:
        """Compile (or load from numba's disk cache) every kernel the loop uses, on a throwaway
        copy of the model, so that no step's timing includes compilation. Once compiled, this
        costs milliseconds."""
        if self._warm:
            return
        self._warm = True
        model = Model(self.model.config, params=self.model.params.copy())
        x = self.streams[:2, :1]
        model.forward(x[:1], x[1:])
        model.backward()
        clip_grad_norm(model.grads, 1.0)
        Adam(model.params.size).step(model.params, model.grads)
        for _ in generate(model, self.vocab, SampleOptions(length=1, seed=0)):
            pass

    def preview(self) -> str:
        if not self.opts.preview_chars:
            return ""
        opts = SampleOptions(length=self.opts.preview_chars, temperature=0.8, seed=self.step)
        model = self.synced_host_model()
        return "".join(piece for _, piece in generate(model, self.vocab, opts))

    def _check_savable(self) -> None:
        """Refuse to save a state that cannot go on: non-finite weights or optimizer moments,
        or weights that give a non-finite loss on the next window (finite but huge weights
        overflow in the forward pass)."""
        arrays = (self.model.params, self.optimizer.m, self.optimizer.v)
        finite = all(np.all(np.isfinite(a)) for a in arrays)
        if finite:
            x, y = window(self.streams, self.position, self.opts.seq_len)
            loss = self.model.forward(x, y, self.h, self.c)
            finite = math.isfinite(loss)
        if not finite:
            raise TrainingError(f"the model became non-finite at step {self.step}; stopped "
                                f"without saving it (the last good checkpoint stays the "
                                f"latest; try a lower --lr)")

    def save(self, name: str) -> None:
        self.synced_host_model()
        self._check_savable()
        path = self.run_dir / name
        before = "the previous one is intact" if path.exists() else "it was not written"
        try:
            ckpt_io.save(path, self.checkpoint())
        except OSError as e:
            raise TrainingError(f"could not save {path}: {e.strerror or e}; {before}") \
                from None
        record_last_run(self.run_dir)

    def validation_loss(self) -> float:
        """The loss on (the first MAX_EVAL_CHARS of) the held-out text; a non-finite one stops
        the run."""
        val = evaluate(self.synced_host_model(), self.val_ids, self.opts.batch_size,
                       self.opts.seq_len, MAX_EVAL_CHARS)
        if not math.isfinite(val):
            raise TrainingError(f"the validation loss became {val} at step {self.step}; "
                                f"stopped without saving (try a lower --lr)")
        return val

    def keep_if_best(self, val: float) -> None:
        """best.npz holds the weights of the lowest validation loss ever measured: those of
        the --eval-every cadence and those of a run's final validation alike."""
        if val < self.best_val:
            self.best_val, self.best_step = val, self.step
            self.save(ckpt_io.BEST)


def _write_metrics(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop what a run that never stopped would not have logged: records after the checkpoint
    being resumed (they will be logged again) and the final report of the stop itself."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        if record.get("step", 0) < step or (record.get("step") == step and
                                            not record.get("final")):
            keep.append(line)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)  # a crash now leaves the old history or the new, never none


def train(run: Run, reporter: Reporter, should_stop: Callable[[], bool] = lambda: False,
          output_lost: Callable[[], str | None] = lambda: None) -> dict:
    """Train until a budget (--max-steps, --epochs, --minutes) is used up or should_stop();
    returns a summary. Saves latest.npz at --save-every and at the end, best.npz whenever the
    validation loss improves. output_lost() says why the reporter's output can no longer be
    written (a closed pipe, a full disk), or None: training goes on, and the next record of
    metrics.jsonl says so."""
    try:
        metrics_path = run.run_dir / METRICS
        _truncate_metrics(metrics_path, run.step)
        for w in run.warnings:
            reporter.message(f"warning: {w}")
        for note in run.notes:
            reporter.message(note)
        o = run.opts
        reporter.start({"run_dir": str(run.run_dir), "params": run.model.params.size,
                        "vocab": len(run.vocab), "train_chars": run.streams.size,
                        "val_chars": len(run.val_ids), "step": run.step,
                        "total_steps": run.total_steps(), "minutes": o.minutes,
                        "batch_size": o.batch_size, "seq_len": o.seq_len})
        run.warm_up()
        return _train_loop(run, reporter, should_stop, output_lost, metrics_path)
    except BaseException:
        run.abandon()
        raise
    finally:
        run.release()


class DivergenceWatch:
    """Warns once when a logged loss is worse than guessing uniformly among the vocabulary by
    more than a nat: a learning rate too high can leave the loss finite (nothing stops the run)
    and the model useless."""

    def __init__(self, vocab_size: int, reporter: Reporter):
        self.vocab_size, self.reporter = vocab_size, reporter
        self.uniform = math.log(vocab_size)
        self.warned = False

    def check(self, record: dict, key: str) -> None:
        loss = record.get(key)
        if self.warned or loss is None or loss <= self.uniform + 1:
            return
        self.warned = True
        record["diverging"] = True
        what = "validation loss" if key == "val_loss" else "loss"
        self.reporter.message(
            f"warning: the {what} is {loss:,.4g} nats/char at step {record['step']}, worse "
            f"than guessing uniformly among {plural(self.vocab_size, 'character')} "
            f"({self.uniform:.2f}): training is diverging; try a lower --lr")


def _train_loop(run: Run, reporter: Reporter, should_stop, output_lost,
                metrics_path: Path) -> dict:
    o = run.opts
    divergence = DivergenceWatch(len(run.vocab), reporter)
    lost_noted = False  # metrics.jsonl says once that the reporter's output is lost
    started = run.started = time.perf_counter()
    step0 = run.step
    early = None  # why validation stopped the run early
    chars_since, seconds_since = 0, 0.0  # training work since the last log: chars/s
    stopped_by = None
    evaluated_at = saved_at = None
    while True:
        stopped_by = run.stop_reason(started) or early
        if stopped_by:
            break
        if should_stop():
            stopped_by = "interrupted"
            break
        t0 = time.perf_counter()
        loss, chars = run.train_step()
        now = time.perf_counter()
        run.elapsed += now - t0
        seconds_since += now - t0
        if loss is not None:
            run.loss_sum += loss
        run.loss_count += 1
        chars_since += chars
        log_now, eval_now = run.step % o.log_every == 0, run.step % o.eval_every == 0
        if log_now or eval_now:
            run.sync_loss()
            record = {"step": run.step, "epoch": run.epoch,
                      "train_loss": run.loss_sum / run.loss_count, "lr": run.optimizer.lr,
                      "chars_per_sec": chars_since / max(seconds_since, 1e-9),
                      "elapsed_s": run.elapsed}
            run.loss_sum, run.loss_count = 0.0, 0
            chars_since, seconds_since = 0, 0.0
            if eval_now:
                record["val_loss"] = _validate_and_keep_best(run, record)
                evaluated_at = run.step
                if o.patience and run.evals_without_improvement() >= o.patience:
                    early = (f"no better validation loss in {o.patience} evaluations "
                             f"(early stop)")
            divergence.check(record, "train_loss")
            divergence.check(record, "val_loss")
            if not lost_noted and (lost := output_lost()):
                record["output_lost"] = f"{lost}; training goes on without progress lines"
                lost_noted = True
            _write_metrics(metrics_path, record)
            reporter.step(record)
            if record.get("val_loss") is not None:
                reporter.evaluated(record, run.preview())
        if run.step % o.save_every == 0:
            run.save(ckpt_io.LATEST)
            saved_at = run.step
    if evaluated_at != run.step and len(run.val_ids) >= 2 and run.step > step0:
        # Off the --eval-every cadence it stays out of the history, which the schedule and
        # early stopping read, or a run stopped here and resumed would train differently from
        # one never stopped; it can still be the best validation, kept in best.npz.
        val = run.validation_loss()
        record = {"step": run.step, "epoch": run.epoch, "elapsed_s": run.elapsed,
                  "val_loss": val, "final": True}
        run.keep_if_best(val)
        divergence.check(record, "val_loss")
        _write_metrics(metrics_path, record)
        reporter.evaluated(record, run.preview())
    if saved_at != run.step:
        run.save(ckpt_io.LATEST)
    summary = {"step": run.step, "epoch": run.epoch, "stopped_by": stopped_by,
               "best_val_loss": None if math.isinf(run.best_val) else run.best_val,
               "run_dir": str(run.run_dir)}
    reporter.finish(summary)
    return summary


def _validate_and_keep_best(run: Run, record: dict) -> float | None:
    """Validation loss; saves best.npz when it improves. None without a validation set."""
    if len(run.val_ids) < 2:
        return None
    val = run.validation_loss()
    run.history.append({"step": run.step, "train_loss": record.get("train_loss"),
                        "val_loss": val})
    run.keep_if_best(val)
    return val


BUDGETS = ("max_steps", "epochs", "minutes")


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


def options_from_checkpoint(ck: ckpt_io.Checkpoint, given: dict) -> TrainOptions:
    """The saved options of a run being resumed, with the budget and cadence options the user
    gave now; refuses changes to what shapes the model or the data stream."""
    saved = ck.train.get("options")
    if not isinstance(saved, dict):
        raise ckpt_io.CheckpointError("the checkpoint has no training options to resume with")
    saved = dict(saved)
    known = {f.name for f in fields(TrainOptions)}
    saved = {k: v for k, v in saved.items() if k in known}
    for name, value in given.items():
        if value is None:
            continue
        if name in FIXED_ON_RESUME and saved.get(name) != value:
            raise ValueError(f"{flag(name)} cannot change when resuming "
                             f"(the run uses {saved.get(name)})")
        saved[name] = value
    try:
        return TrainOptions(**saved)
    except (TypeError, ValueError) as e:
        raise ckpt_io.CheckpointError(f"the checkpoint's training options are malformed: "
                                      f"{e}") from None
