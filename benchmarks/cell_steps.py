#!/usr/bin/env python3
"""Nanoseconds per hidden unit of each cell's time step on the CPU, one thread: the gate
arithmetic between the recurrent products (cpu._cell_step, on one training shard's 25 streams
for 50 steps, the products left out) and the layer-normalised GRU's normalisation of its input
projection (cpu.layer_norm_rows over the window's 1,250 rows). Best of five. Prints one JSON
object per hidden size; put an older checkout first on PYTHONPATH to time its kernels.

    python benchmarks/cell_steps.py [--hidden 128 512 1024] [--cells lstm gru ...]
"""

import argparse
import json

import numba
import numpy as np

from charrnn.bench import best_time
from charrnn.cells import CELLS
from charrnn.kernels import cpu

STREAMS, STEPS = 25, 50


# Not cached (cache=True): numba's disk cache checks only this file, so a cached loop would
# keep running the charrnn kernels it was compiled with after they change, or another
# checkout's when timed from PYTHONPATH.
@numba.njit(nogil=True, error_model="numpy")
def _steps(cell, xg, gates, extra, hs, cs, acts):
    for t in range(xg.shape[0]):
        cpu._cell_step(cell, xg[t], gates, extra, hs[t], cs[t], hs[t + 1], cs[t + 1], acts[t])


def step_ns(cell: str, H: int) -> float:
    """Nanoseconds per unit (stream x step x hidden unit) of the cell's step."""
    spec = CELLS[cell]
    rng = np.random.default_rng(H)
    f32 = np.float32
    xg = rng.standard_normal((STEPS, STREAMS, spec.gates * H)).astype(f32)
    gates = rng.standard_normal((STREAMS, spec.gates * H)).astype(f32)
    extra = (0.1 * rng.standard_normal(4 * H)).astype(f32)  # the largest: gru-ln's gains, b_hn
    hs = np.zeros((STEPS + 1, STREAMS, H), f32)
    cs = np.zeros_like(hs)
    acts = np.zeros((STEPS, STREAMS, max(1, spec.stored_acts) * H), f32)

    def run():
        _steps(spec.kernel_id, xg, gates, extra, hs, cs, acts)

    run()  # compiles or loads the kernel
    return best_time(run, 5) / (STEPS * STREAMS * H) * 1e9


def layer_norm_ns(H: int) -> float:
    """Nanoseconds per unit of layer_norm_rows over a window's (1,250, 3H) input projection."""
    rng = np.random.default_rng(H)
    rows = rng.standard_normal((STEPS * STREAMS, 3 * H)).astype(np.float32)
    gain, bias = np.ones(3 * H, np.float32), np.zeros(3 * H, np.float32)
    cpu.layer_norm_rows(rows, gain, bias)
    return best_time(lambda: cpu.layer_norm_rows(rows, gain, bias), 5) / (rows.shape[0] * H) * 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", nargs="+", type=int, default=[128, 512, 1024])
    ap.add_argument("--cells", nargs="+", default=["lstm", "lstm-coupled", "lstm-peephole",
                                                   "gru", "gru-ln"])
    a = ap.parse_args()
    for H in a.hidden:
        out = {"hidden": H, "streams": STREAMS, "steps": STEPS}
        out.update({f"{cell}_ns_per_unit": round(step_ns(cell, H), 3) for cell in a.cells})
        out["layer_norm_ns_per_unit"] = round(layer_norm_ns(H), 3)
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
