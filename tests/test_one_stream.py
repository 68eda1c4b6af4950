"""One stream in halves on two threads (charrnn/one_stream.py, cpu.generate_half): the same
ids, state and last id to the bit as the whole row on one thread, for every cell it runs, in
float32 and float64; and what happens when the halves give up, or the partner is busy."""

import functools

import numpy as np
import pytest

from charrnn import one_stream
from charrnn.ensemble import Ensemble
from charrnn.kernels import cpu
from charrnn.model import Model, ModelConfig
from charrnn.parallel import StreamSplitter
from charrnn.stepper import CpuStepper

HALVED_CELLS = ["lstm", "gru", "gru-ln", "rnn", "irnn", "lstm-coupled", "lstm-peephole"]
STEPS = 40


def panel_width(dtype) -> int:
    return cpu.PANEL_BYTES // np.dtype(dtype).itemsize


def model_of(cell: str, dtype, hidden_panels: int = 3, vocab: int = 37) -> Model:
    """Three panels of units (halves of one and two panels: uneven) and a vocabulary that is
    no whole number of panels; weights scaled up so that the draws depend on every bit."""
    config = ModelConfig(vocab_size=vocab, cell=cell, layers=2,
                         hidden=hidden_panels * panel_width(dtype))
    model = Model(config, dtype=dtype, seed=3)
    model.params[:] *= 1 if cell == "irnn" else 3  # (the IRNN's ReLUs grow without bound)
    return model


TOP_K_AND_P = (0.9, 12, 0.97)  # temperature, top_k, top_p


def sampled(model: Model, parts: int, draw=TOP_K_AND_P) -> tuple[np.ndarray, ...]:
    """STEPS ids of one stream through the stepper's `_run` (parts 2: in halves), with a prompt
    fed in the middle and the draw's temperature, top_k and top_p; the ids, h, c and the last
    id."""
    stepper = CpuStepper(model, StreamSplitter(threads=2))
    stepper.arrange([], [np.array([4, 9, 1], np.int32)])
    rng = np.random.default_rng(7)
    forced = np.full((STEPS, 1), -1, np.int32)
    forced[10:14, 0] = [1, 2, 3, 4]
    x, out = np.array([2], np.int32), np.zeros((STEPS, 1), np.int32)
    temperature, top_k, top_p = draw
    stepper._run(parts, stepper.h, stepper.c, x, forced, np.array([temperature]),
                 np.array([top_k]), np.array([top_p]), rng.random((STEPS, 1)), out)
    return out, stepper.h, stepper.c, x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", HALVED_CELLS)
def test_halves_give_the_bits_of_one_thread(cell, dtype):
    model = model_of(cell, dtype)
    assert one_stream.halves_of(model) is not None
    whole, halves = sampled(model, 1), sampled(model, 2)
    assert len(np.unique(whole[0])) > 5  # the draws are not all one id
    for got, want in zip(halves, whole):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("draw", [(1.0, 0, 1.0), (0.7, 0, 1.0), (0.0, 0, 1.0), (1.3, 0, 0.9)],
                         ids=["plain", "temperature", "greedy", "top-p"])
def test_halves_split_the_draw_over_a_large_vocabulary_to_the_bits_of_one_thread(draw, dtype):
    """Each half finds the largest of its logits and exp's its columns; the id drawn from the
    whole is the one thread's, at every kind of draw (the columns here: several panels each,
    the last one partial)."""
    model = model_of("lstm", dtype, vocab=333)
    assert list(one_stream.halves_of(model).columns)[1] > 2 * panel_width(dtype)
    whole, halves = sampled(model, 1, draw), sampled(model, 2, draw)
    assert len(np.unique(whole[0])) > 3
    for got, want in zip(halves, whole):
        np.testing.assert_array_equal(got, want)


def first_largest(a: np.ndarray) -> int:
    """A plain loop's answer: the best so far from a[0], replaced only by a larger value."""
    best = 0
    for k in range(1, a.size):
        if a[k] > a[best]:
            best = k
    return best


def test_the_largest_logit_of_two_ranges_is_the_largest_of_the_whole():
    """Ties (the first wins), infinities, signed zeros and NaN (never the largest, but a[0]'s
    NaN stays the answer) cut anywhere: the better of the two ranges' answers is the loop's."""
    rng = np.random.default_rng(5)
    values = np.array([-np.inf, np.inf, np.nan, 0.0, -0.0, 1.0, 2.0, -3.0], np.float32)
    checked_nan_first = 0
    for trial in range(3000):
        V = int(rng.integers(2, 80))
        a = rng.choice(values, V)
        cut = int(rng.integers(0, V + 1))
        first = cpu._first_max(a, 0, cut) if cut > 0 else -1
        second = cpu._first_max(a, cut, V) if cut < V else -1
        assert cpu._better(a, first, second) == first_largest(a), (a, cut)
        assert cpu._first_max(a, 0, V) == first_largest(a)
        checked_nan_first += bool(np.isnan(a[0]) and np.nanmax(a) > -np.inf)
    assert checked_nan_first > 50


def test_the_largest_value_in_eight_chains_is_one_loops():
    """cpu._max_value keeps eight running maxima side by side: over any range (lengths on
    both sides of a multiple of eight) it gives the value of one loop from a[lo] (Python's max:
    a NaN a[lo] stays, later NaN are skipped), float32 and float64."""
    rng = np.random.default_rng(6)
    values = np.array([-np.inf, np.inf, np.nan, 0.0, -0.0, 1.0, 2.0, -3.0])
    for trial in range(3000):
        V = int(rng.integers(1, 60))
        a = (rng.choice(values, V) if trial % 2 else rng.standard_normal(V)).astype(
            np.float32 if trial % 4 < 2 else np.float64)
        lo = int(rng.integers(0, V))
        hi = int(rng.integers(lo + 1, V + 1))
        want = functools.reduce(max, a[lo:hi].tolist())
        got = cpu._max_value(a, lo, hi)
        assert got == want or (np.isnan(got) and np.isnan(want)), (a, lo, hi, got, want)


