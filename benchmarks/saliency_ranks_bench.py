"""Saliency over ranks against one process using every core, side by side.

    python benchmarks/saliency_ranks_bench.py --images DIR [--model isnet] [--ranks 2] [--rounds 3]

Alternates, ``--rounds`` times: one plain process (its threads or workers = every core) and
``horovodrun --gloo -np R`` (each rank its share of the cores), each writing every map of
``--images`` into a fresh folder. Prints two rates per run: the maps' (the images over the
slowest rank's time from its first image to its last, as each rank reports it: what counts
for 10k images) and the whole command's (launcher, imports and model loading included), and
the median ratios ranks / one process.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(cmd: list, env: dict) -> tuple[float, float]:
    """(the maps' seconds: the slowest rank's, the whole command's seconds)."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    maps = [float(s) for s in re.findall(r"\[saliency\] .*, ([0-9.]+) s$", proc.stdout, re.M)]
    return max(maps), wall


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True)
    parser.add_argument("--model", help="a model name or .onnx file (default: the built-in detector)")
    parser.add_argument("--passes", default="1")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    n = sum(1 for f in os.listdir(args.images) if f.lower().endswith((".jpg", ".jpeg", ".png")))
    tool = ["-m", "data_tools.saliency", "--images", args.images, "--passes", args.passes] + \
        (["--model", args.model] if args.model else [])
    env = dict(os.environ, PYTHONPATH=HERE)
    hvdrun = os.path.join(os.path.dirname(sys.executable), "horovodrun")
    rates = {"one": [], "many": [], "one_wall": [], "many_wall": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for key, cmd in (("one", [sys.executable, *tool]),
                             ("many", [hvdrun, "--gloo", "-np", str(args.ranks), "-H", f"localhost:{args.ranks}",
                                       sys.executable, *tool])):
                maps, wall = _run(cmd + ["--out-dir", os.path.join(tmp, f"{key}{r}")], env)
                rates[key].append(n / maps)
                rates[key + "_wall"].append(n / wall)
            print(f"round {r}: maps 1 process {rates['one'][-1]:.2f} img/s, {args.ranks} ranks "
                  f"{rates['many'][-1]:.2f} img/s; whole command {rates['one_wall'][-1]:.2f} vs "
                  f"{rates['many_wall'][-1]:.2f} img/s", flush=True)
    for what, a, b in (("maps", "one", "many"), ("whole command", "one_wall", "many_wall")):
        ratios = [m / o for m, o in zip(rates[b], rates[a])]
        print(f"{n} images, {args.model or 'built-in'} ({args.passes} pass(es)), {what}: median 1 process "
              f"{statistics.median(rates[a]):.2f} img/s, {args.ranks} ranks {statistics.median(rates[b]):.2f} img/s; "
              f"ratio {statistics.median(ratios):.2f} (per round {', '.join(f'{x:.2f}' for x in ratios)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
