"""Typed, frozen configuration in sections, with the paper's settings as defaults.

A ``Config`` is a name plus seven sections, each a frozen dataclass that checks its own
values: ``model``, ``input``, ``optimizer``, ``schedule``, ``inference``, ``crf`` and
``run``. Functions take the section they need (``crf.dense_crf(..., cfg.crf)``). Every
setting has a dotted name, ``crf.iterations``, and a flat one, ``crf_iterations`` (the
section's prefix for CRF settings, the bare field name for the others). Code reads settings by
section (``cfg.crf.iterations``); flat names live only at the edges: ``--set`` takes either
(``--set crf.iterations=5``, ``--set attention_steps=300``), an old flat ``config.json``
loads, ``python -m dcsp_dist.config`` lists both. An unknown name is one line naming the
closest known ones. Settings marked ``BOOKKEEPING`` (what is logged, kept or watched) stay
out of ``Config.stamp``, which stamps outputs, and may change on a resume.

Presets live one per file in ``dcsp_dist/configs/`` (``voc_paper``, ``synthetic_demo``,
``tiny_test``), each with its rationale. A run saves its resolved config as ``config.json``
in sections; files in config format v1 (flat) load too, and the digest (which names a
config in logs and cue records) is computed over the flat settings, so it is what it was.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import sys
from typing import Any

from dcsp_dist import configs
from dcsp_dist.core import stages
from dcsp_dist.core.console import say
from dcsp_dist.core.errors import UserError
from dcsp_dist.core.preemption import DEFAULT_SIGNALS, parse_signals

OBJECTIVES = ("authors_code", "paper_text")


class _Section:
    """A config section: checks its values when made (before any work)."""
    PREFIX = ""                      # flat names are PREFIX + field name
    AT_LEAST: dict = {}              # field -> minimum
    POSITIVE: tuple = ()             # fields that must be > 0
    NON_NEGATIVE: tuple = ()         # fields that must be >= 0
    CHOICES: dict = {}               # field -> allowed values

    def __post_init__(self):
        for name, low in self.AT_LEAST.items():
            if getattr(self, name) < low:
                raise UserError(f"{self.PREFIX}{name} must be >= {low}, not {getattr(self, name)}")
        for name in self.POSITIVE:
            if not getattr(self, name) > 0:
                raise UserError(f"{self.PREFIX}{name} must be > 0, not {getattr(self, name)}")
        for name in self.NON_NEGATIVE:
            if getattr(self, name) < 0:
                raise UserError(f"{self.PREFIX}{name} must be >= 0, not {getattr(self, name)}")
        for name, allowed in self.CHOICES.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"{self.PREFIX}{name} must be one of {', '.join(map(str, allowed))}, "
                                 f"not {getattr(self, name)!r}")
        self.check()

    def check(self) -> None:
        """Checks that involve more than one field of the section."""


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Section):
    """The network (docs/method.md §2)."""
    num_classes: int = 0                  # 0: from the records' class list (training sizes it: with_classes)
    blocks: tuple = (3, 4, 23, 3)         # ResNet-101
    base_width: int = 64                  # filters of the first stage's bottleneck
    output_stride: int = 8
    normalization: str = "frozen_batch_norm"   # or "group_norm" for a backbone trained from scratch
    init_weights: str = "imagenet"        # "imagenet", a Keras weights file, a Caffe .npy/.npz dict, or "none"
    head_init_std: float = 0.01
    mixed_precision: str = "float32"      # "float32", "bfloat16" or "float16" (GPU)
    xla: bool = False
    AT_LEAST = {"base_width": 1}
    POSITIVE = ("head_init_std",)
    CHOICES = {"output_stride": (8, 16, 32), "mixed_precision": ("float32", "bfloat16", "float16"),
               "normalization": ("frozen_batch_norm", "group_norm")}

    def check(self) -> None:
        if self.num_classes == 1 or self.num_classes < 0:
            raise UserError(f"num_classes must be >= 2 (background and one class), or 0 to take it from the "
                             f"records, not {self.num_classes}")
        if self.normalization == "group_norm" and self.init_weights == "imagenet":
            raise UserError("normalization=group_norm cannot take the ImageNet weights (they come with batch "
                             "norm statistics); use init_weights=none or frozen_batch_norm")


@dataclasses.dataclass(frozen=True)
class InputConfig(_Section):
    """Training crops and their augmentation (docs/method.md §1)."""
    crop_size: int = 321
    min_scale: float = 0.5
    max_scale: float = 1.5
    flip: bool = True
    augment: bool = True
    shuffle_buffer: int = 1000
    AT_LEAST = {"crop_size": 9, "shuffle_buffer": 1}
    POSITIVE = ("min_scale", "max_scale")

    def check(self) -> None:
        if self.max_scale < self.min_scale:
            raise UserError(f"max_scale ({self.max_scale}) must be >= min_scale ({self.min_scale})")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(_Section):
    """SGD with momentum, the poly rate and its multipliers (docs/method.md §3)."""
    global_batch: int = 10
    base_lr: float = 1e-3
    segmentation_base_lr: float = 0.0     # base rate of the segmentation stages; 0 = base_lr (paper)
    lr_scaling: str = "none"              # "none": base_lr as is (paper); "linear": base_lr * global_batch / reference_batch
    reference_batch: int = 10
    warmup_steps: int = 0                 # linear warm-up, used with lr_scaling="linear"
    momentum: float = 0.9
    poly_power: float = 0.9
    weight_decay: float = 5e-4
    lr_mult_backbone: float = 1.0
    lr_mult_head_kernel: float = 10.0
    lr_mult_head_bias: float = 20.0
    AT_LEAST = {"global_batch": 1, "reference_batch": 1, "warmup_steps": 0}
    POSITIVE = ("base_lr", "lr_mult_backbone", "lr_mult_head_kernel", "lr_mult_head_bias")
    NON_NEGATIVE = ("segmentation_base_lr", "weight_decay", "poly_power")
    CHOICES = {"lr_scaling": ("none", "linear")}

    def check(self) -> None:
        if not 0 <= self.momentum < 1:
            raise UserError(f"momentum must be in [0, 1), not {self.momentum}")


@dataclasses.dataclass(frozen=True)
class ScheduleConfig(_Section):
    """The stages: their lengths and what each trains (docs/method.md §4)."""
    attention_steps: int = 30000
    segmentation_steps: int = 10000
    adapt_segmentation_steps: int = 10000
    attention_trains_backbone: bool = False   # paper: backbone frozen (ImageNet features)
    # Segmentation stages (docs/method.md §4.3). "authors_code" (what produced 60.8): backbone and ASPP
    # get the segmentation loss alone, the attention head classification + L2 on its own
    # kernel. "paper_text": segmentation + classification + L2 into everything trained.
    segmentation_objective: str = "authors_code"
    # Adapted cues (docs/method.md §4.4) as the authors compute them: argmax of the fused logits over
    # background + tags. True refines those probabilities with the dense CRF of evaluation
    # first (an option, not the authors' step; see docs/demo.md).
    adapt_crf: bool = False
    AT_LEAST = {"attention_steps": 1, "segmentation_steps": 1, "adapt_segmentation_steps": 1}
    CHOICES = {"segmentation_objective": OBJECTIVES}


@dataclasses.dataclass(frozen=True)
class InferenceConfig(_Section):
    """How the network is run on whole images: cues, evaluation, prediction (docs/method.md §4.2, 5)."""
    cue_scales: tuple = (1.0, 0.75, 0.5)
    eval_scales: tuple = (1.0, 0.75, 0.5)
    bg_threshold: float = 0.4
    # Where the stride-8 segmentation outputs are interpolated to the image (docs/method.md §5 and 4.4):
    # "logits" as the authors (bilinear logits, then softmax/argmax); "probabilities" takes the
    # softmax on the output grid first. Interpolated logits move every boundary towards the
    # less confident class (objects shrink by up to a grid cell); see docs/conformance.md.
    upsample_space: str = "logits"
    # What the network sees at inference (cues, adapted cues, evaluation, prediction):
    # "image", the whole image at once, as the authors; "crop", windows of crop_size that
    # overlap by a third, their outputs averaged on the stride-8 grid. A network trained only
    # on crops much smaller than the images is off its training inputs on whole images
    # (``inference.windowed_outputs``; docs/demo.md).
    inference_window: str = "image"
    CHOICES = {"upsample_space": ("logits", "probabilities"), "inference_window": ("image", "crop")}

    def check(self) -> None:
        if not 0 <= self.bg_threshold <= 1:
            raise UserError(f"bg_threshold must be in [0, 1], not {self.bg_threshold}")
        for name in ("cue_scales", "eval_scales"):
            check_scales(getattr(self, name), name)


def check_scales(scales: tuple, what: str) -> None:
    """The rule for every list of inference scales: the first is 1, all lie in (0, 1]."""
    if not scales or scales[0] != 1.0 or not all(0 < x <= 1 for x in scales):
        raise UserError(f"{what} must start with 1 and lie in (0, 1], not {scales}")


def parse_scales(text: str | None, default) -> tuple:
    """``--scales 1,0.75,0.5`` as a tuple (``default`` when not given), by the settings' rule."""
    if text is None:
        return tuple(default)
    try:
        scales = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise UserError(f"--scales {text!r}: expected numbers like 1,0.75,0.5") from None
    check_scales(scales, f"--scales {text!r}")
    return scales


