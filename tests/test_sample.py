"""The sampler: the draw follows the intended distribution, and generation honours the prime,
the seed, stop strings and batches; slots with their own options, filled and freed mid-run,
each get the text they get alone."""

import numpy as np
import pytest

from charrnn import CELL_NAMES
from charrnn.ensemble import Ensemble
from charrnn.kernels import cpu
from charrnn.model import Model, ModelConfig
from charrnn.parallel import StreamSplitter
from charrnn.sample import SampleOptions, generate
from charrnn.stepper import (CHUNK, FIRST_CHUNK, HALVES, ROWS, WHOLE, CpuStepper, Piece, Slots,
                             packed_weights)
from charrnn.tokenizer import UnknownCharacters, Vocab

LOGITS = np.array([2.0, -1.0, 0.5, 1.5, 0.0, -3.0], np.float32)


def draw_frequencies(temperature, top_k, top_p, n=20_000):
    """How often each id is drawn when u sweeps [0, 1) evenly: exactly the draw's distribution."""
    probs, powers = np.zeros(LOGITS.size), np.zeros(LOGITS.size, np.int64)
    counts = np.zeros(LOGITS.size)
    for u in (np.arange(n) + 0.5) / n:
        counts[cpu._draw(LOGITS, temperature, top_k, top_p, u, probs, powers)] += 1
    return counts / n


def expected(temperature, top_k=0, top_p=1.0):
    p = np.exp(LOGITS.astype(np.float64) / temperature)
    p /= p.sum()
    order = np.argsort(-p)
    keep = order[:top_k] if top_k else order
    cum = np.cumsum(p[keep]) / p[keep].sum()  # top-p of the renormalised top-k
    keep = keep[:np.searchsorted(cum, top_p - 1e-12) + 1]
    q = np.zeros_like(p)
    q[keep] = p[keep]
    return q / q.sum()


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (1.0, 0, 1.0), (0.5, 0, 1.0), (2.0, 0, 1.0), (1.0, 2, 1.0), (1.0, 0, 0.8), (0.7, 3, 0.9),
    (1.0, 1, 1.0), (1.0, 0, 0.01),
])
def test_draw_follows_the_distribution(temperature, top_k, top_p):
    freq = draw_frequencies(temperature, top_k, top_p)
    assert np.abs(freq - expected(temperature, top_k, top_p)).max() < 2e-4


def test_an_id_with_minus_infinity_is_never_drawn():
    logits = np.array([-np.inf, 0.0, 1.0, -np.inf], np.float32)
    probs, powers = np.zeros(4), np.zeros(4, np.int64)
    drawn = {cpu._draw(logits, 1.0, 0, 1.0, u, probs, powers) for u in (0.0, 1e-300, 0.5, 0.99)}
    assert drawn == {1, 2}


def test_temperature_zero_is_argmax():
    probs, powers = np.zeros(LOGITS.size), np.zeros(LOGITS.size, np.int64)
    assert {cpu._draw(LOGITS, 0.0, 0, 1.0, u, probs, powers) for u in (0.0, 0.5, 0.999)} == {0}


@pytest.fixture(scope="module")
def toy():
    vocab = Vocab.from_text("abc\n")
    model = Model(ModelConfig(vocab_size=4, cell="gru", layers=2, hidden=8), seed=3)
    return model, vocab


def text(model, vocab, **kw):
    pieces = {}
    for b, piece in generate(model, vocab, SampleOptions(**kw)):
        pieces[b] = pieces.get(b, "") + piece
    return [pieces.get(b, "") for b in range(kw.get("num_samples", 1))]


def test_same_seed_same_text_and_length(toy):
    a = text(*toy, length=300, seed=5)
    assert a == text(*toy, length=300, seed=5)
    assert a != text(*toy, length=300, seed=6)
    assert len(a[0]) == 300 and set(a[0]) <= set("abc\n")


