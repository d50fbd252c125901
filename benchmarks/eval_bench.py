"""Evaluation on this machine, same checkpoint, 500x375 images:
(1) images/s with 1 rank vs 2 ranks (one TF thread per rank, CRF inline; --rounds rounds in
    turn, medians);
(2) CRF seconds per image inside the pipeline (our wrapper, and the round trip through the
    worker pool) vs a bare pydensecrf call on the same input;
(3) overlap, 1 rank, steady state (seconds per image after the first, which carries tracing
    and worker start-up; --rounds rounds measured in turn, medians): the network alone, the
    CRF alone (in a worker process), both in sequence, and the CRF overlapped with the
    network by 1 and by 2 worker processes; the target is the larger of network and CRF.

    .venv/bin/python benchmarks/eval_bench.py --checkpoint demo_run/run [--images 24] [--rounds 2]
"""
import argparse
import json
import os
import shutil
import statistics
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
    from data_tools.sources import VocSource
    root = os.path.join(work, "voc")
    ids = synth_voc_sized(root, n, "val", seed=4)
    build.build(VocSource(root, ids), "val", os.path.join(work, "rec"), num_shards=8, progress=False)
    return os.path.join(work, "rec"), root, ids


def evaluate(np_, checkpoint, data, out, workers, threads=1):
    cmd = [os.path.join(os.path.dirname(sys.executable), "horovodrun"), "--gloo", "-np", str(np_),
           "-H", f"localhost:{np_}", sys.executable, "-m", "dcsp_dist.evaluate", "--checkpoint", checkpoint,
           "--data", data, "--split", "val", "--out", out, "--crf-workers", str(workers)]
    env = dict(os.environ, DCSP_THREADS=str(threads), TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return json.load(open(os.path.join(out, "results.json")))


def crf_timing(checkpoint, data, root, image_id, reps=7):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import numpy as np
    import pydensecrf.densecrf as dcrf
    import tensorflow as tf
    from PIL import Image

    from dcsp_dist.inference.crf import dense_crf
    from dcsp_dist.inference.predictor import load_for_inference, probability_fn_for

    model, cfg, _ = load_for_inference(checkpoint)
    image = np.array(Image.open(os.path.join(root, "JPEGImages", image_id + ".jpg")).convert("RGB"))  # writable
    probs = probability_fn_for(model, cfg)(tf.constant(image)).numpy()
    params = cfg.crf

    def bare():
        h, w, c = probs.shape
        d = dcrf.DenseCRF2D(w, h, c)
        d.setUnaryEnergy(np.ascontiguousarray(-np.log(np.clip(probs, 1e-8, 1)).transpose(2, 0, 1).reshape(c, -1)))
        d.addPairwiseGaussian(sxy=3, compat=3)
        d.addPairwiseBilateral(sxy=params.bilateral_sxy, srgb=5, rgbim=np.ascontiguousarray(image), compat=4)
        return np.argmax(np.asarray(d.inference(10)).reshape(c, h, w), 0)

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        calls = {"bare": bare, "ours": lambda: dense_crf(image, probs, params),
                 "pool": lambda: pool.submit(dense_crf, image, probs, params).result()}
        times = {k: [] for k in calls}
        for fn in calls.values():
            fn()  # warm-up (the pool's worker starts)
        for _ in range(reps):  # in turn, best of each
            for key, fn in calls.items():
                start = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - start)
    t_bare, t_ours, t_pool = (min(times[k]) for k in ("bare", "ours", "pool"))
    return t_bare, t_ours, t_pool, image.shape


def _crf_seconds(items, params):
    """In a worker process: CRF seconds per image (mean after the first)."""
    from dcsp_dist.inference.crf import dense_crf
    times = []
    for image, probs in items:
        start = time.perf_counter()
        dense_crf(image, probs, params)
        times.append(time.perf_counter() - start)
    return sum(times[1:]) / len(times[1:])


