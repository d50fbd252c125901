"""Weak scaling on this machine: training images/s per rank with -np 2 vs -np 1, one CPU
thread per rank, same per-rank batch, for the tiny model and the full model (321, batch 1).

    .venv/bin/python benchmarks/scaling_bench.py [--full-steps 3] [--tiny-steps 30]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def run(np_, data, preset, batch, crop, steps, warmup):
    cmd = [os.path.join(os.path.dirname(sys.executable), "horovodrun"), "--gloo", "-np", str(np_),
           "-H", f"localhost:{np_}", sys.executable, "benchmarks/scaling_worker.py", "--data", data,
           "--preset", preset, "--per-rank-batch", str(batch), "--crop", str(crop),
           "--steps", str(steps), "--warmup", str(warmup)]
    env = dict(os.environ, DCSP_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    line = [l for l in out.splitlines() if '"images_per_sec_per_rank"' in l][-1]
    return json.loads(line[line.index("{"):])


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny-steps", type=int, default=30)
    parser.add_argument("--full-steps", type=int, default=3)
    args = parser.parse_args()
    from data_tools import build, synth
    from data_tools.sources import VocSource
    work = tempfile.mkdtemp(prefix="dcsp_scaling_")
    ids = synth.generate(os.path.join(work, "voc"), 64, 0, seed=2)["train"]
    build.build(VocSource(os.path.join(work, "voc"), ids), "train", os.path.join(work, "rec"), num_shards=8, progress=False)
    data = os.path.join(work, "rec")
    rows = []
    for name, preset, batch, crop, steps, warmup in (
            ("tiny (1,1,1,1) w16, 96px, batch 5/rank", "synthetic_demo", 5, 96, args.tiny_steps, 5),
            ("full ResNet-101 DeepLab-v2, 321px, batch 1/rank", "voc_paper", 1, 321, args.full_steps, 1)):
        one = run(1, data, preset, batch, crop, steps, warmup)
        two = run(2, data, preset, batch, crop, steps, warmup)
        eff = two["images_per_sec_total"] / (2 * one["images_per_sec_total"])
        rows.append((name, one["images_per_sec_per_rank"], two["images_per_sec_per_rank"], eff, one["step_s"], two["step_s"]))
    print(f"{'model':<48}{'np1 img/s/rank':>16}{'np2 img/s/rank':>16}{'efficiency':>12}{'np1 step s':>12}{'np2 step s':>12}")
    for r in rows:
        print(f"{r[0]:<48}{r[1]:>16.2f}{r[2]:>16.2f}{r[3]:>12.2f}{r[4]:>12.2f}{r[5]:>12.2f}")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
