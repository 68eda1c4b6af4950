"""The `charrnn` command line: parse, call, print. No math here.

Data (samples, eval results, info) goes to stdout; progress, warnings and errors to stderr.
Errors are one line and exit 1; usage errors exit 2. The numerical modules (and so numba) are
imported inside the commands, so `charrnn --help` starts fast.
"""

import codecs
import dataclasses
import functools
import json
import os
import signal
import stat
import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperArgument

from . import __version__, process
from .cells import choices_text
from .options import (DEFAULT_EVAL_EVERY, BenchConfig, OptionError, SampleOptions, ServeOptions,
                      TrainOptions, check_device, check_text_codec)

def _required_argument_metavar(make_metavar):
    """typer 0.28 writes a required argument as `{CORPUS}` in the usage line, a syntax no
    shell or man page uses; click's own form is `CORPUS` (optional ones stay `[MODEL]`)."""
    def make(self, ctx, *, usage: bool = False) -> str:
        var = make_metavar(self, ctx, usage=usage)
        return var[1:-1] if usage and var.startswith("{") and var.endswith("}") else var
    return make


TyperArgument.make_metavar = _required_argument_metavar(TyperArgument.make_metavar)

HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}


def default_note(text) -> str:
    """' [default: text]' for a help string whose option's default typer cannot show (None:
    chosen later, or a sentence). The bracket is escaped: Rich reads a bare one as markup and
    drops it."""
    return f" \\[default: {text}]"


def train_default(name: str) -> str:
    """The default of a `train` option, as TrainOptions has it."""
    return default_note(getattr(TrainOptions, name))
app = typer.Typer(
    name="charrnn", no_args_is_help=True, add_completion=False,
    pretty_exceptions_enable=False, context_settings=HELP_OPTIONS,
    help="Character-level RNN text generator: `charrnn train corpus.txt`, then "
         "`charrnn sample`.")
corpus_app = typer.Typer(help="Classic corpora: list them, download one.", no_args_is_help=True,
                         context_settings=HELP_OPTIONS)
app.add_typer(corpus_app, name="corpus")


def _print_version(asked: bool) -> None:
    if asked:
        emit(f"charrnn {__version__}")
        raise typer.Exit()


@app.callback()
def _options_of_every_command(
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit.")] = False,
):
    """Character-level RNN text generator."""

@functools.cache
def stderr_console():
    """The Rich console on stderr, made (and Rich imported: BENCHMARKS.md, "Start-up") only when
    something is said: `charrnn sample` usually says nothing."""
    from rich.console import Console
    return Console(stderr=True)


def say(text: str) -> None:
    """A message line on stderr, never wrapped or styled (logs get it whole)."""
    stderr_console().print(text, markup=False, highlight=False, soft_wrap=True)


def emit(text: str) -> None:
    """Data on stdout; a reader that went away (`| head`) ends the command quietly."""
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        process.quiet_broken_pipe()
    except UnicodeEncodeError as e:
        raise Failure(process.unencodable_output(e)) from None


class UsageProblem(Exception):
    """A bad option value: exit 2."""


class Failure(Exception):
    """Anything else the user must hear about: exit 1."""


def _user_errors():
    """The exception types that become one-line errors (imported lazily: they live beside numba)."""
    from .checkpoint import CheckpointError
    from .corpora import DownloadError
    from .device import DeviceError
    from .distributed import WorldError
    from .memory import NotEnoughMemory
    from .parallel import ThreadsSettingError
    from .runs import RunLocked
    from .tokenizer import CorpusError
    from .serve_process import ServeError
    from .train import TrainingError
    return (CheckpointError, CorpusError, TrainingError, DownloadError, RunLocked,
            ThreadsSettingError, DeviceError, NotEnoughMemory, ServeError, WorldError, Failure)


def unescape(text: str, option: str) -> str:
    r"""Backslash escapes as a shell user means them: '\n' is a newline (non-ASCII kept)."""
    try:
        with warnings.catch_warnings():  # '\777': Python's deprecation notice is not for users
            warnings.simplefilter("ignore", DeprecationWarning)
            return codecs.decode(text.encode("latin-1", "backslashreplace"), "unicode_escape")
    except UnicodeDecodeError:
        raise UsageProblem(f"{option}: bad backslash escape in {text!r} (write a backslash "
                           f"as \\\\)") from None


