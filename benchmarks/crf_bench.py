"""Dense CRF over the labels that can matter vs over every label, side by side.

    .venv/bin/python benchmarks/crf_bench.py [--images 6] [--checkpoint demo_run/run --data demo_run/records]

(1) Realistic probability maps at VOC size (500x375) with 21 and with 81 labels: a strong
    background, 1-3 present classes in blobs, 2-4 "confuser" classes at 5-25 % in patches,
    and a long tail of the rest (each at a level ~ N(-10, 2.5) below the background,
    varying smoothly by +-1 over the image). The
    full-label CRF and ours run on the same inputs in turn (medians of seconds per image),
    with the agreement (share of identical pixels) and the labels kept per image.
(2) The hand-off to a CRF worker process: pickled bytes and pickle + unpickle time of
    all labels as [H, W, C] float32 vs the kept labels as [k, H, W] float32.
(3) With --checkpoint/--data: a trained model's probabilities on a val split (multi-scale,
    as evaluation computes them), both CRFs, their agreement, time and mIoU difference.
"""
import argparse
import os
import pickle
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dcsp_dist.inference.crf import CRFConfig, crf_on_labels, select_labels  # noqa: E402

H, W = 375, 500


def _blob(rng, cy, cx, ry, rx):
    yy, xx = np.mgrid[0:H, 0:W]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1


def realistic(rng, num_labels):
    """(image [H, W, 3] uint8, probabilities [H, W, C] float32) as described above."""
    # Long tail: each label at its own level below the winner (N(-10, 2.5)), varying
    # smoothly over the image by +-1 (a network's tail is smooth, not per-pixel noise).
    level = rng.normal(-10.0, 2.5, num_labels)
    coarse = rng.uniform(-1, 1, (H // 25 + 1, W // 25 + 1, num_labels))
    field = np.repeat(np.repeat(coarse, 25, 0), 25, 1)[:H, :W]
    logits = (level + field).astype(np.float32)
    logits[..., 0] = 0.0                                                      # background
    image = np.empty((H, W, 3), np.float32)
    image[:] = rng.uniform(60, 180, 3)
    present = rng.choice(np.arange(1, num_labels), size=int(rng.integers(1, 4)), replace=False)
    for c in present:
        region = _blob(rng, rng.uniform(60, H - 60), rng.uniform(80, W - 80), rng.uniform(40, 120), rng.uniform(50, 150))
        logits[region, c] = rng.uniform(2.0, 5.0)
        image[region] = rng.uniform(0, 255, 3)
    others = np.setdiff1d(np.arange(1, num_labels), present)
    for c in rng.choice(others, size=int(rng.integers(2, 5)), replace=False):    # confusers at 5-25 %
        region = _blob(rng, rng.uniform(0, H), rng.uniform(0, W), rng.uniform(20, 60), rng.uniform(20, 60))
        share = rng.uniform(0.05, 0.25)
        logits[region, c] = np.log(share / (1 - share)) + logits[region].max(-1)
    image += rng.normal(0, 10, image.shape)
    # Smooth the logits a little, as a network's upsampled maps are.
    from PIL import Image, ImageFilter
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    img = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1))
    return np.asarray(img), probs.astype(np.float32)


def sweep(pairs, params, margins):
    """Agreement with the full CRF and labels kept, per margin (the bound says about 7)."""
    import dataclasses
    full = [crf_on_labels(i, *reversed(select_labels(p, 0.0)), params) for i, p in pairs]
    for margin in margins:
        same = kept = 0
        for (image, probs), reference in zip(pairs, full):
            labels, sub = select_labels(probs, margin)
            same += int((crf_on_labels(image, sub, labels, dataclasses.replace(params, label_margin=margin))
                         == reference).sum())
            kept += len(labels)
        print(f"  margin {margin:g}: identical pixels {100 * same / sum(r.size for r in full):.4f} %, "
              f"labels kept {kept / len(pairs):.1f} per image")


