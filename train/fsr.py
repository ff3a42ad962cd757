"""Adversarial training (PGD-AT, TRADES, MART) with the FSR module, or without it (--fsr=false).

    python -m train.fsr --dataset=cifar10 --arch=resnet18 --method=at
    python -m train.fsr --dataset=cifar10 --arch=vgg16_bn --method=trades
    python -m train.fsr --dataset=cifar10 --arch=wide_resnet --wrn_depth=34 --method=mart
    python -m train.fsr --dataset=digits --smoke --workdir=runs/fsr-demo
    python -m eval.robustness --workdir=runs/fsr --preset=fsr --attacks=fgsm,pgd,pgd100,cw
"""
import sys

from jaxdefense.cli import defense_main


def main(argv=None) -> int:
    return defense_main("fsr", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