def test_prime_comes_first(toy):
    out = text(*toy, length=50, seed=1, prime="abcab")[0]
    assert out.startswith("abcab") and len(out) == 55


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_greedy_matches_a_step_by_step_argmax(cell):
    """The one-step sampler kernel against the whole-window training forward, for every cell."""
    vocab = Vocab.from_text("abc\n")
    model = Model(ModelConfig(vocab_size=4, cell=cell, layers=1 if cell == "jordan" else 2,
                              hidden=8), seed=3)
    model.params[:] *= 4  # strong weights: the text depends on the input and the state
    out = text(model, vocab, length=20, temperature=0.0, prime="ab")[0]
    ids = list(vocab.encode("ab"))
    for _ in range(20):  # the slow way: the whole sequence through the training forward
        x = np.array(ids)[:, None]
        model.forward(x, x)
        ids.append(int(model.logits()[-1, 0].argmax()))
    assert out == vocab.decode(np.array(ids))


@pytest.mark.parametrize("stop", ["a", "\n", "cb", "abc"])
def test_stop_string_ends_the_sample_before_it(toy, stop):
    full = text(*toy, length=400, seed=2)[0]
    cut = text(*toy, length=400, seed=2, stop=stop)[0]
    i = full.find(stop)
    assert i >= 0, "pick a stop string the sample contains"
    assert cut == full[:i]


def test_batch_samples_are_independent_streams(toy):
    samples = text(*toy, length=100, seed=4, num_samples=3)
    assert len(samples) == 3 and all(len(s) == 100 for s in samples)
    assert len(set(samples)) == 3


def test_unknown_prime_characters_are_named_or_skipped(toy):
    with pytest.raises(UnknownCharacters, match="'z'"):
        text(*toy, length=5, prime="abz")
    skipped = text(*toy, length=5, prime="abz", skip_unknown=True, seed=0)[0]
    assert skipped == text(*toy, length=5, prime="ab", seed=0)[0]  # printed as the model saw it
    assert skipped.startswith("ab") and len(skipped) == 2 + 5


@pytest.mark.parametrize("bad", [{"length": 0}, {"temperature": -1}, {"top_k": -1},
                                 {"top_p": 0.0}, {"top_p": 1.5}, {"num_samples": 0}])
def test_options_out_of_range(bad):
    with pytest.raises(ValueError):
        SampleOptions(**bad)


# ---------------------------------------------------------------------------------------------
# slots: per-slot options, filled and freed between chunks


def strong_models(seeds):
    """Strong weights: the text depends on the input and the state, so a slot given another
    row's state (or options) would show it."""
    models = [Model(ModelConfig(vocab_size=4, cell="gru", layers=2, hidden=8), seed=seed)
              for seed in seeds]
    for model in models:
        model.params[:] *= 4
    return models


@pytest.fixture(scope="module", params=["model", "ensemble"])
def strong(request):
    """A strong model, and an ensemble of three, whose state holds each member's layers one
    after another: a slot must get its own rows of every member's."""
    vocab = Vocab.from_text("abc\n")
    return (strong_models([3])[0] if request.param == "model"
            else Ensemble(strong_models([3, 4, 5]))), vocab


@pytest.fixture(scope="module")
def strong_one():
    """The strong model alone: the stop strings below are picked from its texts."""
    return strong_models([3])[0], Vocab.from_text("abc\n")


class Recorder(CpuStepper):
    """The CPU stepper, noting the rows and characters of every chunk."""

    def __init__(self, model):
        super().__init__(model)
        self.chunks = []  # (rows, characters) of each generate call
        self.forced = []  # (B,) prime ids each row was fed inside each generate call
        self.fed_before = []  # the length of every prime fed by arrange, before the steps

    def arrange(self, keep, primes):
        self.fed_before += [len(p) for p in primes]
        super().arrange(keep, primes)

    def generate(self, x, forced, temperature, top_k, top_p, uniforms):
        self.chunks.append((x.size, uniforms.shape[0]))
        self.forced.append((forced >= 0).sum(axis=0))
        return super().generate(x, forced, temperature, top_k, top_p, uniforms)


def drive(slots, plan=None):
    """Step slots until none is active and plan has nothing left; plan {k: action(slots)} runs
    before step k. Returns each slot's text, finish reason and pieces."""
    plan = dict(plan or {})
    texts, reasons, pieces = {}, {}, {}
    k = 0
    while slots.active or any(j >= k for j in plan):
        if k in plan:
            plan[k](slots)
        for p in slots.step():
            assert p.slot not in reasons, "a piece after the slot's last"
            texts[p.slot] = texts.get(p.slot, "") + p.text
            pieces.setdefault(p.slot, []).append(p)
            if p.finish_reason:
                reasons[p.slot] = p.finish_reason
        k += 1
    return texts, reasons, pieces


