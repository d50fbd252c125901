import importlib
import json
import os
import re

import pytest

from dcsp_dist import config


def test_paper_defaults_match_spec():
    cfg = config.make_config("voc_paper")
    assert cfg.model.blocks == (3, 4, 23, 3) and cfg.model.output_stride == 8 and cfg.input.crop_size == 321
    opt = cfg.optimizer
    assert (opt.base_lr, opt.momentum, opt.weight_decay, opt.poly_power) == (1e-3, 0.9, 5e-4, 0.9)
    assert (opt.lr_mult_backbone, opt.lr_mult_head_kernel, opt.lr_mult_head_bias) == (1, 10, 20)
    sched = cfg.schedule
    assert (sched.attention_steps, sched.segmentation_steps, sched.adapt_segmentation_steps) == (30000, 10000, 10000)
    assert cfg.optimizer.global_batch == 10 and cfg.inference.bg_threshold == 0.4 and cfg.inference.cue_scales == (1.0, 0.75, 0.5)
    assert not cfg.schedule.attention_trains_backbone
    assert cfg.inference.upsample_space == "logits" and not cfg.schedule.adapt_crf    # the authors' adapt step and evaluation
    assert cfg.inference.inference_window == "image" and cfg.inference_window_size == 0   # the authors: whole images
    demo = config.make_config("synthetic_demo")
    assert (demo.inference.inference_window, demo.inference_window_size) == ("crop", demo.input.crop_size)


def test_overrides_are_typed(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"attention_steps": 7, "flip": False}))
    cfg = config.make_config("synthetic_demo", config.parse_overrides(["cue_scales=1,0.5", "xla=true", "deterministic=false"]),
                             str(path))
    assert cfg.schedule.attention_steps == 7 and cfg.input.flip is False and cfg.model.xla is True
    assert cfg.inference.cue_scales == (1.0, 0.5)
    saved = tmp_path / "saved.json"
    saved.write_text(cfg.to_json())
    assert config.load_saved(str(saved)) == cfg


@pytest.mark.parametrize("bad,needle", [(["nosuch=1"], "unknown setting 'nosuch'"),
                                        (["flip=maybe"], "flip"), (["attention_steps"], "KEY=VALUE"),
                                        (["upsample_space=pixels"], "upsample_space must be one of logits, probabilities"),
                                        (["inference_window=tiles"], "inference_window must be one of image, crop"),
                                        (["xla=true", "deterministic=true"], "xla=true needs deterministic=false")])
def test_bad_overrides_name_the_setting(bad, needle):
    with pytest.raises(ValueError, match=needle):
        config.make_config("voc_paper", config.parse_overrides(bad))


def test_batch_split_and_scaling_rule():
    cfg = config.make_config("voc_paper")
    assert cfg.per_rank_batch(2) == 5 and cfg.per_rank_batch(10) == 1
    with pytest.raises(ValueError, match="does not divide over 8 ranks"):
        cfg.per_rank_batch(8)
    big = config.make_config("voc_paper", {"global_batch": "16", "lr_scaling": "linear"})
    assert big.learning_rate("attention") == pytest.approx(1e-3 * 16 / 10)
    assert cfg.digest() != big.digest()


FIXTURES = os.path.join(os.path.dirname(__file__), "data", "config_v1")


@pytest.mark.parametrize("preset,sets", [("synthetic_demo", {"seed": "0"}), ("voc_paper", {}),
                                         ("tiny_test", {"attention_steps": "60", "crf_label_margin": "3"})])
def test_configs_saved_flat_by_earlier_versions_still_load(preset, sets):
    """config.json files as the flat Config wrote them load to today's config, whose flat
    settings and digest are exactly theirs."""
    path = os.path.join(FIXTURES, f"{preset}.json")
    cfg = config.make_config(preset, sets)
    assert config.load_saved(path) == cfg
    saved = json.load(open(path))
    assert {k: v for k, v in cfg.flat().items() if k in saved} == saved
    assert {k: cfg.flat()[k] for k in set(cfg.flat()) - set(saved)} == config.ADDED_SINCE_V1   # at their defaults
    assert cfg.digest() == json.load(open(os.path.join(FIXTURES, "digests.json")))[preset]


