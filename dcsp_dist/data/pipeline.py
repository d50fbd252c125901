"""Input pipelines: decode (bytes -> tensors) apart from augment (tensors -> crops).

Training: this rank's shard files (``files[rank::size]``), interleaved, shuffled, parsed,
augmented as docs/method.md §1 (random scale in [min, max), flip, pad, crop; the same geometry on
every per-pixel map; only the crop's window of the JPEG is decoded), batched as uint8,
prefetched; ``models.inputs.network_input`` (BGR minus the Caffe mean) runs in the train step. Cue shards
written by the cues stage are zipped file by file with the image shards they mirror.
Evaluation/inference: this rank's files in order, one full-size image at a time.
"""
from __future__ import annotations

import os

import cv2
import numpy as np
import tensorflow as tf

from dcsp_dist.data import records
from dcsp_dist.data.records import IGNORE_LABEL
from dcsp_dist.rundir import layout

AUTOTUNE = tf.data.AUTOTUNE
# Pad value per kind of per-pixel map: labels are ignored (docs/method.md §1 fix), saliency is 0.
PAD_VALUES = {"cue": IGNORE_LABEL, "mask": IGNORE_LABEL, "saliency": 0}


# ----------------------------------------------------------------------------- decode
def decode(serialized, has_saliency: bool = True, has_mask: bool = False,
           decode_image: bool = True, *, num_tags: int) -> dict:
    """A serialized record -> dict of uint8 images/maps at full size and tag tensors.

    Keys: id (string), image [H, W, 3] uint8 RGB, tags [num_tags] float32 multi-hot,
    and where present saliency [H, W] uint8 (0..255), mask [H, W] uint8 class ids.
    With ``decode_image=False`` the JPEG stays encoded under "jpeg" and ``augment``
    decodes only the window its crop needs.
    """
    wanted = ["id", "image/encoded", "tags/multi_hot"] + ["saliency/encoded"] * has_saliency + \
        ["mask/encoded"] * has_mask
    spec = records.feature_spec(num_tags)
    ex = tf.io.parse_single_example(serialized, {k: spec[k] for k in wanted})  # skip unused bytes
    out = {"id": ex["id"], "tags": ex["tags/multi_hot"]}
    if decode_image:
        out["image"] = tf.io.decode_jpeg(ex["image/encoded"], channels=3)
    else:
        out["jpeg"] = ex["image/encoded"]
    if has_saliency:
        out["saliency"] = tf.io.decode_png(ex["saliency/encoded"], channels=1)[..., 0]
    if has_mask:
        out["mask"] = tf.io.decode_png(ex["mask/encoded"], channels=1)[..., 0]
    return out


def decode_cue(serialized) -> dict:
    ex = tf.io.parse_single_example(serialized, records.cue_feature_spec())
    return {"id": ex["id"], "cue": tf.io.decode_png(ex["cue/encoded"], channels=1)[..., 0]}


# ----------------------------------------------------------------------------- augment
def crop_geometry(shape, u, inp):
    """Where a training crop comes from, in the source image's own pixels.

    docs/method.md §1 scales the image by s ~ U[min_scale, max_scale), flips, pads to at least
    crop x crop and takes a random crop. The same crop is cut here straight from the
    source: per axis a window of round(crop / s) pixels at a uniform offset, resized to
    crop; or, where the scaled axis is shorter than the crop, the whole axis resized to
    round(size * s) and padded. Nothing outside the crop is decoded or interpolated.

    Args: shape int32 [2] (height, width); u float32 [4] uniforms in [0, 1) (scale, flip,
      y, x); inp: the config's ``input`` section.
    Returns (offset [2], window [2], out [2], flip []) tensors.
    """
    crop = inp.crop_size
    shape = tf.cast(shape, tf.int32)
    if not inp.augment:
        window = tf.minimum(shape, crop)
        return tf.zeros([2], tf.int32), window, window, tf.constant(False)
    scale = inp.min_scale + u[0] * (inp.max_scale - inp.min_scale)
    window = tf.cast(tf.round(crop / scale), tf.int32)
    inside = window < shape                          # the crop lies inside the scaled image
    scaled = tf.cast(tf.round(tf.cast(shape, tf.float32) * scale), tf.int32)
    offset = tf.cast(u[2:] * tf.cast(shape - window + 1, tf.float32), tf.int32)
    offset = tf.where(inside, tf.minimum(offset, shape - window), 0)
    out = tf.where(inside, crop, tf.clip_by_value(scaled, 1, crop))
    flip = tf.logical_and(tf.constant(inp.flip), u[1] < 0.5)
    return offset, tf.where(inside, window, shape), out, flip


