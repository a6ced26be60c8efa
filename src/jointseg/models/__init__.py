"""The segmentation network: ResNet U-Net, domain-specific BN, per-domain heads, projectors."""

from jointseg.models.checkpoint import (
    CheckpointError,
    load_model,
    load_state_checked,
    load_weights,
    save_model,
)
from jointseg.models.dsbn import DomainBatchNorm2d, DomainRouting, convert_to_domain_bn
from jointseg.models.network import TAP_NAMES, TAP_STRIDES, JointSegNet, SegOutput, build_model
from jointseg.models.pretrained import IMAGENET_URLS, PretrainedWeightsError, load_encoder_weights
from jointseg.models.resnet import ResNetEncoder

__all__ = [
    "IMAGENET_URLS",
    "TAP_NAMES",
    "TAP_STRIDES",
    "CheckpointError",
    "DomainBatchNorm2d",
    "DomainRouting",
    "JointSegNet",
    "PretrainedWeightsError",
    "ResNetEncoder",
    "SegOutput",
    "build_model",
    "convert_to_domain_bn",
    "load_encoder_weights",
    "load_model",
    "load_state_checked",
    "load_weights",
    "save_model",
]
