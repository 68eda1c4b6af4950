"""What a run gets from its budget when the options leave it open: the widest width the budget can
train (no --hidden), dropout and weight drop when the budget allows many epochs (no --dropout,
--weight-drop), and, for a --minutes run without them, a step limit where its model stops
learning. A resumed run keeps what it started with."""

import math

import pytest

from charrnn import checkpoint as ckpt_io
from charrnn import memory, sizing
from charrnn.model import Model, ModelConfig
from charrnn.synthetic import MarkovSource
from charrnn.schedule import Pacer
from charrnn.train import Run, TrainOptions
from charrnn.train_state import options_from_checkpoint


def test_parameter_count_is_the_models():
    for cell in ("lstm", "gru", "gru-classic", "lstm-peephole"):
        model = Model(ModelConfig(vocab_size=11, cell=cell, layers=2, hidden=24))
        assert sizing.parameter_count(cell, 2, 24, 11) == model.params.size


@pytest.mark.parametrize("cell, per_param", [("gru", 1.25), ("gru-ln", 1.5), ("lstm", 1.25)])
def test_the_widest_width_the_budget_covers_wins(cell, per_param):
    need = {h: per_param * sizing.parameter_count(cell, 2, h, 65)
            for h in sizing.CANDIDATE_HIDDEN}
    asked = []

    def budget(shape):
        asked.append(shape)
        return need[384]  # exactly enough for 384, not for 512

    large_text = 10**9  # the passes over it never decide
    assert sizing.choose_shape(cell, 2, 65, large_text, budget) == (2, 384)
    assert sizing.choose_shape(cell, 2, 65, large_text, lambda s: need[384] * 0.999) == (2, 256)
    # widest first, no more speed probes than needed
    assert asked == [(2, h) for h in sorted(sizing.CANDIDATE_HIDDEN, reverse=True) if h >= 384]
    assert sizing.choose_shape("gru", 2, 65, large_text, lambda s: 0.0) == \
        (2, min(sizing.CANDIDATE_HIDDEN))
    assert sizing.choose_shape("gru", 2, 65, large_text, lambda s: float("inf")) == \
        (2, max(sizing.CANDIDATE_HIDDEN))


@pytest.mark.parametrize("budget, n_train, expected", [
    # a text of 1M characters (the parameter counts of 2-layer gru-ln at vocabulary 65:
    # 640 3,861,825; 768 5,518,913; 1024 9,717,825)
    (3.5e6, 10**6, 768),     # 3.5 passes cover 768 though 1.5 per parameter does not
    # under 3.5 passes: 1.5 per parameter, as on a large text, which 512 (3.75M) needs too
    (3.49e6, 10**6, 384),
    (4.37e6, 10**6, 768),    # 3.5 passes over it, but 1024 needs 0.45 per parameter (4.37M)
    (4.38e6, 10**6, 1024),
    # a text of 10M: 3.5 passes are far off, 1.5 per parameter decides (640: 5.79M)
    (5.79e6, 10**7, 512),
    (5.8e6, 10**7, 640)])
def test_gru_ln_on_a_small_text_is_as_wide_as_its_passes_allow(budget, n_train, expected):
    assert sizing.choose_shape("gru-ln", 2, 65, n_train, lambda s: budget) == (2, expected)
    # the cells without normalisation keep the per-parameter rule (1.25: 512 is 2,496,577
    # parameters for the GRU, 640 3,857,985)
    assert sizing.choose_shape("gru", 2, 65, n_train, lambda s: budget) == \
        (2, 640 if budget >= 1.25 * 3_857_985 else 512)


@pytest.mark.parametrize("budget, expected", [
    # 3 x 768 is 9,063,233 parameters at vocabulary 65: 0.45 per parameter is 4,078,455, more
    # than 3.5 passes over 1M characters
    (4.078e6, (2, 768)), (4.079e6, (3, 768)), (1e12, (3, 768))])