def _cv2():
    """OpenCV, single-threaded: tf.data already runs one call per core."""
    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)
    return cv2


def _resize_flip_pad(image, maps, out, flip, crop, pad_values):
    """NumPy/OpenCV body of ``augment``: resize the windows to ``out``, flip, pad to crop."""
    cv2 = _cv2()
    out_h, out_w = int(out[0]), int(out[1])
    content = (slice(0, out_h), slice(0, out_w))

    def place(source, interpolation, dest):
        target = dest[content]
        if source.shape[:2] != (out_h, out_w):
            # Half-pixel centres, like tf.image.resize; fixed point on uint8; written
            # straight into the padded output unless it still has to be flipped.
            resized = cv2.resize(source, (out_w, out_h), dst=None if flip else target,
                                 interpolation=interpolation)
            if not flip and np.shares_memory(resized, target):
                return
            source = resized
        source = source.reshape(target.shape)
        if flip:
            cv2.flip(source, 1, dst=target)  # (numpy's [:, ::-1] copy is 30x slower)
        else:
            target[...] = source

    out_image = np.zeros((crop, crop, 3), np.uint8)
    place(image, cv2.INTER_LINEAR, out_image)
    out_maps = np.empty((crop, crop, maps.shape[-1]), np.uint8)
    out_maps[:] = pad_values
    if maps.shape[-1]:
        # Nearest with half-pixel centres: the image's sampling grid.
        place(maps, cv2.INTER_NEAREST_EXACT, out_maps)
    return out_image, out_maps


def augment(example: dict, inp, seed, maps=("cue",)) -> dict:
    """Random scale, flip, pad and crop to inp.crop_size, identical for image and maps.

    Args:
      example: output of ``decode`` (+ "cue"): full-size uint8 tensors, the image either
        decoded ("image") or still encoded ("jpeg"; then only the crop's window is decoded).
      inp: the config's ``input`` section (crop_size, min_scale, max_scale, flip, augment).
      seed: int [2] stateless seed; different per rank and per example.
      maps: per-pixel map keys to carry along (those present in ``example``).
    Returns a dict with image [crop, crop, 3] uint8 RGB (``models.inputs.network_input`` turns a batch of
    them into the network's input), valid int32 [2] (rows, columns of image content; the
    rest is padding), each map [crop, crop] uint8 padded with its PAD_VALUES entry, tags, id.
    """
    maps = [k for k in maps if k in example]
    crop = inp.crop_size
    u = tf.random.stateless_uniform([4], seed)
    decoded = "image" in example
    shape = tf.shape(example["image"])[:2] if decoded else tf.io.extract_jpeg_shape(example["jpeg"])[:2]
    offset, window, out, flip = crop_geometry(shape, u, inp)
    if decoded:
        image = tf.slice(example["image"], tf.concat([offset, [0]], 0), tf.concat([window, [3]], 0))
    else:
        image = tf.io.decode_and_crop_jpeg(example["jpeg"], tf.concat([offset, window], 0), channels=3)
    if maps:
        stacked = tf.stack([example[k] for k in maps], axis=-1)
        stacked = tf.slice(stacked, tf.concat([offset, [0]], 0), tf.concat([window, [len(maps)]], 0))
    else:
        stacked = tf.zeros([0, 0, 0], tf.uint8)
    pad_values = [PAD_VALUES.get(k, IGNORE_LABEL) for k in maps]
    image, out_maps = tf.numpy_function(
        lambda i, m, o, f: _resize_flip_pad(i, m, o, f, crop, pad_values),
        [image, stacked, out, flip], [tf.uint8, tf.uint8], stateful=False)
    out_maps = tf.ensure_shape(out_maps, [crop, crop, len(maps)])
    result = {"id": example["id"], "tags": example["tags"], "valid": out,
              "image": tf.ensure_shape(image, [crop, crop, 3])}
    for i, key in enumerate(maps):
        result[key] = out_maps[..., i]
    return result


