"""Splitting a window's streams across threads gives the same numbers as one thread."""

import os
import subprocess
import sys

import numpy as np
import pytest

from charrnn.parallel import StreamSplitter, ThreadsSettingError, default_threads, row_ranges

from .conftest import Problem


@pytest.mark.parametrize("B, parts", [(7, 3), (50, 2), (64, 16), (5, 1)])
def test_row_ranges_cover_every_stream_once(B, parts):
    ranges = row_ranges(B, parts)
    assert len(ranges) == parts
    assert ranges[0][0] == 0 and ranges[-1][1] == B
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    sizes = [b1 - b0 for b0, b1 in ranges]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_sharded_window_equals_the_whole(cell, dropout):
    layers = 1 if cell == "jordan" else 2
    whole = Problem(cell, layers, dropout, T=5, B=7)
    whole.model.splitter = StreamSplitter(1)
    sharded = Problem(cell, layers, dropout, T=5, B=7)  # same seed: same weights and window
    sharded.model.splitter = StreamSplitter(3, min_rows=1)
    if sharded.model.splitter.parts(7) == 1:
        pytest.skip("no OpenBLAS thread switch: everything runs on one thread")
    g_whole, dh_whole, dc_whole = whole.analytic()
    g_shard, dh_shard, dc_shard = sharded.analytic()
    assert len(sharded.model._shards) == 3
    assert len(whole.model._shards) == 1
    for name in g_whole:
        np.testing.assert_allclose(g_shard[name], g_whole[name], rtol=0, atol=1e-13,
                                   err_msg=name)
    np.testing.assert_allclose(dh_shard, dh_whole, rtol=0, atol=1e-13)
    np.testing.assert_allclose(dc_shard, dc_whole, rtol=0, atol=1e-13)
    np.testing.assert_allclose(sharded.model.logits(), whole.model.logits(), rtol=0,
                               atol=1e-13)
    for a, b in zip(sharded.model.final_state(), whole.model.final_state()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-13)
    assert abs(sharded.objective() - whole.objective()) < 1e-13


def test_a_worker_failure_reaches_the_caller():
    splitter = StreamSplitter(2, min_rows=1)

    def fail(item):
        if item == 1:
            raise RuntimeError("worker 1 failed")

    if splitter.parts(4) == 1:
        pytest.skip("no OpenBLAS thread switch: everything runs on one thread")
    with pytest.raises(RuntimeError, match="worker 1 failed"):
        splitter.map(fail, [0, 1])


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_a_bad_threads_setting_is_refused(monkeypatch, value):
    monkeypatch.setenv("CHARRNN_THREADS", value)
    with pytest.raises(ThreadsSettingError, match="CHARRNN_THREADS"):
        default_threads()


def test_threads_setting_is_obeyed(monkeypatch):
    monkeypatch.setenv("CHARRNN_THREADS", "3")
    assert default_threads() == 3
    assert StreamSplitter(1).parts(64) == 1


def test_cli_reports_a_bad_threads_setting_in_one_line(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("abcabcabd" * 200)
    run = subprocess.run([sys.executable, "-m", "charrnn", "train", str(corpus), "--max-steps",
                          "1", "--out", str(tmp_path / "run")],
                         capture_output=True, text=True,
                         env={**os.environ, "CHARRNN_THREADS": "lots"})
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1].startswith("charrnn: error: CHARRNN_THREADS")
    assert "Traceback" not in run.stderr


def _blas_thread_counts(switches) -> list[int]:
    """Each OpenBLAS's thread count, read by setting it (the switch returns the previous count)
    and setting it back."""
    counts = [switch(1) for switch in switches]
    for switch, count in zip(switches, counts):
        switch(count)
    return counts


def test_the_calling_thread_keeps_its_blas_threads():
    # OpenBLAS's pthreads build makes the workers' one-thread setting process-wide; after the
    # shards ran, the sampler on the calling thread must get BLAS's threads back
    splitter = StreamSplitter(2)
    if splitter.parts(64) == 1:
        pytest.skip("no OpenBLAS thread switch: everything runs on one thread")
    original = [switch(2) for switch in splitter._switches]
    try:
        seen = []
        splitter.map(lambda _: seen.append(_blas_thread_counts(splitter._switches)), [0, 1])
        assert seen == [[1] * len(original)] * 2  # the workers ran single-threaded
        assert _blas_thread_counts(splitter._switches) == [2] * len(original)

        def fail(item):
            if item == 0:
                raise RuntimeError("shard 0 failed")
            seen.append(_blas_thread_counts(splitter._switches))
        with pytest.raises(RuntimeError, match="shard 0 failed"):
            splitter.map(fail, [0, 1])
        assert seen[-1] == [1] * len(original)  # the other shard still ran single-threaded
        assert _blas_thread_counts(splitter._switches) == [2] * len(original)
    finally:
        for switch, count in zip(splitter._switches, original):
            switch(count)


def test_two_maps_at_once_give_blas_its_threads_back():
    """Two samplers splitting at once share one pool; BLAS's thread count (the whole process's)
    must not be left at one by their setting it and putting it back interleaved."""
    import threading
    import time
    splitter = StreamSplitter(2)
    if splitter.parts(64) == 1:
        pytest.skip("no OpenBLAS thread switch: everything runs on one thread")
    original = [switch(2) for switch in splitter._switches]
    try:
        callers = [threading.Thread(target=splitter.map, args=(lambda _: time.sleep(0.05),
                                                               [0, 1])) for _ in range(4)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join()
        assert _blas_thread_counts(splitter._switches) == [2] * len(original)
    finally:
        for switch, count in zip(splitter._switches, original):
            switch(count)


def test_without_workers_the_items_run_in_turn():
    splitter = StreamSplitter(1)
    seen = []
    splitter.map(seen.append, [0, 1, 2])
    assert seen == [0, 1, 2] and splitter._pool is None


def test_sampling_never_starts_the_workers():
    """The splitter looks for BLAS's thread switches (importing SciPy's BLAS) and starts its
    threads at its first split: a sampler, which never splits, pays for neither."""
    from charrnn.model import Model, ModelConfig
    from charrnn.sample import SampleOptions, generate
    from charrnn.tokenizer import Vocab
    splitter = StreamSplitter(2)
    model = Model(ModelConfig(vocab_size=5, cell="lstm", layers=2, hidden=8), splitter=splitter)
    opts = SampleOptions(length=20, prime="ab", num_samples=3, seed=0)
    assert sum(len(text) for _, text in generate(model, Vocab.from_text("abcd\n"), opts)) == 66
    assert splitter._switches is None and splitter._pool is None
    splitter.parts(64)  # the first split's question starts it
    assert splitter._switches is not None
