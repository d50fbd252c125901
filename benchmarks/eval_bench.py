"""Evaluation on this machine, same checkpoint, 500x375 images:
(1) images/s with 1 rank vs 2 ranks (one TF thread per rank, CRF inline);
(2) CRF seconds per image inside the pipeline (our wrapper, and the round trip through the
    worker pool) vs a bare pydensecrf call on the same input;
(3) pipelined (CRF in a worker process, overlapped with the network) vs sequential, 1 rank.

    .venv/bin/python benchmarks/eval_bench.py --checkpoint demo_run/run [--images 24]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def make_records(work, n):
    """n synthetic images at 500x375, as TFRecords (8 shards)."""
    from benchmarks.common import synth_voc_sized
    from data_tools import build
    root = os.path.join(work, "voc")
    ids = synth_voc_sized(root, n, "val", seed=4)
    build.build(root, ids, "val", os.path.join(work, "rec"), num_shards=8, progress=False)
    return os.path.join(work, "rec"), root, ids


def evaluate(np_, checkpoint, data, out, workers, threads=1):
    cmd = [os.path.join(os.path.dirname(sys.executable), "horovodrun"), "--gloo", "-np", str(np_),
           "-H", f"localhost:{np_}", sys.executable, "-m", "dcsp_dist.evaluate", "--checkpoint", checkpoint,
           "--data", data, "--split", "val", "--out", out, "--crf-workers", str(workers)]
    env = dict(os.environ, DCSP_THREADS=str(threads), TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return json.load(open(os.path.join(out, "results.json")))


def crf_timing(checkpoint, data, root, image_id, reps=5):
    import numpy as np
    import tensorflow as tf
    from PIL import Image
    import pydensecrf.densecrf as dcrf
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing
    from dcsp_dist.crf import CRFParams, dense_crf
    from dcsp_dist.inference import load_for_inference, make_multiscale_fn

    model, cfg, _ = load_for_inference(checkpoint)
    image = np.array(Image.open(os.path.join(root, "JPEGImages", image_id + ".jpg")).convert("RGB"))  # writable
    probs = tf.nn.softmax(make_multiscale_fn(model, cfg.eval_scales, "segmentation")(tf.constant(image))).numpy()
    params = CRFParams.from_config(cfg)

    def bare():
        h, w, c = probs.shape
        d = dcrf.DenseCRF2D(w, h, c)
        d.setUnaryEnergy(np.ascontiguousarray(-np.log(np.clip(probs, 1e-8, 1)).transpose(2, 0, 1).reshape(c, -1)))
        d.addPairwiseGaussian(sxy=3, compat=3)
        d.addPairwiseBilateral(sxy=params.bilateral_sxy, srgb=5, rgbim=np.ascontiguousarray(image), compat=4)
        return np.argmax(np.asarray(d.inference(10)).reshape(c, h, w), 0)

    def best(fn):
        fn()
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    t_bare = best(bare)
    t_ours = best(lambda: dense_crf(image, probs, params))
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        t_pool = best(lambda: pool.submit(dense_crf, image, probs, params).result())
    return t_bare, t_ours, t_pool, image.shape


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--images", type=int, default=24)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="dcsp_eval_bench_")
    data, root, ids = make_records(work, args.images)
    one = evaluate(1, args.checkpoint, data, os.path.join(work, "np1"), workers=0)
    two = evaluate(2, args.checkpoint, data, os.path.join(work, "np2"), workers=0)
    piped = evaluate(1, args.checkpoint, data, os.path.join(work, "piped"), workers=1)
    assert one["confusion_matrix"] == two["confusion_matrix"] == piped["confusion_matrix"]
    t_bare, t_ours, t_pool, shape = crf_timing(args.checkpoint, data, root, ids[0])
    print(f"{args.images} images of {shape[1]}x{shape[0]}, checkpoint {one['checkpoint']}")
    print(f"1 rank (sequential CRF):     {one['images_per_sec']:.2f} img/s")
    print(f"2 ranks (sequential CRF):    {two['images_per_sec']:.2f} img/s   speed-up {two['images_per_sec'] / one['images_per_sec']:.2f}x")
    print(f"1 rank, CRF pipelined:       {piped['images_per_sec']:.2f} img/s   vs sequential {piped['images_per_sec'] / one['images_per_sec']:.2f}x")
    print(f"CRF per image: bare pydensecrf {t_bare:.3f} s, dcsp_dist.crf {t_ours:.3f} s "
          f"(overhead {100 * (t_ours / t_bare - 1):+.1f}%), through the worker pool {t_pool:.3f} s "
          f"({100 * (t_pool / t_bare - 1):+.1f}%)")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
