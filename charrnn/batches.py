"""Truncated-BPTT batching: B contiguous streams over the id array, cut into windows of T.

Stream b reads ids[b * S : (b + 1) * S] with S = len(ids) // B, so the hidden state at the end of
one window is the right initial state for the next window of the same stream.
"""

import numpy as np


def stream_matrix(ids: np.ndarray, B: int) -> np.ndarray:
    """The ids as B contiguous streams, (S, B) with S = len(ids) // B (the tail is dropped).

    A view, not a copy: a memory-mapped corpus stays on disk, and only the windows that are
    read (copied to contiguous arrays by the model) come into memory."""
    S = len(ids) // B
    if S < 2:
        raise ValueError(f"{len(ids)} characters are too few for {B} streams")
    return ids[:S * B].reshape(B, S).T


def window(streams: np.ndarray, s: int, T: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of the window starting at row s of (S, B) streams, each (t, B) with
    t = min(T, S - 1 - s): targets are the inputs shifted by one, so the last window of the
    streams may be shorter than T."""
    t = min(T, streams.shape[0] - 1 - s)
    return streams[s:s + t], streams[s + 1:s + 1 + t]


def windows(streams: np.ndarray, T: int, start: int = 0):
    """Yield every window of the streams from row ``start`` on (see window)."""
    for s in range(start, streams.shape[0] - 1, T):
        yield window(streams, s, T)


LINES_PER_BLOCK = 1 << 16  # lines gathered at a time when they are shuffled


def line_bounds(ids: np.ndarray, newline: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the complete lines of ids, each with its newline. Text after the last
    newline (a line cut by the held-out part) is not among them."""
    ends = np.flatnonzero(np.asarray(ids) == newline) + 1
    return np.concatenate([[0], ends[:-1]]).astype(np.int64), ends


def shuffled_lines(ids: np.ndarray, bounds: tuple[np.ndarray, np.ndarray],
                   rng: np.random.Generator) -> np.ndarray:
    """The complete lines of ids (their bounds from line_bounds) in an order drawn from rng,
    then the text after the last of them (so no line is joined to a fragment), as one array of
    the same length."""
    starts, ends = bounds
    order = rng.permutation(len(starts))
    out = np.empty(len(ids), ids.dtype)
    at = 0
    for first in range(0, len(order), LINES_PER_BLOCK):
        chosen = order[first:first + LINES_PER_BLOCK]
        lengths = ends[chosen] - starts[chosen]
        n = int(lengths.sum())
        # each output position's source: its line's start plus its offset within the line
        offsets = np.arange(n) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out[at:at + n] = ids[np.repeat(starts[chosen], lengths) + offsets]
        at += n
    out[at:] = ids[at:]  # the fragment after the last newline: as many ids as are left
    return out
