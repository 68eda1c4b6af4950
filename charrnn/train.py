"""A training run and its loop: B contiguous streams, windows of T characters, hidden state
carried between windows (truncated BPTT), periodic validation, checkpoints and metrics.jsonl.
It never prints: it reports through a Reporter (metrics.py), so the CLI decides what is shown.

Who decides what: sizing.py chooses what the budget leaves open (once, at the start);
schedule.Pacer decides each step's learning rate and the stop (the only reader of the clock);
the engine (engine.py, cuda/train.py) trains a window on its device; train_state.py owns what a
checkpoint holds, so that a resumed run continues exactly.
"""

import dataclasses
import functools
import hashlib
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Callable

import numpy as np

from . import checkpoint as ckpt_io
from . import memory, sizing
from .batches import line_bounds, shuffled_lines, stream_matrix, window, windows
from .distributed import World, WorldError
from .documents import CORPUS_IDS, Corpus, expand, read_documents
from .engine import NonFinite, make_engine, training_speed
from .metrics import METRICS, DivergenceWatch, Reporter, truncate_records, write_record
from .model import Model, ModelConfig, transplant
from .optim import Adam, clip_grad_norm
from .options import DEFAULT_EVAL_EVERY, OptionError, TrainOptions
from .runs import (LOCK, lock_run_dir, make_dirs, record_last_run, remove_new_dirs,
                   remove_stale_temporaries)
from .sample import SampleOptions, generate
from .schedule import Pacer, StepPlan
from .tokenizer import CorpusError, NothingKnown, UnknownCharacters, Vocab
from .train_state import (Parent, TrainState, corpus_chars, corpus_files, restore,
                          to_checkpoint)
from .averaging import WeightAverage
from .weight_drop import WeightDrop
from .words import plural

__all__ = ["Run", "TrainingError", "TrainOptions", "evaluate", "train", "METRICS"]

# what a run writes besides its checkpoints, removed in this order (the lock last) when it
# fails before saving one
RUN_FILES = (METRICS, CORPUS_IDS, CORPUS_IDS + ".tmp", LOCK)
MAX_EVAL_CHARS = 500_000  # validation reads at most this much of the held-out text


class TrainingError(Exception):
    """Training cannot go on; one line for the user. What was saved stays as it was."""


