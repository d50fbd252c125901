"""The import contracts of docs/architecture.md (scripts/check_imports.py, run by make lint):
they hold for the tree, and each catches a deliberately wrong import in a copy of it."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK = os.path.join(ROOT, "scripts", "check_imports.py")


def _check(root):
    return subprocess.run([sys.executable, CHECK, str(root)], capture_output=True, text=True, timeout=60)


def test_the_tree_keeps_every_import_contract():
    proc = _check(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("file,line,needle", [
    ("dcsp_dist/data/records.py", "from dcsp_dist.training import trainer",
     "layers: dcsp_dist.data.records (data) imports dcsp_dist.training.trainer (training)"),
    ("dcsp_dist/inference/jobs.py", "from dcsp_dist.training import cue_writer",
     "layers: dcsp_dist.inference.jobs (inference) imports dcsp_dist.training.cue_writer (training)"),
    ("dcsp_dist/config.py", "from dcsp_dist.rundir import layout",
     "layers: dcsp_dist.config (settings) imports dcsp_dist.rundir.layout (run directory and models)"),
    ("dcsp_dist/rundir/checkpoints.py", "import horovod.tensorflow as hvd", "only dcsp_dist.distributed speaks to Horovod"),
    ("dcsp_dist/inference/crf_pool.py", "import tensorflow", "importing dcsp_dist.inference.crf_pool loads tensorflow"),
    ("dcsp_dist/core/placement.py", "from dcsp_dist.models import geometry",
     "importing dcsp_dist.core.placement loads keras (module-level imports: dcsp_dist.core.placement -> "
     "dcsp_dist.models -> "),
    ("dcsp_dist/config.py", "from dcsp_dist.data import pipeline", "importing dcsp_dist.config loads tensorflow "
     "(module-level imports: dcsp_dist.config -> dcsp_dist.data.pipeline -> tensorflow)"),
    ("data_tools/build.py", "from dcsp_dist.training import trainer", "data_tools imports dcsp_dist.training.trainer"),
])
def test_a_wrong_import_breaks_its_contract(tmp_path, file, line, needle):
    for package in ("dcsp_dist", "data_tools"):
        shutil.copytree(os.path.join(ROOT, package), tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / file
    target.write_text(target.read_text() + f"\n{line}\n")
    proc = _check(tmp_path)
    assert proc.returncode == 1 and needle in proc.stdout, proc.stdout + proc.stderr