# ---------------------------------------------------------------------------------------------
# train


def examples(*lines: str) -> str:
    """A command's help epilog: example command lines, one paragraph each."""
    return "\n\n".join(["Examples:", *lines])


@app.command(epilog=examples(
    "charrnn train corpus.txt --minutes 10",
    "cat *.md | charrnn train /dev/stdin --cell lstm --hidden 256 --out runs/notes",
    "charrnn train corpus.txt --out runs/corpus --resume --max-steps 5000",
    "charrnn train notes/ letters.txt --val-file held_out.txt",
    "charrnn train names.txt --lines --init-from runs/corpus"))
def train(
    corpus: Annotated[list[Path], typer.Argument(metavar="CORPUS...", help="UTF-8 text files or folders to learn from (folders are read recursively, in sorted order; hidden and binary files are left out).")],
    cell: Annotated[Optional[str], typer.Option(help=choices_text() + "." + train_default("cell"))] = None,
    layers: Annotated[Optional[int], typer.Option(help="Stacked layers." + default_note("2 (1 for jordan); gru-ln with its width chosen: 3 x 768 in place of 2 x 1024"))] = None,
    hidden: Annotated[Optional[int], typer.Option(help="Hidden units per layer." + default_note("chosen: the widest of 128 to 1024 that the corpus and the budget can train"))] = None,
    seq_len: Annotated[Optional[int], typer.Option(help="Characters per BPTT window." + train_default("seq_len"))] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Parallel streams." + train_default("batch_size"))] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate (the peak, under --lr-schedule cosine)." + train_default("lr"))] = None,
    dropout: Annotated[Optional[float], typer.Option(help="Dropout between layers and before the output, one mask per stream for a whole window." + default_note("chosen: 0.2 when the budget allows 8 epochs and 4 characters per parameter, else 0"))] = None,
    weight_drop: Annotated[Optional[float], typer.Option(help="DropConnect on the recurrent matrices: each window zeroes this fraction of W_h's weights." + default_note("chosen with --dropout, the same"))] = None,
    ema: Annotated[Optional[float], typer.Option(help="Decay of the running average of the weights that validation, previews and the saved model use; 0: the trained weights themselves." + train_default("ema"))] = None,
    grad_clip: Annotated[Optional[float], typer.Option(help="Global gradient-norm clip." + train_default("grad_clip"))] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="AdamW's decoupled weight decay: every step shrinks each weight by this times the step's learning rate." + train_default("weight_decay"))] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Passes over the text." + default_note(f"{TrainOptions.epochs}, fewer where a model without dropout stops learning (as under --minutes), or no limit with --minutes"))] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many steps (in total, counting resumed ones)." + default_note("none"))] = None,
    minutes: Annotated[Optional[float], typer.Option(help="Stop after this much wall-clock time (this invocation); a new run without --epochs, --max-steps, and without --dropout or --weight-drop above 0 (given or chosen), stops sooner where its model stops learning: 4.5 epochs or, per parameter, 0.45 characters (gru-ln) or 1.8 (the other cells), whichever is more." + default_note("none"))] = None,
    val_frac: Annotated[Optional[float], typer.Option(help="Last fraction of the text held out for validation." + train_default("val_frac"))] = None,
    eval_every: Annotated[Optional[int], typer.Option(help="Validate (and keep the best) every N steps." + default_note(f"{DEFAULT_EVAL_EVERY}, or once an epoch if sooner"))] = None,
    save_every: Annotated[Optional[int], typer.Option(help="Save latest.npz every N steps." + train_default("save_every"))] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for weights, dropout and previews." + train_default("seed"))] = None,
    lr_schedule: Annotated[Optional[str], typer.Option(help="cosine (warm-up, then decay to 2% of --lr at the end of the budget, halved for every validation without a new best) or constant." + train_default("lr_schedule"))] = None,
    patience: Annotated[Optional[int], typer.Option(help="Stop after this many validations without a better loss; 0: never." + train_default("patience"))] = None,
    doc_sep: Annotated[Optional[str], typer.Option(help=r"Text put between documents of several files (escapes like \n work)." + default_note(r"\n\n, a blank line"))] = None,
    val_file: Annotated[Optional[Path], typer.Option(help="Hold out this whole file for validation instead of the last --val-frac of each document." + default_note("none"))] = None,
    lines: Annotated[bool, typer.Option("--lines", help="Each line is one example (names, titles): the lines are shuffled into the streams afresh every epoch.")] = False,
    init_from: Annotated[Optional[Path], typer.Option(help="Start a new run from this model's weights (a checkpoint or a run directory): fine-tuning. Its vocabulary grows by the corpus's new characters." + default_note("none"))] = None,
    keep_vocab: Annotated[bool, typer.Option("--keep-vocab", help="With --init-from: keep the model's vocabulary, dropping the corpus's characters it does not know (counted).")] = False,
    members: Annotated[Optional[int], typer.Option(help="Train this many models apart, one after another, with seeds --seed, --seed + 1, ...; sample, eval and serve average their predictions (an ensemble: each member costs its model's time at every character)." + default_note("1; under --minutes, where the model stops learning before the time is up, up to 3, each started while the minutes left cover the last one's time"))] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    out: Annotated[Optional[Path], typer.Option(help="Run directory." + default_note("runs/<corpus name>, numbered if taken"))] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out (default: the most recent run) from its latest checkpoint.")] = False,
    encoding: Annotated[str, typer.Option(help="Text encoding of the corpus.")] = "utf-8",
    errors: Annotated[str, typer.Option(help="On undecodable bytes: strict, replace or ignore.")] = "strict",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
):
    """Train a model on CORPUS; progress on stderr, checkpoints in the run directory. Under
    `mpirun -n N` (or srun), N processes train one model together."""
    from . import distributed
    ranks = distributed.world()  # a world of one without an MPI launcher
    quiet = quiet or not ranks.root  # rank 0 reports for all
    check_device(device)
    check_text_codec(encoding, errors)
    given = dict(cell=cell, layers=layers, hidden=hidden, seq_len=seq_len, batch_size=batch_size,
                 lr=lr, dropout=dropout, weight_drop=weight_drop, ema=ema, grad_clip=grad_clip,
                 weight_decay=weight_decay,
                 epochs=epochs, max_steps=max_steps, minutes=minutes, val_frac=val_frac, eval_every=eval_every,
                 save_every=save_every, seed=seed, lr_schedule=lr_schedule, patience=patience,
                 doc_sep=None if doc_sep is None else unescape(doc_sep, "--doc-sep"),
                 val_file=None if val_file is None else str(val_file), lines=lines or None,
                 members=members)
    given = {k: v for k, v in given.items() if v is not None}
    # every value given is in range before anything is made; a resumed run's values are checked
    # together with its own options (options_from_checkpoint), not with today's defaults
    new_opts = TrainOptions(**given) if not resume else None
    if out is not None and out.exists() and not out.is_dir():
        raise Failure(f"--out {out} is a file; a run directory is needed")
    if init_from is not None and resume:
        raise UsageProblem("--init-from starts a new run and --resume goes on with one: give "
                           "one of them")
    if keep_vocab and init_from is None:
        raise UsageProblem("--keep-vocab keeps the vocabulary of --init-from's model: give "
                           "--init-from")
    if init_from is not None and (members or 1) > 1:
        raise UsageProblem("--init-from starts one model from another: it takes no --members")

    from . import checkpoint as ckpt_io
    from .members import Member, resumed_member
    from .runs import last_run, new_run_dir
    from .schedule import SIGNAL, schedule_change
    from .train_state import options_from_parent, parent_of

    parent = first_opts = None
    if resume:
        run_dir = out or last_run()
        if ranks.size > 1:  # rank 0's "most recent run" for all
            run_dir = ranks.share(None if run_dir is None else str(run_dir))
        if run_dir is None:
            raise Failure("--resume: no run to resume; pass --out RUN_DIR")
        first = ckpt_io.load(Path(run_dir) / ckpt_io.LATEST)
        member, first_opts = resumed_member(Path(run_dir), first, given)
        opts = member.opts
        if not quiet and member.resume is not None and \
                (note := schedule_change(member.resume.train["options"], opts)):
            say(note)
    else:
        run_dir = out or (new_run_dir(corpus[0]) if ranks.root else None)
        if ranks.size > 1:  # the directory rank 0 named (and alone writes)
            run_dir = ranks.share(str(run_dir))
        if (Path(run_dir) / ckpt_io.LATEST).exists():
            raise Failure(f"{run_dir} already holds a run; pass --resume to continue it or "
                          f"another --out")
        opts = new_opts
        if init_from is not None:
            parent = parent_of(init_from)
            opts = options_from_parent(parent, given)
            opts.members = 1
        if minutes is not None and epochs is None:
            opts.epochs = None  # a time budget alone: train for that long
        member = Member(1, opts)
    from . import device as devices
    if ranks.size > 1:
        if device == "cuda":
            raise Failure("--device cuda: a run over several processes trains on the CPU for "
                          "now (one process per GPU is not built yet); use --device cpu")
        chosen = "cpu"
    else:
        chosen = devices.resolve(device, opts.cell)
    if chosen == "cuda" and not quiet:
        say(f"training on CUDA: {devices.gpu_name()}")
    summary, signum = _train_members(
        member, first_opts, given, corpus, Path(run_dir), chosen, encoding, errors, parent,
        keep_vocab, ranks, quiet, length_given=epochs is not None or max_steps is not None)
    if summary["stop_reason"] == SIGNAL:
        if ranks.root:
            where = "" if Path(summary["run_dir"]) == Path(run_dir) else \
                f" of {summary['run_dir']}"
            say(f"interrupted; saved step {summary['step']}{where}. Resume with: charrnn train "
                f"{' '.join(map(str, corpus))} --out {run_dir} --resume")
        # (a rank the signal did not reach stopped with rank 0)
        raise typer.Exit(128 + (signum or signal.SIGINT))


