"""Adversarial training (PGD-AT, TRADES, MART) with the FSR module, or without it (--fsr=false).

    python -m train.fsr --dataset=cifar10 --arch=resnet18 --method=at
    python -m train.fsr --dataset=cifar10 --arch=vgg16_bn --method=trades
    python -m train.fsr --dataset=cifar10 --arch=wide_resnet --wrn_depth=34 --method=mart
    python -m train.fsr --dataset=digits --smoke --workdir=runs/fsr-demo
    python -m eval.robustness --workdir=runs/fsr --preset=fsr --attacks=fgsm,pgd,pgd100,cw
"""
from __future__ import annotations

import sys

from jaxdefense.cli import run_main
from jaxdefense.defenses.fsr.config import PRESETS, FSRConfig, preset


def main(argv=None) -> int:
    from jaxdefense.defenses.fsr.train import train_and_evaluate
    return run_main(argv, FSRConfig, preset, PRESETS, "python -m train.fsr", __doc__,
                    train_and_evaluate)


if __name__ == "__main__":
    sys.exit(main())
