"""Shared fixtures: a small synthetic VOC-layout dataset and its TFRecords."""
import os

import pytest

# Tests run tiny models whose steps take milliseconds: keep Horovod's own 1 ms cycle rather
# than the 50 ms dcsp_dist.distributed picks for CPU-only ranks running full-size models.
os.environ.setdefault("HOROVOD_CYCLE_TIME", "1")

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")


@pytest.fixture(scope="session")
def synth_voc(tmp_path_factory):
    from data_tools import synth
    root = tmp_path_factory.mktemp("synth_voc")
    synth.generate(str(root), num_train=24, num_val=7, seed=3, workers=2)
    return root


@pytest.fixture(scope="session")
def synth_records(synth_voc, tmp_path_factory):
    """train: 24 images in 4 shards (saliency + masks); val: 7 images in 7 shards."""
    from data_tools import build, sources
    out = tmp_path_factory.mktemp("records")
    lists = synth_voc / "ImageSets" / "Segmentation"
    for split, shards in (("train", 4), ("val", 7)):
        ids = sources.read_id_list(str(lists / f"{split}.txt"))
        build.build(sources.VocSource(str(synth_voc), ids), split, str(out), num_shards=shards, workers=2,
                    progress=False)
    return out


@pytest.fixture(scope="session")
def voc_sample():
    """The real VOC image and its palette mask shipped in ../shared/data (or a copy in tests/data)."""
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
    for base in (here, SHARED):
        jpg = os.path.join(base, "2007_000129.jpg")
        if os.path.isfile(jpg):
            return jpg, os.path.join(base, "2007_000129.png")
    pytest.fail("2007_000129.jpg not found in tests/data")
