"""Streams' sampling in halves of their units on two threads, the caller's and a partner thread
(kernels/cpu.py's generate_half): each takes half of every layer's hidden units for every
stream; then, for one stream, half of the output columns, and for several, the output layer and
the draws of half of the streams.

One stream has one row to multiply by each matrix: too little work to split by streams
(parallel.StreamSplitter), and at 2 x 256 and up its weights outgrow one core's cache, so one
core streams them from L3 or memory at its own bandwidth. A few streams split by streams leave
each thread a thin product that reads all of every matrix for a few rows; many streams of a
wide model read 48 MB of weights a step on each core (2 x 1024). Split by units, each core
reads half of every matrix for all the rows, and the two meet a few times a step. The halves
give the same bits as one thread (generate_half), so which runs is a matter of speed only: the
stepper measures every way on its chunks (stepper.SplitChoice), and a chunk whose threads keep
waiting on each other (the machine busy with other work) hands its remaining steps to one
thread.
"""

import functools
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from typing import NamedTuple

import numpy as np

from .kernels import cpu
from .model import Model

_PARTNER_FREE = threading.Lock()  # one chunk at a time runs in halves; another runs whole
ALL_MET = np.iinfo(np.int64).max  # a thread's meeting count that every meeting has reached


@functools.cache
def _partner() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(1, thread_name_prefix="charrnn-half")


class Halves(NamedTuple):
    """Where a model's streams split: hidden units units[0]..units[1] to the caller's thread
    and units[1]..units[2] to the partner, and, for one stream, the output columns likewise
    (several streams split their output rows instead), each cut on a panel boundary
    (matmul_packed multiplies whole panels)."""

    units: np.ndarray
    columns: np.ndarray


def halves_of(model: Model) -> Halves | None:
    """The model's Halves, or None where its width is not whole panels for each half. (The
    stepper never asks for the cells whose products are their own: stepper.UNSPLIT_CELLS.)"""
    cfg = model.config
    width = cpu.PANEL_BYTES // model.dtype.itemsize  # columns in a panel
    H, V = cfg.hidden, cfg.vocab_size
    if H % width or H < 2 * width:
        return None
    return Halves(np.array([0, H // width // 2 * width, H], np.int64),
                  np.array([0, min(-(-V // width) // 2 * width, V), V], np.int64))


def generate(model: Model, halves: Halves, flat_panels: np.ndarray, panel_offsets: np.ndarray,
             h: np.ndarray, c: np.ndarray, x: np.ndarray, forced: np.ndarray,
             temperature: np.ndarray, top_k: np.ndarray, top_p: np.ndarray,
             uniforms: np.ndarray, out: np.ndarray,
             give_up: int = cpu.GIVE_UP_CYCLES,
             waiting_share: float = cpu.WAITING_SHARE) -> int:
    """cpu.generate for B streams of one model (h, c (L, B, H), x (B,), out (n, B)...) in
    halves of their units. Returns the steps done: all n; fewer where the threads kept waiting
    on each other (give_up and waiting_share as cpu.generate_half's), the state and x then
    those after the steps done; or 0 where the partner is busy with another stepper's chunk."""
    if not _PARTNER_FREE.acquire(blocking=False):
        return 0
    try:
        cfg, dtype = model.config, model.dtype
        B, V = len(x), cfg.vocab_size
        hs = np.empty((2, *h.shape), dtype)  # (2, L, B, H): read one, write the other, each step
        hs[0] = h
        # one stream: each thread its own copy of the last id (both draw the same) and one
        # array of probabilities (each half exp's its columns); several: one array of ids
        # (each thread writes its streams') and each thread its own probabilities
        if B == 1:
            ids, probs = [x.copy(), x.copy()], [np.zeros(V, np.float64)] * 2
        else:
            ids, probs = [x.copy()] * 2, [np.zeros(V, np.float64), np.zeros(V, np.float64)]
        shared = (cfg.kernel_id, model.params, model.layout.offsets, flat_panels,
                  panel_offsets)
        sync = np.zeros((2, 16), np.int64)  # a cache line per thread
        state = (hs, c, forced, temperature, top_k, top_p, uniforms, out, sync,
                 np.zeros((_normalised_rows(model, B), cfg.gates * cfg.hidden), dtype),
                 np.zeros((B, V), dtype))
        # every argument made before the partner starts: its Python work would wait for the
        # GIL while this thread makes its own
        mine, theirs = ((me, halves.units, halves.columns, give_up, waiting_share, *shared,
                         ids[me], *state, probs[me], *_scratch(model, halves, me, B))
                        for me in (0, 1))
        partner = _partner().submit(_half, sync, theirs)
        try:
            steps = _half(sync, mine)
        except BaseException:
            wait([partner])  # it runs to its end (its meetings all pass), then this one raises
            raise
        if partner.result() != steps:
            raise RuntimeError("the halves of a sampling step disagree on the steps done")
        h[:] = hs[steps % 2]
        if steps:
            x[:] = out[steps - 1]
        return steps
    finally:
        _PARTNER_FREE.release()


def _half(sync: np.ndarray, args: tuple) -> int:
    """cpu.generate_half(*args) on this thread (args[0]: which half). Should it raise, it first
    marks every meeting reached, so that the other thread runs to its end rather than waiting
    for ever (its numbers are then of no use, and the error is raised)."""
    try:
        return cpu.generate_half(*args)
    except BaseException:
        sync[args[0], 0] = ALL_MET
        raise


def _normalised_rows(model: Model, B: int) -> int:
    """Rows of generate_half's whole input projections (`shared`, `row`): B for gru-ln, which
    normalises whole rows, none for the other cells, which never use them."""
    return B if model.config.kernel_id == cpu.GRU_LN else 0


def _scratch(model: Model, halves: Halves, me: int, B: int) -> tuple[np.ndarray, ...]:
    """One thread's own arrays for generate_half on B streams: extra (L, E * Hm) (each layer's
    extra vector, this half's units of each of its E blocks), row (B or 0, GH:
    _normalised_rows), xg, gates (B, G * Hm), act (B, S * Hm), h_prev, c_prev, h_new, c_new
    (B, Hm), powers (V,) int64."""
    cfg, dtype = model.config, model.dtype
    H, V, G = cfg.hidden, cfg.vocab_size, cfg.gates
    u0, u1 = int(halves.units[me]), int(halves.units[me + 1])
    offs, slots = model.layout.offsets, cpu.SLOTS_PER_LAYER
    extras = [model.params[offs[slots * layer + 3]:offs[slots * layer + 4]]
              for layer in range(cfg.layers)]
    E = extras[0].size // H
    extra = np.zeros((cfg.layers, E * (u1 - u0)), dtype)
    for layer, vector in enumerate(extras):
        extra[layer] = vector.reshape(E, H)[:, u0:u1].ravel()
    Hm = u1 - u0
    return (extra, np.zeros((_normalised_rows(model, B), G * H), dtype),
            np.zeros((B, G * Hm), dtype),
            np.zeros((B, G * Hm), dtype), np.zeros((B, cfg.spec.stored_acts * Hm), dtype),
            *(np.zeros((B, Hm), dtype) for _ in range(4)), np.zeros(V, np.int64))