def alone(model, vocab, opts, seed):
    """A slot's text and finish reason when it is the only one."""
    slots = Slots(CpuStepper(model), vocab)
    slot = slots.fill(opts, np.random.default_rng(seed))
    texts, reasons, _ = drive(slots)
    return texts[slot], reasons[slot]


MIXED = [SampleOptions(length=300, temperature=0.7, prime="ab"),
         SampleOptions(length=250, top_k=2, prime="c\n"),
         SampleOptions(length=320, top_p=0.6, temperature=1.3),
         SampleOptions(length=200, temperature=0.0, prime="ba")]


def test_slots_in_one_batch_each_get_the_text_they_get_alone(strong):
    stepper = Recorder(strong[0])
    slots = Slots(stepper, strong[1])
    handles = [slots.fill(opts, np.random.default_rng(seed)) for seed, opts in enumerate(MIXED)]
    texts, reasons, _ = drive(slots)
    for seed, (slot, opts) in enumerate(zip(handles, MIXED)):
        assert (texts[slot], reasons[slot]) == alone(*strong, opts, seed)
        assert texts[slot].startswith(opts.prime) and reasons[slot] == "length"
        assert len(texts[slot]) == len(opts.prime) + opts.length
    assert len(set(texts.values())) == len(MIXED)
    # every slot in one batch, then only the slots still going (lengths 200, 250, 300, 320)
    assert [r for r, _ in stepper.chunks] == [4, 4, 2]
    done = 0
    for r, n in stepper.chunks:
        assert r == sum(o.length > done for o in MIXED)
        done += n


def test_a_slot_filled_mid_run_gets_the_text_it_gets_alone(strong):
    stepper = Recorder(strong[0])
    slots = Slots(stepper, strong[1])
    first_opts = [SampleOptions(length=700, top_k=3, prime=p) for p in ("a", "bc")]
    first = [slots.fill(o, np.random.default_rng(10 + i)) for i, o in enumerate(first_opts)]
    late_opts = SampleOptions(length=300, temperature=0.9, top_p=0.9, prime="cab", stop="ccc")
    late = []
    texts, reasons, _ = drive(slots, {3: lambda s: late.append(
        s.fill(late_opts, np.random.default_rng(99)))})
    assert (texts[late[0]], reasons[late[0]]) == alone(*strong, late_opts, 99)
    for i, slot in enumerate(first):
        assert (texts[slot], reasons[slot]) == alone(*strong, first_opts[i], 10 + i)
    # chunks 16, 256, 256 for the first two; a newcomer joins the running batch's full chunk
    # (a short one would slow every stream of a busy server each time a request joins)
    assert stepper.chunks[:4] == [(2, FIRST_CHUNK), (2, CHUNK), (2, CHUNK), (3, CHUNK)]


def test_primes_fed_inside_the_steps_give_the_texts_fed_before(strong):
    """A server's slots take their primes inside the batched steps; each text is the one its
    options and seed give alone with the prime fed before drawing."""
    stepper = Recorder(strong[0])
    slots = Slots(stepper, strong[1], primes_in_steps=True)
    opts = MIXED[:3] + [SampleOptions(length=200, temperature=0.0, prime="bca" * 30)]
    handles = [slots.fill(o, np.random.default_rng(seed)) for seed, o in enumerate(opts)]
    texts, reasons, _ = drive(slots)
    for seed, (slot, o) in enumerate(zip(handles, opts)):
        assert (texts[slot], reasons[slot]) == alone(*strong, o, seed)
    assert not any(stepper.fed_before), "no prime was fed outside the steps"
    # each row was fed its prime but its last character (the first step's input) in the steps
    assert sum(stepper.forced).tolist() == [len(o.prime) - 1 if o.prime else 0 for o in opts]
    # an all-new batch's first chunk: its longest prime, then FIRST_CHUNK draws
    assert stepper.chunks[0] == (4, 89 + FIRST_CHUNK)


