"""The bare `charrnn train CORPUS` learns: on a corpus with a known entropy rate, a default run
(no options at all) gets within a stated margin of that floor. A regression in the defaults
(initialisation, schedule, sizes) fails here without a long run."""

import subprocess
import sys
from pathlib import Path

from charrnn import checkpoint as ckpt_io
from charrnn import sizing

CORPUS = Path(__file__).resolve().parent.parent / "corpora" / "markov.txt"
ENTROPY_RATE = 1.4119  # nats/char, exact for this source (corpora/README.md)
MARGIN = 0.05  # the default run must end within 5% of it (measured 2026-11-23: 1.4469, +2.5%)
UNIGRAM = 2.0635  # what a model that ignores context can reach


def test_a_default_run_gets_near_the_entropy_floor(tmp_path):
    out = tmp_path / "run"
    run = subprocess.run([sys.executable, "-m", "charrnn", "train", str(CORPUS), "--out", str(out),
                          "-q"], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    best = ckpt_io.load(out / "best.npz")
    loss = best.train["best_val_loss"]
    options = best.train["options"]
    assert options["cell"] == "gru-ln"  # it was the defaults that ran
    # 10 epochs of ~90,000 characters are 1.5 per parameter of the 2 x 256 it chooses, under
    # the 4 that regularisation needs
    assert options["dropout"] == options["weight_drop"] == 0
    assert options["hidden"] in sizing.CANDIDATE_HIDDEN  # chosen, not given
    assert loss < UNIGRAM - 0.5, f"{loss:.4f}: the contexts were not learnt"
    assert loss <= ENTROPY_RATE * (1 + MARGIN), (
        f"default run: {loss:.4f} nats/char, floor {ENTROPY_RATE}, allowed "
        f"{ENTROPY_RATE * (1 + MARGIN):.4f}")
