"""Text generation for the `sample` command: a batch of samples with one set of options, each
sample a slot of charrnn/stepper.py (temperature, top-k, top-p or greedy draws, a prime text,
stop strings), or, for `--lines`, complete lines drawn a slot each until there are enough. The
per-character loop runs inside @njit (kernels.cpu.generate), a chunk of characters per call, so
text streams out with no Python per character.

Seeds: sample 0 draws from np.random.default_rng(seed), as a single sample always did, so one
sample with --seed S gives the text it gave before slots. Sample b > 0 draws from its own
np.random.default_rng([seed, b]); before slots, a batch's samples shared one generator, so
batched samples' texts changed with the change to slots (they stay reproducible).
"""

import dataclasses
from collections.abc import Iterator

import numpy as np

from . import memory
from .ensemble import Ensemble, members_of
from .model import Model
from .options import SampleOptions
from .stepper import Slots, make_stepper, start_ids
from .tokenizer import Vocab


def sample_rng(seed: int | None, b: int) -> np.random.Generator:
    """The generator of sample b of a batch (seed None: fresh entropy for every sample)."""
    return np.random.default_rng(seed if b == 0 or seed is None else [seed, b])


def generate(model: Model | Ensemble, vocab: Vocab, opts: SampleOptions,
             device: str = "cpu") -> Iterator[tuple[int, str]]:
    """Yield (sample index, text) pieces as they are generated; a sample ends after
    opts.length new characters or just before its stop string. The prime comes first, as the
    model saw it. device "cuda": the state lives on the GPU and each chunk is one launch.

    What can be refused is checked here, before the first piece is asked for (a batch too large
    for the memory, prime characters the model does not know), so that a caller can fail
    before it prepares anything for the pieces."""
    B = opts.num_samples
    memory.check_fits(memory.sampling_bytes(model.config, B, members=members_of(model)),
                      f"sampling {B:,} streams at once", "--num-samples")
    start_ids(vocab, opts.prime, opts.skip_unknown)  # raises UnknownCharacters now
    return _pieces(model, vocab, opts, device)


def _pieces(model: Model | Ensemble, vocab: Vocab, opts: SampleOptions,
            device: str) -> Iterator[tuple[int, str]]:
    slots = Slots(make_stepper(model, device), vocab)
    index = {slots.fill(opts, sample_rng(opts.seed, b)): b for b in range(opts.num_samples)}
    while slots.active:
        for piece in slots.step():
            if piece.text:
                yield index[piece.slot], piece.text


# --lines: lines drawn at once. Enough to keep a batch's rows busy (lines end at different
# times); a cap, so that asking for a million names streams them rather than making a million
# streams' state.
LINE_SLOTS = 64
DROPPED_PER_LINE = 10  # attempts without a line allowed per line asked for, before giving up


class IncompleteLines(Exception):
    """--lines gave up: too many attempts ended without a complete line."""


def generate_lines(model: Model | Ensemble, vocab: Vocab, opts: SampleOptions,
                   device: str = "cpu") -> Iterator[str]:
    """Yield opts.lines complete lines, each ending with its newline, as each is complete (the
    order in which they end, not the order they were started in).

    Each attempt is a slot that starts from the prime (or, without one, a newline) and ends at
    the first newline it draws. Its line is the prime's text after the prime's last newline
    (what comes before is context: fed, not printed), then what the slot drew. An attempt
    that draws opts.length characters without a newline, or whose line is empty, is dropped
    and another one drawn; after DROPPED_PER_LINE * opts.lines dropped attempts this raises
    IncompleteLines. Attempt i draws from sample_rng(opts.seed, i), so a seed gives the same
    lines in the same order.

    As for generate, what can be refused is checked before the first line is asked for."""
    if opts.lines is None:
        raise ValueError("generate_lines needs opts.lines")
    B = min(opts.lines, LINE_SLOTS)
    memory.check_fits(memory.sampling_bytes(model.config, B, members=members_of(model)),
                      f"sampling {B:,} lines at once", "--lines")
    start_ids(vocab, opts.prime, opts.skip_unknown)  # raises UnknownCharacters now
    return _lines(model, vocab, opts, B, device)


def _lines(model: Model | Ensemble, vocab: Vocab, opts: SampleOptions, B: int,
           device: str) -> Iterator[str]:
    slots = Slots(make_stepper(model, device), vocab)
    attempt = dataclasses.replace(opts, stop="\n", lines=None)
    texts: dict[int, str] = {}  # each active slot's text so far, its prime's included
    started = done = too_long = empty = 0
    while done < opts.lines:
        # never more slots than lines still wanted: every line that completes is printed
        while len(texts) < min(opts.lines - done, B):
            texts[slots.fill(attempt, sample_rng(opts.seed, started))] = ""
            started += 1
        for piece in slots.step():
            texts[piece.slot] += piece.text
            if piece.finish_reason is None:
                continue
            text = texts.pop(piece.slot)
            line = text[text.rfind("\n") + 1:]  # drawn text has no newline: the stop cut it
            if piece.finish_reason == "length":
                too_long += 1
            elif not line:
                empty += 1
            else:
                done += 1
                yield line + "\n"
        # (the step that makes the last line drops none: each of its slots made a wanted line)
        if too_long + empty >= DROPPED_PER_LINE * opts.lines:
            advice = "; a larger --length lets longer lines end" if too_long else ""
            raise IncompleteLines(
                f"--lines: gave up after {too_long + empty:,} attempts that made no line "
                f"({too_long:,} drew --length {opts.length:,} characters without a newline, "
                f"{empty:,} an empty line), with {done:,} of {opts.lines:,} lines made{advice}")