def test_a_long_prompt_joining_holds_up_no_running_slot(strong):
    """A slot whose prime is three chunks long joins a running batch: the running slot gets a
    full chunk of text at every step while the newcomer is fed, and the newcomer's text is
    its text alone."""
    stepper = Recorder(strong[0])
    slots = Slots(stepper, strong[1], primes_in_steps=True)
    running = slots.fill(SampleOptions(length=2000, top_k=3, prime="a"),
                         np.random.default_rng(1))
    late_opts = SampleOptions(length=400, temperature=0.9,
                              prime="abc\n" * (3 * CHUNK // 4) + "cab")
    late, said, text = [], {}, ""

    def join(s):
        late.append(s.fill(late_opts, np.random.default_rng(2)))

    for k in range(7):
        if k == 3:
            join(slots)
        for p in slots.step():
            said.setdefault(k, {})[p.slot] = len(p.text)
            text += p.text if p.slot != running else ""
    # steps 3, 4, 5 feed the newcomer CHUNK prime characters each; its first text comes in
    # step 6 (its last 2 prime characters fed, then CHUNK - 2 draws), and the running slot says
    # a full chunk in every one of them
    assert [f.tolist() for f in stepper.forced[3:7]] == [[0, CHUNK]] * 3 + [[0, 2]]
    assert all(said[k][running] >= CHUNK - 2 for k in range(3, 7))
    assert late[0] not in said[5] and said[6][late[0]] == CHUNK - 2
    texts, _, _ = drive(slots)
    assert text + texts[late[0]] == alone(*strong, late_opts, 2)[0]


def test_a_paused_slot_leaves_the_batch_and_resumes_with_its_own_text(strong):
    """A paused slot (its reader is behind) has no row until resumed; then it goes on where it
    left off: every slot's text is its text alone. Pausing and resuming before a step, or a
    slot that has no row yet, changes nothing either."""
    stepper = Recorder(strong[0])
    slots = Slots(stepper, strong[1], primes_in_steps=True)
    opts = [SampleOptions(length=900, temperature=t, prime="ab") for t in (0.6, 1.0, 1.4)]
    handles = [slots.fill(o, np.random.default_rng(i)) for i, o in enumerate(opts)]
    late = SampleOptions(length=400, top_k=2, prime="cab")
    extra = []

    def pause_and_fill(s):
        s.pause(handles[1])
        extra.append(s.fill(late, np.random.default_rng(9)))
        s.pause(extra[0])  # no row yet: it waits with its prime
        s.pause(handles[2])
        s.resume(handles[2])  # paused and resumed between two steps: it never leaves

    def resume(s):
        assert s.running == 2 and len(s.active) == 4
        s.resume(handles[1])
        s.resume(extra[0])

    texts, reasons, _ = drive(slots, {1: pause_and_fill, 3: resume})
    rows = [r for r, _ in stepper.chunks]
    assert rows[:4] == [3, 2, 2, 4], "out of the batch while paused, back when resumed"
    for i, handle in enumerate(handles):
        assert (texts[handle], reasons[handle]) == alone(*strong, opts[i], i)
    assert (texts[extra[0]], reasons[extra[0]]) == alone(*strong, late, 9)


def test_freeing_a_slot_leaves_the_others_texts_alone(strong):
    stepper = Recorder(strong[0])
    slots = Slots(stepper, strong[1])
    opts = [SampleOptions(length=600, temperature=t, prime="ab") for t in (0.5, 1.0, 1.5)]
    handles = [slots.fill(o, np.random.default_rng(i)) for i, o in enumerate(opts)]
    never = slots.fill(opts[0], np.random.default_rng(7))
    slots.free(never)  # freed before its first step: it never gets a row
    texts, reasons, _ = drive(slots, {2: lambda s: s.free(handles[1])})
    assert never not in texts and handles[1] not in reasons
    assert stepper.chunks[0][0] == 3 and stepper.chunks[2][0] == 2
    for i in (0, 2):
        assert (texts[handles[i]], reasons[handles[i]]) == alone(*strong, opts[i], i)
    cut = texts[handles[1]]  # what it said before it was freed: the start of its text
    assert len(cut) == 2 + FIRST_CHUNK + CHUNK and alone(*strong, opts[1], 1)[0].startswith(cut)
    assert slots.active == []
    slots.free(handles[0])  # finished already: nothing to do


def test_each_slot_ends_before_its_own_stop_string_with_its_reason(strong_one):
    seeds = [21, 22, 23, 24]
    base = SampleOptions(length=400, temperature=1.2, prime="b")
    full = [alone(*strong_one, base, s)[0][1:] for s in seeds]  # the generated text, no stop
    stops = ["cb", "c\na", None, "cc"]
    assert all(stop in f for stop, f in zip(stops[:2], full[:2])), "pick stops they hold"
    assert stops[3] not in full[3]
    slots = Slots(CpuStepper(strong_one[0]), strong_one[1])
    handles = [slots.fill(SampleOptions(length=400, temperature=1.2, prime="b", stop=stop),
                          np.random.default_rng(s)) for s, stop in zip(seeds, stops)]
    texts, reasons, _ = drive(slots)
    for slot, stop, f in zip(handles, stops, full):
        if stop is not None and stop in f:
            assert texts[slot] == "b" + f[:f.index(stop)] and reasons[slot] == "stop"
        else:
            assert texts[slot] == "b" + f and reasons[slot] == "length"


def test_only_text_that_may_start_the_stop_string_is_held_back(strong_one):
    """After each chunk a slot has said all it generated but the longest end that is the start
    of its stop string (not a fixed len(stop) - 1 characters)."""
    stop = "\n\nx"  # x is not in the vocabulary: the stop never comes, the sample runs its length
    opts = SampleOptions(length=900, temperature=1.2, stop=stop)
    full = alone(*strong_one, SampleOptions(length=900, temperature=1.2), 5)[0]
    slots = Slots(CpuStepper(strong_one[0]), strong_one[1])
    slot = slots.fill(opts, np.random.default_rng(5))
    said, generated, held_back = "", 0, []
    for n in (FIRST_CHUNK, CHUNK, CHUNK, CHUNK):
        generated += n
        said += "".join(p.text for p in slots.step())
        held = next(k for k in (2, 1, 0) if full[:generated].endswith(stop[:k]))
        assert said == full[:generated - held]
        held_back.append(held)
    assert 0 in held_back and 2 in held_back, "pick a seed whose chunks end both ways"
    assert slots.step() == [Piece(slot, full[len(said):], "length")]


def reference_sample(model, vocab, opts):
    """One sample the slow way, as `generate` always made it: the prime one step at a time,
    then a step and a draw per character, with default_rng(seed)'s uniforms in order."""
    cfg = model.config
    H, GH = cfg.hidden, cfg.gates * cfg.hidden
    dtype = model.dtype
    scratch = (np.zeros((1, GH), dtype), np.zeros((1, GH), dtype),
               np.zeros((1, cfg.spec.stored_acts * H), dtype), np.zeros((1, H), dtype),
               np.zeros((1, H), dtype), np.zeros((1, cfg.vocab_size), dtype))
    h, c = model.zero_state(1)
    ids = vocab.encode(opts.prime) if opts.prime else np.array([vocab.chars.index("\n")])
    panels = packed_weights(model)
    step = lambda i: cpu._step(cfg.kernel_id, model.params, model.layout.offsets,  # noqa: E731
                               *panels, np.array([i], np.int32), h, c, *scratch)
    for i in ids[:-1]:
        step(i)
    uniforms = np.random.default_rng(opts.seed).random(opts.length)
    x, out = ids[-1], []
    probs, powers = np.zeros(cfg.vocab_size), np.zeros(cfg.vocab_size, np.int64)
    for u in uniforms:
        step(x)
        x = cpu._draw(scratch[-1][0], opts.temperature, opts.top_k or 0, opts.top_p, u, probs,
                      powers)
        out.append(x)
    text = vocab.decode(np.array(out))
    if opts.stop is not None and opts.stop in text:
        text = text[:text.index(opts.stop)]
    return opts.prime + text


@pytest.mark.parametrize("cell", CELL_NAMES)
@pytest.mark.parametrize("kw", [dict(length=300, seed=5),
                                dict(length=400, seed=8, prime="cab", temperature=0.8,
                                     top_k=3, top_p=0.9, stop="aa")])
def test_one_sample_with_a_seed_is_the_text_it_always_was(cell, kw):
    vocab = Vocab.from_text("abc\n")
    model = Model(ModelConfig(vocab_size=4, cell=cell, layers=1 if cell == "jordan" else 2,
                              hidden=8), seed=3)
    model.params[:] *= 3
    assert text(model, vocab, **kw)[0] == reference_sample(model, vocab, SampleOptions(**kw))


def test_batched_samples_are_slots_with_their_own_generators(strong):
    kw = dict(length=150, seed=4, prime="ab", top_k=3)
    samples = text(*strong, num_samples=3, **kw)
    assert samples[0] == text(*strong, **kw)[0]  # sample 0: the single sample's text
    for b, sample in enumerate(samples):
        assert sample == alone(*strong, SampleOptions(**kw), [4, b] if b else 4)[0]
    assert len(set(samples)) == 3 and samples == text(*strong, num_samples=3, **kw)


@pytest.mark.parametrize("cell", ["lstm", "gru-classic", "jordan"])
def test_the_packed_weights_hold_each_multiplied_matrix_in_panels(cell):
    """Each matrix a step multiplies through the register tile, in its own panels, starting on
    a cache line (a width of 5 makes panels of any row count); none of the others."""
    model = Model(ModelConfig(vocab_size=5, cell=cell, layers=1 if cell == "jordan" else 3,
                              hidden=5), seed=1)
    panels = packed_weights(model)
    views = model.layout.views(model.params)  # (without the empty ones)
    for k, name in enumerate(model.layout.shapes):
        # layer 0's input rows are gathered, the classic GRU multiplies by its W_h itself,
        # Jordan by every matrix
        multiplied = cell != "jordan" and (name.endswith("W_x") and name != "l0.W_x"
                                           or name == "out.W"
                                           or name.endswith("W_h") and cell != "gru-classic")
        got = panels.flat[panels.offsets[k]:panels.offsets[k + 1]]
        if multiplied:
            np.testing.assert_array_equal(got, cpu.packed(views[name]).ravel(), err_msg=name)
            assert got.ctypes.data % cpu.PANEL_ALIGN == 0, name
        else:
            assert got.size == 0, name


def test_a_stream_alone_gives_the_bits_it_gives_in_a_batch_with_a_large_matrix():
    """One row's products go through the register tile however large the matrix (they once went
    through BLAS's gemv above 1 MB, whose rounding differs): a stream sampled alone draws the
    same ids and reaches the same state as in a batch of three. H = 300 is no whole number of
    panels, so the row runs on one thread (test_halves covers the halves)."""
    H = 300  # W_h (300, 1200) float32: 1.44 MB
    model = Model(ModelConfig(vocab_size=23, cell="lstm", layers=1, hidden=H), seed=1)
    assert model.layout.views(model.params)["l0.W_h"].nbytes > 1 << 20
    model.params[:] *= 4  # sharper predictions: a draw depends on every bit of the logits
    n = 30
    uniforms = np.random.default_rng(3).random((n, 3))
    runs = []
    for rows in (1, 3):
        stepper = CpuStepper(model)
        stepper.arrange([], [np.array([5, 1], np.int32)] * rows)
        x, out = np.full(rows, 2, np.int32), np.empty((n, rows), np.int32)
        stepper._run(WHOLE, stepper.h, stepper.c, x, np.full((n, rows), -1, np.int32),
                     np.ones(rows), np.zeros(rows, np.int64), np.ones(rows),
                     np.ascontiguousarray(uniforms[:, :rows]), out)
        runs.append((out[:, 0], stepper.h[:, :1], stepper.c[:, :1]))
    assert len(np.unique(runs[0][0])) > 3
    for alone, in_batch in zip(*runs):
        np.testing.assert_array_equal(alone, in_batch)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_a_batch_split_across_threads_gives_the_same_bits(cell):
    """Each shard of rows on its own thread, or all rows in one call: the same ids and the same
    state, to the bit, so measuring which is faster never changes a text (float32, a width
    off the tiles, an odd batch that splits unevenly)."""
    model = Model(ModelConfig(vocab_size=11, cell=cell, layers=2, hidden=37), seed=4)
    model.params[:] *= 3
    B, n = 7, 40
    rng = np.random.default_rng(5)
    forced = np.full((n, B), -1, np.int32)
    forced[:5, 3] = [1, 2, 3, 4, 5]  # a prompt fed inside the steps
    options = (rng.uniform(0.5, 1.5, B), np.array([0, 3, 0, 0, 2, 0, 0]), np.full(B, 0.95))
    uniforms = rng.random((n, B))
    results = []
    for way, threads in ((WHOLE, 1), (ROWS, 2), (ROWS, 3)):  # 1, 2 and 3 shards
        splitter = StreamSplitter(threads=threads, min_rows=2)
        if splitter.parts(B) != threads:
            pytest.skip("no OpenBLAS thread switch here: a batch is never split")
        stepper = CpuStepper(model, splitter)
        stepper.arrange([], [np.array([i % 11, 2], np.int32) for i in range(B)])
        x, out = np.arange(B, dtype=np.int32), np.empty((n, B), np.int32)
        stepper._run(way, stepper.h, stepper.c, x, forced, *options, uniforms, out)
        results.append((out, x, stepper.h, stepper.c))
    assert len(np.unique(results[0][0])) > 5  # the draws are not all one id
    for split in results[1:]:
        for got, want in zip(split, results[0]):
            np.testing.assert_array_equal(got, want)


def test_the_split_learns_from_its_chunks_and_keeps_checking_the_other_way():
    from charrnn.stepper import SplitChoice
    choice = SplitChoice([WHOLE, ROWS])
    assert choice.pick() == WHOLE
    choice.timed(WHOLE, 0.9, rows=8, steps=SplitChoice.TIMED_STEPS - 1)  # too short to count
    assert choice.pick() == WHOLE
    choice.timed(WHOLE, 1.0, rows=8, steps=100)
    assert choice.pick() == ROWS
    choice.timed(ROWS, 0.6, rows=8, steps=100)  # faster per row and step
    picks = [choice.pick() for _ in range(2 * SplitChoice.EXPLORE)]
    assert picks.count(WHOLE) == 2 and picks.count(ROWS) == 2 * SplitChoice.EXPLORE - 2
    choice.timed(WHOLE, 0.25, rows=4, steps=200)  # the machine changed: now whole is faster
    assert [choice.pick() for _ in range(3)] == [WHOLE] * 3


def test_three_ways_are_each_checked_in_turn_besides_the_fastest():
    from charrnn.stepper import SplitChoice
    choice = SplitChoice([WHOLE, ROWS, HALVES])
    assert [choice.pick() for _ in range(3)] == [WHOLE] * 3  # until it is timed
    for way, seconds in ((WHOLE, 3.0), (ROWS, 2.0), (HALVES, 1.0)):
        choice.timed(way, seconds, rows=1, steps=SplitChoice.TIMED_STEPS)
    picks = [choice.pick() for _ in range(4 * SplitChoice.EXPLORE)]
    explored = picks[SplitChoice.EXPLORE - 1::SplitChoice.EXPLORE]
    assert sorted(explored) == sorted([WHOLE, ROWS] * 2)  # the slower two, in turn
    assert picks.count(HALVES) == 4 * SplitChoice.EXPLORE - 4


def test_a_servers_chunks_teach_the_split_and_a_first_chunk_does_not():
    from charrnn.serving import SERVER_CHUNK
    from charrnn.stepper import SplitChoice
    assert FIRST_CHUNK < SplitChoice.TIMED_STEPS <= SERVER_CHUNK


def test_batches_in_one_size_range_share_what_was_learnt():
    from charrnn import stepper as stepping
    model = Model(ModelConfig(vocab_size=7, cell="gru", layers=1, hidden=16), seed=2)
    splitter = stepping.StreamSplitter(threads=2, min_rows=2)
    if splitter.parts(8) == 1:
        pytest.skip("no OpenBLAS thread switch here: a batch is never split")
    stepper = CpuStepper(model, splitter)
    choices = {B: stepper._split_choice(B) for B in (3, 4, 5, 7, 8)}
    assert choices[3] is None or ROWS not in choices[3].seconds  # too few rows for shards
    assert choices[4] is choices[5] is choices[7] is not choices[8]
    assert CpuStepper(model, splitter)._split_choice(6) is choices[4]  # another stepper
    gru_classic = Model(ModelConfig(vocab_size=7, cell="gru-classic", layers=1, hidden=16))
    assert CpuStepper(gru_classic, splitter)._split_choice(8) is None  # its own BLAS products
