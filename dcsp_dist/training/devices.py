"""The devices a training rank runs on: one line per rank, and the ``require_gpu`` policy
(a rank that expects GPUs and sees none stops the job before any work)."""
from __future__ import annotations

import glob
import os
import socket
import sys

import tensorflow as tf

from dcsp_dist import distributed
from dcsp_dist.core.console import say
from dcsp_dist.core.errors import UserError


def device_line(ctx: distributed.Context) -> str:
    """This rank's devices, e.g. ``rank 3 on node7: GPU:0 NVIDIA H100 80GB`` or ``CPU only``."""
    gpus = tf.config.get_visible_devices("GPU")
    names = []
    for gpu in gpus:
        try:
            detail = tf.config.experimental.get_device_details(gpu).get("device_name", "")
        except (ValueError, RuntimeError):
            detail = ""
        names.append(f"{gpu.name.replace('/physical_device:', '')} {detail}".strip())
    return f"rank {ctx.rank} on {socket.gethostname()}: {', '.join(names) if names else 'CPU only'}"


def expects_gpu(require_gpu: str = "auto") -> str | None:
    """Why this job expects GPUs (None: it does not): ``require_gpu=true``, or with "auto" a
    set-up made with ``GPU=1`` (its stamp in the environment) or ``CUDA_VISIBLE_DEVICES``
    naming devices; never with "false"."""
    if require_gpu in ("true", True):
        return "require_gpu=true"
    if require_gpu in ("false", False):
        return None
    if glob.glob(os.path.join(sys.prefix, ".setup-*-gpu1")):
        return f"the environment {sys.prefix} was set up with GPU=1"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if visible and visible != "-1":
        return f"CUDA_VISIBLE_DEVICES={visible}"
    return None


def report_devices(ctx: distributed.Context, require_gpu: str = "auto") -> None:
    """Rank 0 prints every rank's devices in one write; a rank that expects GPUs and sees
    none stops every rank with one line saying why (a node whose CUDA libraries are broken
    would otherwise train on its CPU, 100x slower)."""
    if distributed.elastic_enabled():   # no collective before the elastic state's sync: each rank for itself
        say(device_line(ctx))
    else:
        distributed.log("\n".join(distributed.allgather_object(device_line(ctx))))

    def check():
        why = expects_gpu(require_gpu)
        if why and not tf.config.get_visible_devices("GPU"):
            raise UserError(f"{why}, but TensorFlow sees no GPU on {socket.gethostname()} (rank {ctx.rank}); "
                            f"check the driver and CUDA libraries (TensorFlow's own log says which failed to "
                            f"load; run with DCSP_TF_LOGS=1), or set require_gpu=false")
    check() if distributed.elastic_enabled() else distributed.check_on_every_rank(check)
