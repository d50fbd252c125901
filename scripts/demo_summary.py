"""The demo's closing report: what each DCSP stage contributes on the synthetic data.

    python scripts/demo_summary.py DEMO_DIR SEED SECONDS

Reads the run's own outputs (cues.json of both cue stages, results.json of the two
evaluations) plus the synthetic data's masks and saliency, prints the stage table and the
per-class table (classes that occur in the data), writes DEMO_DIR/summary.json and
DEMO_DIR/stages.png: a few val images as image | saliency | initial cue | first-stage
prediction | final prediction | truth.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dcsp_dist.core.stages import SCHEDULE  # noqa: E402  (the stage table's names)


def _read(path):
    with open(path) as fh:
        return json.load(fh)


def saliency_quality(voc: str, ids: list[str]) -> tuple[float, float]:
    """(foreground IoU of saliency >= 0.5 against the masks, share of objects it misses).

    An object (a class's region in an image) is missed when under half of its pixels
    reach saliency 0.5.
    """
    inter = union = objects = missed = 0
    for image_id in ids:
        mask = np.asarray(Image.open(f"{voc}/SegmentationClass/{image_id}.png"))
        salient = np.asarray(Image.open(f"{voc}/Saliency/{image_id}.png")) >= 128
        fg = (mask > 0) & (mask < 255)
        inter += int((fg & salient).sum())
        union += int((fg | salient).sum())
        for c in np.unique(mask[fg]):
            objects += 1
            missed += int(salient[mask == c].mean() < 0.5)
    return inter / max(union, 1), missed / max(objects, 1)


def stage_picture(run: str, voc: str, ids: list[str], path: str) -> None:
    """image | saliency | initial cue | first-stage prediction | final prediction | truth."""
    import tensorflow as tf

    from dcsp_dist.data import cues
    from dcsp_dist.data.palette import color_map
    from dcsp_dist.inference import crf
    from dcsp_dist.inference.predictor import load_for_inference, make_multiscale_fn, probability_fn_for

    cmap = color_map()
    attention, cfg, _ = load_for_inference(os.path.join(run, "attention"))
    first, _, _ = load_for_inference(os.path.join(run, "segmentation"))
    final, _, _ = load_for_inference(os.path.join(run, "segmentation_adapted"))
    fuse_attention = make_multiscale_fn(attention, cfg.inference.cue_scales, "attention", cfg.model.output_stride,
                                        window=cfg.inference_window_size)
    probabilities = {name: probability_fn_for(model, cfg) for name, model in (("first", first), ("final", final))}
    params = cfg.crf
    rows = []
    for image_id in ids:
        rgb = np.asarray(Image.open(f"{voc}/JPEGImages/{image_id}.jpg").convert("RGB"))
        sal = np.asarray(Image.open(f"{voc}/Saliency/{image_id}.png"))
        truth = np.asarray(Image.open(f"{voc}/SegmentationClass/{image_id}.png"))
        tags = np.zeros(cfg.model.num_classes - 1, np.float32)
        tags[[c - 1 for c in np.unique(truth) if 0 < c < 255]] = 1
        image = tf.constant(rgb)
        cue = cues.attention_cues(fuse_attention(image), tf.constant(sal, tf.float32) / 255.0,
                                  tf.constant(tags), cfg.inference.bg_threshold).numpy()
        preds = [crf.dense_crf(rgb, probabilities[k](image).numpy(), params) for k in ("first", "final")]
        panels = [rgb, np.repeat(sal[..., None], 3, -1), cmap[cue], cmap[preds[0]], cmap[preds[1]], cmap[truth]]
        rows.append(np.concatenate([np.pad(p, ((2, 2), (2, 2), (0, 0)), constant_values=255) for p in panels], 1))
    width = max(r.shape[1] for r in rows)
    picture = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255)
                              for r in rows], 0)
    Image.fromarray(picture).save(path + ".tmp.png")
    os.replace(path + ".tmp.png", path)


def phases(demo: str, run: str, first: dict, final: dict) -> dict:
    """Seconds of each phase: the marks demo.sh left (data, the training process, the
    evaluation process), the stages' and evaluations' own seconds (done.json,
    results.json), and what is left of each process's wall time after its work: its
    start-up (TensorFlow import, Horovod, tracing, the checks before any step)."""
    marks: dict = {}
    if os.path.isfile(f"{demo}/phases.txt"):
        for line in open(f"{demo}/phases.txt"):
            name, edge, when = line.split()
            marks.setdefault(name, {})[edge] = float(when)
    wall = {n: m["end"] - m["start"] for n, m in marks.items() if "start" in m and "end" in m}
    out = {"data": wall.get("data")}
    stages = {}
    for stage in SCHEDULE:
        done = f"{run}/{stage}/done.json"
        stages[stage] = _read(done).get("seconds") if os.path.isfile(done) else None
        out[stage] = stages[stage]
    if "train" in wall and all(v is not None for v in stages.values()):
        out["train_process_startup_and_between_stages"] = wall["train"] - sum(stages.values())
    out["evaluate_first"], out["evaluate_final"] = first.get("seconds"), final.get("seconds")
    if "evaluate" in wall and None not in (first.get("seconds"), final.get("seconds")):
        out["evaluate_process_startup_and_between"] = wall["evaluate"] - first["seconds"] - final["seconds"]
    return {k: (round(v, 1) if v is not None else None) for k, v in out.items()}


def main(argv) -> int:
    demo, seed, seconds = argv[0], int(argv[1]), float(argv[2])
    run, voc = f"{demo}/run", f"{demo}/voc"
    train_ids = open(f"{voc}/ImageSets/Segmentation/train.txt").read().split()
    val_ids = open(f"{voc}/ImageSets/Segmentation/val.txt").read().split()
    initial, adapted = _read(f"{run}/cues/cues.json"), _read(f"{run}/adapt/cues.json")
    first, final = _read(f"{run}/eval_val_segmentation/results.json"), _read(f"{run}/eval_val/results.json")
    sal_iou, sal_missed = saliency_quality(voc, train_ids)
    names = list(final["iou"])
    present = [i for i, n in enumerate(names) if final["iou"][n] is not None]

    stages = [("saliency alone (foreground IoU, train)", sal_iou),
              ("initial cues (mIoU vs train masks)", initial["miou"]),
              ("first segmentation stage, val, no CRF", first["miou_without_crf"]),
              ("first segmentation stage, val, CRF", first["miou"]),
              ("adapted cues (mIoU vs train masks)", adapted["miou"]),
              ("final model, val, no CRF", final["miou_without_crf"]),
              ("final model, val, CRF", final["miou"])]
    print(f"\n== what each stage contributes (seed {seed}; saliency misses {100 * sal_missed:.0f}% of objects)")
    for label, value in stages:
        print(f"{label:<42}{100 * value:7.1f}")
    print(f"\n{'class':<14}{'init cue':>9}{'1st val':>9}{'adapted':>9}{'final val':>10}")
    for i in present:
        n = names[i]
        print(f"{n:<14}{100 * initial['iou'][i]:9.1f}{100 * first['iou'][n]:9.1f}"
              f"{100 * adapted['iou'][i]:9.1f}{100 * final['iou'][n]:10.1f}")

    summary = {"seed": seed, "saliency_fg_iou": sal_iou, "saliency_missed_objects": sal_missed,
               "initial_cues_miou": initial["miou"], "adapted_cues_miou": adapted["miou"],
               "first_segmentation_val_miou": first["miou"],
               "first_segmentation_val_miou_without_crf": first["miou_without_crf"],
               "final_val_miou": final["miou"], "final_val_miou_without_crf": final["miou_without_crf"],
               "adaptation_gain": final["miou"] - first["miou"], "seconds": round(seconds, 1),
               "phases": phases(demo, run, first, final),
               "per_class": {names[i]: {"initial_cues": initial["iou"][i], "first_val": first["iou"][names[i]],
                                        "adapted_cues": adapted["iou"][i], "final_val": final["iou"][names[i]]}
                             for i in present}}
    print(f"\n== where the {seconds:.0f} s went")
    for name, value in summary["phases"].items():
        print(f"{name:<42}{'n/a' if value is None else f'{value:7.1f} s'}")
    tmp = f"{demo}/summary.json.tmp"
    with open(tmp, "w") as fh:
        json.dump(summary, fh, indent=2)
    os.replace(tmp, f"{demo}/summary.json")
    stage_picture(run, voc, val_ids[:4], f"{demo}/stages.png")
    print(f"\nwrote {demo}/summary.json and {demo}/stages.png")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
