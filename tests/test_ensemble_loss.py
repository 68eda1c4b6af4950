"""benchmarks/ensemble_loss.py reads the held-out text as training's validation does, so its
figure for each run is the validation the run kept, and scores the runs' ensemble."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from charrnn import checkpoint as ckpt_io
from charrnn.synthetic import MarkovSource

from .test_cli import cli_env, run_cli

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "ensemble_loss.py"


def test_each_run_scores_its_kept_validation_and_the_ensemble_beats_their_mean(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text(MarkovSource(alphabet="abcdefgh \n", order=2, seed=4).sample_text(30_000))
    runs = []
    for seed in (0, 1):  # the default validation sizes: 64 streams, windows of 100
        run = tmp_path / f"run{seed}"
        code, _, err = run_cli("train", text, "--hidden", 16, "--layers", 1, "--max-steps", 4,
                               "--eval-every", 4, "--seed", seed, "--out", run, "-q")
        assert code == 0, err
        runs.append(run)
    p = subprocess.run([sys.executable, str(SCRIPT), str(text), *map(str, runs)],
                       capture_output=True, text=True, env=cli_env(None), check=True)
    *alone, ensemble = [json.loads(line) for line in p.stdout.splitlines()]
    for row, run in zip(alone, runs, strict=True):
        kept = ckpt_io.load(run / ckpt_io.BEST).train["best_val_loss"]
        assert row["loss_nats"] == pytest.approx(kept, abs=2e-5)
    assert ensemble["ensemble_of"] == 2
    # the mean of probabilities is below the mean of the losses (Jensen), where they differ
    assert ensemble["loss_nats"] < sum(row["loss_nats"] for row in alone) / 2