def test_gru_ln_without_layers_is_three_by_768_in_place_of_two_by_1024(budget, expected):
    assert sizing.parameter_count("gru-ln", 3, 768, 65) == 9_063_233
    assert sizing.choose_shape("gru-ln", None, 65, 10**6, lambda s: budget) == expected
    # given --layers, or another cell: the widest is 1024 at that depth
    assert sizing.choose_shape("gru-ln", 2, 65, 10**6, lambda s: 1e12) == (2, 1024)
    assert sizing.choose_shape("gru-ln", 3, 65, 10**6, lambda s: 1e12) == (3, 1024)
    assert sizing.choose_shape("gru", None, 65, 10**6, lambda s: 1e12) == (2, 1024)
    assert sizing.choose_shape("jordan", None, 65, 10**6, lambda s: 1e12) == (1, 1024)


def test_the_budget_is_the_tightest_of_epochs_steps_and_minutes():
    common = dict(n_train=1000, batch_size=10, seq_len=10,
                  chars_per_second=lambda shape: 1e4 / shape.hidden)
    narrow, wide = sizing.Shape(2, 100), sizing.Shape(2, 200)
    assert sizing.budget_chars(narrow, epochs=3, max_steps=None, minutes=None, **common) == 3000
    assert sizing.budget_chars(narrow, epochs=3, max_steps=20, minutes=None, **common) == 2000
    by_time = 0.5 * 60 * sizing.TRAINING_SHARE_OF_MINUTES * 100
    assert sizing.budget_chars(narrow, epochs=None, max_steps=None, minutes=0.5, **common) == \
        pytest.approx(by_time)
    assert sizing.budget_chars(wide, epochs=None, max_steps=None, minutes=0.5, **common) == \
        pytest.approx(by_time / 2)  # slower at a larger width
    # speed unknown (a GPU run): time does not limit
    assert sizing.budget_chars(narrow, epochs=None, max_steps=None, minutes=0.5,
                               **{**common, "chars_per_second": None}) == float("inf")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "markov.txt"
    path.write_text(MarkovSource(alphabet="abcdé\n", order=2, seed=1).sample_text(20000))
    return path


def test_a_run_without_hidden_gets_the_chosen_width_and_says_so(corpus, tmp_path):
    widths = {}
    for epochs in (1, 1000):
        opts = TrainOptions(layers=1, seq_len=16, batch_size=4, epochs=epochs, cell="gru")
        run = Run(corpus, tmp_path / f"e{epochs}", opts)
        run.release()
        assert run.opts.hidden == run.model.config.hidden
        assert any(f"model: 1 x {run.opts.hidden} gru" in note for note in run.notes)
        widths[epochs] = run.opts.hidden, len(run.vocab), run.streams.size
    # one epoch of ~18,000 characters covers no width (even 1 x 128 has ~51,000 parameters)
    hidden, V, n_train = widths[1]
    assert n_train < sizing.CHARS_PER_PARAM * sizing.parameter_count("gru", 1, 128, V)
    assert hidden == 128
    # 1000 epochs (~18M characters) cover the widest (1 x 1024: ~3.2M parameters)
    hidden, V, n_train = widths[1000]
    widest = max(sizing.CANDIDATE_HIDDEN)
    assert 1000 * n_train > sizing.CHARS_PER_PARAM * sizing.parameter_count("gru", 1, widest, V)
    assert hidden == widest


def test_a_run_given_neither_layers_nor_hidden_may_get_the_deep_shape_and_says_so(corpus,
                                                                                  tmp_path):
    # 1000 epochs of ~18,000 characters cover every shape
    run = Run(corpus, tmp_path / "deep", TrainOptions(seq_len=16, batch_size=4, epochs=1000))
    run.release()
    assert run.opts.cell == "gru-ln"
    assert (run.opts.layers, run.opts.hidden) == sizing.DEEP_SHAPE == (3, 768)
    assert (run.model.config.layers, run.model.config.hidden) == (3, 768)
    assert any(note.startswith("model: 3 x 768 gru-ln, the widest") for note in run.notes)
    # a width given without a depth: the default depth
    given = Run(corpus, tmp_path / "given", TrainOptions(hidden=12, seq_len=16, batch_size=4,
                                                         epochs=1))
    given.release()
    assert given.opts.layers == given.model.config.layers == sizing.DEFAULT_LAYERS == 2