@dataclasses.dataclass(frozen=True)
class CRFConfig(_Section):
    """The dense CRF of evaluation (docs/method.md §5) and of adapt_crf."""
    iterations: int = 10
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 49.0
    bilateral_srgb: float = 5.0
    bilateral_compat: float = 4.0
    label_margin: float = 6.0             # CRF over labels within e^-6 of the best somewhere; 0 = all
    PREFIX = "crf_"
    AT_LEAST = {"iterations": 0}
    NON_NEGATIVE = ("label_margin",)


@dataclasses.dataclass(frozen=True)
class RunConfig(_Section):
    """Seeds, distribution, bookkeeping and the splits a run reads."""
    seed: int = 0                         # initial weights, augmentation, shuffling
    deterministic: bool = False           # TF op determinism + ordered tf.data: same seed, same run
    gradient_compression: str = "none"    # "fp16": allreduce gradients as float16 (half the bytes between nodes)
    elastic_commit_every: int = 10        # elastic jobs: steps between commits (at most this many are redone)
    preempt_signals: str = DEFAULT_SIGNALS   # stop at a step boundary, checkpoint, exit 75 (dcsp_dist.core.preemption)
    stall_timeout: float = 300.0          # seconds without a step before a stalled rank ends the job, exit 76; 0 = off
    # "true": refuse to start on a rank that sees no GPU; "auto": the same when the set-up was
    # GPU=1 or CUDA_VISIBLE_DEVICES names devices (training.devices.expects_gpu); "false": never.
    require_gpu: str = "auto"
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    # Roll back from a loss spike instead of stopping (dcsp_dist.training.recovery, docs/divergence.md):
    # at most recovery_max roll-backs per stage (0: stop at the first non-finite loss), to a
    # copy of the state kept every recovery_every steps; a spike is a loss above recovery_spike
    # times the median of the last 50; each roll-back multiplies the stage's rate by
    # recovery_lr_factor.
    recovery_max: int = 3
    recovery_every: int = 50
    recovery_spike: float = 5.0
    recovery_lr_factor: float = 0.5
    # Every this many steps rank 0 records each parameter group's gradient, update and weight
    # norms and the cue pixels per class (<stage>/diagnostics.jsonl, TensorBoard); 0 = off.
    diagnostics_every: int = 0
    log_every: int = 20
    image_summary_every: int = 500
    train_split: str = "train"
    val_split: str = "val"
    AT_LEAST = {"checkpoint_every": 1, "keep_checkpoints": 1, "log_every": 1, "image_summary_every": 1,
                "elastic_commit_every": 1, "recovery_max": 0, "recovery_every": 1, "diagnostics_every": 0}
    # Settings that change only what is logged, kept or watched, never what a run that goes as
    # planned computes (recovery acts only on a spike, which done.json records): a resume may
    # change them, and the stamp on outputs (``Config.stamp``) leaves them out.
    BOOKKEEPING = ("log_every", "image_summary_every", "checkpoint_every", "keep_checkpoints", "elastic_commit_every",
                   "stall_timeout", "preempt_signals", "require_gpu", "recovery_max", "recovery_every",
                   "recovery_spike", "recovery_lr_factor", "diagnostics_every")
    NON_NEGATIVE = ("stall_timeout",)
    CHOICES = {"gradient_compression": ("none", "fp16"), "require_gpu": ("auto", "true", "false")}

    def check(self) -> None:
        parse_signals(self.preempt_signals)
        if not self.recovery_spike > 1:
            raise UserError(f"recovery_spike must be > 1 (times the recent loss), not {self.recovery_spike}")
        if not 0 < self.recovery_lr_factor <= 1:
            raise UserError(f"recovery_lr_factor must be in (0, 1], not {self.recovery_lr_factor}")


