"""Models: networks only; no losses, optimisers or ranks in here."""
from dcsp_dist.models.deeplab import (
                                      ParameterGroups,
                                      attention_head,
                                      backbone,
                                      build_model,
                                      head_layers,
                                      parameter_groups,
)
from dcsp_dist.models.resnet import RESNET101, build_resnet
from dcsp_dist.models.weights import export_caffe_dict, load_caffe_dict, load_imagenet_backbone, load_initial_weights

__all__ = ["RESNET101", "ParameterGroups", "attention_head", "backbone", "build_model", "build_resnet",
           "export_caffe_dict", "head_layers", "load_caffe_dict", "load_imagenet_backbone",
           "load_initial_weights", "parameter_groups"]
