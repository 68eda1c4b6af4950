"""`import charrnn` stays cheap: no numba import, nothing compiled."""

import subprocess
import sys


def test_import_charrnn_does_not_import_numba():
    code = "import sys, charrnn, charrnn.kernels; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
