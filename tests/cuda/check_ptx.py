"""Every CUDA kernel compiles for real, to PTX for sm_90, with no GPU present: typing errors the
simulator lets through fail here. Run by tests/test_cuda.py in a subprocess (without the
simulator), as ``python -m pytest tests/cuda/check_ptx.py``."""

import os
from types import SimpleNamespace

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("compiles real PTX: not under the simulator", allow_module_level=True)

from numba import cuda  # noqa: E402
import numba.cuda.dispatcher  # noqa: E402

from charrnn.cuda import kernels as K  # noqa: E402

CC = (9, 0)


@pytest.fixture(autouse=True)
def no_device_needed(monkeypatch):
    """Device functions called from a kernel are compiled for the current device's compute
    capability; with no device, pin it to the target of this check."""
    monkeypatch.setattr(numba.cuda.dispatcher, "get_current_device",
                        lambda: SimpleNamespace(compute_capability=CC))


@pytest.mark.parametrize("name", sorted(K.SIGNATURES))
def test_kernel_compiles_to_ptx_for_sm_90(name):
    fn, signature = K.SIGNATURES[name]
    ptx, _ = cuda.compile_ptx(fn, signature, cc=CC)
    assert f".target sm_{CC[0]}{CC[1]}" in ptx
    assert ".entry" in ptx