def _train_members(member, first_opts, given: dict, corpus, run_dir: Path, device: str,
                   encoding: str, errors: str, parent, keep_vocab: bool, ranks, quiet: bool,
                   length_given: bool) -> tuple[dict, int]:
    """Train the run's member `member` and the members after it (members.py), each a Run in
    its directory; returns the last one's summary and the signal that stopped it (or 0). A
    signal during a member's training stops it there; before or between members, it stops the
    command as during any start-up (nothing half-written: every save is atomic)."""
    from .ensemble import inference_model
    from .members import member_dir, train_members
    from .train import MAX_EVAL_CHARS, Run, evaluate
    from .train import train as train_loop

    val = {}  # the held-out text and sizes of the last member, for the ensemble's validation
    signals = [0]

    def train_one(m) -> tuple[dict, object]:
        compiling = _compile_notice(quiet)
        with process.terminate_through_clean_ups():  # sizing and warming up may compile
            run = Run(corpus, member_dir(run_dir, m.k), m.opts, resume=m.resume,
                      encoding=encoding, errors=errors, device=device, compiling=compiling,
                      parent=parent if m.k == 1 else None, keep_vocab=keep_vocab, world=ranks,
                      length_given=length_given or m.k > 1, record_as=run_dir)
        val.update(ids=run.val_ids, batch_size=run.opts.batch_size, seq_len=run.opts.seq_len)
        reporter = _reporter(quiet)
        stop = process.StopOnSignal()
        try:
            return train_loop(run, reporter, should_stop=stop.requested,
                              output_lost=lambda: getattr(sys.stderr, "lost", None)), run.opts
        finally:
            reporter.close()
            stop.restore()
            signals[0] = stop.signum

    def val_loss(members) -> float | None:
        if len(val["ids"]) < 2:
            return None
        model = inference_model(members[0].config, [m.params for m in members])
        return evaluate(model, val["ids"], val["batch_size"], val["seq_len"], MAX_EVAL_CHARS)

    summary = train_members(member, first_opts, given, train_one=train_one, val_loss=val_loss,
                            run_dir=run_dir, world=ranks,
                            say=say if not quiet else lambda text: None)
    return summary, signals[0]


