"""`import charrnn` stays cheap: no numba import, nothing compiled."""

import os
import subprocess
import sys


def test_import_charrnn_does_not_import_numba():
    code = "import sys, charrnn, charrnn.kernels; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_read_only_install_caches_kernels_in_the_user_cache(tmp_path):
    """Where the package directory is not writable (checked through os.access, which root
    always passes, so it is simulated here), numba's cache goes to $XDG_CACHE_HOME/charrnn."""
    code = ("import os; os.access = lambda *a, **k: False; import charrnn.kernels.cpu; "
            "print(os.environ['NUMBA_CACHE_DIR'])")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env)
    assert out.stdout.strip() == str(tmp_path / "charrnn" / "numba")
