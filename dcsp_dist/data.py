"""Input pipelines: decode (bytes -> tensors) apart from augment (tensors -> crops).

Training: this rank's shard files (``files[rank::size]``), interleaved, shuffled, decoded,
augmented as spec 1 (BGR minus the Caffe mean, random scale in [min, max), flip, pad,
crop; the same geometry on every per-pixel map), batched, prefetched. Cue shards written
by the cues stage are zipped file by file with the image shards they mirror.
Evaluation/inference: this rank's files in order, one full-size image at a time.
"""
from __future__ import annotations

import os

import tensorflow as tf

from dcsp_dist import records
from dcsp_dist.voc import BGR_MEAN, IGNORE_LABEL

AUTOTUNE = tf.data.AUTOTUNE
# Pad value per kind of per-pixel map: labels are ignored (spec 1 fix), saliency is 0.
PAD_VALUES = {"cue": IGNORE_LABEL, "mask": IGNORE_LABEL, "saliency": 0}


# ----------------------------------------------------------------------------- decode
def decode(serialized, has_saliency: bool = True, has_mask: bool = False) -> dict:
    """A serialized record -> dict of uint8 images/maps at full size and tag tensors.

    Keys: id (string), image [H, W, 3] uint8 RGB, tags [20] float32 multi-hot,
    and where present saliency [H, W] uint8 (0..255), mask [H, W] uint8 class ids.
    """
    ex = tf.io.parse_single_example(serialized, records.feature_spec())
    out = {
        "id": ex["id"],
        "image": tf.io.decode_jpeg(ex["image/encoded"], channels=3),
        "tags": ex["tags/multi_hot"],
    }
    if has_saliency:
        out["saliency"] = tf.io.decode_png(ex["saliency/encoded"], channels=1)[..., 0]
    if has_mask:
        out["mask"] = tf.io.decode_png(ex["mask/encoded"], channels=1)[..., 0]
    return out


def decode_cue(serialized) -> dict:
    ex = tf.io.parse_single_example(serialized, records.cue_feature_spec())
    return {"id": ex["id"], "cue": tf.io.decode_png(ex["cue/encoded"], channels=1)[..., 0]}


def preprocess_image(image_rgb) -> tf.Tensor:
    """uint8 RGB [..., 3] -> float32 BGR minus the Caffe mean (spec 1)."""
    bgr = tf.reverse(tf.cast(image_rgb, tf.float32), axis=[-1])
    return bgr - tf.constant(BGR_MEAN, tf.float32)


# ----------------------------------------------------------------------------- augment
def augment(example: dict, cfg, seed, maps=("cue",)) -> dict:
    """Random scale, flip, pad and crop to cfg.crop_size, identical for image and maps.

    Args:
      example: output of ``decode`` (+ "cue"), full-size uint8 tensors.
      cfg: a Config (crop_size, min_scale, max_scale, flip, augment).
      seed: int32 [2] stateless seed; different per rank and per example.
      maps: per-pixel map keys to carry along (those present in ``example``).
    Returns a dict with image [crop, crop, 3] float32 (preprocessed), each map
    [crop, crop] uint8, tags and id.
    """
    maps = [k for k in maps if k in example]
    crop = cfg.crop_size
    image = preprocess_image(example["image"])                        # [H, W, 3]
    stacked = tf.stack([tf.cast(example[k], tf.int32) for k in maps], axis=-1) if maps else None
    shape = tf.shape(image)[:2]
    seeds = tf.random.experimental.stateless_split(seed, 4)
    if cfg.augment:
        scale = tf.random.stateless_uniform([], seeds[0], cfg.min_scale, cfg.max_scale)
        size = tf.cast(tf.round(tf.cast(shape, tf.float32) * scale), tf.int32)
        image = tf.image.resize(image, size, method="bilinear")
        if maps:
            stacked = tf.image.resize(stacked, size, method="nearest")
        if cfg.flip:
            do_flip = tf.random.stateless_uniform([], seeds[1]) < 0.5
            image = tf.cond(do_flip, lambda: tf.reverse(image, [1]), lambda: image)
            if maps:
                stacked = tf.cond(do_flip, lambda: tf.reverse(stacked, [1]), lambda: stacked)
        shape = tf.shape(image)[:2]
    # Pad to at least crop x crop: image with the mean (0 after subtraction), maps with
    # their own pad value (255 = ignore for labels).
    target = tf.maximum(shape, crop)
    paddings = [[0, target[0] - shape[0]], [0, target[1] - shape[1]]]
    image = tf.pad(image, paddings + [[0, 0]])
    if maps:
        pad_vals = tf.constant([PAD_VALUES.get(k, IGNORE_LABEL) for k in maps], tf.int32)
        stacked = tf.pad(stacked - pad_vals, paddings + [[0, 0]]) + pad_vals
    if cfg.augment:
        limit = target - crop + 1
        y = tf.random.stateless_uniform([], seeds[2], 0, limit[0], dtype=tf.int32)
        x = tf.random.stateless_uniform([], seeds[3], 0, limit[1], dtype=tf.int32)
    else:
        y = x = 0
    out = {"id": example["id"], "tags": example["tags"],
           "image": tf.ensure_shape(image[y:y + crop, x:x + crop], [crop, crop, 3])}
    for i, key in enumerate(maps):
        out[key] = tf.ensure_shape(tf.cast(stacked[y:y + crop, x:x + crop, i], tf.uint8), [crop, crop])
    return out


