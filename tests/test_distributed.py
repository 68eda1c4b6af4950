"""`mpirun -n N charrnn train`: N processes over this machine's loopback train the model one
process trains, resume across world sizes, stop together, and refuse to train apart.

Skipped with a reason where mpi4py or mpiexec is missing (`pip install -e .` brings both: the
mpi4py and mpich wheels). Every process is bounded in time; the ranks talk through shared
memory, and every connection MPI makes stays on the loopback interface (LOOPBACK).
"""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from charrnn import checkpoint as ckpt_io
from charrnn.synthetic import MarkovSource

MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or \
    shutil.which("mpiexec")
pytestmark = pytest.mark.skipif(
    MPIEXEC is None or importlib.util.find_spec("mpi4py") is None,
    reason="needs mpi4py and mpiexec (pip install mpi4py mpich)")

# loopback only: the launcher's own connections (-iface lo) and any network transport MPI
# opens (UCX's and libfabric's) stay on 127.0.0.1; the ranks talk through shared memory
LOOPBACK = ["-iface", "lo"]
LOOPBACK_ENV = {"UCX_NET_DEVICES": "lo", "FI_TCP_IFACE": "lo", "FI_SOCKETS_IFACE": "lo"}
RUN_TIMEOUT = 300  # s: one training command, kernels compiled or loaded from the cache
# B = 6 streams: 1, 2 and 3 ranks all divide it
ARGS = ["--cell", "gru", "--hidden", "24", "--layers", "2", "--batch-size", "6",
        "--seq-len", "16", "--eval-every", "10", "--seed", "3", "--quiet"]
# float32: the sums of gradients across ranks round differently from one process's sum
# (measured up to 9e-7 on these weights after 30 steps; README "Training on many processes")
WEIGHTS_ATOL = 1e-5


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = tmp_path_factory.mktemp("mpi")
    text = MarkovSource(alphabet="abcdefgh \n", order=2, seed=1).sample_text(20_000)
    (work / "corpus.txt").write_text(text, encoding="utf-8")
    other = MarkovSource(alphabet="abcdefgh \n", order=2, seed=2).sample_text(20_000)
    (work / "other.txt").write_text(other, encoding="utf-8")
    return work


def env_for(work: Path) -> dict:
    env = {**os.environ, **LOOPBACK_ENV, "NO_COLOR": "1",
           "CHARRNN_STATE_DIR": str(work / "state")}
    for var in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"):
        env.pop(var, None)  # the single-process runs must not look launched by MPI
    return env


def charrnn(*args) -> list[str]:
    return [sys.executable, "-m", "charrnn", *map(str, args)]


def train(work: Path, ranks: int, out: str, *extra, timeout=RUN_TIMEOUT,
          check=True) -> subprocess.CompletedProcess:
    """`charrnn train corpus.txt ARGS EXTRA --out OUT`, in one process or under mpiexec."""
    command = charrnn("train", "corpus.txt", *ARGS, "--out", out, *extra)
    if ranks > 1:
        command = [MPIEXEC, *LOOPBACK, "-n", str(ranks), *command]
    p = subprocess.run(command, cwd=work, env=env_for(work), capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def weights(run: Path) -> dict[str, np.ndarray]:
    with np.load(run / "latest.npz", allow_pickle=False) as ck:
        return {k: ck[k] for k in ck.files}


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_training(a: Path, b: Path, exact: bool = False) -> None:
    """Two runs trained the same model: the same losses and weights (to float32 rounding, or
    bit for bit), the same checkpoint layout."""
    wa, wb = weights(a), weights(b)
    assert sorted(wa) == sorted(wb), "the same checkpoint whatever the number of ranks"
    ta, tb = (ckpt_io.load(run / "latest.npz").train for run in (a, b))
    assert (ta["step"], ta["position"]) == (tb["step"], tb["position"])
    for key in wa:
        if wa[key].dtype.kind not in "fiu" or key == "meta":
            continue  # the JSON part: times and names differ, its counters are checked above
        assert wa[key].shape == wb[key].shape and wa[key].dtype == wb[key].dtype, key
        if wa[key].dtype.kind == "f" and not exact:
            np.testing.assert_allclose(wa[key], wb[key], atol=WEIGHTS_ATOL, rtol=0, err_msg=key)
        else:  # the vocabulary, and every array of a run that must give the same bits
            np.testing.assert_array_equal(wa[key], wb[key], err_msg=key)
    ra, rb = records(a), records(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    for x, y in zip(ra, rb):
        for key in ("train_loss", "val_loss"):
            if key in x:
                assert y[key] == pytest.approx(x[key], rel=1e-5), (key, x["step"])


@pytest.mark.parametrize("ranks", [2, 3])
def test_ranks_train_the_model_one_process_trains(work, ranks):
    if not (work / "one").exists():  # (made by the first of these tests)
        train(work, 1, "one", "--max-steps", 30)
    p = train(work, ranks, f"ranks{ranks}", "--max-steps", 30)
    assert p.stdout == "" and p.stderr == "", "--quiet: nothing from any rank"
    assert_same_training(work / "one", work / f"ranks{ranks}")
    assert weights(work / "one")["params"].std() > 0.05, "trained weights, not zeros"


def test_ranks_train_each_member_of_an_ensemble_as_one_process_does(work):
    train(work, 1, "members1", "--max-steps", 10, "--members", 2)
    train(work, 2, "members2", "--max-steps", 10, "--members", 2)
    for run in ("members1", "members2"):
        assert (work / run / "members" / "2" / "latest.npz").exists()
    assert_same_training(work / "members1" / "members" / "2", work / "members2" / "members" / "2")
    one, two = (ckpt_io.load(work / run / "ensemble.npz") for run in ("members1", "members2"))
    assert one.arrays["ensemble.members"].shape == two.arrays["ensemble.members"].shape == \
        (1, one.params.size)
    np.testing.assert_allclose(two.arrays["ensemble.members"], one.arrays["ensemble.members"],
                               atol=WEIGHTS_ATOL, rtol=0)
    assert two.train["best_val_loss"] == pytest.approx(one.train["best_val_loss"], rel=1e-5)


def test_a_rerun_gives_the_same_bits(work):
    train(work, 2, "again-a", "--max-steps", 20)
    train(work, 2, "again-b", "--max-steps", 20)
    assert_same_training(work / "again-a", work / "again-b", exact=True)


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2), (2, 3)])
def test_resume_on_another_number_of_ranks(work, before, after):
    # a constant learning rate: a cosine's over 10 steps would differ from one over 30
    name, constant = f"resume-{before}-{after}", ("--lr-schedule", "constant")
    train(work, before, name, "--max-steps", 10, "--save-every", 10, *constant)
    train(work, after, name, "--max-steps", 30, "--resume")
    straight = f"straight-{after}"
    if not (work / straight).exists():
        train(work, after, straight, "--max-steps", 30, *constant)
    assert_same_training(work / straight, work / name)


