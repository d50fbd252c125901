"""Small enough for a 2-core CPU: a narrow ResNet (1,1,1,1) trained from scratch.

Launch: ``make demo SEED=0`` (``horovodrun -np 2 python -m dcsp_dist.train --stage all
--config synthetic_demo --set seed=0 ...``). Expected: val mIoU >= 0.65 with CRF for any
seed, the adaptation round within a point of the first segmentation stage or above.

- With no ImageNet features the attention stage trains the backbone too, at a higher rate
  (1e-2) than the segmentation stages (3e-3).
- On its 160-pixel images the stride-8 grid is coarse, so the segmentation outputs are
  interpolated as probabilities (``inference.upsample_space``: interpolated logits shrink
  objects towards background, and the adaptation round compounded it) and the adapted cues
  are refined by the dense CRF (``schedule.adapt_crf``).
- The network sees crop-size windows at inference as in training
  (``inference.inference_window``: on images much larger than the 113-pixel crops,
  whole-image inference was 6 points worse and the adaptation round learned its errors).

All three are options, not the authors' steps: see docs/conformance.md. Its frozen batch
norm has no statistics (it is the identity); ``--set normalization=group_norm`` trains group
norm instead, which learned the attention stage more slowly here (see docs/demo.md).
Deterministic: the same seed gives the same run.
"""
from dcsp_dist.config import (
    Config,
    CRFConfig,
    InferenceConfig,
    InputConfig,
    ModelConfig,
    OptimizerConfig,
    RunConfig,
    ScheduleConfig,
)


def get_config() -> Config:
    return Config(
        name="synthetic_demo",
        # the synthetic set's classes (data_tools.synth): background + 20 (VOC's names)
        model=ModelConfig(num_classes=21, blocks=(1, 1, 1, 1), base_width=16, init_weights="none", head_init_std=0.01),
        input=InputConfig(crop_size=113, min_scale=0.75, max_scale=1.25, shuffle_buffer=200),
        optimizer=OptimizerConfig(global_batch=10, base_lr=1e-2, segmentation_base_lr=3e-3),
        schedule=ScheduleConfig(attention_steps=400, segmentation_steps=600, adapt_segmentation_steps=400,
                                attention_trains_backbone=True, adapt_crf=True),
        inference=InferenceConfig(cue_scales=(1.0, 0.75), eval_scales=(1.0, 0.75), upsample_space="probabilities",
                                  inference_window="crop"),
        crf=CRFConfig(bilateral_sxy=20.0),
        run=RunConfig(deterministic=True, checkpoint_every=200, log_every=25, image_summary_every=100))