# ----------------------------------------------------------------------------- datasets
def cue_files_for(image_files: list[str], cue_dir: str) -> list[str]:
    """The cue shard mirroring each image shard (same index, ``.cues.tfrecord``)."""
    out = []
    for f in image_files:
        path = layout.cue_shard_path(cue_dir, f)
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
                       shuffle: bool = True, start_step: int = 0) -> tf.data.Dataset:
    """Endless batches of augmented crops for this rank.

    ``start_step``: the training step the pipeline starts at when it is rebuilt mid-stage
    (elastic training after a change of world size); it moves the seeds on, so a restarted
    pipeline does not replay the batches it drew from step 0.

    Elements: {"image" [B, crop, crop, 3] uint8 RGB (``models.inputs.network_input`` makes it the network's
    input inside the step), "valid" [B, 2] int32 (the rows and columns of image content; the rest is padding),
    "tags" [B, K] float32 multi-hot (K object classes, from the records), "id" [B]} plus
    "cue" [B, crop, crop] uint8 when ``cue_dir`` is given (segmentation stages).
    """
    split = split or cfg.run.train_split
    manifest = records.read_manifest(data_dir, split)
    files = records.files_for_rank(records.shard_files(data_dir, manifest), rank, size,
                                   what=f"{data_dir} split {split}")
    if cue_dir:
        cue_files = cue_files_for(files, cue_dir)
        files_ds = tf.data.Dataset.from_tensor_slices((files, cue_files))
    else:
        files_ds = tf.data.Dataset.from_tensor_slices(files)
    seed = cfg.run.seed * 7919 + rank + 1_000_003 * start_step  # every rank draws its own augmentations
    if shuffle:
        files_ds = files_ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    files_ds = files_ds.repeat()
    reader = _zip_with_cues if cue_dir else tf.data.TFRecordDataset
    ordered = cfg.run.deterministic or not shuffle
    ds = files_ds.interleave(reader, cycle_length=min(4, len(files)), block_length=1,
                             num_parallel_calls=AUTOTUNE, deterministic=ordered)
    if shuffle:
        ds = ds.shuffle(cfg.input.shuffle_buffer, seed=seed)
    has_mask, tags = False, records.num_tags(manifest)

    def parse(index, element):
        if cue_dir:
            serialized, cue_serialized = element
            example = decode(serialized, has_saliency=False, has_mask=has_mask, decode_image=False,
                             num_tags=tags)
            cue = decode_cue(cue_serialized)
            tf.debugging.assert_equal(example["id"], cue["id"], "image and cue shards disagree")
            example["cue"] = cue["cue"]
        else:
            example = decode(element, has_saliency=False, has_mask=has_mask, decode_image=False, num_tags=tags)
        out = augment(example, cfg.input, tf.stack([tf.cast(seed, tf.int64), index]), maps=("cue",))
        return out

    ds = ds.enumerate().map(parse, num_parallel_calls=AUTOTUNE, deterministic=ordered)
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
        raise records.DataError(f"{records.manifest_path(data_dir, split)}: split {split} has no masks; "
                                f"evaluation needs ground truth (use dcsp_dist.predict)")
    if files is None:
        files = records.files_for_rank(records.shard_files(data_dir, manifest), rank, size,
                                       what=f"{data_dir} split {split}")
    has_sal, has_mask = bool(manifest.get("has_saliency")), bool(manifest.get("has_mask"))
    ds = tf.data.TFRecordDataset(files)
    tags = records.num_tags(manifest)
    return ds.map(lambda s: decode(s, has_sal, has_mask, num_tags=tags), num_parallel_calls=AUTOTUNE).prefetch(2)