def test_sections_dotted_and_flat_names(tmp_path):
    cfg = config.make_config("voc_paper", config.parse_overrides(["crf.iterations=5", "attention_steps=300",
                                                                  "crf_label_margin=2", "model.output_stride=16"]))
    assert cfg.crf.iterations == 5 and cfg.crf.label_margin == 2.0
    assert cfg.schedule.attention_steps == 300 and cfg.model.output_stride == 16
    # flat names live at the edges (--set, old files, resolve); code reads sections only
    assert config.resolve("crf_iterations") == config.resolve("crf.iterations") == ("crf", "iterations")
    assert config.resolve("attention_steps") == ("schedule", "attention_steps")
    assert not hasattr(cfg, "crf_iterations") and not hasattr(cfg, "attention_steps")
    saved = json.loads(cfg.to_json())
    assert saved["crf"]["iterations"] == 5 and saved["schedule"]["attention_steps"] == 300 and "crf_iterations" not in saved
    path = tmp_path / "config.json"
    path.write_text(cfg.to_json())
    assert config.load_saved(str(path)) == cfg
    # a --config-file may be in sections too, and names what it sets
    given = tmp_path / "given.json"
    given.write_text(json.dumps({"crf": {"iterations": 3}, "num_classes": 5}))
    assert config.make_config("voc_paper", config_file=str(given)).crf.iterations == 3
    assert config.explicit_settings(["crf.label_margin=1"], str(given)) == {"crf_iterations", "num_classes",
                                                                           "crf_label_margin"}


@pytest.mark.parametrize("key,closest", [("crf.iteration", "crf.iterations"), ("atention_steps", "attention_steps"),
                                         ("model.outputstride", "model.output_stride")])
def test_an_unknown_name_says_the_closest(key, closest):
    with pytest.raises(ValueError, match=f"unknown setting '{re.escape(key)}'; did you mean {re.escape(closest)}"):
        config.make_config("voc_paper", {key: "1"})


def test_each_section_checks_itself():
    with pytest.raises(ValueError, match="crf_iterations must be >= 0"):
        config.CRFConfig(iterations=-1)
    with pytest.raises(ValueError, match="max_scale"):
        config.InputConfig(min_scale=1.2, max_scale=1.0)
    with pytest.raises(ValueError, match="stall_timeout must be >= 0"):
        config.make_config("tiny_test", {"run.stall_timeout": "-1"})
    assert config.make_config("voc_paper").crf == config.CRFConfig()     # the CRF takes its section as it is


def test_presets_are_one_file_each():
    from dcsp_dist import configs
    assert set(configs.names()) == {"voc_paper", "synthetic_demo", "own_data", "tiny_test"}
    for name in configs.names():
        module = importlib.import_module(f"dcsp_dist.configs.{name}")
        assert len(module.__doc__) > 100 and config.preset(name).name == name


def test_the_voc_preset_has_a_class_for_each_of_voc_s_names():
    from dcsp_dist.data.records import VOC_CLASSES
    assert config.preset("voc_paper").model.num_classes == len(VOC_CLASSES) == 21


def test_scales_follow_one_rule_on_the_command_line_and_in_the_settings():
    assert config.parse_scales("1,0.75,0.5", ()) == (1.0, 0.75, 0.5)
    for bad in ("1,1.5", "0.5,1", "1,0"):
        with pytest.raises(ValueError, match="--scales"):
            config.parse_scales(bad, ())
        with pytest.raises(ValueError, match="eval_scales must start with 1 and lie in"):
            config.make_config("voc_paper", {"eval_scales": bad})