def test_a_width_that_does_not_fit_in_memory_is_not_chosen(corpus, tmp_path, monkeypatch):
    assert sizing.choose_shape("gru-ln", 2, 65, 10**6, lambda s: float("inf"),
                               fits=lambda s: s.hidden <= 640) == (2, 640)
    # 1 x 1024 needs about 107 MB to train here, 1 x 768 61 MB (always taken to fit)
    monkeypatch.setattr(memory, "available_bytes", lambda: 100 << 20)
    opts = TrainOptions(layers=1, seq_len=16, batch_size=4, epochs=1000)
    run = Run(corpus, tmp_path / "m", opts)
    run.release()
    assert run.opts.hidden == 768
    needed = memory.training_bytes(ModelConfig(vocab_size=len(run.vocab), cell=opts.cell,
                                               layers=1, hidden=1024, dropout=0.2),
                                   16, 4, averaged=True, weight_drop=True)
    assert needed > 100 << 20


def test_a_short_time_budget_picks_a_narrower_model_than_a_long_one(corpus, tmp_path):
    widths = []
    for name, minutes in (("short", 1e-4), ("long", 1e4)):
        opts = TrainOptions(layers=1, seq_len=16, batch_size=4, epochs=None, minutes=minutes)
        run = Run(corpus, tmp_path / name, opts)
        run.release()
        widths.append(run.opts.hidden)
    assert widths[0] == min(sizing.CANDIDATE_HIDDEN)  # no width fits 6 ms
    assert widths[1] > widths[0]


def test_a_given_width_is_kept_without_a_note(corpus, tmp_path):
    run = Run(corpus, tmp_path / "g", TrainOptions(hidden=12, layers=1, seq_len=16,
                                                   batch_size=4, epochs=1))
    run.release()
    assert run.opts.hidden == 12 and run.notes == []


def test_regularisation_needs_eight_epochs_and_four_characters_per_parameter():
    n_train, params = 1000, 500  # the README's rule, both ways round
    choose = sizing.choose_regularisation
    assert choose(7.9 * n_train, n_train, params) == 0.0
    assert choose(8 * n_train, n_train, params) == 0.2
    assert choose(8 * n_train, n_train, 2.5 * n_train) == 0.0  # 3.2 per parameter
    assert choose(10 * n_train, n_train, 2.5 * n_train) == 0.2
    assert choose(float("inf"), n_train, params) == 0.0  # unknown: not chosen


@pytest.mark.parametrize("epochs, given, expected", [
    (2, {}, (0.0, 0.0)), (10, {}, (0.2, 0.2)), (10, {"dropout": 0.0}, (0.0, 0.2)),
    (10, {"weight_drop": 0.1}, (0.2, 0.1)), (2, {"dropout": 0.3}, (0.3, 0.0))])
def test_a_run_without_regularisation_gets_it_from_its_epochs_and_says_so(corpus, tmp_path,
                                                                          epochs, given,
                                                                          expected):
    run = Run(corpus, tmp_path / "d", TrainOptions(hidden=12, layers=2, seq_len=16,
                                                   batch_size=4, epochs=epochs, **given))
    run.release()
    # ~1,700 parameters against ~18,000 characters an epoch: the epochs decide
    assert run.model.params.size * sizing.REGULARISE_FROM_CHARS_PER_PARAM < run.streams.size
    assert (run.opts.dropout, run.opts.weight_drop) == expected
    assert run.model.config.dropout == expected[0]
    said = [note for note in run.notes if note.startswith("--")]
    chosen = " and ".join(f"--{name}" for name in ("dropout", "weight-drop")
                          if name.replace("-", "_") not in given)
    if expected != (0.0, 0.0) and epochs == 10:
        per_param = epochs * run.streams.size / run.model.params.size
        assert said == [f"{chosen} 0.2: the budget allows {epochs} epochs, {per_param:.0f} "
                        f"characters per parameter, enough to overfit without it (give "
                        f"{chosen} to choose)"]
    else:
        assert said == []


@pytest.mark.parametrize("cell, per_param", [("gru", 1.8), ("gru-ln", 0.45)])
def test_useful_steps_are_the_larger_of_the_epochs_and_per_parameter_limits(cell, per_param):
    # a small text: the per-parameter limit is the larger; a large one: the epochs
    assert sizing.useful_steps(cell, steps_per_epoch=10, chars_per_step=100,
                               params=10_000) == math.ceil(per_param * 100)
    assert sizing.useful_steps(cell, steps_per_epoch=1001, chars_per_step=100,
                               params=10_000) == math.ceil(4.5 * 1001)


SPEED = 100.0  # training characters per second, as a run's timing of the width would say


