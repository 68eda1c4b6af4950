"""Which device runs the model: --device auto, cpu or cuda.

Asking for CUDA imports numba-cuda (the `cuda` extra), which nothing else does, so a CPU run
never pays for it; `auto` looks for a usable GPU only when numba-cuda is installed.
"""

import importlib.util
import os
from pathlib import Path


DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/dxg")  # /dev/dxg: WSL


class DeviceError(Exception):
    """--device cuda was asked for and cannot be had; one line for the user."""


def cuda_problem() -> str | None:
    """Why CUDA cannot be used here, or None when it can."""
    if importlib.util.find_spec("numba_cuda") is None:
        return "numba-cuda is not installed (pip install 'charrnn[cuda]')"
    simulated = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    if not simulated and not any(Path(p).exists() for p in DRIVER_FILES):
        return "no NVIDIA driver was found"  # known without loading CUDA: auto stays quick
    from numba import cuda
    try:
        if not cuda.is_available():
            return "no usable NVIDIA GPU or driver was found"
    except Exception as e:  # a broken driver install raises instead of answering
        return f"the CUDA driver failed: {str(e).strip().splitlines()[0] if str(e) else e}"
    return None


def gpu_name() -> str:
    from numba import cuda
    name = getattr(cuda.get_current_device(), "name", "the CUDA simulator")
    return name.decode() if isinstance(name, bytes) else str(name)


def resolve(requested: str, cell: str | None = None, members: int = 1) -> str:
    """'cpu' or 'cuda' for --device auto|cpu|cuda and the model's cell and number of members
    (an ensemble's, ensemble.py); raises DeviceError for cuda where it cannot run. A cell
    without CUDA kernels, and an ensemble (whose CUDA sampler is not built), run on the CPU
    under auto."""
    from .cells import CELLS
    if requested == "cpu":
        return "cpu"
    problem = cuda_problem()
    if cell is not None and not CELLS[cell].cuda_kernels:
        problem = f"--cell {cell} has no CUDA kernels yet"
    if members > 1:
        problem = f"the model is an ensemble of {members}, which samples on the CPU"
    if requested == "cuda" and problem:
        raise DeviceError(f"--device cuda: {problem}; use --device cpu")
    return "cpu" if problem else "cuda"
