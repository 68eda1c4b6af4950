"""The CUDA backend, tested without a GPU: the kernels under numba's CUDA simulator against the
CPU kernels, and every kernel compiled to PTX for sm_90. Each runs in its own process: the
simulator has to be chosen before numba is imported, and this process has imported it."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent

pytestmark = pytest.mark.skipif(importlib.util.find_spec("numba_cuda") is None,
                                reason="numba-cuda is not installed (pip install -e '.[cuda]')")


def run_pytest(path: Path, simulate: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1" if simulate else "0"}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(path)], capture_output=True, text=True, env=env,
                          cwd=HERE.parent)


@pytest.mark.parametrize("check, simulate", [("check_simulated.py", True),
                                             ("check_ptx.py", False)])
def test_cuda_checks(check, simulate):
    run = run_pytest(HERE / "cuda" / check, simulate)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert " passed" in run.stdout.splitlines()[-1], run.stdout  # not skipped as a whole
