"""charrnn: a character-level RNN text generator with a Numba core.

Importing the package is cheap on purpose: nothing here imports numba or compiles a kernel.
The numerical core lives in charrnn.model and charrnn.kernels.
"""

__version__ = "0.1.0"

# the recurrent cells (`--cell`); charrnn.model implements them, the CLI validates against this
CELL_NAMES = ("lstm", "gru", "rnn", "irnn", "lstm-coupled", "lstm-peephole", "gru-classic",
              "jordan")
