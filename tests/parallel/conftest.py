"""A tiny DCSP run (--stage all, 2 ranks) shared by the parallel tests that need one."""
import pytest

from tests.hvd import run_ranks


@pytest.fixture(scope="session")
def tiny_run(synth_records, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny_run")
    proc = run_ranks(2, "-m", "dcsp_dist.train", "--stage", "all", "--config", "tiny_test",
                     "--data", str(synth_records), "--workdir", str(workdir))
    return workdir, proc.stdout + proc.stderr