SECTIONS = {"model": ModelConfig, "input": InputConfig, "optimizer": OptimizerConfig, "schedule": ScheduleConfig,
            "inference": InferenceConfig, "crf": CRFConfig, "run": RunConfig}
# flat name -> (section, field): "crf_iterations" -> ("crf", "iterations"), "seed" -> ("run", "seed")
FLAT = {cls.PREFIX + f.name: (section, f.name)
        for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
BOOKKEEPING = frozenset(RunConfig.PREFIX + name for name in RunConfig.BOOKKEEPING)
# Settings added since config format v1, with their defaults (``Config.digest``).
ADDED_SINCE_V1 = {name: getattr(RunConfig(), name) for name in
                  ("recovery_max", "recovery_every", "recovery_spike", "recovery_lr_factor", "diagnostics_every")}


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of a DCSP run, in sections; defaults are the paper's (docs/method.md §1-5).
    Code reads a setting by its section (``cfg.crf.iterations``); flat names are for the edges
    (``--set``, config format v1 files, ``replace``)."""
    name: str = "voc_paper"
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    input: InputConfig = dataclasses.field(default_factory=InputConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    inference: InferenceConfig = dataclasses.field(default_factory=InferenceConfig)
    crf: CRFConfig = dataclasses.field(default_factory=CRFConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)

    def __post_init__(self):
        # Rules across sections (each section checks its own fields).
        if self.model.xla and self.run.deterministic:
            raise UserError("xla=true needs deterministic=false: XLA has no deterministic kernel for every op of "
                             "the step (TensorFlow: \"MaxPool gradient ops do not yet have a deterministic XLA "
                             "implementation\")")

    def replace(self, **changes) -> "Config":
        """This config with settings changed, by flat or dotted name (``seed=1``,
        ``**{"crf.iterations": 5}``); ``name`` renames it. Each changed section checks itself."""
        name = changes.pop("name", self.name)
        by_section: dict = {}
        for key, value in changes.items():
            section, field = resolve(key)
            by_section.setdefault(section, {})[field] = value
        sections = {s: dataclasses.replace(getattr(self, s), **c) for s, c in by_section.items()}
        return dataclasses.replace(self, name=name, **sections)

    def flat(self) -> dict:
        """``{flat name: value}`` for every setting, plus ``name`` (tuples as lists, as in JSON)."""
        out = {"name": self.name}
        for key, (section, field) in FLAT.items():
            value = getattr(getattr(self, section), field)
            out[key] = list(value) if isinstance(value, tuple) else value
        return out

    # ------------------------------------------------------------------
    def with_classes(self, class_names, explicit: bool = False) -> "Config":
        """This config sized for the data's class list (background first). A num_classes
        the user set explicitly (``explicit``) must agree with it."""
        if len(class_names) < 2:
            raise UserError(f"the records list {len(class_names)} class(es); background plus at least one is needed")
        if explicit and self.model.num_classes != len(class_names):
            raise UserError(f"num_classes={self.model.num_classes}, but the records list {len(class_names)} classes "
                             f"({', '.join(class_names[:4])}...); drop the setting: the class list comes from the data")
        return self.replace(num_classes=len(class_names))

    def per_rank_batch(self, size: int) -> int:
        """Global batch split over ``size`` ranks; it must divide (the paper's batch is 10)."""
        if self.optimizer.global_batch % size:
            raise UserError(
                f"global_batch={self.optimizer.global_batch} does not divide over {size} ranks; "
                f"set --set global_batch=<multiple of {size}> (with lr_scaling=linear to keep the paper's per-image rate)")
        return self.optimizer.global_batch // size

    @property
    def inference_window_size(self) -> int:
        """The window inference runs the network on: crop_size, or 0 for the whole image."""
        return self.input.crop_size if self.inference.inference_window == "crop" else 0

    def learning_rate(self, stage: str) -> float:
        """Peak learning rate of ``stage`` (the stage table says which base it takes) after
        the scaling rule."""
        base = self.optimizer.base_lr
        if stages.get(stage).lr == "segmentation" and self.optimizer.segmentation_base_lr > 0:
            base = self.optimizer.segmentation_base_lr
        if self.optimizer.lr_scaling == "linear":
            return base * self.optimizer.global_batch / self.optimizer.reference_batch
        return base

    def to_json(self) -> str:
        """The config in sections, as a run saves it (``config.json``)."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    def digest(self) -> str:
        """16 hex digits over the flat settings, as config format v1 computed it: a setting added
        since enters only when it differs from its default, so a config's digest stays what
        it was."""
        flat = {k: v for k, v in self.flat().items() if not (k in ADDED_SINCE_V1 and v == ADDED_SINCE_V1[k])}
        return hashlib.sha256(json.dumps(flat, indent=2, sort_keys=True).encode()).hexdigest()[:16]

    def stamp(self) -> str:
        """16 hex digits over the settings that change what is computed (``RunConfig.BOOKKEEPING``
        and the name left out): what outputs made by this config are stamped with."""
        settings = {k: v for k, v in self.flat().items() if k not in BOOKKEEPING and k != "name"}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def resolve(key: str) -> tuple[str, str]:
    """``(section, field)`` of a flat or dotted setting name; an unknown one is a ValueError
    naming the closest known names."""
    if key in FLAT:
        return FLAT[key]
    section, _, field = key.partition(".")
    if section in SECTIONS and field in {f.name for f in dataclasses.fields(SECTIONS[section])}:
        return section, field
    known = list(FLAT) + [f"{s}.{f}" for s, f in FLAT.values()]
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; the sections are {', '.join(SECTIONS)}"
    raise UserError(f"unknown setting {key!r}{hint} (python -m dcsp_dist.config lists them all)")


def flatten(values: dict) -> dict:
    """A saved or given config in sections (``{"crf": {"iterations": 5}}``) or flat
    (``{"crf_iterations": 5}``, config format v1) as ``{flat name: value}``."""
    out = {}
    for key, value in values.items():
        if key in SECTIONS and isinstance(value, dict):
            cls = SECTIONS[key]
            out.update({cls.PREFIX + k: v for k, v in value.items()})
        else:
            out[key] = value
    return out


def preset(name: str) -> Config:
    """The preset ``name`` (``dcsp_dist/configs/<name>.py``, found by ``dcsp_dist.configs``)."""
    return configs.get(name)


# The annotations of the sections' fields, which are strings under ``from __future__ import annotations``.
_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "tuple": tuple}


def _coerce(field: dataclasses.Field, value: Any) -> Any:
    """Convert a command-line string (or JSON value) to the field's type."""
    kind = field.type if not isinstance(field.type, str) else _TYPES[field.type]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise UserError(f"{field.name} expects true/false, got {value!r}")
    if kind is tuple:
        if isinstance(value, (list, tuple)):
            items = value
        else:
            items = [v for v in str(value).strip("()[] ").split(",") if v.strip()]
        default = field.default
        elem = type(default[0]) if default else float
        return tuple(elem(v) for v in items)
    return kind(value)


def _field(key: str) -> dataclasses.Field:
    section, name = resolve(key)
    return next(f for f in dataclasses.fields(SECTIONS[section]) if f.name == name)


def _typed(values: dict) -> dict:
    """Flat or dotted names with string or JSON values -> their fields' types (an unknown
    name or a bad value is one line naming the setting)."""
    changes = {}
    for key, value in values.items():
        field = _field(key)
        try:
            changes[key] = _coerce(field, value)
        except (TypeError, ValueError) as exc:
            raise UserError(f"setting {key}={value!r}: {exc}") from None
    return changes


def make_config(preset_name: str = "voc_paper", overrides: dict | None = None,
                config_file: str | None = None) -> Config:
    """The named preset, then a JSON file's values (in sections or flat), then ``overrides``
    (flag values, flat or dotted names)."""
    cfg = preset(preset_name)
    values: dict = {}
    if config_file:
        try:
            with open(config_file) as fh:
                values.update(flatten(json.load(fh)))
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"--config-file {config_file}: {exc}") from None
    values.update(overrides or {})
    name = values.pop("name", cfg.name)
    return cfg.replace(name=name, **_typed(values))


def parse_overrides(pairs: list[str] | None) -> dict:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}`` with a clear error on a bad pair."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise UserError(f"--set {pair!r}: expected KEY=VALUE")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def explicit_settings(pairs: list[str] | None, config_file: str | None) -> set:
    """The flat names of the settings given on the command line or in the config file (not
    left to the preset)."""
    names = set(parse_overrides(pairs))
    if config_file:
        with open(config_file) as fh:
            names |= set(flatten(json.load(fh)))
    return {key if key == "name" else _flat_name(key) for key in names}


def _flat_name(key: str) -> str:
    section, field = resolve(key)
    return SECTIONS[section].PREFIX + field


def load_saved(path: str) -> Config:
    """A config saved as JSON by a run (``config.json`` in a stage directory), in sections or
    flat (config format v1). Settings this version does not know are ignored, and
    ones added since keep their defaults."""
    with open(path) as fh:
        values = flatten(json.load(fh))
    name = values.pop("name", "voc_paper")
    known = {k: v for k, v in values.items() if k in FLAT}
    return Config(name=name).replace(**{k: _coerce(_field(k), v) for k, v in known.items()})




def main(argv=None) -> int:
    """``python -m dcsp_dist.config [PRESET]``: every setting, by section, with the preset's value."""
    cfg = preset((argv if argv is not None else sys.argv[1:] or ["voc_paper"])[0])
    for section in SECTIONS:
        say(f"[{section}]")
        for f in dataclasses.fields(SECTIONS[section]):
            say(f"  {section}.{f.name} = {getattr(getattr(cfg, section), f.name)!r}"
                  f"   (flat: {SECTIONS[section].PREFIX}{f.name})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