def compare(pairs, params):
    """Both CRFs on every (image, probs) in turn: seconds per image (medians), agreement, kept."""
    full = CRFConfig(**{**params.__dict__, "label_margin": 0.0})
    t_full, t_ours, same, total, kept, labels_full, labels_ours = [], [], 0, 0, [], [], []
    for image, probs in pairs:
        start = time.perf_counter()
        labels, sub = select_labels(probs, full.label_margin)
        a = crf_on_labels(image, sub, labels, full)
        t_full.append(time.perf_counter() - start)
        start = time.perf_counter()
        labels, sub = select_labels(probs, params.label_margin)
        b = crf_on_labels(image, sub, labels, params)
        t_ours.append(time.perf_counter() - start)
        kept.append(len(labels))
        same += int((a == b).sum())
        total += a.size
        labels_full.append(a)
        labels_ours.append(b)
    return {"full": statistics.median(t_full), "ours": statistics.median(t_ours),
            "ratios": statistics.median(f / o for f, o in zip(t_full, t_ours)),
            "agreement": same / total, "kept_median": statistics.median(kept), "kept_max": max(kept),
            "labels": (labels_full, labels_ours)}


def handoff(image, probs, params, reps=5):
    labels, sub = select_labels(probs, params.label_margin)
    out = {}
    for name, payload in (("all labels [H, W, C]", (image, probs)), ("kept labels [k, H, W]", (image, sub, labels))):
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            blob = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
            pickle.loads(blob)
            times.append(time.perf_counter() - start)
        out[name] = (len(blob), statistics.median(times))
    return out


def model_pairs(checkpoint, data):
    """(image, probabilities, mask) of every val image, as evaluation computes them."""
    from dcsp_dist.data import pipeline
    from dcsp_dist.inference.predictor import load_for_inference, probability_fn_for
    model, cfg, _ = load_for_inference(checkpoint)
    probabilities = probability_fn_for(model, cfg)
    out = []
    for ex in pipeline.make_inference_dataset(data, "val", need_mask=True):
        probs = probabilities(ex["image"]).numpy()
        out.append((ex["image"].numpy(), probs, ex["mask"].numpy()))
    return out, cfg.crf


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--margin", type=float, default=CRFConfig().label_margin, help="label_margin to measure")
    parser.add_argument("--checkpoint")
    parser.add_argument("--data")
    args = parser.parse_args(argv)
    params = CRFConfig(label_margin=args.margin)
    rng = np.random.default_rng(0)
    print(f"label_margin {params.label_margin} (keep a label within e^-{params.label_margin:g} of the best somewhere)")
    for num_labels in (21, 81):
        pairs = [realistic(rng, num_labels) for _ in range(args.images)]
        r = compare(pairs, params)
        print(f"{num_labels} labels, {args.images} images {W}x{H}: full {r['full']:.3f} s/img, ours {r['ours']:.3f} s/img, "
              f"speed-up {r['ratios']:.2f}x (median of per-image ratios); identical pixels {100 * r['agreement']:.3f} %; "
              f"labels kept median {r['kept_median']:g}, max {r['kept_max']}")
        sweep(pairs[:2], params, (4, 5, 6, 7, 8))
        for name, (size, seconds) in handoff(*pairs[0], params).items():
            print(f"  hand-off, {name}: {size / 1e6:.1f} MB pickled, {1000 * seconds:.1f} ms pickle + unpickle")
    if args.checkpoint:
        from dcsp_dist.inference import metrics
        items, params = model_pairs(args.checkpoint, args.data)
        params = CRFConfig(**{**params.__dict__, "label_margin": args.margin})
        r = compare([(i, p) for i, p, _ in items], params)
        c = items[0][1].shape[-1]
        miou = []
        for predictions in r["labels"]:
            matrix = sum(metrics.confusion_matrix(m, p, c) for (_, _, m), p in zip(items, predictions))
            miou.append(metrics.scores(matrix)["miou"])
        print(f"trained model on {args.data} val ({len(items)} images, {c} labels): full {r['full']:.3f} s/img, "
              f"ours {r['ours']:.3f} s/img, speed-up {r['ratios']:.2f}x; identical pixels {100 * r['agreement']:.3f} %; "
              f"mIoU full {100 * miou[0]:.2f}, ours {100 * miou[1]:.2f}, difference {100 * (miou[1] - miou[0]):+.3f}; "
              f"labels kept median {r['kept_median']:g}, max {r['kept_max']}")


if __name__ == "__main__":
    main()