def _compile_notice(quiet: bool = False):
    from contextlib import nullcontext

    from .notice import SlowNotice
    if quiet:
        return nullcontext()
    return SlowNotice(say, "compiling the model's kernels (first run only: about a minute; "
                              "later runs load them from the cache)")


def _reporter(quiet: bool):
    from .report import PlainReporter, QuietReporter, RichReporter
    if quiet:
        return QuietReporter()
    console = stderr_console()
    return RichReporter(console) if console.is_terminal else PlainReporter(console)


# ---------------------------------------------------------------------------------------------
# sample


@app.command(epilog=examples(
    "charrnn sample --temperature 0.8 --length 1000 > out.txt",
    "charrnn sample runs/names --num-samples 10 --stop '\\n'",
    "charrnn sample runs/names --lines 10 --prime 'Ma' --temperature 0.7",
    "echo 'Once upon a time' | charrnn sample --seed 7 | head -c 300"))
def sample(
    model: Annotated[Optional[Path], typer.Argument(metavar="MODEL", help="Checkpoint file or run directory." + default_note("the most recent run"))] = None,
    length: Annotated[int, typer.Option(help="Characters to generate per sample (after the prime).")] = SampleOptions.length,
    temperature: Annotated[float, typer.Option(help="Randomness; 0 is greedy.")] = SampleOptions.temperature,
    top_k: Annotated[Optional[int], typer.Option(help="Draw only from the k most likely characters." + default_note("all"))] = None,
    top_p: Annotated[float, typer.Option(help="Draw only from the most likely characters whose probability adds up to p.")] = SampleOptions.top_p,
    argmax: Annotated[bool, typer.Option("--argmax", help="Greedy: always the most likely character (same as --temperature 0).")] = False,
    prime: Annotated[Optional[str], typer.Option(help="Text to start from (it is printed first). Text piped on stdin works too." + default_note("none"))] = None,
    prime_file: Annotated[Optional[Path], typer.Option(help="File whose text to start from ('-': stdin)." + default_note("none"))] = None,
    skip_unknown: Annotated[bool, typer.Option("--skip-unknown", help="Drop prime characters the model does not know instead of failing.")] = False,
    seed: Annotated[Optional[int], typer.Option(help="Same seed, same text." + default_note("random"))] = None,
    num_samples: Annotated[int, typer.Option(help="Samples to generate, as one batch.")] = SampleOptions.num_samples,
    stop: Annotated[Optional[str], typer.Option(help=r"End a sample just before this string (escapes like \n work)." + default_note("none"))] = None,
    separator: Annotated[str, typer.Option(help=r"Written after each sample when there are several.")] = r"\n",
    lines: Annotated[Optional[int], typer.Option(help="Print N complete lines, one per line, each as soon as it ends; a line that has no newline within --length characters, or is empty, is drawn again. The text of --prime after its last newline starts every line." + default_note("none"))] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
):
    """Generate text from a trained model, streaming to stdout."""
    check_device(device)
    if prime is not None and prime_file is not None:
        raise UsageProblem("give --prime or --prime-file, not both")
    opts = SampleOptions(length=length, temperature=0.0 if argmax else temperature,
                         top_k=top_k, top_p=top_p, seed=seed, num_samples=num_samples,
                         stop=None if stop is None else unescape(stop, "--stop"),
                         skip_unknown=skip_unknown, lines=lines)
    sep = unescape(separator, "--separator")
    from .loading import load_model
    from .sample import IncompleteLines, generate, generate_lines
    net, vocab, _ = load_model(model)
    _check_output_can_write(vocab.chars + (sep if num_samples > 1 else ""))
    from . import device as devices
    from .ensemble import members_of
    chosen = devices.resolve(device, net.config.cell, members_of(net))
    opts = dataclasses.replace(opts, prime=_prime_text(prime, prime_file))
    if chosen == "cuda":
        say(f"sampling on CUDA: {devices.gpu_name()}")
    try:
        if lines is None:
            _write_samples(_first_piece_cancels(generate(net, vocab, opts, device=chosen)),
                           num_samples, sep)
        else:
            _write_lines(_first_piece_cancels(generate_lines(net, vocab, opts, device=chosen)))
    except BrokenPipeError:
        process.quiet_broken_pipe()
    except UnicodeEncodeError as e:  # an encoding that _check_output_can_write let through
        raise Failure(process.unencodable_output(e)) from None
    except IncompleteLines as e:  # the lines made so far are out: the reader has them
        raise Failure(str(e)) from None


