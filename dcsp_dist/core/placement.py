"""This process's place in a launch, read from the launcher's environment, for the tools
that share work over ranks without a collective (``data_tools.saliency``): each rank takes
a fixed share of a sorted list, so no rank needs to hear from another; and the cores each
rank may use (``distributed`` sizes its thread pools by it too).

Read, in order: Horovod's (``horovodrun``, Gloo or MPI: ``HOROVOD_RANK``...), Open MPI's
(``mpirun``: ``OMPI_COMM_WORLD_RANK``...), SLURM's (``srun``: ``SLURM_PROCID``...), then
PMI's (MPICH, Intel MPI: ``PMI_RANK``...). None of them: one process, rank 0 of 1.
Horovod itself is not imported (it would load TensorFlow into every saliency rank).
"""
from __future__ import annotations

import dataclasses
import os
import re

from dcsp_dist.core.errors import UserError

_LAUNCHERS = (   # (rank, size, local rank, local size) variables
    ("HOROVOD_RANK", "HOROVOD_SIZE", "HOROVOD_LOCAL_RANK", "HOROVOD_LOCAL_SIZE"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"),
    # the step's own task count: a batch script's shell is a step of one task, whatever
    # SLURM_NTASKS (the job's, e.g. #SBATCH -n 2) says; srun sets the step's variables
    ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID", None),
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"),
)


@dataclasses.dataclass(frozen=True)
class Place:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    def share(self, items: list) -> list:
        """This rank's fixed share of ``items`` (every ``size``-th, from ``rank``)."""
        return items[self.rank::self.size]


def _slurm_local_size(env) -> int:
    """The step's tasks on this node from ``SLURM_STEP_TASKS_PER_NODE`` ("2(x3),1") and
    ``SLURM_NODEID``."""
    counts = []
    for part in env.get("SLURM_STEP_TASKS_PER_NODE", "").split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if m:
            counts += [int(m.group(1))] * int(m.group(2) or 1)
    node = int(env.get("SLURM_NODEID", 0) or 0)
    return counts[node] if node < len(counts) else 1


def place(env=None) -> Place:
    """This process's rank, size, local rank and local size; ValueError naming the variable
    when one is set but not a number, or when the rank is outside the size."""
    env = os.environ if env is None else env
    for rank_var, size_var, local_var, local_size_var in _LAUNCHERS:
        if rank_var == "SLURM_PROCID" and rank_var in env and size_var not in env:
            return Place()          # a SLURM batch script's own shell (no srun): one process
        if rank_var not in env or size_var not in env:
            continue
        try:
            rank, size = int(env[rank_var]), int(env[size_var])
            local_rank = int(env.get(local_var, 0) or 0)
            local_size = int(env[local_size_var]) if local_size_var and env.get(local_size_var) \
                else _slurm_local_size(env) if rank_var == "SLURM_PROCID" else 1
        except ValueError:
            raise UserError(f"{rank_var}/{size_var}: not whole numbers ({env[rank_var]!r}, {env[size_var]!r})") \
                from None
        if not 0 <= rank < size:
            raise UserError(f"{rank_var}={rank} is outside {size_var}={size}")
        return Place(rank, size, local_rank, max(1, local_size))
    return Place()


def cores_per_rank(local_size: int) -> int:
    """This process's usable cores (its CPU affinity) shared among the node's ranks, >= 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_size))