def small_timed_run(corpus, run_dir, minutes=1000.0, speed=None, monkeypatch=None, **given):
    """A 1 x 12 GRU (~600 parameters) on ~18,000 training characters: 1,000 minutes of a model
    this small is far past its useful epochs. With a speed (and monkeypatch), the width's
    timing says that many characters a second."""
    if speed is not None:
        monkeypatch.setattr(Run, "_speed_at", lambda self, opts, hidden: speed)
    opts = TrainOptions(**{"hidden": 12, "layers": 1, "seq_len": 16, "batch_size": 4,
                           "epochs": None, "minutes": minutes, **given})
    return Run(corpus, run_dir, opts)


def step_limit_notes(run):
    """The notes that say where the run stops (each member, when there are several)."""
    return [note.removeprefix("each member ") for note in run.notes
            if note.startswith(("stops after", "each member stops after"))]


# 20 minutes at SPEED: 108,000 characters, 6 epochs, past the useful ones (4.5) but short of
# the regularised ones (8); 1,000 minutes: 300 epochs, regularised for the whole time
@pytest.mark.parametrize("minutes, given, capped", [
    (20, dict(), True),                      # time alone, nothing given: stops where it learns
    (20, dict(dropout=0.0), True),           # no regularisation given: the same
    (20, dict(dropout=0.2), False),          # dropout given: trains for the whole time
    (20, dict(weight_drop=0.2), False),      # weight drop given: the same
    (1000, dict(), False),                   # a long time: regularised, the whole time
    (20, dict(epochs=2000), False),          # an epoch limit given: kept
    (20, dict(max_steps=10**6), False)])     # a step limit given: kept
def test_a_time_budget_stops_where_the_model_stops_learning_unless_regularised(
        corpus, tmp_path, monkeypatch, minutes, given, capped):
    run = small_timed_run(corpus, tmp_path / "c", minutes, SPEED, monkeypatch, **given)
    run.release()
    said = step_limit_notes(run)
    if not capped:
        assert said == [] and run.opts.max_steps == given.get("max_steps")
        assert minutes < 1000 or run.opts.dropout == run.opts.weight_drop == 0.2
        return
    params, per_epoch = run.model.params.size, run.steps_per_epoch
    steps = run.opts.max_steps
    # the first step past both limits
    assert steps == max(math.ceil(sizing.USEFUL_EPOCHS * per_epoch),
                        math.ceil(sizing.useful_chars_per_param(run.opts.cell) * params /
                                  (4 * 16)))
    assert Pacer(run.opts, per_epoch).total_steps() == steps  # so the schedule decays to it
    assert run.opts.dropout == run.opts.weight_drop == 0.0
    assert said == [f"stops after {steps:,} steps ({steps / per_epoch:.1f} epochs, "
                    f"{steps * 64 / params:.1f} characters per parameter) unless the 20 "
                    f"minutes run out first: past that, this model without dropout overfits "
                    f"(--max-steps, --epochs, or --dropout above 0 to train longer)"]


# the bare command: its 10 epochs are the default, not asked for, so an unregularised model stops
# where it stops learning as under --minutes alone; --epochs or --max-steps given are kept. A
# Run made without saying (length_given None) reads "given" from the options: 10 epochs there.
@pytest.mark.parametrize("length_given, capped", [(False, True), (True, False), (None, False)])
def test_the_default_epochs_stop_where_the_model_stops_learning(corpus, tmp_path, length_given,
                                                                 capped):
    # 1 x 128: ten epochs of the ~18,000 characters are under 4 per parameter, so unregularised
    opts = TrainOptions(hidden=128, layers=1, seq_len=16, batch_size=4)
    assert opts.epochs == 10 and opts.minutes is None and opts.max_steps is None
    run = Run(corpus, tmp_path / "d", opts, length_given=length_given)
    run.release()
    said, per_epoch, params = step_limit_notes(run), run.steps_per_epoch, run.model.params.size
    assert run.opts.dropout == run.opts.weight_drop == 0.0
    if not capped:
        assert said == [] and run.opts.max_steps is None
        return
    steps = math.ceil(sizing.USEFUL_EPOCHS * per_epoch)
    assert steps * 64 > sizing.useful_chars_per_param(run.opts.cell) * params  # epochs decide
    assert run.opts.max_steps == steps and run.opts.epochs == 10
    assert Pacer(run.opts, per_epoch).total_steps() == steps  # so the schedule decays to it
    assert said == [f"stops after {steps:,} steps ({steps / per_epoch:.1f} epochs, "
                    f"{steps * 64 / params:.1f} characters per parameter): past that, this "
                    f"model without dropout overfits (--max-steps, --epochs, or --dropout above "
                    f"0 to train longer)"]