def _check_output_can_write(text: str) -> None:
    """Fail before the first character unless stdout's encoding can write every character a
    sample may hold (the model's vocabulary, the separator): PYTHONIOENCODING=ascii and a model
    of Chinese text would otherwise fail in the middle of a sample."""
    encoding = getattr(sys.stdout, "encoding", None)
    if not encoding:
        return
    try:
        text.encode(encoding, getattr(sys.stdout, "errors", None) or "strict")
    except UnicodeEncodeError as e:
        raise Failure(process.unencodable_output(e)) from None


def _first_piece_cancels(pieces):
    """The compile notice shows only while nothing has come out yet."""
    with _compile_notice() as notice:
        for piece in pieces:
            notice.cancel()
            yield piece


def _write_samples(pieces, num_samples: int, separator: str) -> None:
    out = sys.stdout
    if num_samples == 1:
        for _, piece in pieces:
            out.write(piece)
            out.flush()
    else:  # a batch: samples finish together, so print them whole, in order
        texts = [""] * num_samples
        for b, piece in pieces:
            texts[b] += piece
        out.write("".join(t + separator for t in texts))
    if out.isatty():
        out.write("\n")
    out.flush()


def _write_lines(lines) -> None:
    """Each line as it comes: it ends with its newline, so a terminal needs none after."""
    for line in lines:
        sys.stdout.write(line)
        sys.stdout.flush()


