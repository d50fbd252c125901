"""The paper's settings: ResNet-101 from ImageNet, batch 10, 30k + 10k + 10k steps.

Launch: ``horovodrun -np 10 python -m dcsp_dist.train --stage all --config voc_paper
--data records/voc12 --workdir runs/voc`` (or -np 2/5 to keep global batch 10; with
-np 8 set ``--set global_batch=16 --set lr_scaling=linear --set warmup_steps=500``).
Expected: 60.8 mIoU on VOC 2012 val with CRF, 61.9 on test.

Every default of ``dcsp_dist.config`` is the paper's (or the authors' code's, where the two
differ: docs/conformance.md); this preset adds VOC's class count, background plus 20 object
classes (the records' class list decides it when training; see Config.with_classes).
"""
from dcsp_dist.config import Config, ModelConfig


def get_config() -> Config:
    return Config(model=ModelConfig(num_classes=21))
