"""The parallel tier's session set-up: horovodrun's build check asked once, and a tiny DCSP
run (--stage all, 2 ranks) shared by the tests that need one."""
import os
import subprocess
import sys

import pytest

from tests.support.hvd import run_ranks


@pytest.fixture(scope="session", autouse=True)
def horovod_built():
    """What horovodrun asks before each launch (its TensorFlow extension's ``gloo_built()`` and
    ``mpi_built()``), asked once, in one process: the controllers tests/support/horovodrun.py may then
    take as built instead of asking again at every launch."""
    script = "import horovod.tensorflow as hvd; print(','.join(n for n, ok in (('gloo', hvd.gloo_built()), " \
             "('mpi', hvd.mpi_built())) if ok))"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    built = proc.stdout.strip()
    assert proc.returncode == 0 and "gloo" in built.split(","), f"Horovod has no Gloo controller: {proc.stderr[-2000:]}"
    os.environ["DCSP_TESTS_HOROVOD_BUILT"] = built
    return built


@pytest.fixture(scope="session")
def tiny_run(synth_records, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny_run")
    proc = run_ranks(2, "-m", "dcsp_dist.train", "--stage", "all", "--config", "tiny_test",
                     "--data", str(synth_records), "--workdir", str(workdir))
    return workdir, proc.stdout + proc.stderr
