"""A rank's place from each launcher's environment (dcsp_dist.core.placement), and the fixed
shares that split a list with no overlap."""
import pytest

from dcsp_dist.core.placement import Place, place


@pytest.mark.parametrize("env,want", [
    ({}, Place(0, 1, 0, 1)),
    ({"HOROVOD_RANK": "3", "HOROVOD_SIZE": "4", "HOROVOD_LOCAL_RANK": "1", "HOROVOD_LOCAL_SIZE": "2"}, Place(3, 4, 1, 2)),
    ({"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "16", "OMPI_COMM_WORLD_LOCAL_RANK": "5",
      "OMPI_COMM_WORLD_LOCAL_SIZE": "8"}, Place(5, 16, 5, 8)),
    ({"SLURM_PROCID": "9", "SLURM_NTASKS": "12", "SLURM_STEP_NUM_TASKS": "12", "SLURM_LOCALID": "1",
      "SLURM_NODEID": "2", "SLURM_STEP_TASKS_PER_NODE": "4(x2),4"}, Place(9, 12, 1, 4)),
    ({"SLURM_PROCID": "2", "SLURM_NTASKS": "3", "SLURM_STEP_NUM_TASKS": "3", "SLURM_LOCALID": "0",
      "SLURM_NODEID": "1", "SLURM_STEP_TASKS_PER_NODE": "2,1"}, Place(2, 3, 0, 1)),
    # a batch script's own shell under #SBATCH -n 2, no srun: one process, whatever the job's count
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
      "SLURM_TASKS_PER_NODE": "2"}, Place(0, 1, 0, 1)),
    ({"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2"}, Place(1, 2, 1, 2)),
])
def test_each_launcher(env, want):
    assert place(env) == want


def test_horovod_wins_over_the_mpi_underneath_it():
    env = {"HOROVOD_RANK": "1", "HOROVOD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2"}
    assert place(env).rank == 1


@pytest.mark.parametrize("env,needle", [({"PMI_RANK": "x", "PMI_SIZE": "2"}, "not whole numbers"),
                                        ({"SLURM_PROCID": "4", "SLURM_STEP_NUM_TASKS": "4"},
                                         "outside SLURM_STEP_NUM_TASKS=4")])
def test_bad_values_are_one_line(env, needle):
    with pytest.raises(ValueError, match=needle):
        place(env)


def test_shares_cover_the_list_once():
    items = list(range(23))
    shares = [Place(r, 4).share(items) for r in range(4)]
    assert sorted(x for s in shares for x in s) == items and [len(s) for s in shares] == [6, 6, 6, 5]