def _stdin_has_text() -> bool:
    """stdin is a pipe or a redirected file (not a terminal, not /dev/null as cron gives)."""
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError, AttributeError):  # closed, or replaced by a test harness
        return not sys.stdin.isatty() if sys.stdin else False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode)


def _prime_text(prime: Optional[str], prime_file: Optional[Path]) -> str:
    """--prime, else --prime-file ('-': stdin), else text piped on stdin, else nothing."""
    if prime is not None:
        return prime
    if prime_file is not None and str(prime_file) != "-":
        try:
            data, source = prime_file.read_bytes(), f"--prime-file {prime_file}"
        except OSError as e:
            raise Failure(f"--prime-file {prime_file}: {e.strerror or e}") from None
    elif prime_file is not None or _stdin_has_text():
        data, source = sys.stdin.buffer.read(), "the text on stdin"
    else:
        return ""
    try:
        return data.decode("utf-8-sig")  # a leading byte-order mark is not text
    except UnicodeDecodeError as e:
        raise Failure(f"{source} is not valid UTF-8 (byte {e.start})") from None


# ---------------------------------------------------------------------------------------------
# eval, info


@app.command("eval", epilog=examples(
    "charrnn eval runs/corpus held_out.txt",
    "charrnn eval runs/corpus chapter1.txt chapter2.txt --json",
    "charrnn eval runs/corpus other.txt --skip-unknown --json"))
def eval_(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="Checkpoint file or run directory.")],
    files: Annotated[list[Path], typer.Argument(metavar="FILE...", help="Texts to score, each on its own and, for several, in total.")],
    skip_unknown: Annotated[bool, typer.Option("--skip-unknown", help="Drop characters the model does not know instead of failing.")] = False,
    encoding: Annotated[str, typer.Option(help="Text encoding of the files.")] = "utf-8",
    errors: Annotated[str, typer.Option(help="On undecodable bytes: strict, replace or ignore.")] = "strict",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object: a file's result, or for several the total with each file's under \"files\".")] = False,
):
    """Loss of MODEL on each FILE and, for several, on all of them, in nats and bits per
    character. Every file is read before any is scored: a bad one fails the command at once."""
    check_text_codec(encoding, errors)
    from .loading import load_model
    from .scoring import score_files, total

    net, vocab, _ = load_model(model)
    with _compile_notice():
        results = score_files(net, vocab, files, skip_unknown=skip_unknown, encoding=encoding,
                              errors=errors, warn=say)
    if as_json:
        emit(json.dumps(results[0] if len(results) == 1 else total(results)))
        return
    for r in results:
        emit(_score_line(r["file"], r))
    if len(results) > 1:
        emit(_score_line(f"total of {len(results)} files", total(results)))


def _score_line(name: str, result: dict) -> str:
    return (f"{name}: {result['loss_nats']:.4f} nats/char ({result['loss_bits']:.4f} "
            f"bits/char) over {result['chars']:,} characters")


@app.command(epilog=examples("charrnn info", "charrnn info runs/corpus --json"))
def info(
    model: Annotated[Optional[Path], typer.Argument(metavar="MODEL", help="Checkpoint file or run directory." + default_note("the most recent run"))] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
):
    """Model configuration, size, vocabulary and training history: of the run (its latest.npz)
    and its best validation (best.npz, what sample and eval use) for a run directory, of the
    checkpoint itself for a file."""
    from .describe import describe, description_text
    d = describe(model)
    emit(json.dumps(d, ensure_ascii=False) if as_json else description_text(d))


