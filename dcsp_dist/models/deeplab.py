"""The DCSP network: dilated ResNet + ASPP segmentation head + attention head (docs/method.md §2).

``build_model(cfg)`` returns one Keras model whose output is a dict:
``{"segmentation": [B, h, w, C] logits, "attention": [B, h, w, C-1] maps}``, both float32.
"""
from __future__ import annotations

import dataclasses

import keras
from keras import layers

from dcsp_dist.core.errors import UserError
from dcsp_dist.models.atrous import AtrousConv2D
from dcsp_dist.models.resnet import build_resnet

ASPP_DILATIONS = (6, 12, 18, 24)
ASPP_NAMES = tuple(f"fc1_voc12_c{i}" for i in range(4))
ATTENTION_NAME = "fc1_voc12_d0"
BACKBONE_NAME = "resnet"


def _policy(mixed_precision: str):
    return {"float32": None, "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}[mixed_precision]


def build_model(cfg) -> keras.Model:
    """The DeepLab-v2 attention + segmentation model described by ``cfg`` (a Config).

    Uses cfg.model.num_classes, blocks, base_width, output_stride, normalization, head_init_std
    and mixed_precision. Logits and attention maps are float32 whatever the policy.
    """
    if cfg.model.mixed_precision not in ("float32", "bfloat16", "float16"):
        raise UserError(f"mixed_precision must be float32, bfloat16 or float16, not {cfg.model.mixed_precision!r}")
    dtype = _policy(cfg.model.mixed_precision)
    backbone = build_resnet(cfg.model.blocks, cfg.model.base_width, cfg.model.output_stride, dtype=dtype,
                            name=BACKBONE_NAME, normalization=cfg.model.normalization)
    init = dict(kernel_initializer=keras.initializers.RandomNormal(0.0, cfg.model.head_init_std, seed=cfg.run.seed),
                bias_initializer="zeros")
    images = keras.Input((None, None, 3), name="image")
    features = backbone(images)                                    # [B, h, w, 2048]
    branches = [AtrousConv2D(cfg.model.num_classes, d, name=n, dtype=dtype, **init)(features)
                for d, n in zip(ASPP_DILATIONS, ASPP_NAMES)]
    logits = layers.Add(name="fc1_voc12", dtype="float32")(branches)  # [B, h, w, C]
    attention = layers.Conv2D(cfg.model.num_classes - 1, 1, name=ATTENTION_NAME, dtype="float32",
                              **init)(logits)                      # [B, h, w, C-1]
    return keras.Model(images, {"segmentation": logits, "attention": attention}, name="dcsp")


def head_layers(model: keras.Model) -> list:
    """The layers new to DCSP (ASPP branches + attention head), in a fixed order."""
    return [model.get_layer(n) for n in ASPP_NAMES + (ATTENTION_NAME,)]


def attention_head(model: keras.Model):
    """The attention head ``fc1_voc12_d0`` (1x1 conv C -> C-1 on the ASPP logits)."""
    return model.get_layer(ATTENTION_NAME)


def backbone(model: keras.Model) -> keras.Model:
    return model.get_layer(BACKBONE_NAME)


@dataclasses.dataclass
class ParameterGroups:
    """Variables grouped by role, from the model's structure (not from variable names)."""
    backbone: list        # trainable backbone variables (conv kernels and biases), lr x1
    head_kernels: list    # ASPP + attention kernels, lr x10
    head_biases: list     # ASPP + attention biases, lr x20

    def trainable(self, train_backbone: bool) -> list:
        """What a stage trains: the new layers, plus the backbone when asked (never BN)."""
        out = list(self.backbone) if train_backbone else []
        return out + self.head_kernels + self.head_biases

    @property
    def conv_kernels(self) -> list:
        """Conv kernels (weights, no biases, no BN) for the L2 term (docs/method.md §3)."""
        return [v for v in self.backbone if len(v.shape) == 4] + self.head_kernels


def parameter_groups(model: keras.Model) -> ParameterGroups:
    heads = head_layers(model)
    return ParameterGroups(
        backbone=list(backbone(model).trainable_weights),
        head_kernels=[layer.kernel for layer in heads],
        head_biases=[layer.bias for layer in heads],
    )
