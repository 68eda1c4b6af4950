"""Text generation: temperature, top-k, top-p or greedy draws, a prime text, stop strings and
batched samples. The per-character loop runs inside @njit (kernels.cpu.generate), a chunk of
characters per call, so text streams out with no Python per character.
"""

from collections.abc import Iterator

import numpy as np

from . import memory
from .kernels import cpu
from .model import Model
from .options import SampleOptions
from .tokenizer import Vocab

FIRST_CHUNK = 16  # small first chunk: the first characters appear at once
CHUNK = memory.SAMPLE_CHUNK


class _Stepper:
    """State and scratch arrays for B streams advancing one character at a time."""

    def __init__(self, model: Model, B: int):
        cfg = model.config
        self.model = model
        self.cell = cfg.kernel_id
        self.h, self.c = model.zero_state(B)
        GH, H, dtype = cfg.gates * cfg.hidden, cfg.hidden, model.dtype
        self.scratch = (np.zeros((B, GH), dtype), np.zeros((B, GH), dtype),
                        np.zeros((B, cfg.spec.stored_acts * H), dtype),
                        np.zeros((B, H), dtype), np.zeros((B, H), dtype),
                        np.zeros((B, cfg.vocab_size), dtype))
        self.probs = np.zeros(cfg.vocab_size, np.float64)

    def feed(self, ids: np.ndarray) -> None:
        """ids: (n, B)."""
        if ids.shape[0] == 0:  # no prime: skip loading the feed kernel (~40 ms of start-up)
            return
        m = self.model
        cpu.feed(self.cell, m.params, m.layout.offsets, np.ascontiguousarray(ids, np.int32),
                 self.h, self.c, *self.scratch)

    def generate(self, x, opts: SampleOptions, uniforms: np.ndarray) -> np.ndarray:
        """(n, B) new ids; x (B,) int32 is updated to the last of them."""
        m = self.model
        out = np.zeros(uniforms.shape, np.int32)
        cpu.generate(self.cell, m.params, m.layout.offsets, x, self.h, self.c,
                     float(opts.temperature), int(opts.top_k or 0), float(opts.top_p), uniforms, out,
                     *self.scratch, self.probs)
        return out


def start_ids(vocab: Vocab, prime: str, skip_unknown: bool) -> tuple[np.ndarray, str]:
    """The ids the sample starts from and the text to print first: the prime as the model sees
    it (unknown characters dropped with skip_unknown), else a newline (or id 0 if the
    vocabulary has none), which is not printed."""
    if prime:
        ids = vocab.encode(prime, skip_unknown=skip_unknown)
        if len(ids):
            return ids.astype(np.int32), vocab.decode(ids)
    nl = np.searchsorted(vocab.codepoints, ord("\n"))
    has_nl = nl < len(vocab) and vocab.codepoints[nl] == ord("\n")
    return np.array([nl if has_nl else 0], np.int32), ""


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
    ids, printed_prime = start_ids(vocab, opts.prime, opts.skip_unknown)
    return _pieces(model, vocab, opts, device, ids, printed_prime)


def _pieces(model: Model, vocab: Vocab, opts: SampleOptions, device: str, ids: np.ndarray,
            printed_prime: str) -> Iterator[tuple[int, str]]:
    B = opts.num_samples
    if device == "cuda":
        from .cuda.sample import CudaStepper
        stepper = CudaStepper(model, B)
    else:
        stepper = _Stepper(model, B)
    stepper.feed(np.repeat(ids[:-1, None], B, axis=1))
    x = np.full(B, ids[-1], np.int32)
    rng = np.random.default_rng(opts.seed)
    if printed_prime:
        for b in range(B):
            yield b, printed_prime
    pending = [""] * B  # text held back because it may be the start of the stop string
    done = [False] * B
    remaining, chunk = opts.length, FIRST_CHUNK
    while remaining > 0 and not all(done):
        n = min(chunk, remaining)
        out = stepper.generate(x, opts, rng.random((n, B)))
        for b in range(B):
            if done[b]:
                continue
            text = pending[b] + vocab.decode(out[:, b])
            emit = text
            if opts.stop is not None:
                cut = text.find(opts.stop)
                if cut >= 0:
                    emit, done[b] = text[:cut], True
                else:
                    emit = text[:max(0, len(text) - len(opts.stop) + 1)]
                pending[b] = text[len(emit):] if not done[b] else ""
            if emit:
                yield b, emit
        remaining -= n
        chunk = CHUNK
    for b in range(B):
        if pending[b]:
            yield b, pending[b]
