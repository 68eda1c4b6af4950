"""Streams in halves of their units on two threads (charrnn/halves.py, cpu.generate_half):
the same ids, state and last ids to the bit as the whole rows on one thread, for one stream and
for several, every cell it runs, in float32 and float64; what happens when the halves give up,
or the partner is busy; and how the stepper chooses among the ways to run a chunk."""

import functools
import threading

import numpy as np
import pytest

from charrnn import halves
from charrnn.ensemble import Ensemble
from charrnn.kernels import cpu
from charrnn.model import Model, ModelConfig
from charrnn.parallel import StreamSplitter
from charrnn.stepper import HALVES, ROWS, WHOLE, CpuStepper, SplitChoice

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
SPLITTER = StreamSplitter(threads=2, min_rows=2)  # one pool of threads for every stepper here


def sampled(model: Model, way: str, draw=TOP_K_AND_P, B: int = 1) -> tuple[np.ndarray, ...]:
    """STEPS ids of B streams through the stepper's `_run` (WHOLE, ROWS or HALVES), with a
    prompt fed in the middle (to some of the streams, where there are several) and the draw's
    temperature, top_k and top_p (several streams: each its own, around those); the ids, h, c
    and the last ids."""
    stepper = CpuStepper(model, SPLITTER)
    stepper.arrange([], [np.array([4, 9, 1 + b % 5], np.int32) for b in range(B)])
    rng = np.random.default_rng(7)
    forced = np.full((STEPS, B), -1, np.int32)
    forced[10:14, :max(1, B // 3)] = [[1], [2], [3], [4]]
    x, out = np.arange(2, 2 + B, dtype=np.int32), np.zeros((STEPS, B), np.int32)
    temperature, top_k, top_p = (np.full(B, value) for value in draw)
    if B > 1:  # each stream its own options: greedy, a tighter top-k, no top-p, hotter
        temperature[0], top_k[1], top_p[2 % B], temperature[-1] = 0.0, 3, 1.0, 1.4
    stepper._run(way, stepper.h, stepper.c, x, forced, temperature, top_k.astype(np.int64),
                 top_p, rng.random((STEPS, B)), out)
    return out, stepper.h, stepper.c, x


def assert_same_bits(got: tuple, want: tuple) -> None:
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", HALVED_CELLS)
def test_halves_give_the_bits_of_one_thread(cell, dtype):
    model = model_of(cell, dtype)
    assert halves.halves_of(model) is not None
    whole, in_halves = sampled(model, WHOLE), sampled(model, HALVES)
    assert len(np.unique(whole[0])) > 5  # the draws are not all one id
    assert_same_bits(in_halves, whole)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B", [2, 5, 30])
@pytest.mark.parametrize("cell", HALVED_CELLS)
def test_several_streams_in_halves_give_the_bits_of_one_thread(cell, B, dtype):
    """Every stream's units in halves, then each thread the output layer and draws of half of
    the streams (5: 2 and 3): the same ids, state and last ids as all the rows on one thread and
    as shards of rows (where OpenBLAS's thread switch lets a batch split), each stream with its
    own draw and some fed a prompt."""
    model = model_of(cell, dtype)
    whole = sampled(model, WHOLE, B=B)
    assert len(np.unique(whole[0])) > 5
    assert_same_bits(sampled(model, HALVES, B=B), whole)
    assert_same_bits(sampled(model, ROWS, B=B), whole)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_halves_wide_enough_to_copy_the_rows_give_the_bits_of_one_thread(dtype):
    """Halves of enough panels that several streams' rows are copied for the tiles once for
    all of a matrix's gate blocks (cpu._own_columns), and one stream's are not copied."""
    model = model_of("lstm", dtype, hidden_panels=2 * cpu.PACK_MIN_PANELS + 1)
    cut = halves.halves_of(model)
    assert cpu.copies_rows(int(cut.units[1]) // panel_width(dtype))
    for B in (1, 17):
        whole = sampled(model, WHOLE, B=B)
        assert len(np.unique(whole[0])) > 5
        assert_same_bits(sampled(model, HALVES, B=B), whole)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("draw", [(1.0, 0, 1.0), (0.7, 0, 1.0), (0.0, 0, 1.0), (1.3, 0, 0.9)],
                         ids=["plain", "temperature", "greedy", "top-p"])
def test_halves_split_the_draw_over_a_large_vocabulary_to_the_bits_of_one_thread(draw, dtype):
    """Each half finds the largest of its logits and exp's its columns; the id drawn from the
    whole is the one thread's, at every kind of draw (the columns here: several panels each,
    the last one partial). Several streams over the same vocabulary draw whole rows."""
    model = model_of("lstm", dtype, vocab=333)
    assert list(halves.halves_of(model).columns)[1] > 2 * panel_width(dtype)
    whole, in_halves = sampled(model, WHOLE, draw), sampled(model, HALVES, draw)
    assert len(np.unique(whole[0])) > 3
    assert_same_bits(in_halves, whole)
    assert_same_bits(sampled(model, HALVES, draw, B=3), sampled(model, WHOLE, draw, B=3))


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


@pytest.mark.parametrize("B", [1, 4])
@pytest.mark.parametrize("cell", ["lstm", "gru-ln"])
def test_halves_that_give_up_hand_the_rest_to_one_thread(cell, B, monkeypatch):
    """Thresholds below any wait: the halves stop after their first step, and the stepper runs
    the rest on its own thread from the state they reached, to the same bits."""
    model = model_of(cell, np.float32)
    steps = []
    original = halves.generate

    def impatient(*args, **kwargs):
        steps.append(original(*args, give_up=-1, waiting_share=-1.0))
        return steps[-1]

    whole = sampled(model, WHOLE, B=B)
    monkeypatch.setattr(halves, "generate", impatient)
    given_up = sampled(model, HALVES, B=B)
    assert steps == [1]
    assert_same_bits(given_up, whole)


@pytest.mark.parametrize("B", [1, 3])
def test_a_busy_partner_leaves_the_chunk_to_one_thread(B, monkeypatch):
    """While another stepper's chunk holds the partner, a chunk runs whole, to the same bits."""
    model = model_of("gru", np.float32)
    steps = []
    original = halves.generate

    def counted(*args, **kwargs):
        steps.append(original(*args, **kwargs))
        return steps[-1]

    whole = sampled(model, WHOLE, B=B)
    monkeypatch.setattr(halves, "generate", counted)
    with halves._PARTNER_FREE:
        busy = sampled(model, HALVES, B=B)
    assert steps == [0]
    assert_same_bits(busy, whole)


def within(seconds: float, fn):
    """fn() on a thread of its own, its result or its exception; a test failure where it has
    not ended within `seconds` (a thread waiting for ever is not left to hang the tests)."""
    outcome = []

    def run() -> None:
        try:
            outcome.append(("result", fn()))
        except Exception as error:  # noqa: BLE001 (handed back to the test)
            outcome.append(("error", error))

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    runner.join(timeout=seconds)
    assert outcome, f"still running after {seconds} s: a half is waiting for the other"
    return outcome[0]


@pytest.mark.parametrize("failing", [0, 1])
def test_a_half_that_fails_lets_the_other_finish_and_the_error_is_raised(failing, monkeypatch):
    """Either thread's error ends the chunk with that error, not with the other thread waiting
    at a meeting for ever; the halves then run again, to the same bits as one thread."""
    model = model_of("lstm", np.float32)
    original = cpu.generate_half

    def failing_half(*args):
        if args[0] == failing:
            raise ValueError("a half failed")
        return original(*args)

    monkeypatch.setattr(cpu, "generate_half", failing_half)
    kind, error = within(120, lambda: sampled(model, HALVES, B=3))
    assert kind == "error" and str(error) == "a half failed"
    monkeypatch.setattr(cpu, "generate_half", original)
    kind, again = within(120, lambda: sampled(model, HALVES, B=3))
    assert kind == "result"
    assert_same_bits(again, sampled(model, WHOLE, B=3))


def test_a_chunk_is_timed_as_the_way_it_ran(monkeypatch):
    """Halves that find the partner busy run the chunk whole, and it counts as WHOLE's time;
    halves that give up partway count as HALVES', whose time they took."""
    model = model_of("gru", np.float32)
    stepper = CpuStepper(model, SPLITTER)
    stepper.arrange([], [np.array([4, 9], np.int32)] * 3)

    def run() -> str:
        n = 8
        return stepper._run(HALVES, stepper.h, stepper.c, np.full(3, 2, np.int32),
                            np.full((n, 3), -1, np.int32), np.ones(3), np.zeros(3, np.int64),
                            np.ones(3), np.random.default_rng(0).random((n, 3)),
                            np.zeros((n, 3), np.int32))

    assert run() == HALVES
    with halves._PARTNER_FREE:
        assert run() == WHOLE
    original = halves.generate
    steps = []

    def impatient(*args, **kwargs):  # thresholds below any wait: they stop after one step
        steps.append(original(*args, give_up=-1, waiting_share=-1.0))
        return steps[-1]

    monkeypatch.setattr(halves, "generate", impatient)
    assert run() == HALVES
    assert steps == [1]  # they gave up partway, and one thread ran the rest


def test_the_stepper_measures_halves_only_where_they_can_run():
    threads2 = StreamSplitter(threads=2, min_rows=2)
    model = model_of("lstm", np.float32)
    stepper = CpuStepper(model, threads2)
    assert set(stepper._split_choice(1).seconds) == {WHOLE, HALVES}
    if threads2.parts(4) > 1:  # shards of rows need OpenBLAS's thread switch
        assert set(stepper._split_choice(4).seconds) == {WHOLE, ROWS, HALVES}
    assert CpuStepper(model, StreamSplitter(threads=1))._split_choice(1) is None
    ensemble = Ensemble([model, model_of("lstm", np.float32)])
    assert CpuStepper(ensemble, threads2)._split_choice(1) is None
    assert HALVES not in (CpuStepper(ensemble, threads2)._split_choice(4) or
                          SplitChoice([WHOLE])).seconds


@pytest.mark.parametrize("cell, hidden, why", [
    ("gru-classic", 2, "its products are its own"),
    ("jordan", 2, "its products are its own"),
    ("lstm", 1, "fewer than two panels of units"),
])
def test_models_that_never_run_in_halves(cell, hidden, why):
    layers = 1 if cell == "jordan" else 2
    config = ModelConfig(vocab_size=9, cell=cell, layers=layers,
                         hidden=hidden * panel_width(np.float32))
    stepper = CpuStepper(Model(config), StreamSplitter(threads=2, min_rows=2))
    assert stepper._halves is None and stepper._split_choice(1) is None, why
    assert HALVES not in (stepper._split_choice(8) or SplitChoice([WHOLE])).seconds, why


def test_units_that_are_no_whole_number_of_panels_never_run_in_halves():
    config = ModelConfig(vocab_size=9, cell="gru", layers=1,
                         hidden=2 * panel_width(np.float32) + 1)
    assert halves.halves_of(Model(config)) is None


def test_the_halves_cut_units_and_columns_on_panel_boundaries():
    width = panel_width(np.float32)
    cut = halves.halves_of(model_of("lstm", np.float32, hidden_panels=5, vocab=65))
    np.testing.assert_array_equal(cut.units, [0, 2 * width, 5 * width])
    columns = -(-65 // width) // 2 * width  # half the output's panels, rounded down
    np.testing.assert_array_equal(cut.columns, [0, columns, 65])


def test_a_vocabulary_of_one_panel_leaves_one_thread_no_columns():
    """One output panel: the caller's thread computes no logits, the partner all of them, and
    both draw from them alike."""
    model = model_of("gru", np.float32, vocab=5)
    assert list(halves.halves_of(model).columns) == [0, 0, 5]
    assert_same_bits(sampled(model, HALVES), sampled(model, WHOLE))


def test_a_short_chunk_of_one_stream_runs_whole_and_a_long_one_as_measured(monkeypatch):
    """Halves that measured faster run a chunk of TIMED_STEPS steps or more; a shorter one (a
    prime, a first chunk) runs on one thread, where waking the partner would cost more than it
    saves."""
    model = model_of("gru", np.float32)
    stepper = CpuStepper(model, StreamSplitter(threads=2))
    monkeypatch.setattr(stepper._split_choice(1), "seconds", {WHOLE: 2.0, HALVES: 1.0})
    calls = []
    original = halves.generate

    def counted(*args, **kwargs):
        calls.append(len(args[-1]))  # the chunk's out: its steps
        return original(*args, **kwargs)

    monkeypatch.setattr(halves, "generate", counted)
    stepper.arrange([], [np.array([1, 2, 3], np.int32)])  # a prime of 3: whole
    for n in (SplitChoice.TIMED_STEPS - 1, SplitChoice.TIMED_STEPS):
        stepper.generate(np.array([2], np.int32), np.full((n, 1), -1, np.int32), np.ones(1),
                         np.zeros(1, np.int64), np.ones(1),
                         np.random.default_rng(0).random((n, 1)))
    assert calls == [SplitChoice.TIMED_STEPS]
