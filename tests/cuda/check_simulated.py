"""The CUDA kernels against the CPU kernels, under numba's CUDA simulator, or on a real GPU.

Run by tests/test_cuda.py in a subprocess with NUMBA_ENABLE_CUDASIM=1 (the simulator must be
chosen before numba is imported), as ``python -m pytest tests/cuda/check_simulated.py``; on a
machine with an NVIDIA GPU, benchmarks/gpu_check.sh runs it on the device with
CHARRNN_CUDA_DEVICE=1, where the persistent time loops span several blocks.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ON_DEVICE = os.environ.get("CHARRNN_CUDA_DEVICE") == "1"
if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1" and not ON_DEVICE:
    pytest.skip("runs under the CUDA simulator (tests/test_cuda.py starts it) or, with "
                "CHARRNN_CUDA_DEVICE=1, on a GPU (benchmarks/gpu_check.sh)",
                allow_module_level=True)

from charrnn.cuda import kernels as K  # noqa: E402
from charrnn.model import Model, ModelConfig  # noqa: E402
from charrnn import CELL_NAMES  # noqa: E402
from charrnn.cuda.model import CudaModel  # noqa: E402
from numba import cuda  # noqa: E402


def problem(cell, layers, dropout, dtype, T=3, B=3, H=5, V=6, seed=0, persistent=True):
    rng = np.random.default_rng(seed)
    config = ModelConfig(vocab_size=V, cell=cell, layers=layers, hidden=H, dropout=dropout)
    cpu = Model(config, dtype=dtype)
    cpu.params[:] = rng.uniform(-0.8, 0.8, cpu.params.size)
    gpu = CudaModel(config, params=cpu.params.copy(), persistent=persistent)
    assert (gpu.plan is not None) == (persistent and config.spec.persistent_cuda)
    ids = rng.integers(0, V, (T, B))
    targets = rng.integers(0, V, (T, B))
    shape = (layers, B, config.state_width)
    h0 = rng.uniform(-0.9, 0.9, shape).astype(dtype)
    c0 = rng.uniform(-0.9, 0.9, shape).astype(dtype)
    if not config.has_cell_state:
        c0[:] = 0
    masks = cpu.dropout_masks(rng, T, B) if dropout else None
    dhT = rng.normal(size=shape).astype(dtype)
    dcT = rng.normal(size=shape).astype(dtype) if config.has_cell_state else np.zeros(shape, dtype)
    return cpu, gpu, (ids, targets, h0, c0, masks), (dhT, dcT)


@pytest.mark.parametrize("cell", CELL_NAMES)
@pytest.mark.parametrize("layers, dropout, persistent", [(1, 0.0, True), (2, 0.5, True),
                                                         (2, 0.5, False), (1, 0.5, False)])
def test_forward_and_backward_match_the_cpu_in_float64(cell, layers, dropout, persistent):
    if cell == "jordan" and layers > 1:
        pytest.skip("a jordan network has one layer")
    """Both time loops: persistent (one block: the simulator's grid barrier is a block barrier,
    so several blocks are checked only on a GPU) and a launch per step."""
    cpu, gpu, window, upstream = problem(cell, layers, dropout, np.float64,
                                         persistent=persistent)
    if gpu.plan is not None and K.SIMULATED:
        assert gpu.plan == (1, gpu.config.hidden)
    elif gpu.plan is not None:  # a GPU: one unit per block, five blocks and a grid barrier
        assert gpu.plan[0] > 1
    assert_same_window(cpu, gpu, window, upstream)


def test_gru_ln_rows_wider_than_a_block_match_the_cpu():
    """H = 11 against 8 threads a row under the simulator (128 on a GPU, where H = 640 is 5
    entries a thread): a thread sums and normalises one or two entries of every gate block.
    (The normalisation is the same whichever time loop follows: a launch per step here.)"""
    cpu, gpu, window, upstream = problem("gru-ln", 1, 0.0, np.float64, H=11, persistent=False)
    assert 11 > K.LN_THREADS or not K.SIMULATED
    assert_same_window(cpu, gpu, window, upstream)


def assert_same_window(cpu, gpu, window, upstream):
    """Loss, logits, final states, every gradient and the initial states' gradients agree to
    1e-12 (float64)."""
    loss_cpu = cpu.forward(*window)
    loss_gpu = gpu.forward(*window)
    assert abs(loss_cpu - loss_gpu) < 1e-12
    np.testing.assert_allclose(gpu.logits(), cpu.logits(), rtol=0, atol=1e-12)
    for a, b in zip(gpu.final_state(), cpu.final_state()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    dh_cpu, dc_cpu = cpu.backward(*upstream)
    dh_gpu, dc_gpu = gpu.backward(*upstream)
    grads = gpu.grads.copy_to_host()
    for name, view in cpu.layout.views(grads).items():
        np.testing.assert_allclose(view, cpu.grad_views[name], rtol=0, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(dh_gpu, dh_cpu, rtol=0, atol=1e-12)
    np.testing.assert_allclose(dc_gpu, dc_cpu, rtol=0, atol=1e-12)
    assert np.abs(grads).max() > 0


@pytest.mark.skipif(K.SIMULATED, reason="several units per block: a GPU only (slow simulated)")
@pytest.mark.parametrize("cell", ["lstm", "gru", "lstm-peephole"])
def test_persistent_loops_of_many_blocks_match_the_cpu(cell):
    """A width that spreads over every multiprocessor with several units per block."""
    cpu, gpu, window, upstream = problem(cell, 2, 0.5, np.float64, T=6, B=4, H=300, V=40)
    assert gpu.plan is not None and gpu.plan[0] > 1 and gpu.plan[1] > 1, gpu.plan
    assert abs(cpu.forward(*window) - gpu.forward(*window)) < 1e-10
    cpu.backward(*upstream)
    gpu.backward(*upstream)
    grads = gpu.grads.copy_to_host()
    for name, view in cpu.layout.views(grads).items():
        np.testing.assert_allclose(view, cpu.grad_views[name], rtol=1e-9, atol=1e-10,
                                   err_msg=name)


def test_the_persistent_slice_fits_the_static_shared_memory_of_its_dtype():
    """48 KiB a block: a slice of 8,000 elements fits in float32, not in float64."""
    assert K.persistent_plan(2000, 8000, 2000, itemsize=4) == (2000, 1)
    assert K.persistent_plan(2000, 8000, 2000, itemsize=8) is None


def test_float32_matches_the_cpu_within_float32_rounding():
    cpu, gpu, window, upstream = problem("lstm", 2, 0.0, np.float32)
    assert abs(cpu.forward(*window) - gpu.forward(*window)) < 1e-5
    cpu.backward(*upstream)
    gpu.backward(*upstream)
    grads = gpu.grads.copy_to_host()
    assert np.max(np.abs(grads - cpu.grads)) < 1e-5 * max(1.0, np.abs(cpu.grads).max())


@pytest.mark.parametrize("ta, tb, accumulate", [(0, 0, 0), (1, 0, 1), (0, 1, 0), (1, 1, 1)])
def test_gemm_over_several_tiles(ta, tb, accumulate):
    rng = np.random.default_rng(1)
    M, N, Kd = 2 * K.TILE + 1, K.TILE + 3, 3 * K.TILE - 1  # ragged edges, several blocks
    A = rng.normal(size=(Kd, M) if ta else (M, Kd))
    B = rng.normal(size=(N, Kd) if tb else (Kd, N))
    C = rng.normal(size=(M, N))
    expected = (A.T if ta else A) @ (B.T if tb else B) + (C if accumulate else 0)
    d_C = cuda.to_device(C)
    K.gemm(cuda.to_device(A), cuda.to_device(B), d_C, ta, tb, accumulate)
    np.testing.assert_allclose(d_C.copy_to_host(), expected, rtol=1e-12, atol=1e-12)


def test_adam_and_clipping_match_the_cpu():
    from charrnn.kernels import cpu as C
    rng = np.random.default_rng(2)
    n = 3 * K.BLOCK + 5
    params, grads = rng.normal(size=n), rng.normal(size=n)
    m, v = rng.normal(size=n) * 0.1, rng.random(n) * 0.1
    d = [cuda.to_device(a) for a in (params, grads, m, v)]
    norm = C.clip_grad_norm(grads, 1.5)  # scales the host copy in place
    total = cuda.to_device(np.zeros(1))
    K.sum_squares[4, K.BLOCK](d[1], total)
    gpu_norm = float(np.sqrt(total.copy_to_host()[0]))
    assert abs(gpu_norm - norm) < 1e-12 * norm
    K.clip_by_norm[K.grid(n)](d[1], total, 1.5)
    step, lr, b1, b2, eps, decay = 3, 2e-3, 0.9, 0.999, 1e-8, 0.5  # decay: AdamW's
    C.adam_step(params, grads, m, v, step, lr, b1, b2, eps, decay)
    K.adam_step[K.grid(n)](d[0], d[1], d[2], d[3], lr / (1 - b1 ** step),
                           np.sqrt(1 - b2 ** step), b1, b2, eps, 1 - lr * decay, total)
    for host, dev in zip((params, grads, m, v), d):
        np.testing.assert_allclose(dev.copy_to_host(), host, rtol=1e-12, atol=1e-15)
    # a non-finite norm: no clipping arithmetic, no update, and the flag goes up
    before = d[0].copy_to_host()
    bad_norm, flag = cuda.to_device(np.array([np.nan])), cuda.to_device(np.zeros(1, np.int32))
    K.adam_step[K.grid(n)](d[0], d[1], d[2], d[3], 1e-3, 1.0, b1, b2, eps, 0.5, bad_norm)
    np.testing.assert_array_equal(d[0].copy_to_host(), before)
    K.note_nonfinite[1, 1](bad_norm, cuda.to_device(np.zeros(1)), flag)
    assert flag.copy_to_host()[0] == 1


def train_cli(tmp_path, device, corpus):
    out = tmp_path / device
    run = subprocess.run([sys.executable, "-m", "charrnn", "train", str(corpus), "--device",
                          device, "--out", str(out), "--hidden", "6", "--layers", "2",
                          "--batch-size", "3", "--seq-len", "3", "--max-steps", "2",
                          "--eval-every", "1", "--dropout", "0.25",
                          "--weight-drop", "0.3"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return out, run.stderr


def test_train_on_cuda_gives_the_cpu_run_and_the_same_checkpoint_format(tmp_path):
    from charrnn import checkpoint
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat. " * 20)
    gpu_dir, gpu_err = train_cli(tmp_path, "cuda", corpus)
    cpu_dir, _ = train_cli(tmp_path, "cpu", corpus)
    assert "training on CUDA" in gpu_err
    for name in ("latest.npz", "best.npz"):
        g, c = checkpoint.load(gpu_dir / name), checkpoint.load(cpu_dir / name)
        assert g.train["step"] == c.train["step"]
        np.testing.assert_allclose(g.params, c.params, rtol=0, atol=2e-5)
        for key in ("adam.m", "adam.v", "state.h", "state.c", "train.params"):  # averaged
            np.testing.assert_allclose(g.arrays[key], c.arrays[key], rtol=0, atol=2e-5)
    sampled = {}
    for device in ("cpu", "cuda"):
        run = subprocess.run([sys.executable, "-m", "charrnn", "sample", str(gpu_dir),
                              "--device", device, "--length", "30", "--seed", "5",
                              "--prime", "the "], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        sampled[device] = run.stdout
    assert sampled["cuda"] == sampled["cpu"] and sampled["cpu"].startswith("the ")
    history = [json.loads(line) for line in (gpu_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history if "train_loss" in r] == [1, 2]


@pytest.mark.parametrize("cell, temperature, top_k, top_p", [
    ("lstm", 0.8, 0, 1.0), ("lstm", 1.0, 3, 0.9), ("lstm", 0.0, 0, 1.0), ("gru", 0.8, 0, 1.0),
    ("gru", 1.0, 3, 0.9), ("gru-classic", 0.8, 0, 1.0), ("jordan", 0.8, 0, 1.0),
    ("lstm-peephole", 1.0, 2, 1.0), ("irnn", 0.8, 0, 0.8), ("gru-ln", 0.8, 0, 1.0)])
def test_sampling_on_the_device_gives_the_cpu_text(cell, temperature, top_k, top_p):
    from charrnn.sample import SampleOptions, generate
    from charrnn.tokenizer import Vocab
    vocab = Vocab.from_text("abcdefg \n")
    rng = np.random.default_rng(3)
    # gru-ln's rows are wider than a simulated block (8 threads): a thread normalises several
    config = ModelConfig(vocab_size=len(vocab), cell=cell, layers=1 if cell == "jordan" else 2,
                         hidden=19 if cell == "gru-ln" else 5)
    model = Model(config, dtype=np.float64)
    model.params[:] = rng.normal(0, 1.0, model.params.size)  # peaked: several ids matter
    opts = SampleOptions(length=12, temperature=temperature, top_k=top_k or None, top_p=top_p,
                         prime="ab", seed=7, num_samples=2)
    texts = {}
    for device in ("cpu", "cuda"):
        pieces = ["", ""]
        for b, text in generate(model, vocab, opts, device=device):
            pieces[b] += text
        texts[device] = pieces
    assert texts["cuda"] == texts["cpu"]
    assert all(len(t) == 2 + 12 for t in texts["cpu"])


def test_a_diverging_cuda_run_stops_in_one_line_and_saves_nothing_bad(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat. " * 20)
    out = tmp_path / "run"
    run = subprocess.run([sys.executable, "-m", "charrnn", "train", str(corpus), "--device",
                          "cuda", "--out", str(out), "--hidden", "4", "--layers", "1",
                          "--batch-size", "2", "--seq-len", "3", "--max-steps", "3",
                          "--eval-every", "1", "--lr", "1e38", "--weight-decay", "0"],
                         capture_output=True, text=True)
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("charrnn: error:"), last
    assert any(word in last for word in ("non-finite", "nan", "inf")), last
    from charrnn import checkpoint
    for name in ("latest.npz", "best.npz"):
        if (out / name).exists():
            assert np.all(np.isfinite(checkpoint.load(out / name).params))


def test_bench_times_the_gpu_training_step_and_sampler():
    from charrnn.bench import BenchConfig, bench_charrnn
    result = bench_charrnn(BenchConfig(device="cuda", layers=1, hidden=4, batch_size=2,
                                       seq_len=3, vocab=6, iters=1, repeats=1, sample_chars=16,
                                       batched_samples=2))
    assert result["device"] == "cuda" and result["gemm_peak_gflops"] is None
    for key in ("train_chars_per_s", "sample_chars_per_s", "batched_sample_chars_per_s"):
        assert result[key] > 0, key


def sampling_model(cell):
    from charrnn.tokenizer import Vocab
    vocab = Vocab.from_text("abcdefg \n")
    config = ModelConfig(vocab_size=len(vocab), cell=cell, layers=1 if cell == "jordan" else 2,
                         hidden=5)
    model = Model(config, dtype=np.float64)
    model.params[:] = np.random.default_rng(3).normal(0, 1.0, model.params.size)  # peaked
    return model, vocab


@pytest.mark.parametrize("cell", ["lstm", "gru-classic", "jordan"])
def test_the_device_stepper_gives_the_cpu_ids_with_options_per_row(cell):
    """The Stepper protocol on both devices: rows with their own options, then rows dropped,
    reordered and added (a prime fed on the device) between chunks, a row fed a prompt
    inside the batched steps while the others draw, and a row's state saved and put back."""
    from charrnn.cuda.sample import CudaStepper
    from charrnn.stepper import CpuStepper
    model, vocab = sampling_model(cell)
    primes = [np.array(p, np.int32) for p in ([1, 2, 3], [], [4, 0], [1, 2, 3])]
    ids = {}
    for name, stepper in (("cpu", CpuStepper(model)), ("cuda", CudaStepper(model))):
        draws = np.random.default_rng(6)
        stepper.arrange([], primes)
        x = np.array([5, 6, 7, 8], np.int32)
        options = (np.array([0.8, 1.0, 0.0, 1.3]), np.array([0, 3, 0, 2], np.int64),
                   np.array([1.0, 0.9, 1.0, 0.7]))
        no_forcing = np.full((7, 4), -1, np.int32)
        got = [stepper.generate(x, no_forcing, *options, draws.random((7, 4)))]
        stepper.arrange([3, 0], [np.array([2, 2, 5], np.int32)])  # rows 3, 0, then a new one
        x = np.array([x[3], x[0], 1], np.int32)
        options = tuple(np.array([o[3], o[0], v]) for o, v in zip(options, (0.9, 4, 0.8)))
        forced = np.full((9, 3), -1, np.int32)
        forced[:4, 2] = [3, 1, 4, 1]  # the new row takes a prompt's next ids, then draws
        got.append(stepper.generate(x, forced, *options, draws.random((9, 3))))
        np.testing.assert_array_equal(got[-1][:4, 2], [3, 1, 4, 1])
        # row 1 set aside (a paused stream) and put back after row 2, where it left off
        aside = stepper.saved([1])
        stepper.arrange([2, 0], aside)
        x = np.array([x[2], x[0], x[1]], np.int32)
        options = tuple(np.array([o[2], o[0], o[1]]) for o in options)
        got.append(stepper.generate(x, np.full((6, 3), -1, np.int32), *options,
                                    draws.random((6, 3))))
        ids[name] = got
    for cpu_ids, gpu_ids in zip(ids["cpu"], ids["cuda"]):
        np.testing.assert_array_equal(gpu_ids, cpu_ids)
    assert len(np.unique(ids["cpu"][0])) > 3  # the draws are not all one id