def evaluate(model: Model, ids: np.ndarray, batch_size: int, seq_len: int,
             max_chars: int | None = None, world: World | None = None) -> float:
    """Mean loss (nats/char) over ids (the first max_chars of them, if given), read as up to
    batch_size streams with state carried. Over several ranks each reads its share of the
    streams, and the sums are added up."""
    world = world or World()
    ids = ids[:max_chars]
    B = max(1, min(batch_size, len(ids) // (seq_len + 1)))
    rows = world.stream_rows(B)
    b = rows.stop - rows.start
    h, c = model.zero_state(b)
    total = count = 0.0
    for x, y in windows(stream_matrix(ids, B), seq_len) if b else ():
        x, y = x[:, rows], y[:, rows]
        total += model.forward(x, y, h, c) * x.size
        count += x.size
        h, c = model.final_state()
    total, count = world.sum_values(total, count)
    return total / count


def _size(path) -> int | None:
    try:
        return os.stat(path).st_size if os.path.isfile(path) else None
    except OSError:
        return None


def _digest(a: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(a).data, digest_size=16).hexdigest()


def steps_in_epoch(stream_rows: int, seq_len: int) -> int:
    return math.ceil((stream_rows - 1) / seq_len)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


class Run:
    """One training run: its directory (locked while it trains), corpus, model, engine and
    state. Made ready to train: sized, restored when resumed, its kernels compiled."""

    def __init__(self, corpus: Path | Sequence[Path], run_dir: Path, opts: TrainOptions,
                 resume: ckpt_io.Checkpoint | None = None, encoding="utf-8", errors="strict",
                 device: str = "cpu", compiling: AbstractContextManager = nullcontext(),
                 parent: Parent | None = None, keep_vocab: bool = False,
                 world: World | None = None, length_given: bool | None = None,
                 record_as: Path | None = None):
        """corpus: a text file, or files and folders (documents.py). resume: the checkpoint
        of the run to go on with; parent: the model a new run starts from (--init-from), whose
        vocabulary it extends with the corpus's, or keeps (keep_vocab: the corpus's other
        characters dropped). world: the processes training together (distributed.py); rank 0
        alone touches the run directory. length_given: whether the user gave --epochs or
        --max-steps (a run without either may stop sooner, sizing.choose_sizes); by default,
        whether opts has either. record_as: the run `sample` without a MODEL reads once this one
        has saved (default run_dir; an ensemble's member records the whole run's)."""
        self._record_as = Path(record_as or run_dir)
        self._length_given = length_given if length_given is not None else \
            opts.epochs is not None or opts.max_steps is not None
        self.world = world or World()
        self.sources = [Path(corpus)] if isinstance(corpus, (str, Path)) else \
            [Path(p) for p in corpus]
        self.corpus = " ".join(map(str, self.sources))  # as the user named it
        self.run_dir, self.device = Path(run_dir), device
        self._lock = None
        self._new_dirs, self._old_files = [], set()
        try:
            if self.world.root:
                self._new_dirs = make_dirs(self.run_dir)
                self._old_files = {p.name for p in self.run_dir.iterdir()}
                self._lock = lock_run_dir(self.run_dir)
                remove_stale_temporaries(self.run_dir)
            train_ids = self._load_corpus(opts, resume, parent, keep_vocab, encoding, errors)
            with compiling:  # a width chosen by timing a step compiles the kernels first
                self._build(train_ids, opts, resume, parent)
                self._warm_up()
            self._check_same_everywhere()
        except BaseException:  # a bad corpus or checkpoint, or Ctrl-C during the compile
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

    def release(self) -> None:
        """Let another `charrnn train` use the run directory."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _load_corpus(self, opts, resume, parent, keep_vocab, encoding, errors) -> np.ndarray:
        """Read the documents and hold out their validation part (with the resumed run's
        vocabulary, or the parent's extended or kept); returns the training ids."""
        files, self.warnings = expand(self.sources, encoding)
        val_file = Path(opts.val_file) if opts.val_file is not None else None
        if val_file is not None and any(_same_file(val_file, f) for f in files):
            raise OptionError(f"--val-file {val_file} is also a training file: hold out "
                              f"another file, or leave --val-file out")
        vocab = extra = None
        if resume is not None:
            self._check_same_files(resume, [Path(f).name for f in files], None)
            vocab = Vocab(resume.vocab)
        elif parent is not None and keep_vocab:
            vocab = Vocab(parent.checkpoint.vocab)
        elif parent is not None:
            extra = parent.checkpoint.vocab
        skipped = Counter()
        self._files_given = [[str(f), _size(f)] for f in files]  # compared across ranks
        corpus = None
        try:
            if self.world.root:  # over several processes, rank 0 reads for all
                corpus = read_documents(files, val_frac=opts.val_frac, doc_sep=opts.doc_sep,
                                        val_file=val_file, vocab=vocab, extra_chars=extra,
                                        encoding=encoding, errors=errors,
                                        skip_unknown=keep_vocab, skipped=skipped,
                                        workdir=self.run_dir)
        except NothingKnown:
            raise CorpusError(f"--keep-vocab leaves nothing of {self.corpus}: it has no "
                              f"character the model of --init-from knows") from None
        if self.world.size > 1:
            corpus = self._corpus_of_rank0(corpus)
        if skipped:
            n, kept = skipped.total(), corpus.chars
            self.warnings.append(f"--keep-vocab dropped {n:,} of {n + kept:,} characters "
                                 f"({n / (n + kept):.1%}) the model does not know: "
                                 f"{str(UnknownCharacters(sorted(skipped))).split(': ', 1)[1]}")
        self.vocab, self.val_ids, self.n_chars = corpus.vocab, corpus.val, corpus.chars
        self.corpus_info = {"path": self.corpus, "chars": corpus.chars, "files": corpus.files}
        train_ids = corpus.train
        if len(train_ids) < 2:
            raise CorpusError(f"{self.corpus} is too small to train on: "
                              f"{plural(corpus.chars, 'character')}, of which "
                              f"{len(train_ids)} remain for training after --val-frac "
                              f"{opts.val_frac}; at least 2 are needed")
        self._lines = self._line_bounds(train_ids) if opts.lines else None
        if resume is not None:
            self._check_same_files(resume, [Path(f["path"]).name for f in corpus.files],
                                   [f["chars"] for f in corpus.files])
            if corpus_chars(resume) != corpus.chars:
                raise ckpt_io.CheckpointError(
                    f"the run was trained on a text of {corpus_chars(resume)} characters; "
                    f"{self.corpus} has {corpus.chars}: resume with the same corpus")
        return train_ids

    def _corpus_of_rank0(self, corpus: Corpus | None) -> Corpus:
        """Rank 0's corpus on every rank: the others wait while it reads and encodes, then map
        the ids file it wrote into the run directory where they all see it (a shared
        filesystem: one copy in each machine's page cache), or else are sent the ids."""
        world = self.world
        meta = None
        if world.root:
            mapped = str(corpus.train.filename) if isinstance(corpus.train, np.memmap) else None
            meta = {"codepoints": corpus.vocab.codepoints.tolist(), "n_train": len(corpus.train),
                    "n_val": len(corpus.val), "files": corpus.files,
                    "dtype": corpus.train.dtype.str, "mapped": mapped}
        meta = world.share(meta)
        n, dtype = meta["n_train"] + meta["n_val"], np.dtype(meta["dtype"])
        path = meta["mapped"]
        visible = path is not None and os.path.isfile(path) and \
            os.path.getsize(path) == n * dtype.itemsize
        if all(world.everyone(visible)):
            ids = np.memmap(path, dtype=dtype, mode="r", shape=(n,))
        else:
            ids = world.share_array(np.concatenate([corpus.train, corpus.val]) if world.root
                                    else None, n, dtype)
        if world.root:
            return corpus
        return Corpus(Vocab(np.array(meta["codepoints"], np.uint32)), ids[:meta["n_train"]],
                      ids[meta["n_train"]:], meta["files"])

    def _check_same_everywhere(self) -> None:
        """Over several processes, every rank must train the same thing: the same options (as
        given, before rank 0's choices), corpus files and starting weights (each rank makes or
        loads its own; the corpus and vocabulary are rank 0's). Refused on every rank at the
        start when not (a rank given another file would train another model)."""
        if self.world.size == 1:
            return
        mine = {"options": self._given, "corpus": self._files_given,
                "weights": _digest(self.model.params)}
        every = self.world.everyone(mine)
        for what in mine:
            differ = [r for r, theirs in enumerate(every) if theirs[what] != every[0][what]]
            if differ:
                raise WorldError(f"the processes do not train the same thing: rank "
                                 f"{', '.join(map(str, differ))} has other {what} than rank 0 "
                                 f"(every rank must be given the same corpus, options and "
                                 f"checkpoint)", on_every_rank=True)

    def check_weights_agree(self) -> None:
        """Over several processes: the weights must be the same on every rank (they get the
        same summed gradients); a difference stops the run rather than train on apart."""
        if self.world.size == 1:
            return
        self.pull()
        every = self.world.everyone(_digest(self.model.params))
        differ = [r for r, digest in enumerate(every) if digest != every[0]]
        if differ:
            raise TrainingError(f"the weights of rank {', '.join(map(str, differ))} differ from "
                                f"rank 0's at step {self.state.step}: the run stopped; its last "
                                f"checkpoint is intact")

    def _line_bounds(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where each line of the training text starts and ends (--lines)."""
        newline = np.searchsorted(self.vocab.codepoints, ord("\n"))
        has_newline = newline < len(self.vocab) and self.vocab.codepoints[newline] == ord("\n")
        bounds = line_bounds(ids, newline if has_newline else -1)
        if len(bounds[0]) < 2:
            raise CorpusError(f"--lines needs a text of several lines to shuffle; the training "
                              f"part of {self.corpus} is one line")
        return bounds

    def _check_same_files(self, resume: ckpt_io.Checkpoint, names: list[str],
                          lengths: list[int] | None) -> None:
        """A run of several documents resumes on the same ones: their names (checked before
        they are read) and lengths (after)."""
        saved = corpus_files(resume, held_out=lengths is not None)
        if saved is None or (len(saved) == 1 and len(names) == 1):
            return  # one file, or a checkpoint older than the list: its length decides
        same = [name for name, _ in saved] == names and \
            (lengths is None or [n for _, n in saved] == lengths)
        if not same:
            shown = ", ".join(name for name, _ in saved[:3]) + (", ..." if len(saved) > 3 else "")
            raise ckpt_io.CheckpointError(
                f"the run was trained on {plural(len(saved), 'file')} ({shown}); these are not "
                f"the same files or lengths: resume with the same files")

    def _streams(self, epoch: int) -> np.ndarray:
        """The (S, B) streams of an epoch: the training text, or with --lines its lines in an
        order drawn for that epoch (from the seed and the epoch alone, so a resumed run draws
        the order a straight one did)."""
        ids = self.train_ids
        if self._lines is not None:
            ids = shuffled_lines(ids, self._lines, np.random.default_rng([self.opts.seed, epoch]))
        return stream_matrix(ids, self.opts.batch_size)

    def _build(self, train_ids: np.ndarray, opts: TrainOptions, resume, parent) -> None:
        """Streams, model, optimizer, engine and state: fresh (from the parent's weights when
        there is one), sized by the budget where the options leave it open, or as the resumed
        checkpoint left them (a resumed run keeps the sizes and limits it was given or
        chose)."""
        B, T, warnings = sizing.fit_sizes(len(train_ids), opts.batch_size, opts.seq_len)
        self.warnings += warnings
        if resume is None:
            opts = dataclasses.replace(opts, batch_size=B, seq_len=T)
        self.opts, self.train_ids = opts, train_ids
        self.streams = self._streams(0)  # (S, B)
        per_epoch = steps_in_epoch(self.streams.shape[0], opts.seq_len)
        if opts.eval_every is None:  # a small corpus is validated at least once an epoch
            opts = dataclasses.replace(opts, eval_every=min(DEFAULT_EVAL_EVERY, per_epoch))
        self.notes = []
        self._given = dataclasses.asdict(opts)  # what this rank was told, before rank 0 chose
        if resume is None and self.world.root:
            # a GPU run is not timed: a CPU timing says nothing of the GPU's speed
            speed = functools.cache(functools.partial(self._speed_at, opts)) \
                if self.device == "cpu" else None
            opts, self.notes = sizing.choose_sizes(
                opts, n_train=len(train_ids), vocab_size=len(self.vocab),
                steps_per_epoch=per_epoch, chars_per_second=speed,
                length_given=self._length_given, fits=functools.partial(self._fits, opts))
        if resume is None and self.world.size > 1:  # rank 0's choices (it timed the widths)
            opts = TrainOptions(**self.world.share(dataclasses.asdict(opts)))
        self.opts = opts
        config = self._model_config(opts, sizing.Shape(opts.layers, opts.hidden), opts.dropout)
        self.model = Model(config, seed=opts.seed)
        self.optimizer = Adam(self.model.params.size, lr=opts.lr, weight_decay=opts.weight_decay,
                              splitter=self.model.splitter)
        h, c = self.model.zero_state(opts.batch_size)  # (L, B, W)
        self.state = TrainState.fresh(opts.seed)
        if parent is not None:
            ck = parent.checkpoint
            transplant(ck.params.astype(self.model.dtype), ModelConfig(**ck.config), ck.vocab,
                       self.model, self.vocab.codepoints)
            self.state.parent = parent.lineage
        self.average = WeightAverage(self.model.params, opts.ema) if opts.ema else None
        self._averaged = None  # evaluated()'s model over the average
        if resume is not None:
            restored = restore(resume, params_size=self.model.params.size, state_shape=h.shape,
                               positions=self.streams.shape[0] - 1, averaged=bool(opts.ema))
            self.model.params[:] = restored.params
            if self.average is not None:
                self.average = WeightAverage(self.model.params, opts.ema, **restored.average)
            self.optimizer.load_state(restored.adam)
            h, c, self.state = restored.h.copy(), restored.c.copy(), restored.state
            self.streams = self._streams(self.state.epoch)
        if self.world.size > 1 and self.world.size > opts.batch_size:
            raise WorldError(f"{self.world.size} processes cannot share {opts.batch_size} "
                             f"streams: give --batch-size of at least {self.world.size}")
        self.engine = make_engine(self.device, self.model, self.optimizer, h, c, self.world,
                                  self.average)
        self.weight_drop = WeightDrop(self.model.layout, opts.weight_drop or 0.0)

    def _model_config(self, opts: TrainOptions, shape: sizing.Shape,
                      dropout: float) -> ModelConfig:
        """The model of these options at this shape, refused before any array is made when its
        training does not fit in memory."""
        config = ModelConfig(vocab_size=len(self.vocab), cell=opts.cell, layers=shape.layers,
                             hidden=shape.hidden, dropout=dropout)
        memory.check_fits(memory.training_bytes(config, opts.seq_len, opts.batch_size,
                                                averaged=bool(opts.ema),
                                                weight_drop=bool(opts.weight_drop)),
                          f"training a {config.layers} x {config.hidden} {config.cell} at "
                          f"batch {opts.batch_size} x {opts.seq_len}",
                          "--hidden, --layers, --batch-size or --seq-len")
        return config

    def _fits(self, opts: TrainOptions, shape: sizing.Shape) -> bool:
        """Whether training at this shape fits in this machine's memory (with the dropout
        masks and weight-drop buffers the long-run rule may add)."""
        chosen = sizing.LONG_RUN_REGULARISATION
        opts = dataclasses.replace(opts, weight_drop=chosen if opts.weight_drop is None
                                   else opts.weight_drop)
        try:
            self._model_config(opts, shape, chosen if opts.dropout is None else opts.dropout)
        except memory.NotEnoughMemory:
            return False
        return True

    def _speed_at(self, opts: TrainOptions, shape: sizing.Shape) -> float:
        """Training characters per second at this shape (dropout not chosen yet: timed
        without)."""
        model = Model(self._model_config(opts, shape, opts.dropout or 0.0), seed=opts.seed)
        optimizer = Adam(model.params.size, lr=opts.lr, splitter=model.splitter)
        return training_speed(model, optimizer, self.streams, opts.seq_len, opts.grad_clip)

    def _warm_up(self) -> None:
        """Compile (or load from numba's disk cache) every CPU kernel the loop, validation and
        previews use, on a throwaway copy of the model, so that no step's timing includes
        compilation. Once compiled, this costs milliseconds."""
        model = Model(self.model.config, params=self.model.params.copy())
        x = self.streams[:2, :1]
        model.forward(x[:1], x[1:])
        model.backward()
        clip_grad_norm(model.grads, 1.0)
        Adam(model.params.size).step(model.params, model.grads)
        for _ in generate(model, self.vocab, SampleOptions(length=1, seed=0)):
            pass

    @property
    def steps_per_epoch(self) -> int:
        return steps_in_epoch(self.streams.shape[0], self.opts.seq_len)

    def train_step(self, lr: float) -> int:
        """One window at learning rate lr: the engine's step, then the stream advances.
        Returns the number of characters it trained on."""
        s = self.state
        x, y = window(self.streams, s.position, self.opts.seq_len)
        t = x.shape[0]
        masks = self.model.dropout_masks(s.rng, t, x.shape[1]) if self.opts.dropout > 0 \
            else None
        weight_mask = self.weight_drop.draw(s.rng, self.model.dtype) if self.opts.weight_drop \
            else None
        try:
            loss = self.engine.step(x, y, masks, lr, self.opts.grad_clip, weight_mask)
        except NonFinite as e:
            raise TrainingError(f"{e} at step {s.step + 1}; stopped without saving "
                                f"{'it' if e.what == 'loss' else 'them'} (try a lower --lr)") \
                from None
        s.step += 1
        s.position += t
        if s.position >= self.streams.shape[0] - 1:  # epoch done: the streams start again
            s.epoch += 1
            s.position = 0
            self.engine.reset_state()
            if self._lines is not None:
                self.streams = self._streams(s.epoch)
        if loss is not None:  # else the engine keeps it until take_loss
            s.loss_sum += loss
        s.loss_count += 1
        return x.size

    def take_loss(self) -> None:
        """Add the losses the engine kept since the last call to the state's loss sum; a step
        whose loss or gradient norm was not finite (its update was skipped) stops the run."""
        total, finite = self.engine.take_loss()
        if not finite:
            raise TrainingError(f"the loss or the gradients became non-finite by step "
                                f"{self.state.step}; stopped without saving them (try a lower "
                                f"--lr)")
        self.state.loss_sum += total

    def pull(self) -> Model:
        """The host model with the current weights (and the run its current moments, carried
        state and loss sum), from the engine's device."""
        self.take_loss()
        self.engine.pull()
        return self.model

    def evaluated(self) -> Model:
        """The model validation and previews read, current: the trained weights' running
        average (--ema; a model over its buffer, no copy), or the trained weights."""
        model = self.pull()
        if self.average is None:
            return model
        if self._averaged is None or self._averaged.params is not self.average.values:
            self._averaged = Model(model.config, params=self.average.values)
        return self._averaged

    def preview(self) -> str:
        if not self.opts.preview_chars or not self.world.root:
            return ""
        opts = SampleOptions(length=self.opts.preview_chars, temperature=0.8,
                             seed=self.state.step)
        return "".join(piece for _, piece in generate(self.evaluated(), self.vocab, opts))

    def validation_loss(self) -> float:
        """The loss on (the first MAX_EVAL_CHARS of) the held-out text, of the weights the
        checkpoint's params will be; a non-finite one stops the run."""
        val = evaluate(self.evaluated(), self.val_ids, self.opts.batch_size, self.opts.seq_len,
                       MAX_EVAL_CHARS, self.world)
        if not math.isfinite(val):
            raise TrainingError(f"the validation loss became {val} at step "
                                f"{self.state.step}; stopped without saving (try a lower --lr)")
        return val

    def keep_if_best(self, val: float) -> None:
        """best.npz holds the weights of the lowest validation loss ever measured: those of
        the --eval-every cadence and those of a run's final validation alike."""
        if val < self.state.best_val:
            self.state.best_val, self.state.best_step = val, self.state.step
            self.save(ckpt_io.BEST)

    def carried(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole (L, B, W) carried state (each rank holds its streams' rows)."""
        B = self.opts.batch_size
        return self.world.join_streams(self.engine.h, B), self.world.join_streams(self.engine.c, B)

    def checkpoint(self) -> ckpt_io.Checkpoint:
        self.pull()
        h, c = self.carried()
        return to_checkpoint(self.state, config=self.model.config.to_dict(),
                             vocab=self.vocab.codepoints, params=self.model.params,
                             adam=self.optimizer.state(), h=h, c=c, opts=self.opts,
                             corpus=self.corpus_info, average=self.average)

    def save(self, name: str) -> None:
        """Write the checkpoint `name` atomically; refuse a state that cannot go on. Every
        rank takes part (the carried state is gathered); rank 0 writes."""
        ck = self.checkpoint()
        self._check_savable()
        if not self.world.root:
            return
        path = self.run_dir / name
        before = "the previous one is intact" if path.exists() else "it was not written"
        try:
            ckpt_io.save(path, ck)
        except OSError as e:
            raise TrainingError(f"could not save {path}: {e.strerror or e}; {before}") \
                from None
        record_last_run(self._record_as)

    def _check_savable(self) -> None:
        """Refuse to save a state that cannot go on: non-finite weights or optimizer moments,
        or weights that give a non-finite loss on the next window (finite but huge weights
        overflow in the forward pass)."""
        arrays = (self.model.params, self.optimizer.m, self.optimizer.v) + \
            (() if self.average is None else (self.average.values,))
        finite = all(np.all(np.isfinite(a)) for a in arrays)
        if finite:
            x, y = window(self.streams, self.state.position, self.opts.seq_len)
            rows = self.engine.rows if self.world.size > 1 else slice(None)
            finite = math.isfinite(self.model.forward(x[:, rows], y[:, rows], self.engine.h,
                                                      self.engine.c))
        if not self.world.agree(finite):
            raise TrainingError(f"the model became non-finite at step {self.state.step}; "
                                f"stopped without saving it (the last good checkpoint stays "
                                f"the latest; try a lower --lr)")


def train(run: Run, reporter: Reporter, should_stop: Callable[[], bool] = lambda: False,
          output_lost: Callable[[], str | None] = lambda: None) -> dict:
    """Train until a budget (--max-steps, --epochs, --minutes) is used up or should_stop();
    returns a summary. Saves latest.npz at --save-every and at the end, best.npz whenever the
    validation loss improves. output_lost() says why the reporter's output can no longer be
    written (a closed pipe, a full disk), or None: training goes on, and the next record of
    metrics.jsonl says so."""
    try:
        metrics_path = run.run_dir / METRICS
        if run.world.root:
            truncate_records(metrics_path, run.state.step)
        for w in run.warnings:
            reporter.message(f"warning: {w}")
        for note in run.notes:
            reporter.message(note)
        o = run.opts
        pacer = Pacer(o, run.steps_per_epoch, should_stop)
        reporter.start({"run_dir": str(run.run_dir), "params": run.model.params.size,
                        "vocab": len(run.vocab), "train_chars": run.streams.size,
                        "val_chars": len(run.val_ids), "step": run.state.step,
                        "total_steps": pacer.total_steps(), "minutes": o.minutes,
                        "batch_size": o.batch_size, "seq_len": o.seq_len})
        return _train_loop(run, reporter, pacer, output_lost, metrics_path)
    except BaseException:
        run.abandon()
        raise
    finally:
        run.release()


def _train_loop(run: Run, reporter: Reporter, pacer: Pacer, output_lost,
                metrics_path: Path) -> dict:
    o, s = run.opts, run.state
    divergence = DivergenceWatch(len(run.vocab), reporter)
    lost_noted = False  # metrics.jsonl says once that the reporter's output is lost
    pacer.start()
    step0 = s.step
    chars_since, seconds_since = 0, 0.0  # training work since the last log: chars/s
    evaluated_at = saved_at = None
    world = run.world
    while not (plan := _decided(world, pacer.plan(s.step, s.epoch, s.history))).stop:
        t0 = time.perf_counter()
        chars_since += run.train_step(plan.lr)
        took = time.perf_counter() - t0
        s.elapsed += took
        seconds_since += took
        log_now, eval_now = s.step % o.log_every == 0, s.step % o.eval_every == 0
        if log_now or eval_now:
            run.take_loss()
            record = {"step": s.step, "epoch": s.epoch,
                      "train_loss": s.loss_sum / s.loss_count, "lr": run.optimizer.lr,
                      "chars_per_sec": chars_since / max(seconds_since, 1e-9),
                      "elapsed_s": s.elapsed}
            s.loss_sum, s.loss_count = 0.0, 0
            chars_since, seconds_since = 0, 0.0
            if eval_now:
                record["val_loss"] = _validate_and_keep_best(run, record)
                evaluated_at = s.step
                pacer.after_validation(s.history)
                run.check_weights_agree()
            divergence.check(record, "train_loss")
            divergence.check(record, "val_loss")
            if not lost_noted and (lost := output_lost()):
                record["output_lost"] = f"{lost}; training goes on without progress lines"
                lost_noted = True
            if world.root:
                write_record(metrics_path, record)
            reporter.step(record)
            if record.get("val_loss") is not None:
                reporter.evaluated(record, run.preview())
        if s.step % o.save_every == 0:
            run.save(ckpt_io.LATEST)
            saved_at = s.step
    if evaluated_at != s.step and len(run.val_ids) >= 2 and s.step > step0:
        # Off the --eval-every cadence it stays out of the history, which the schedule and
        # early stopping read, or a run stopped here and resumed would train differently from
        # one never stopped; it can still be the best validation, kept in best.npz.
        val = run.validation_loss()
        record = {"step": s.step, "epoch": s.epoch, "elapsed_s": s.elapsed,
                  "val_loss": val, "final": True}
        run.keep_if_best(val)
        divergence.check(record, "val_loss")
        if world.root:
            write_record(metrics_path, record)
        reporter.evaluated(record, run.preview())
    if saved_at != s.step:
        run.save(ckpt_io.LATEST)
    summary = {"step": s.step, "epoch": s.epoch, "stopped_by": plan.stop,
               "stop_reason": plan.reason,
               "best_val_loss": None if math.isinf(s.best_val) else s.best_val,
               "run_dir": str(run.run_dir)}
    reporter.finish(summary)
    return summary


def _decided(world: World, plan: StepPlan) -> StepPlan:
    """Rank 0's plan on every rank: its clock, budget and signals decide for all, so that the
    ranks stop together and never wait for one another at a collective."""
    if world.size == 1:
        return plan
    return StepPlan(**world.share(dataclasses.asdict(plan)))


def _validate_and_keep_best(run: Run, record: dict) -> float | None:
    """Validation loss; saves best.npz when it improves. None without a validation set."""
    if len(run.val_ids) < 2:
        return None
    val = run.validation_loss()
    run.state.history.append({"step": run.state.step, "train_loss": record.get("train_loss"),
                              "val_loss": val})
    run.keep_if_best(val)
    return val
