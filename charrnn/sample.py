"""Text generation for the `sample` command: a batch of samples with one set of options, each
sample a slot of charrnn/stepper.py (temperature, top-k, top-p or greedy draws, a prime text,
stop strings). The per-character loop runs inside @njit (kernels.cpu.generate), a chunk of
characters per call, so text streams out with no Python per character.

Seeds: sample 0 draws from np.random.default_rng(seed), as a single sample always did, so one
sample with --seed S gives the text it gave before slots. Sample b > 0 draws from its own
np.random.default_rng([seed, b]); before slots, a batch's samples shared one generator, so
batched samples' texts changed with the change to slots (they stay reproducible).
"""

from collections.abc import Iterator

import numpy as np

from . import memory
from .model import Model
from .options import SampleOptions
from .stepper import Slots, make_stepper, start_ids
from .tokenizer import Vocab


def sample_rng(seed: int | None, b: int) -> np.random.Generator:
    """The generator of sample b of a batch (seed None: fresh entropy for every sample)."""
    return np.random.default_rng(seed if b == 0 or seed is None else [seed, b])


def generate(model: Model, vocab: Vocab, opts: SampleOptions,
             device: str = "cpu") -> Iterator[tuple[int, str]]:
    """Yield (sample index, text) pieces as they are generated; a sample ends after
    opts.length new characters or just before its stop string. The prime comes first, as the
    model saw it. device "cuda": the state lives on the GPU and each chunk is one launch.

    What can be refused is checked here, before the first piece is asked for (a batch too large
    for the memory, prime characters the model does not know), so that a caller can fail
    before it prepares anything for the pieces."""
    B = opts.num_samples
    memory.check_fits(memory.sampling_bytes(model.config, B), f"sampling {B:,} streams at once",
                      "--num-samples")
    start_ids(vocab, opts.prime, opts.skip_unknown)  # raises UnknownCharacters now
    return _pieces(model, vocab, opts, device)


def _pieces(model: Model, vocab: Vocab, opts: SampleOptions,
            device: str) -> Iterator[tuple[int, str]]:
    slots = Slots(make_stepper(model, device), vocab)
    index = {slots.fill(opts, sample_rng(opts.seed, b)): b for b in range(opts.num_samples)}
    while slots.active:
        for piece in slots.step():
            if piece.text:
                yield index[piece.slot], piece.text
