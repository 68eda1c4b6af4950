"""Training over several processes with MPI (`mpirun -n N charrnn train ...`): who this process
is among them, and the few collective operations training needs.

A run of N ranks is data-parallel over the B streams of a window: rank r trains the streams
`stream_rows(B)[r]`, the gradients are summed across ranks (one Allreduce of the flat buffer
per step), and every rank applies the same clip and Adam, so the weights stay the same on
every rank. Everything that depends on a clock or on one process's view (the budget, the stop,
the width probe, Ctrl-C) is decided on rank 0 and broadcast; rank 0 alone writes the run
directory and prints.

A process started without MPI (no launcher's variables in its environment) is a world of one
and never imports mpi4py. Messages are JSON or raw arrays, never pickle.
"""

import json
import os
import sys

import numpy as np

# set by MPICH's and Intel MPI's hydra, by Open MPI's mpirun, and by Slurm's srun with PMI/PMIx
LAUNCHER_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")
# how many ranks share this machine: the cores are split among them
LOCAL_SIZE_VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE")


class WorldError(Exception):
    """The ranks cannot train together (MPI missing, options or corpora that differ).
    on_every_rank: every rank raised it at the same point (from values they all gathered), so
    they can end together through MPI_Finalize rather than MPI_Abort, whose launcher may kill
    the ranks before it has passed on what they wrote to stderr."""

    def __init__(self, message: str, on_every_rank: bool = False):
        super().__init__(message)
        self.on_every_rank = on_every_rank


def launched_by_mpi() -> bool:
    return any(var in os.environ for var in LAUNCHER_VARS)


def ranks_on_this_machine() -> int:
    """The ranks an MPI launcher started on this machine (1 without one: a lone process in a
    Slurm job of several tasks has SLURM_NTASKS_PER_NODE set, and the cores to itself)."""
    if not launched_by_mpi():
        return 1
    for var in LOCAL_SIZE_VARS:
        value = os.environ.get(var, "").split("(")[0]  # Slurm may say "2(x3)"
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


class World:
    """This process among the run's processes: rank (0 to size - 1) and the collectives. A world
    of one (comm None) does nothing in them."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1

    @property
    def root(self) -> bool:
        return self.rank == 0

    def stream_rows(self, B: int) -> slice:
        """This rank's share of B streams: contiguous, sizes differing by at most one."""
        return slice(B * self.rank // self.size, B * (self.rank + 1) // self.size)

    def sum_(self, a: np.ndarray) -> None:
        """Sum a (contiguous) across ranks, in place; every rank gets the same sum. MPI's
        reduction order is fixed for a given world size, so a rerun gives the same bits."""
        if self.comm is not None:
            from mpi4py import MPI
            self.comm.Allreduce(MPI.IN_PLACE, a, op=MPI.SUM)

    def sum_values(self, *values: float) -> list[float]:
        a = np.array(values, np.float64)
        self.sum_(a)
        return a.tolist()

    def share(self, value=None):
        """Rank 0's value (anything JSON can carry) on every rank."""
        if self.comm is None:
            return value
        data = np.frombuffer(json.dumps(value).encode(), np.uint8) if self.root else None
        n = np.array([0 if data is None else data.size], np.int64)
        self.comm.Bcast(n, root=0)
        buf = data.copy() if self.root else np.empty(int(n[0]), np.uint8)
        self.comm.Bcast(buf, root=0)
        return json.loads(buf.tobytes().decode())

    def share_array(self, a: np.ndarray | None, n: int, dtype) -> np.ndarray:
        """Rank 0's (n,) array a on every rank (sent in blocks: MPI counts are 32-bit)."""
        if self.comm is None:
            return a
        out = a if self.root else np.empty(n, dtype)
        block = 1 << 28
        for start in range(0, n, block):
            part = np.ascontiguousarray(out[start:start + block])
            self.comm.Bcast(part, root=0)
            if not self.root:
                out[start:start + block] = part
        return out

    def everyone(self, value) -> list:
        """Every rank's value (JSON), in rank order, on every rank."""
        if self.comm is None:
            return [value]
        data = json.dumps(value).encode()
        sizes = self._allgather_ints(len(data))
        out = np.empty(sum(sizes), np.uint8)
        self.comm.Allgatherv(np.frombuffer(data, np.uint8), [out, sizes])
        bounds = np.cumsum([0, *sizes])
        return [json.loads(out[a:b].tobytes().decode()) for a, b in zip(bounds, bounds[1:])]

    def _allgather_ints(self, n: int) -> list[int]:
        out = np.empty(self.size, np.int64)
        self.comm.Allgather(np.array([n], np.int64), out)
        return out.tolist()

    def join_streams(self, local: np.ndarray, B: int) -> np.ndarray:
        """The (L, B, W) array whose rows stream_rows(B) of each rank are that rank's local
        (L, b_r, W), on every rank."""
        if self.comm is None:
            return local
        L, W = local.shape[0], local.shape[2]
        sizes = [(B * (r + 1) // self.size - B * r // self.size) * L * W
                 for r in range(self.size)]
        out = np.empty(sum(sizes), local.dtype)
        # rank-major in the buffer: each rank's rows as (b_r, L, W), put back after
        mine = np.ascontiguousarray(local.transpose(1, 0, 2))
        self.comm.Allgatherv(mine, [out, sizes])
        return np.ascontiguousarray(out.reshape(B, L, W).transpose(1, 0, 2))

    def agree(self, ok: bool) -> bool:
        """Whether every rank says ok (so that all ranks take the same branch)."""
        return self.sum_values(0.0 if ok else 1.0)[0] == 0.0

    def abort(self, code: int = 1) -> None:
        """End every rank now: this one failed where the others may wait for it."""
        if self.comm is not None:
            sys.stderr.flush()
            self.comm.Abort(code)


_WORLD: World | None = None


def world() -> World:
    """This process's world: from MPI when an MPI launcher started it, else a world of one."""
    global _WORLD
    if _WORLD is None:
        if not launched_by_mpi():
            _WORLD = World()
        else:
            # BLAS's own threads, one set per rank, would oversubscribe the cores the ranks
            # share: each rank gets its share (set before BLAS loads: the kernels load it)
            from .parallel import default_threads
            os.environ.setdefault("OPENBLAS_NUM_THREADS", str(default_threads()))
            try:
                from mpi4py import MPI
            except ImportError:
                raise WorldError("started by an MPI launcher (mpirun, srun), but mpi4py is not "
                                 "installed: pip install mpi4py mpich (or build mpi4py against "
                                 "your MPI)") from None
            _WORLD = World(MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None)
    return _WORLD


def current_rank() -> int:
    """This process's rank, 0 when no world of several was made."""
    return _WORLD.rank if _WORLD is not None else 0


def abort(code: int) -> None:
    """After a failure over several processes: end them all (the others may be waiting for this
    one at a collective, and would hang). Nothing to do in a world of one."""
    if _WORLD is not None:
        _WORLD.abort(code)


def finish() -> bool:
    """MPI's orderly end, at the end of a process that made a world of several (which must
    then leave through the interpreter's own exit: MPICH's launcher killed ranks that called
    os._exit after MPI_Finalize, about one run in three). Whether there was one."""
    if _WORLD is None or _WORLD.comm is None:
        return False
    from mpi4py import MPI
    if not MPI.Is_finalized():
        MPI.Finalize()
    return True