@pytest.mark.parametrize("cell", ["lstm", "gru-ln"])
def test_halves_that_give_up_hand_the_rest_to_one_thread(cell, monkeypatch):
    """Thresholds below any wait: the halves stop after their first step, and the stepper runs
    the rest on its own thread from the state they reached, to the same bits."""
    model = model_of(cell, np.float32)
    steps = []
    original = one_stream.generate

    def impatient(*args, **kwargs):
        steps.append(original(*args, give_up=-1, waiting_share=-1.0))
        return steps[-1]

    whole = sampled(model, 1)
    monkeypatch.setattr(one_stream, "generate", impatient)
    given_up = sampled(model, 2)
    assert steps == [1]
    for got, want in zip(given_up, whole):
        np.testing.assert_array_equal(got, want)


def test_a_busy_partner_leaves_the_chunk_to_one_thread(monkeypatch):
    """While another stepper's chunk holds the partner, a chunk runs whole, to the same bits."""
    model = model_of("gru", np.float32)
    steps = []
    original = one_stream.generate

    def counted(*args, **kwargs):
        steps.append(original(*args, **kwargs))
        return steps[-1]

    whole = sampled(model, 1)
    monkeypatch.setattr(one_stream, "generate", counted)
    with one_stream._PARTNER_FREE:
        busy = sampled(model, 2)
    assert steps == [0]
    for got, want in zip(busy, whole):
        np.testing.assert_array_equal(got, want)


def test_the_stepper_measures_halves_for_one_stream_only_where_they_can_run():
    threads2 = StreamSplitter(threads=2)
    model = model_of("lstm", np.float32)
    choice = CpuStepper(model, threads2)._split_choice(1)
    assert choice is not None and set(choice.seconds) == {1, 2}
    assert CpuStepper(model, StreamSplitter(threads=1))._split_choice(1) is None
    ensemble = Ensemble([model, model_of("lstm", np.float32)])
    assert CpuStepper(ensemble, threads2)._split_choice(1) is None


@pytest.mark.parametrize("cell, hidden, why", [
    ("gru-classic", 2, "its products are its own"),
    ("jordan", 2, "its products are its own"),
    ("lstm", 1, "fewer than two panels of units"),
])
def test_models_that_never_run_in_halves(cell, hidden, why):
    layers = 1 if cell == "jordan" else 2
    config = ModelConfig(vocab_size=9, cell=cell, layers=layers,
                         hidden=hidden * panel_width(np.float32))
    stepper = CpuStepper(Model(config), StreamSplitter(threads=2))
    assert stepper._halves is None and stepper._split_choice(1) is None, why


def test_units_that_are_no_whole_number_of_panels_never_run_in_halves():
    config = ModelConfig(vocab_size=9, cell="gru", layers=1,
                         hidden=2 * panel_width(np.float32) + 1)
    assert one_stream.halves_of(Model(config)) is None


def test_the_halves_cut_units_and_columns_on_panel_boundaries():
    width = panel_width(np.float32)
    halves = one_stream.halves_of(model_of("lstm", np.float32, hidden_panels=5, vocab=65))
    np.testing.assert_array_equal(halves.units, [0, 2 * width, 5 * width])
    cut = -(-65 // width) // 2 * width  # half the output's panels, rounded down
    np.testing.assert_array_equal(halves.columns, [0, cut, 65])


def test_a_vocabulary_of_one_panel_leaves_one_thread_no_columns():
    """One output panel: the caller's thread computes no logits, the partner all of them, and
    both draw from them alike."""
    model = model_of("gru", np.float32, vocab=5)
    assert list(one_stream.halves_of(model).columns) == [0, 0, 5]
    whole, halves = sampled(model, 1), sampled(model, 2)
    for got, want in zip(halves, whole):
        np.testing.assert_array_equal(got, want)



def test_a_short_chunk_of_one_stream_runs_whole_and_a_long_one_as_measured(monkeypatch):
    """Halves that measured faster run a chunk of TIMED_STEPS steps or more; a shorter one (a
    prime, a first chunk) runs on one thread, where waking the partner would cost more than it
    saves."""
    from charrnn.stepper import SplitChoice
    model = model_of("gru", np.float32)
    stepper = CpuStepper(model, StreamSplitter(threads=2))
    monkeypatch.setattr(stepper._split_choice(1), "seconds", {1: 2.0, 2: 1.0})  # halves faster
    calls = []
    original = one_stream.generate

    def counted(*args, **kwargs):
        calls.append(len(args[-1]))  # the chunk's out: its steps
        return original(*args, **kwargs)

    monkeypatch.setattr(one_stream, "generate", counted)
    stepper.arrange([], [np.array([1, 2, 3], np.int32)])  # a prime of 3: whole
    for n in (SplitChoice.TIMED_STEPS - 1, SplitChoice.TIMED_STEPS):
        stepper.generate(np.array([2], np.int32), np.full((n, 1), -1, np.int32), np.ones(1),
                         np.zeros(1, np.int64), np.ones(1),
                         np.random.default_rng(0).random((n, 1)))
    assert calls == [SplitChoice.TIMED_STEPS]
