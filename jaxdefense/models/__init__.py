"""Flax models. All take float32 NHWC images in pixel units and normalize internally."""
from __future__ import annotations

from jaxdefense.models.lenet import AdvertorchLeNet5, LeNet5
from jaxdefense.models.resnet import ResNet18
from jaxdefense.models.vae import LVCVAE
from jaxdefense.models.vgg import VGG16BN
from jaxdefense.models.wide_resnet import WideResNet

CLASSIFIERS = {"lenet5": LeNet5, "lenet5_advertorch": AdvertorchLeNet5,
               "wide_resnet": WideResNet, "resnet18": ResNet18, "vgg16_bn": VGG16BN}


def build_classifier(arch: str, **kwargs):
    """A classifier by name (see CLASSIFIERS) with module attributes as kwargs."""
    if arch not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {arch!r}; choose one of {sorted(CLASSIFIERS)}")
    return CLASSIFIERS[arch](**kwargs)


__all__ = ["LeNet5", "AdvertorchLeNet5", "LVCVAE", "ResNet18", "VGG16BN", "WideResNet", "CLASSIFIERS",
           "build_classifier"]
