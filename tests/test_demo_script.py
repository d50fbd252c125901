"""scripts/demo.sh refuses a demo directory made with another seed or other synthetic-data
options (it reuses what a directory holds, so mixing would report figures of other data)."""
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("held,asked,needle", [
    ({"seed": "3\n", "synth_options": "\n"}, {"SEED": "4"}, "holds the demo of seed 3, not 4"),
    ({"seed": "0\n", "synth_options": "--style other\n"}, {"SEED": "0", "SYNTH": "--num-train 40"},
     'holds data made with SYNTH="--style other", not "--num-train 40"'),
])
def test_demo_dir_of_other_data_is_refused(tmp_path, held, asked, needle):
    demo = tmp_path / "demo"
    demo.mkdir()
    for name, text in held.items():
        (demo / name).write_text(text)
    env = {**os.environ, "DEMO_DIR": str(demo), **asked}
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "demo.sh")], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert sorted(os.listdir(demo)) == sorted(held)     # nothing started, nothing written
