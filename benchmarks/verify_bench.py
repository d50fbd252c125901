"""What the start-up shard checks cost, per rank, on VOC-sized records.

    .venv/bin/python benchmarks/verify_bench.py [--images 200]

Builds --images synthetic 500x375 images (JPEG + saliency PNG) into 8 shards, then times, in
turn over 3 rounds (medians): the default check (existence + size: one stat per shard) and
--verify-data (sha256 + record count: every byte read twice), and scales both to VOC's
train_aug split (10,582 images) read by one rank and by each of 8 ranks.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    args = parser.parse_args(argv)
    from benchmarks.common import synth_voc_sized
    from data_tools import build
    from data_tools.sources import VocSource
    from dcsp_dist.data import records
    with tempfile.TemporaryDirectory() as work:
        ids = synth_voc_sized(os.path.join(work, "voc"), args.images, "train", seed=5)
        out = os.path.join(work, "rec")
        build.build(VocSource(os.path.join(work, "voc"), ids), "train", out, num_shards=8, progress=False)
        manifest = records.read_manifest(out, "train")
        files = records.shard_files(out, manifest)
        size = sum(os.path.getsize(f) for f in files)
        times = {"size": [], "deep": []}
        for _ in range(3):
            for deep in (False, True):
                start = time.perf_counter()
                records.check_shards(out, manifest, files, deep=deep)
                times["deep" if deep else "size"].append(time.perf_counter() - start)
    per_image = {k: statistics.median(v) / args.images for k, v in times.items()}
    print(f"{args.images} images, {size / 1e6:.1f} MB in 8 shards ({size / args.images / 1e3:.0f} kB per image)")
    for key, label in (("size", "existence + size (default)"), ("deep", "sha256 + record count (--verify-data)")):
        # The size check costs per shard (one stat), the deep check per byte.
        voc = per_image[key] * 10582 if key == "deep" else statistics.median(times[key]) / 8 * 64
        print(f"{label}: {1000 * statistics.median(times[key]):.2f} ms here; VOC train_aug (10,582 images, "
              f"64 shards): {1000 * voc:.1f} ms on one rank, {1000 * voc / 8:.1f} ms per rank with 8 ranks")


if __name__ == "__main__":
    main()