def overlap_timing(checkpoint, data, rounds):
    """Seconds per image, steady state, 1 rank with one TensorFlow thread."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import numpy as np
    import tensorflow as tf

    from dcsp_dist.data import pipeline
    from dcsp_dist.inference.crf_pool import run_inference
    from dcsp_dist.inference.predictor import load_for_inference, probability_fn_for

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    model, cfg, _ = load_for_inference(checkpoint)
    params = cfg.crf
    dataset = pipeline.make_inference_dataset(data, "val", need_mask=True)
    probabilities = probability_fn_for(model, cfg)

    def per_image(stamps):
        return float(np.mean(np.diff(stamps)))  # from the first image's end: no start-up costs

    def network():
        stamps = []
        for ex in dataset:
            np.argmax(probabilities(ex["image"]).numpy(), -1)
            stamps.append(time.perf_counter())
        return per_image(stamps)

    items = [(ex["image"].numpy(), probabilities(ex["image"]).numpy()) for ex in dataset]

    def crf_alone():
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(_crf_seconds, items, params).result()

    def crf_beside_network():
        """The same CRFs while this process runs the network non-stop on the other core."""
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            pool.submit(int, 0).result()  # the worker is up
            future = pool.submit(_crf_seconds, items, params)
            while not future.done():
                for ex in dataset.take(2):
                    probabilities(ex["image"]).numpy()
            return future.result()

    def inference(workers):
        stamps = [time.perf_counter() for _ in run_inference(probabilities, dataset, params, workers)]
        return per_image(stamps)

    modes = {"network": network, "crf": crf_alone, "crf_beside": crf_beside_network, "sequential": lambda: inference(0),
             "overlap1": lambda: inference(1), "overlap2": lambda: inference(2)}
    times = {k: [] for k in modes}
    for _ in range(rounds):  # in turn, so a slow spell of the machine hits every mode
        for key, fn in modes.items():
            times[key].append(fn())
    return {k: float(np.median(v)) for k, v in times.items()}, len(items)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="dcsp_eval_bench_")
    data, root, ids = make_records(work, args.images)
    ranks, matrices = {1: [], 2: []}, []
    for r in range(args.rounds):  # in turn, medians: this machine's speed wanders by 10-30%
        for n in (1, 2):
            result = evaluate(n, args.checkpoint, data, os.path.join(work, f"np{n}-{r}"), workers=0)
            ranks[n].append(result["images_per_sec"])
            matrices.append(result["confusion_matrix"])
    one, two = (statistics.median(ranks[n]) for n in (1, 2))
    piped = evaluate(1, args.checkpoint, data, os.path.join(work, "piped"), workers=1)
    assert all(m == piped["confusion_matrix"] for m in matrices)
    overlap, n = overlap_timing(args.checkpoint, data, args.rounds)
    t_bare, t_ours, t_pool, shape = crf_timing(args.checkpoint, data, root, ids[0])
    print(f"{args.images} images of {shape[1]}x{shape[0]}, checkpoint {piped['checkpoint']}, "
          f"{args.rounds} rounds measured in turn, medians")
    print(f"1 rank (sequential CRF):     {one:.2f} img/s   (rounds: {', '.join(f'{x:.2f}' for x in ranks[1])})")
    print(f"2 ranks (sequential CRF):    {two:.2f} img/s   (rounds: {', '.join(f'{x:.2f}' for x in ranks[2])})"
          f"   speed-up {two / one:.2f}x; confusion matrices identical")
    net, crf, seq = overlap["network"], overlap["crf"], overlap["sequential"]
    bound = max(net, crf)
    print(f"Overlap, 1 rank, steady state over {n} images ({args.rounds} rounds, medians), s/img:")
    print(f"  network alone {net:.3f}   CRF alone (worker process) {crf:.3f}   "
          f"larger {bound:.3f}   sum {net + crf:.3f}")
    print(f"  CRF while the network runs on the other core {overlap['crf_beside']:.3f} "
          f"({100 * (overlap['crf_beside'] / crf - 1):+.0f}%: the two contend for the machine)")
    print(f"  sequential (CRF inline)      {seq:.3f}")
    for w in (1, 2):
        t = overlap[f"overlap{w}"]
        print(f"  overlapped, {w} CRF worker{'s' if w > 1 else ' '}   {t:.3f}   = {t / bound:.2f} x the larger, "
              f"{t / (net + crf):.2f} x the sum, {seq / t:.2f}x faster than sequential")
    print(f"  (2 workers share the 2 cores with the network: its bound is the sum / cores = {(net + crf) / 2:.3f})")
    print(f"CRF per image: bare pydensecrf {t_bare:.3f} s, dcsp_dist.inference.crf {t_ours:.3f} s "
          f"(overhead {100 * (t_ours / t_bare - 1):+.1f}%), through the worker pool {t_pool:.3f} s "
          f"({100 * (t_pool / t_bare - 1):+.1f}%)")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
