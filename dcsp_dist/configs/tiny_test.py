"""For tests and smoke runs: the demo's model made narrower (width 4, 64-pixel crops), a few
steps per stage, a checkpoint every 2 steps, and no CRF in the adapt stage (fast)."""
from dcsp_dist.config import Config
from dcsp_dist.configs import synthetic_demo


def get_config() -> Config:
    return synthetic_demo.get_config().replace(
        name="tiny_test", base_width=4, crop_size=64, global_batch=4,
        attention_steps=4, segmentation_steps=3, adapt_segmentation_steps=3,
        checkpoint_every=2, log_every=1, image_summary_every=2, shuffle_buffer=16, adapt_crf=False)