def test_ranks_given_other_corpora_or_options_refuse_to_start(work):
    common = [*ARGS, "--max-steps", "5"]
    for first, second, what in (
            (["corpus.txt", *common], ["other.txt", *common], "corpus"),
            (["corpus.txt", *common], ["corpus.txt", *common, "--lr", "0.01"], "options")):
        out = work / f"apart-{what}"
        p = subprocess.run([MPIEXEC, *LOOPBACK, "-n", "1",
                            *charrnn("train", *first, "--out", out), ":",
                            "-n", "1", *charrnn("train", *second, "--out", out)],
                           cwd=work, env=env_for(work), capture_output=True, text=True,
                           timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL)
        assert p.returncode != 0
        assert f"rank 1 has other {what} than rank 0" in p.stderr, p.stderr
        # every rank found it alike: rank 0 says it once, and all end through MPI_Finalize
        # (under MPI_Abort the launcher once killed them before it passed on their stderr)
        assert p.stderr.count("error:") == 1, p.stderr
        assert "Traceback" not in p.stderr, p.stderr
        assert not (out / "latest.npz").exists()


def rank_pids(marker: str) -> dict[int, int]:
    """{rank: pid} of the charrnn processes whose command line holds marker."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker.encode() in cmdline and b"charrnn" in cmdline:
            for var in environ:
                if var.startswith(b"PMI_RANK="):
                    found[int(var.split(b"=")[1])] = int(proc.name)
    return found


def start_long_run(work: Path, out: str) -> subprocess.Popen:
    """Two ranks training for minutes, once their first checkpoint is written."""
    proc = subprocess.Popen([MPIEXEC, *LOOPBACK, "-n", "2", *charrnn(
        "train", "corpus.txt", *ARGS[:-1], "--minutes", 10, "--save-every", 5, "--out", out)],
        cwd=work, env=env_for(work), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + RUN_TIMEOUT
    while not (work / out / "latest.npz").exists():
        assert proc.poll() is None, proc.communicate()[1].decode()
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.1)
    return proc


def resumes(work: Path, out: str) -> None:
    """The run's last checkpoint loads and a single process goes on from it."""
    step = records(work / out)[-1]["step"] if (work / out / "metrics.jsonl").exists() else 0
    p = subprocess.run(charrnn("train", "corpus.txt", "--out", out, "--resume", "--max-steps",
                               int(step) + 30, "--quiet"),
                       cwd=work, env=env_for(work), capture_output=True, text=True,
                       timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr


def test_a_killed_rank_ends_the_others_and_leaves_a_resumable_checkpoint(work):
    proc = start_long_run(work, "killed")
    try:
        pids = rank_pids("killed")
        assert sorted(pids) == [0, 1], pids
        os.kill(pids[1], signal.SIGKILL)
        proc.wait(60)  # raises if the other rank and the launcher are not gone within 60 s
        assert proc.returncode != 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert rank_pids("killed") == {}, "no rank is left running"
    resumes(work, "killed")


def test_ctrl_c_to_mpiexec_saves_once_and_exits(work):
    proc = start_long_run(work, "interrupted")
    try:
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    err = err.decode()
    assert proc.returncode != 0
    assert err.count("interrupted; saved step") == 1, err
    saved = int(err.split("interrupted; saved step ")[1].split(".")[0])
    assert ckpt_io.load(work / "interrupted" / "latest.npz").train["step"] == saved
    resumes(work, "interrupted")


FLOAT64_STEPS = textwrap.dedent('''
    """20 training steps of a float64 GRU on this rank's share of 6 streams (or all of them in
    a world of one), dropout masks drawn for all streams; rank 0 saves the weights."""
    import sys
    import numpy as np
    from charrnn import distributed
    from charrnn.engine import CpuEngine
    from charrnn.model import Model, ModelConfig
    from charrnn.optim import Adam

    world = distributed.world()
    config = ModelConfig(vocab_size=7, cell="gru", layers=2, hidden=9, dropout=0.2)
    model = Model(config, dtype=np.float64, seed=5)
    h, c = model.zero_state(6)
    engine = CpuEngine(model, Adam(model.params.size, lr=0.01), h, c, world)
    rng = np.random.default_rng(0)
    losses = []
    for step in range(20):
        ids = rng.integers(0, 7, (9, 6))
        masks = model.dropout_masks(rng, 8, 6)
        losses.append(engine.step(ids[:-1], ids[1:], masks, 0.01, 1.0))
    if world.root:
        np.save(sys.argv[1], np.concatenate([model.params, losses]))
    distributed.finish()
''')


@pytest.mark.parametrize("ranks", [2, 3])
def test_float64_ranks_equal_one_process_to_1e_12(work, ranks):
    script = work / "float64_steps.py"
    script.write_text(FLOAT64_STEPS)
    env = env_for(work)
    one, many = work / "one64.npy", work / f"ranks64-{ranks}.npy"
    subprocess.run([sys.executable, script, one], env=env, check=True, timeout=RUN_TIMEOUT)
    subprocess.run([MPIEXEC, *LOOPBACK, "-n", str(ranks), sys.executable, script, many], env=env,
                   check=True, timeout=RUN_TIMEOUT)
    a, b = np.load(one), np.load(many)
    np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)
    assert np.abs(a).max() > 0.1