# ---------------------------------------------------------------------------------------------
# bench


@app.command(epilog=examples("charrnn bench", "charrnn bench --cell gru --hidden 512 --json"))
def bench(
    cell: Annotated[str, typer.Option(help=choices_text() + ".")] = BenchConfig.cell,
    layers: Annotated[int, typer.Option(help="Stacked layers.")] = BenchConfig.layers,
    hidden: Annotated[int, typer.Option(help="Hidden units per layer.")] = BenchConfig.hidden,
    batch_size: Annotated[int, typer.Option(help="Streams per training step.")] = BenchConfig.batch_size,
    seq_len: Annotated[int, typer.Option(help="Characters per window.")] = BenchConfig.seq_len,
    iters: Annotated[int, typer.Option(help="Training steps per timing.")] = BenchConfig.iters,
    sample_chars: Annotated[int, typer.Option(help="Characters per sampling timing.")] = BenchConfig.sample_chars,
    vocab: Annotated[int, typer.Option(help="Characters in the vocabulary.")] = BenchConfig.vocab,
    batched_samples: Annotated[int, typer.Option(help="Streams of the batched sampling timing (the one beside the GEMM peak).")] = BenchConfig.batched_samples,
    sample_batches: Annotated[list[int], typer.Option(help="Also time sampling at this many streams (repeat the option).")] = list(BenchConfig.sample_batches),
    torch: Annotated[bool, typer.Option("--torch/--no-torch", help="Also time PyTorch doing the same work, when it is installed.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    device: Annotated[str, typer.Option(help="cpu or cuda (both sides run there).")] = "cpu",
):
    """Training and sampling speed on synthetic data (compilation excluded), beside PyTorch."""
    config = BenchConfig(cell=cell, layers=layers, hidden=hidden, batch_size=batch_size,
                         seq_len=seq_len, vocab=vocab, iters=iters, sample_chars=sample_chars,
                         batched_samples=batched_samples, sample_batches=tuple(sample_batches),
                         device=device)
    from .bench import (TORCH_CELLS, bench_charrnn, ratios, run_torch_subprocess, table,
                        torch_available)
    if device == "cuda":
        from .device import resolve
        resolve("cuda", cell)  # a clear error where CUDA cannot run
    result = bench_charrnn(config)
    if torch and torch_available() and cell in TORCH_CELLS:
        theirs = run_torch_subprocess(config)
        result = {**result, **ratios(result, theirs), "pytorch": theirs}
    emit(json.dumps(result) if as_json else table(result))


# ---------------------------------------------------------------------------------------------
# serve


@app.command(epilog=examples(
    "charrnn serve runs/corpus",
    "CHARRNN_API_KEY=secret charrnn serve runs/corpus --port 8080",
    "curl -s localhost:8000/v1/completions -d '{\"prompt\": \"The \", \"max_tokens\": 80}'"))
def serve(
    model: Annotated[Optional[Path], typer.Argument(metavar="MODEL", help="Checkpoint file or run directory." + default_note("the most recent run"))] = None,
    host: Annotated[str, typer.Option(help="Address to listen on (another than loopback lets other machines in).")] = ServeOptions.host,
    port: Annotated[int, typer.Option(help="Port to listen on; 0: any free one (it says which).")] = ServeOptions.port,
    max_batch: Annotated[int, typer.Option(help="Streams sampled together in one batch.")] = ServeOptions.max_batch,
    max_waiting: Annotated[int, typer.Option(help="Requests that may wait for room in the batch; more are told to retry (429).")] = ServeOptions.max_waiting,
    max_tokens: Annotated[int, typer.Option(help="The most characters one completion may ask for.")] = ServeOptions.max_tokens,
    api_key: Annotated[Optional[str], typer.Option(envvar="CHARRNN_API_KEY", help="Require Authorization: Bearer KEY on the API and /metrics (the page and /health stay open; or set CHARRNN_API_KEY)." + default_note("none"))] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
):
    """Answer many programs at once over HTTP: an OpenAI-compatible completions API (/v1),
    health, metrics and a playground page (/), concurrent requests sampled as one batch."""
    check_device(device)
    opts = ServeOptions(host=host, port=port, max_batch=max_batch, max_waiting=max_waiting,
                        max_tokens=max_tokens)
    from . import device as devices
    from .ensemble import members_of
    from .loading import load_model, model_path
    from .serve_process import bind, run, served_name

    path = model_path(model)
    net, vocab, ck = load_model(path)
    chosen = devices.resolve(device, net.config.cell, members_of(net))
    sock = bind(opts.host, opts.port)  # a port in use is one line, before anything compiles
    run(net, vocab, ck, served_name(path), sock, opts, api_key, chosen, say,
        compiling=_compile_notice())





@corpus_app.command("list", epilog=examples("charrnn corpus list"))
def corpus_list():
    """The classic corpora `charrnn corpus get` can fetch."""
    from .corpora import CATALOGUE
    for name, entry in CATALOGUE.items():
        emit(f"{name}\t{entry['chars']:,} chars\t{entry['description']}")


@corpus_app.command("get", epilog=examples(
    "charrnn corpus get tinyshakespeare",
    "charrnn corpus get tinyshakespeare --out data/shakespeare.txt"))
def corpus_get(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Name from `charrnn corpus list`.")],
    out: Annotated[Optional[Path], typer.Option(help="Where to write it." + default_note("NAME.txt"))] = None,
    url: Annotated[Optional[str], typer.Option(help="Fetch from this mirror instead (the sha256 is still checked)." + default_note("the catalogue's address"))] = None,
):
    """Download a classic corpus and check its sha256."""
    from .corpora import download
    dest = out or Path(f"{name}.txt")
    path = download(name, dest, url=url)
    say(f"wrote {path} (sha256 verified)")


# ---------------------------------------------------------------------------------------------


def main() -> None:
    """Entry point: every failure becomes one line on stderr and an exit status."""
    from .kernels import scipy_blas
    scipy_blas.enable()  # less start-up once the kernels are imported (see scipy_blas.py)
    process.replace_closed_streams()
    process.file_names_as_given()
    stderr = sys.stderr
    sys.stderr = process.MessageStream(stderr)
    try:
        _run_app()
    finally:
        sys.stderr = stderr


def _run_app() -> None:
    try:
        rv = app(standalone_mode=False)  # returns the exit code of --help and typer.Exit
    except (UsageProblem, OptionError) as e:
        _fail(str(e), 2)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):  # the parser's usage errors
            if not e.format_message():  # no arguments at all: the help is the answer
                sys.exit(e.exit_code)
            _fail(e.format_message(), e.exit_code)
        if isinstance(e, _user_errors()):
            _fail(str(e), 1, on_every_rank=getattr(e, "on_every_rank", False))
        if isinstance(e, OSError):
            _fail(f"{str(e.filename) + ': ' if e.filename else ''}{e.strerror or e}", 1)
        if isinstance(e, MemoryError):
            _fail("out of memory (a smaller model, batch or --num-samples needs less)", 1)
        if type(e).__name__ == "Abort":
            sys.exit(130)
        raise
    sys.exit(rv if isinstance(rv, int) else 0)


def console_main() -> None:
    """The `charrnn` command: main(), then, once stdout and stderr are flushed, the end of the
    process without the interpreter's teardown: unloading numba and LLVM module by module is a
    large part of a short `charrnn sample` (BENCHMARKS.md, "Start-up"). Nothing is lost by
    skipping it: every file charrnn writes is closed (checkpoints fsynced) before main()
    returns, the run lock is the OS's to release, and the worker threads are idle."""
    try:
        main()
        code = 0
    except SystemExit as e:
        code = process.exit_status(e)
    from . import distributed
    if distributed.finish():  # a process of several ends as MPI expects: os._exit after
        sys.exit(process.flush_streams(code))  # MPI_Finalize got ranks killed at random
    os._exit(process.flush_streams(code))


def _fail(message: str, code: int, on_every_rank: bool = False) -> None:
    """One line on stderr, then the exit. on_every_rank: every process of several failed
    alike at the same point; rank 0 says it and all end through MPI_Finalize."""
    # stderr is a MessageStream here: a write that fails does not raise
    from . import distributed
    rank = distributed.current_rank()
    if on_every_rank and rank:
        sys.exit(code)
    where = f" (rank {rank})" if rank else ""
    print(f"charrnn{where}: error: {process.one_line(message)}", file=sys.stderr)
    if not on_every_rank:
        distributed.abort(code)  # over several processes: the others may wait for this one
    sys.exit(code)


