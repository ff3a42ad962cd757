"""Train CD-VAE (class-disentangled VAE, Yang et al. 2021): the VAE and a classifier jointly on
reconstruction + KL + classification of x - G(x), then a target on x - G(x), served as
target(x - G(x)). GRFD's phases without the rectification head and L_rb.

    python -m train.cdvae --dataset=digits --smoke --workdir=runs/cdvae-demo
    python -m train.cdvae --dataset=mnist --data_dir=../shared/data/mnist \
        --train_split='test[:8000]' --eval_split='test[8000:]' --workdir=runs/cdvae-mnist
    python -m train.cdvae --dataset=cifar10 --workdir=runs/cdvae-c10
"""
from __future__ import annotations

import sys

from jaxdefense.cli import run_main
from jaxdefense.defenses.cdvae import PRESETS, CDVAEConfig, preset


def main(argv=None) -> int:
    from jaxdefense.defenses.cdvae import train_and_evaluate
    return run_main(argv, CDVAEConfig, preset, PRESETS, "python -m train.cdvae", __doc__,
                    train_and_evaluate)


if __name__ == "__main__":
    sys.exit(main())
