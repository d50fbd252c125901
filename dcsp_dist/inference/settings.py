"""How a trained model is run: which checkpoint, which settings when it has none saved, the
scales, the window and the CRF. ``evaluate``, ``predict`` and ``export`` build one from their
flags and never pass their argparse namespace further.

Light: the command lines build and check it before TensorFlow is imported (``load`` imports it)."""
from __future__ import annotations

import dataclasses

from dcsp_dist import config as config_lib
from dcsp_dist.core.errors import UserError


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
    checkpoint: str                  # run directory, stage directory or checkpoint prefix
    preset: str | None = None        # --config: only for a checkpoint without config.json
    scales: str | None = None        # --scales as given; default: the run's eval_scales
    window: str | None = None        # --window image|crop; default: the run's inference_window
    crf: bool = True                 # False: --no-crf, the network's argmax
    crf_workers: int | None = None   # --crf-workers; default: this rank's share of the node's cores

    @classmethod
    def from_args(cls, args, checkpoint: str | None = None) -> InferenceSettings:
        """The settings of a command line (``checkpoint`` for one of several --checkpoint)."""
        return cls(checkpoint=checkpoint if checkpoint is not None else args.checkpoint, preset=args.config,
                   scales=args.scales, window=args.window, crf=not getattr(args, "no_crf", False),
                   crf_workers=getattr(args, "crf_workers", None))

    def check(self) -> None:
        """What can be refused before any reading."""
        if self.crf_workers is not None and self.crf_workers < 0:
            raise UserError(f"--crf-workers {self.crf_workers}: expected 0 (sequential) or more")
        if self.scales is not None:
            config_lib.parse_scales(self.scales, ())

    def load(self) -> LoadedModel:
        """The trained model with these settings applied to the run's."""
        from dcsp_dist.inference.predictor import load_for_inference
        model, cfg, prefix = load_for_inference(self.checkpoint, self.preset)
        if self.window is not None:
            cfg = cfg.replace(inference_window=self.window)
        return LoadedModel(model, cfg, prefix, config_lib.parse_scales(self.scales, cfg.inference.eval_scales),
                           cfg.crf if self.crf else None)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    model: object               # the Keras model, weights restored
    cfg: config_lib.Config      # the run's settings, --window applied
    checkpoint: str             # the checkpoint prefix read
    scales: tuple               # the inference scales, first 1
    crf: config_lib.CRFConfig | None   # None: no CRF
