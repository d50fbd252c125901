import json

import pytest

from dcsp_dist import config


def test_paper_defaults_match_spec():
    cfg = config.make_config("voc_paper")
    assert cfg.blocks == (3, 4, 23, 3) and cfg.output_stride == 8 and cfg.crop_size == 321
    assert (cfg.base_lr, cfg.momentum, cfg.weight_decay, cfg.poly_power) == (1e-3, 0.9, 5e-4, 0.9)
    assert (cfg.lr_mult_backbone, cfg.lr_mult_head_kernel, cfg.lr_mult_head_bias) == (1, 10, 20)
    assert (cfg.attention_steps, cfg.segmentation_steps, cfg.adapt_segmentation_steps) == (30000, 10000, 10000)
    assert cfg.global_batch == 10 and cfg.bg_threshold == 0.4 and cfg.cue_scales == (1.0, 0.75, 0.5)
    assert not cfg.attention_trains_backbone
    assert cfg.upsample_space == "logits" and not cfg.adapt_crf    # the authors' adapt step and evaluation
    assert cfg.inference_window == "image" and cfg.inference_window_size == 0   # the authors: whole images
    demo = config.make_config("synthetic_demo")
    assert (demo.inference_window, demo.inference_window_size) == ("crop", demo.crop_size)


def test_overrides_are_typed(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"attention_steps": 7, "flip": False}))
    cfg = config.make_config("synthetic_demo", config.parse_overrides(["cue_scales=1,0.5", "xla=true"]), str(path))
    assert cfg.attention_steps == 7 and cfg.flip is False and cfg.xla is True and cfg.cue_scales == (1.0, 0.5)
    saved = tmp_path / "saved.json"
    saved.write_text(cfg.to_json())
    assert config.load_saved(str(saved)) == cfg


@pytest.mark.parametrize("bad,needle", [(["nosuch=1"], "unknown setting 'nosuch'"),
                                        (["flip=maybe"], "flip"), (["attention_steps"], "KEY=VALUE"),
                                        (["upsample_space=pixels"], "upsample_space must be one of logits, probabilities"),
                                        (["inference_window=tiles"], "inference_window must be one of image, crop")])
def test_bad_overrides_name_the_setting(bad, needle):
    with pytest.raises(ValueError, match=needle):
        config.make_config("voc_paper", config.parse_overrides(bad))


def test_batch_split_and_scaling_rule():
    cfg = config.make_config("voc_paper")
    assert cfg.per_rank_batch(2) == 5 and cfg.per_rank_batch(10) == 1
    with pytest.raises(ValueError, match="does not divide over 8 ranks"):
        cfg.per_rank_batch(8)
    big = config.make_config("voc_paper", {"global_batch": "16", "lr_scaling": "linear"})
    assert big.learning_rate() == pytest.approx(1e-3 * 16 / 10)
    assert cfg.digest() != big.digest()
