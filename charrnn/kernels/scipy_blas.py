"""SciPy's BLAS for numba, loaded without importing all of scipy.linalg.

numba binds np.dot to the BLAS functions exported by the extension module
scipy.linalg.cython_blas, and imports that module when it first loads or compiles any kernel
(numba.np.arraymath checks at import that BLAS is there). Imported the usual way, the module
first runs scipy.linalg's __init__, every decomposition and solver with it, a large share of
`charrnn sample`'s start-up for one C function table (BENCHMARKS.md, "Start-up"). Loaded on its
own, the extension costs next to nothing; numba finds it through sys.modules and binds the same
functions.

A later `import scipy.linalg` still runs that package, and `from scipy.linalg import
cython_blas` and Cython's cimport still work, but the attribute `scipy.linalg.cython_blas` is
never set (the import system binds it only when it loads the module itself). That is why only
the command line (charrnn.cli.main, a process of charrnn's own) asks for it, with enable(),
and the library does not.
"""

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

NAME = "scipy.linalg.cython_blas"
_enabled = False


def enable() -> None:
    """Let preload() work in this process (the command line's)."""
    global _enabled
    _enabled = True


def preload() -> None:
    """Once enabled, put scipy.linalg.cython_blas into sys.modules, loaded from its file alone.
    Where that does not work (another SciPy layout), nothing changes and numba imports it the
    usual way. Called by charrnn.kernels.cpu before it imports numba."""
    if not _enabled or NAME in sys.modules:
        return
    try:
        package = importlib.util.find_spec("scipy.linalg")  # imports scipy, not scipy.linalg
        if package is None or not package.submodule_search_locations:
            return
        for folder in package.submodule_search_locations:
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                path = Path(folder) / f"cython_blas{suffix}"
                if path.is_file():
                    spec = importlib.util.spec_from_file_location(NAME, path)
                    module = importlib.util.module_from_spec(spec)
                    sys.modules[NAME] = module
                    spec.loader.exec_module(module)
                    return
    except Exception:  # noqa: BLE001  (any failure: leave it to numba's own import)
        sys.modules.pop(NAME, None)
