"""charrnn: a character-level RNN text generator with a Numba core.

Importing the package is cheap on purpose: nothing here imports numba or compiles a kernel.
The numerical core lives in charrnn.model and charrnn.kernels.
"""

from .cells import CELL_NAMES  # noqa: F401  (the recurrent cells: charrnn/cells.py)

__version__ = "0.1.0"