CORPUS_SHARING = textwrap.dedent('''
    """Rank 0's corpus on rank 1: its ids file mapped where rank 1 sees it, else sent. Each
    rank writes what it got (its kind and ids) to OUT.RANK.json."""
    import json, sys
    from pathlib import Path
    from types import SimpleNamespace
    import numpy as np
    from charrnn import distributed
    from charrnn.documents import Corpus
    from charrnn.tokenizer import Vocab
    from charrnn.train import Run

    world = distributed.world()
    out, mapped = Path(sys.argv[1]), sys.argv[2] == "mapped"
    corpus = None
    if world.root:
        ids = (np.arange(1000) % 7).astype(np.uint8)
        if mapped:
            ids.tofile(out.with_suffix(".ids"))
            ids = np.memmap(out.with_suffix(".ids"), dtype=np.uint8, mode="r")
        corpus = Corpus(Vocab(np.arange(97, 104, dtype=np.uint32)), ids[:900], ids[900:],
                        [{"path": "x.txt", "chars": 1000}])
    got = Run._corpus_of_rank0(SimpleNamespace(world=world), corpus)
    Path(f"{out}.{world.rank}.json").write_text(json.dumps({
        "memmap": isinstance(got.train, np.memmap), "train": got.train.tolist(),
        "val": got.val.tolist(), "vocab": got.vocab.codepoints.tolist(), "files": got.files}))
    distributed.finish()
''')


@pytest.mark.parametrize("how", ["mapped", "sent"])
def test_the_other_ranks_take_rank_0s_corpus(work, how):
    script = work / "corpus_sharing.py"
    script.write_text(CORPUS_SHARING)
    out = work / f"shared-{how}"
    subprocess.run([MPIEXEC, *LOOPBACK, "-n", "2", sys.executable, script, out, how],
                   env=env_for(work), check=True, timeout=RUN_TIMEOUT)
    zero, one = (json.loads(Path(f"{out}.{r}.json").read_text()) for r in (0, 1))
    assert one["memmap"] is (how == "mapped"), "rank 1 maps the ids file it can see"
    assert {k: v for k, v in one.items() if k != "memmap"} == \
        {k: v for k, v in zero.items() if k != "memmap"}
    assert one["train"] == [i % 7 for i in range(900)] and len(one["val"]) == 100
