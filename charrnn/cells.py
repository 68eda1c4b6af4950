"""The recurrent cells, one record each: what the rest of charrnn needs to know of a cell (its
parameter layout, workspace, initialisation, validation, help and cost) without reading the
kernels. Plain Python: the command line reads it for its choices and help without numba.

The kernels dispatch on `kernel_id`, an integer they define themselves (charrnn/kernels/cpu.py
and charrnn/cuda/kernels.py): numba's disk cache does not notice a changed global of another
file, so the ids are written there as literals and tests/test_cells.py checks them against this
registry. Ids are append-only: a new cell takes the next one. Equations: docs/model.md; how
to add a cell: docs/adding-a-cell.md.
"""

from dataclasses import dataclass
from typing import Callable


def _no_extra(H: int) -> tuple[int, ...]:
    return (0,)


@dataclass(frozen=True)
class CellSpec:
    name: str
    kernel_id: int
    gates: int  # H-wide blocks of W_x, W_h and b (GH = gates * H)
    stored_acts: int  # H-wide activations each step keeps for the backward pass
    description: str  # one line, for --help and the docs
    extra_name: str | None = None  # the layer's cell-specific array (slot 3 of a layer)
    extra_shape: Callable[[int], tuple[int, ...]] = _no_extra  # its shape for hidden size H
    has_cell_state: bool = False  # carries c besides h (the LSTMs)
    single_layer: bool = False  # does not stack: its recurrence runs through the output
    output_recurrence: bool = False  # the carried state is the last output y (width V), not h
    two_gemm_step: bool = False  # two recurrent products per step (W_h, then W_hn on r * h)
    keeps_cell_buffer: bool = False  # the workspace's cs holds per-step values (r * h) for it
    gate_grad_buffer: bool = False  # backward keeps the recurrent gates' gradients (dHG)
    cuda_kernels: bool = True  # has its step and backward in cuda/kernels.py (a new cell: False)
    persistent_cuda: bool = True  # a layer's time loop can be one persistent CUDA launch
    identity_init: bool = False  # recurrent matrices the identity, biases 0 (IRNN)
    forget_block: int | None = None  # the gate block whose bias starts at 1 (the LSTMs' forget)
    unit_gain_blocks: int = 0  # leading H-blocks of the extra array that start at 1 (gains)

    @property
    def packs_recurrent(self) -> bool:
        """Whether training packs W_h for the register tile (cpu.pack_recurrent): not for the
        cells whose recurrent products are their own (the classic GRU's two, Jordan's)."""
        return not (self.two_gemm_step or self.output_recurrence)

    def recurrent_width(self, hidden: int, vocab_size: int) -> int:
        """Rows of W_h: the width of what the recurrence reads (h, or y for output recurrence)."""
        return vocab_size if self.output_recurrence else hidden

    def recurrent_columns(self, hidden: int) -> int:
        """Columns of W_h: GH, less the block a second recurrent product owns."""
        return (self.gates - 1) * hidden if self.two_gemm_step else self.gates * hidden

    def flops_per_char(self, layers: int, hidden: int, vocab_size: int) -> float:
        """Training FLOPs per character: the forward's multiply-adds x 2, and backward twice
        that. The first layer's input is a row gather (no FLOPs); the recurrent products of
        every cell total (recurrent width) x GH, a second product included."""
        GH = self.gates * hidden
        macs = (layers * self.recurrent_width(hidden, vocab_size) * GH
                + (layers - 1) * hidden * GH + hidden * vocab_size)
        return 3 * 2 * macs


CELLS: dict[str, CellSpec] = {spec.name: spec for spec in (
    CellSpec("lstm", 0, gates=4, stored_acts=5, has_cell_state=True, forget_block=1,
             description="long short-term memory (Hochreiter & Schmidhuber 1997; PyTorch's "
                         "gates i, f, g, o)"),
    CellSpec("gru", 1, gates=3, stored_acts=4, extra_name="b_hn", extra_shape=lambda H: (H,),
             gate_grad_buffer=True,
             description="gated recurrent unit, reset after the recurrent product (PyTorch's)"),
    CellSpec("rnn", 2, gates=1, stored_acts=0, description="Elman network: tanh"),
    CellSpec("irnn", 3, gates=1, stored_acts=0, identity_init=True,
             description="ReLU Elman network, identity-initialised (Le et al. 2015)"),
    CellSpec("lstm-coupled", 4, gates=3, stored_acts=4, has_cell_state=True, forget_block=0,
             description="LSTM whose input gate is 1 - forget gate"),
    CellSpec("lstm-peephole", 5, gates=4, stored_acts=5, extra_name="peep",
             extra_shape=lambda H: (3 * H,), has_cell_state=True, forget_block=1,
             description="LSTM whose gates see the cell (Gers & Schmidhuber 2000)"),
    CellSpec("gru-classic", 6, gates=3, stored_acts=3, extra_name="W_hn",
             extra_shape=lambda H: (H, H), two_gemm_step=True, keeps_cell_buffer=True,
             gate_grad_buffer=True, persistent_cuda=False,
             description="GRU with the reset before the recurrent matrix (Cho et al. 2014)"),
    CellSpec("jordan", 7, gates=1, stored_acts=1, single_layer=True, output_recurrence=True,
             persistent_cuda=False,
             description="Jordan network: one layer whose recurrent input is its last output"),
    CellSpec("gru-ln", 8, gates=3, stored_acts=7, extra_name="ln_gain_b_hn",
             extra_shape=lambda H: (4 * H,), gate_grad_buffer=True, unit_gain_blocks=3,
             description="GRU whose input projection is layer-normalised per gate (Ba et al. "
                         "2016)"),
)}

CELL_NAMES = tuple(CELLS)
# the cell of `charrnn train` and of a ModelConfig when none is named (`charrnn bench` times
# "gru", which PyTorch has): the GRU learnt more per second than the LSTM at 2 x 512
# (BENCHMARKS.md, "Choosing the defaults"), and the GRU with its input layer-normalised more
# than the GRU, its extra cost per step included (BENCHMARKS.md, "Third session")
DEFAULT_CELL = "gru-ln"


def choices_text() -> str:
    """The cells as a --cell help lists them: "lstm, gru, ... or jordan"."""
    return ", ".join(CELL_NAMES[:-1]) + " or " + CELL_NAMES[-1]
