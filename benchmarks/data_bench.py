"""Training-input throughput on the same synthetic images, measured side by side:
(a) the TFRecord pipeline (decode + augment, 321 crop, batch 10), (b) a file-per-image loader
reading the JPEG and the saliency .npz from the VOC directory with the same augmentation (what
the original did), (c) the bare JPEG-decode rate of those images (the ceiling).
The three are measured in turn, --rounds times, and their medians compared (this 2-core
machine's rates wander by +-10% from one second to the next).

    .venv/bin/python benchmarks/data_bench.py [--images 200] [--epochs 5] [--rounds 3]
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=5, help="images per measurement, in epochs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--native-size", action="store_true",
                        help="keep the synthetic images' own ~150 px size instead of VOC's 500x375")
    args = parser.parse_args()
    import numpy as np
    import tensorflow as tf
    from PIL import Image

    from data_tools import build, synth
    from data_tools.sources import VocSource
    from dcsp_dist import config
    from dcsp_dist.data import pipeline

    work = tempfile.mkdtemp(prefix="dcsp_data_bench_")
    root = os.path.join(work, "voc")
    if args.native_size:
        ids = synth.generate(root, args.images, 0, seed=1)["train"]
    else:
        from benchmarks.common import synth_voc_sized
        ids = synth_voc_sized(root, args.images, "train", seed=1)
    for i in ids:  # the original's saliency format: Saliency/<id>.npz, key actv
        sal = np.asarray(Image.open(os.path.join(root, "Saliency", i + ".png")), np.float32) / 255
        np.savez(os.path.join(root, "Saliency", i + ".npz"), actv=sal)
    build.build(VocSource(root, ids), "train", os.path.join(work, "rec"), num_shards=8, progress=False)
    cfg = config.make_config("voc_paper")  # 321 crop, scale [0.5, 1.5), flip
    batch = 10
    total = args.images * args.epochs

    def rate(dataset, n_images):
        it = iter(dataset)  # a fresh iterator: no other pipeline has threads running meanwhile
        next(it)  # warm-up
        start, seen = time.perf_counter(), 0
        while seen < n_images:
            b = next(it)
            seen += int(tf.shape(b["image"] if isinstance(b, dict) else b)[0])
        elapsed = time.perf_counter() - start
        del it
        return seen / elapsed

    # (a) TFRecords
    records = pipeline.make_train_dataset(os.path.join(work, "rec"), cfg, batch, shuffle=True)
    records = records.map(lambda b: {"image": b["image"]})

    # (b) one JPEG + one .npz per image from the VOC directory, same decode + augment
    paths = [(os.path.join(root, "JPEGImages", i + ".jpg"), os.path.join(root, "Saliency", i + ".npz")) for i in ids]

    def load_npz(path):
        return (np.load(path.decode())["actv"] * 255).astype(np.uint8)

    def per_file(index, jpg, npz):
        image = tf.io.decode_jpeg(tf.io.read_file(jpg), channels=3)
        sal = tf.numpy_function(load_npz, [npz], tf.uint8)
        sal.set_shape([None, None])
        ex = {"id": jpg, "image": image, "tags": tf.zeros([20]), "saliency": sal}
        return pipeline.augment(ex, cfg.input, tf.stack([tf.constant(0, tf.int64), index]), maps=("saliency",))

    files = tf.data.Dataset.from_tensor_slices(([p[0] for p in paths], [p[1] for p in paths]))
    loader = (files.shuffle(len(paths)).repeat().enumerate()
              .map(lambda i, f: per_file(i, f[0], f[1]), num_parallel_calls=tf.data.AUTOTUNE)
              .batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE))
    loader = loader.map(lambda b: {"image": b["image"]})

    # (c) bare JPEG decode of the same bytes, held in memory, in parallel
    jpegs = [open(p[0], "rb").read() for p in paths]
    decode = (tf.data.Dataset.from_tensor_slices(jpegs).repeat()
              .map(lambda s: tf.reduce_max(tf.io.decode_jpeg(s, channels=3)), num_parallel_calls=tf.data.AUTOTUNE)
              .batch(batch).prefetch(tf.data.AUTOTUNE))
    rates = {"a": [], "b": [], "c": []}
    for _ in range(args.rounds):  # in turn, so a slow spell of the machine hits all three
        for key, dataset in (("a", records), ("b", loader), ("c", decode)):
            rates[key].append(rate(dataset, total))
    a, b_rate, c = (float(np.median(rates[k])) for k in "abc")
    size = "own size (~150 px)" if args.native_size else "500x375"
    print(f"images: {args.images} synthetic at {size} ({args.epochs} epochs x {args.rounds} rounds, medians), "
          f"batch {batch}, crop 321, {os.cpu_count()} cores")
    print(f"TFRecord pipeline (decode+augment):   {a:8.1f} img/s")
    print(f"file-per-image loader (JPEG + .npz):  {b_rate:8.1f} img/s")
    print(f"bare JPEG decode (ceiling):           {c:8.1f} img/s")
    print(f"TFRecord / file-per-image = {a / b_rate:.2f}x   TFRecord / decode ceiling = {a / c:.2f}")
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