# ----------------------------------------------------------------------------- datasets
def cue_files_for(image_files: list[str], cue_dir: str) -> list[str]:
    """The cue shard mirroring each image shard (same index, ``.cues.tfrecord``)."""
    out = []
    for f in image_files:
        name = os.path.basename(f)[: -len(".tfrecord")] + ".cues.tfrecord"
        path = os.path.join(cue_dir, name)
        if not os.path.isfile(path):
            raise records.DataError(f"cue shard {path} is missing; run the cues stage first")
        out.append(path)
    return out


def _zip_with_cues(image_file, cue_file):
    images = tf.data.TFRecordDataset(image_file)
    cues = tf.data.TFRecordDataset(cue_file)
    return tf.data.Dataset.zip(images, cues)


def make_train_dataset(data_dir: str, cfg, batch: int, rank: int = 0, size: int = 1,
                       cue_dir: str | None = None, split: str | None = None,
                       shuffle: bool = True) -> tf.data.Dataset:
    """Endless batches of augmented crops for this rank.

    Elements: {"image" [B, crop, crop, 3] float32, "tags" [B, 20], "id" [B]} plus
    "cue" [B, crop, crop] uint8 when ``cue_dir`` is given (segmentation stages).
    """
    split = split or cfg.train_split
    manifest = records.read_manifest(data_dir, split)
    files = records.files_for_rank(records.shard_files(data_dir, manifest), rank, size,
                                   what=f"{data_dir} split {split}")
    if cue_dir:
        cue_files = cue_files_for(files, cue_dir)
        files_ds = tf.data.Dataset.from_tensor_slices((files, cue_files))
    else:
        files_ds = tf.data.Dataset.from_tensor_slices(files)
    seed = cfg.seed * 7919 + rank  # every rank draws its own augmentations
    if shuffle:
        files_ds = files_ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    files_ds = files_ds.repeat()
    reader = _zip_with_cues if cue_dir else tf.data.TFRecordDataset
    ds = files_ds.interleave(reader, cycle_length=min(4, len(files)), block_length=1,
                             num_parallel_calls=AUTOTUNE, deterministic=not shuffle)
    if shuffle:
        ds = ds.shuffle(cfg.shuffle_buffer, seed=seed)
    has_mask = False

    def parse(index, element):
        if cue_dir:
            serialized, cue_serialized = element
            example = decode(serialized, has_saliency=False, has_mask=has_mask)
            cue = decode_cue(cue_serialized)
            tf.debugging.assert_equal(example["id"], cue["id"], "image and cue shards disagree")
            example["cue"] = cue["cue"]
        else:
            example = decode(element, has_saliency=False, has_mask=has_mask)
        out = augment(example, cfg, tf.stack([tf.cast(seed, tf.int64), index]), maps=("cue",))
        return out

    ds = ds.enumerate().map(parse, num_parallel_calls=AUTOTUNE, deterministic=not shuffle)
    return ds.batch(batch, drop_remainder=True).prefetch(AUTOTUNE)


def make_inference_dataset(data_dir: str, split: str, rank: int = 0, size: int = 1,
                           need_saliency: bool = False, need_mask: bool = False,
                           files: list[str] | None = None) -> tf.data.Dataset:
    """This rank's examples in file order, decoded at full size, one at a time."""
    manifest = records.read_manifest(data_dir, split)
    if need_saliency and not manifest.get("has_saliency"):
        raise records.DataError(f"{records.manifest_path(data_dir, split)}: split {split} has no saliency maps; "
                                f"rebuild it with Saliency/<id>.png or .npz present")
    if need_mask and not manifest.get("has_mask"):
        raise records.DataError(f"{records.manifest_path(data_dir, split)}: split {split} has no masks; evaluation needs ground truth (use dcsp_dist.predict)")
    if files is None:
        files = records.files_for_rank(records.shard_files(data_dir, manifest), rank, size,
                                       what=f"{data_dir} split {split}")
    has_sal, has_mask = bool(manifest.get("has_saliency")), bool(manifest.get("has_mask"))
    ds = tf.data.TFRecordDataset(files)
    return ds.map(lambda s: decode(s, has_sal, has_mask), num_parallel_calls=AUTOTUNE).prefetch(2)