def test_a_time_budget_shorter_than_the_useful_steps_sets_no_step_limit(corpus, tmp_path):
    run = small_timed_run(corpus, tmp_path / "s", minutes=1e-4)  # 6 ms
    run.release()
    assert step_limit_notes(run) == [] and run.opts.max_steps is None


def test_an_untimed_budget_gets_the_step_limit():
    # a GPU run's speed is not timed: its budget is unknown (inf), so the limit applies
    opts = TrainOptions(hidden=12, layers=1, seq_len=16, batch_size=4, epochs=None,
                        minutes=1000.0)
    chosen, notes = sizing.choose_sizes(opts, n_train=6000, vocab_size=5, steps_per_epoch=90,
                                        chars_per_second=None, length_given=False)
    params = sizing.parameter_count(opts.cell, 1, 12, 5)
    assert chosen.max_steps == sizing.useful_steps(opts.cell, 90, 64, params)
    assert len(notes) == 1 and notes[0].startswith("stops after")
    assert opts.max_steps is None  # the options given are not changed


def test_the_speed_is_timed_only_when_a_choice_needs_it(corpus, tmp_path, monkeypatch):
    def untimed(self, opts, hidden):
        raise AssertionError("the training speed was timed")

    monkeypatch.setattr(Run, "_speed_at", untimed)
    # width, dropout and weight drop given: nothing left to choose
    small_timed_run(corpus, tmp_path / "t", dropout=0.2, weight_drop=0.0).release()


def test_a_resumed_run_keeps_its_limits_and_is_not_timed(corpus, tmp_path, monkeypatch):
    # a short first session: no step limit (its time ran out before the useful steps)
    first = small_timed_run(corpus, tmp_path / "r", minutes=1e-4)
    assert first.opts.max_steps is None
    first.save(ckpt_io.LATEST)
    first.release()

    def untimed(self, opts, hidden):
        raise AssertionError("the training speed was timed on resume")

    monkeypatch.setattr(Run, "_speed_at", untimed)
    saved = ckpt_io.load(tmp_path / "r" / ckpt_io.LATEST)
    # resumed with a long budget: a fresh run would be regularised, the resumed one keeps what
    # it started with and gets no step limit
    opts = options_from_checkpoint(saved, {"minutes": 1000.0})
    resumed = Run(corpus, tmp_path / "r", opts, resume=saved)
    resumed.release()
    assert resumed.opts.max_steps is None and step_limit_notes(resumed) == []
    assert resumed.opts.dropout == resumed.opts.weight_drop == 0.0


@pytest.mark.parametrize("given, capped", [((), True), (("--epochs", 10), False)])
def test_the_cli_stops_the_bare_command_where_the_model_stops_learning(tmp_path, given, capped):
    """Through `charrnn train`: the default 10 epochs of an unregularised model end at the
    useful steps, and say so; the same 10 epochs given with --epochs are trained in full."""
    from .test_cli import run_cli

    text = tmp_path / "small.txt"
    text.write_text(MarkovSource(alphabet="abcdé\n", order=2, seed=2).sample_text(3000))
    # 1 x 64: ten epochs of ~2,700 training characters are under 4 per parameter
    code, out, err = run_cli("train", text, "--hidden", 64, "--layers", 1, "--seq-len", 16,
                             "--batch-size", 4, "--out", tmp_path / "run", *given)
    assert code == 0, err
    ck = ckpt_io.load(tmp_path / "run" / ckpt_io.LATEST)
    steps_said = [line for line in err.splitlines() if line.startswith("stops after")]
    if capped:
        assert len(steps_said) == 1 and "(4.5 epochs" in steps_said[0]
        assert ck.train["options"]["epochs"] == 10
        assert ck.train["step"] == ck.train["options"]["max_steps"] and ck.train["epoch"] == 4
    else:
        assert steps_said == [] and ck.train["options"]["max_steps"] is None
        assert ck.train["epoch"] == 10