def test_a_device_stepper_uploads_the_weights_once_for_every_slot_and_run(monkeypatch):
    """Two runs of slots (filled, one freed, run to their ends) on one CudaStepper: the texts of
    the CPU, and the weights uploaded once, when the stepper was made."""
    from charrnn.cuda.sample import CudaStepper
    from charrnn.sample import SampleOptions
    from charrnn.stepper import CpuStepper, Slots
    model, vocab = sampling_model("gru")
    uploads = []
    to_device = cuda.to_device
    monkeypatch.setattr(cuda, "to_device", lambda a, *args, **kw: (uploads.append(a),
                                                                  to_device(a, *args, **kw))[1])
    runs = [[SampleOptions(length=20, temperature=0.9, top_k=3, prime="ab", seed=1),
             SampleOptions(length=18, top_p=0.8, stop="e", seed=2),
             SampleOptions(length=24, temperature=0.0, prime="g", seed=3)],
            [SampleOptions(length=17, temperature=1.2, prime="dd", seed=4)]]

    def run(stepper):
        texts, reasons = [], []
        for batch in runs:
            slots = Slots(stepper, vocab)
            handles = [slots.fill(o) for o in batch]
            got, ends, k = {}, {}, 0
            while slots.active:
                if k == 1 and len(handles) > 1:
                    slots.free(handles[1])
                for p in slots.step():
                    got[p.slot] = got.get(p.slot, "") + p.text
                    ends[p.slot] = p.finish_reason
                k += 1
            texts.append([got.get(h) for h in handles])
            reasons.append([ends.get(h) for h in handles])
        return texts, reasons

    gpu = CudaStepper(model)
    assert run(gpu) == run(CpuStepper(model))
    assert sum(a is model.params for a in uploads) == 1
