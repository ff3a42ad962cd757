"""The project's WideResNet in PyTorch, with its weights copied from flax: for benchmarks
against torchattacks on the same weights (bench/gpu.py --torch). torch is a benchmark-only
dependency.

Same layers in the same order (pre-activation blocks, normalization inside the model). One
detail matters for equal logits: flax's 'SAME' padding of a 3x3 stride-2 convolution on an
even input pads 0 before and 1 after, torch's padding=1 pads 1 on both sides, so the port
pads (0, 1) explicitly there.
"""
from __future__ import annotations

import jax
import numpy as np
import torch
import torch.nn as tnn
import torch.nn.functional as F


class Block(tnn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        self.bn1 = tnn.BatchNorm2d(cin)
        self.conv1 = tnn.Conv2d(cin, cout, 3, stride, padding=0 if stride == 2 else 1,
                                bias=False)
        self.bn2 = tnn.BatchNorm2d(cout)
        self.conv2 = tnn.Conv2d(cout, cout, 3, 1, padding=1, bias=False)
        self.shortcut = (tnn.Conv2d(cin, cout, 1, stride, bias=False)
                         if cin != cout or stride != 1 else None)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        short = self.shortcut(out) if self.shortcut is not None else x
        y = F.pad(out, (0, 1, 0, 1)) if self.stride == 2 else out
        y = self.conv2(F.relu(self.bn2(self.conv1(y))))     # dropout: identity in eval
        return y + short


class TorchWRN(tnn.Module):
    """WRN-depth-widen on NCHW images in [0, 1] (normalized inside, as the flax model)."""

    def __init__(self, depth: int, widen: int, num_classes: int, mean, std):
        super().__init__()
        n = (depth - 4) // 6
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.stem = tnn.Conv2d(3, 16, 3, 1, padding=1, bias=False)
        blocks, cin = [], 16
        for i, c in enumerate((16 * widen, 32 * widen, 64 * widen)):
            for j in range(n):
                blocks.append(Block(cin, c, 2 if (i > 0 and j == 0) else 1))
                cin = c
        self.blocks = tnn.Sequential(*blocks)
        self.bn = tnn.BatchNorm2d(cin)
        self.head = tnn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.stem((x - self.mean) / self.std)
        x = F.relu(self.bn(self.blocks(x)))
        return self.head(x.mean((2, 3)))


def _conv(w: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))   # HWIO -> OIHW


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a))                      # a writable copy


def _bn(bn: tnn.BatchNorm2d, params: dict, stats: dict) -> None:
    bn.weight.copy_(_t(params["scale"]))
    bn.bias.copy_(_t(params["bias"]))
    bn.running_mean.copy_(_t(stats["mean"]))
    bn.running_var.copy_(_t(stats["var"]))


def from_flax(model, variables) -> TorchWRN:
    """A TorchWRN in eval mode holding the flax WideResNet `model`'s `variables`."""
    p = jax.tree.map(np.asarray, variables["params"])
    s = jax.tree.map(np.asarray, variables["batch_stats"])
    net = TorchWRN(model.depth, model.widen, model.num_classes, model.mean, model.std)
    with torch.no_grad():
        net.stem.weight.copy_(_conv(p["Conv_0"]["kernel"]))
        for i, block in enumerate(net.blocks):
            bp, bs = p[f"WideBlock_{i}"], s[f"WideBlock_{i}"]
            convs = ["Conv_0", "Conv_1", "Conv_2"] if block.shortcut is not None else \
                [None, "Conv_0", "Conv_1"]
            if block.shortcut is not None:
                block.shortcut.weight.copy_(_conv(bp[convs[0]]["kernel"]))
            block.conv1.weight.copy_(_conv(bp[convs[1]]["kernel"]))
            block.conv2.weight.copy_(_conv(bp[convs[2]]["kernel"]))
            _bn(block.bn1, bp["BatchNorm_0"], bs["BatchNorm_0"])
            _bn(block.bn2, bp["BatchNorm_1"], bs["BatchNorm_1"])
        _bn(net.bn, p["BatchNorm_0"], s["BatchNorm_0"])
        net.head.weight.copy_(torch.from_numpy(np.ascontiguousarray(p["head"]["kernel"].T)))
        net.head.bias.copy_(_t(p["head"]["bias"]))
    return net.eval()


def max_logit_gap(model, variables, net: TorchWRN, x: np.ndarray, device="cpu") -> float:
    """Largest |flax logits - torch logits| on NHWC images x."""
    ours = np.asarray(model.apply(variables, x, train=False))
    with torch.no_grad():
        theirs = net.to(device)(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device))
    return float(np.max(np.abs(ours - theirs.cpu().numpy())))
