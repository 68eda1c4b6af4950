"""`charrnn bench` measures what it says, on tiny shapes (speed itself is never asserted)."""

import json
import subprocess
import sys

import pytest

from charrnn.bench import BenchConfig, flops_per_char

TINY = ["--hidden", "8", "--layers", "2", "--batch-size", "3", "--seq-len", "5", "--iters", "2",
        "--sample-chars", "32"]


def bench(*args):
    out = subprocess.run([sys.executable, "-m", "charrnn", "bench", "--json", *TINY, *args],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_json_has_the_figures_and_they_are_consistent():
    r = bench("--no-torch", "--cell", "gru")
    for key in ["train_chars_per_s", "sample_chars_per_s", "batched_sample_chars_per_s",
                "ms_per_iter", "peak_rss_mb", "gemm_peak_gflops", "fraction_of_peak",
                "batched_sample_gflops", "batched_sample_fraction_of_peak", "blas_gemm_gflops",
                "tile_gemm_gflops"]:
        assert r[key] > 0, key
    # the peak is the faster of BLAS's product and the register tile's (rounded apart)
    assert r["gemm_peak_gflops"] == pytest.approx(max(r["blas_gemm_gflops"],
                                                      r["tile_gemm_gflops"]), abs=0.1)
    sampled = r["batched_sample_chars_per_s"] * flops_per_char(BenchConfig(cell="gru",
                                                                           hidden=8)) / 3 / 1e9
    assert r["batched_sample_gflops"] == pytest.approx(sampled, rel=0.01)
    assert r["batched_sample_fraction_of_peak"] == pytest.approx(
        sampled / r["gemm_peak_gflops"], rel=0.01)
    assert r["cell"] == "gru" and r["hidden"] == 8
    assert r["train_chars_per_s"] == pytest.approx(3 * 5 / (r["ms_per_iter"] / 1e3), rel=2e-2)
    assert "pytorch" not in r


def test_with_torch_reports_ratios():
    pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch==2.13.0)")
    r = bench()
    assert r["pytorch"]["impl"].startswith("pytorch-")
    assert set(r["ratio_sample_batches_chars_per_s"]) == {"8", "16"}
    assert r["ratio_train_chars_per_s"] == pytest.approx(
        r["train_chars_per_s"] / r["pytorch"]["train_chars_per_s"], rel=1e-2)


def test_flop_count_by_hand():
    # LSTM 2 x 4, V = 3: layer 0 recurrent 4*16, layer 1 input + recurrent 2*4*16, output 4*3
    c = BenchConfig(cell="lstm", layers=2, hidden=4, vocab=3)
    assert flops_per_char(c) == 6 * (64 + 128 + 12)


def test_batched_sampling_takes_its_number_of_streams():
    r = bench("--no-torch", "--batched-samples", "3", "--sample-batches", "2",
              "--sample-batches", "5", "--vocab", "9")
    assert r["batched_samples"] == 3 and r["batched_sample_chars_per_s"] > 0
    assert r["vocab"] == 9 and r["sample_batches"] == [2, 5]
    assert set(r["sample_batches_chars_per_s"]) == {"2", "5"}
    assert all(rate > 0 for rate in r["sample_batches_chars_per_s"].values())
    bad = subprocess.run([sys.executable, "-m", "charrnn", "bench", "--batched-samples", "0"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--batched-samples" in bad.stderr


def test_the_gpu_check_script_parses():
    """benchmarks/gpu_check.sh runs only where a GPU is lent; here it must at least parse."""
    import subprocess
    from pathlib import Path
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.sh"
    run = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
