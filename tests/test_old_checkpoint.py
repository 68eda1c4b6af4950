"""A checkpoint written by an earlier charrnn still loads, samples and resumes exactly.

tests/fixtures/old-lstm-step6.npz was written by commit 6270793 (before the training engine,
the pacer and the checkpoint's training schema moved into their own modules, and before
checkpoints recorded best_step), in a directory holding OLD_TEXT as old.txt:

    charrnn train old.txt --cell lstm --layers 1 --hidden 8 --batch-size 4 --seq-len 16 \\
        --max-steps 6 --save-every 3 --eval-every 3 --lr-schedule constant --out run -q
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from charrnn import checkpoint as ckpt_io
from charrnn.report import QuietReporter
from charrnn.train import Run, TrainOptions, train
from charrnn.train_state import options_from_checkpoint

FIXTURE = Path(__file__).parent / "fixtures" / "old-lstm-step6.npz"
OLD_TEXT = "".join(f"{i} the quick brown fox jumps over the lazy dog; pack my box with five "
                   f"dozen liquor jugs.\n" for i in range(60))
# as the old version trained the fixture: its defaults of the time included lr 0.004 and no
# weight averaging
OPTIONS = dict(cell="lstm", layers=1, hidden=8, batch_size=4, seq_len=16, save_every=3,
               eval_every=3, lr_schedule="constant", lr=4e-3, ema=0.0)


def charrnn(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "charrnn", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_info_and_sample_read_it():
    info = charrnn("info", "--json", FIXTURE)
    assert info.returncode == 0, info.stderr
    result = json.loads(info.stdout)
    assert result["step"] == 6 and result["config"]["cell"] == "lstm"
    assert set(result["vocabulary"]) == set(OLD_TEXT)
    sample = charrnn("sample", FIXTURE, "--length", "40", "--seed", "3")
    assert sample.returncode == 0, sample.stderr
    assert len(sample.stdout) == 40 and set(sample.stdout) <= set(OLD_TEXT)


def test_it_resumes_as_the_straight_run_of_this_version_trains(tmp_path, monkeypatch):
    """Six steps of the old version, resumed here for three more, give the weights of nine
    straight steps of this version: the restored state (weights, Adam moments, generator, data
    position, carried state) is what it was. To within rounding, not bit for bit: the kernels
    have summed their products in another order since (the register tile, BENCHMARKS.md), which
    moves the weights by about 1e-7 over nine steps; a step moves them by about 4e-3, so a
    restore that lost any part of the state would miss by thousands of times the tolerance."""
    monkeypatch.chdir(tmp_path)
    Path("old.txt").write_text(OLD_TEXT)
    Path("run").mkdir()
    shutil.copy(FIXTURE, Path("run") / ckpt_io.LATEST)
    ck = ckpt_io.load(Path("run") / ckpt_io.LATEST)
    assert ck.train["step"] == 6 and "best_step" not in ck.train  # really the old schema
    resumed = Run(Path("old.txt"), Path("run"), options_from_checkpoint(ck, {"max_steps": 9}),
                  resume=ck)
    train(resumed, QuietReporter())
    # the old version had no weight decay, and the resumed run trains on without it
    straight = Run(Path("old.txt"), Path("straight"),
                   TrainOptions(**OPTIONS, max_steps=9, weight_decay=0.0))
    train(straight, QuietReporter())
    assert resumed.state.step == straight.state.step == 9
    np.testing.assert_allclose(resumed.model.params, straight.model.params, rtol=0, atol=1e-6)
    np.testing.assert_allclose(resumed.optimizer.v, straight.optimizer.v, rtol=0, atol=1e-9)
    assert ckpt_io.load(Path("run") / ckpt_io.LATEST).train["step"] == 9
