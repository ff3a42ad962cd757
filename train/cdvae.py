"""Train CD-VAE (class-disentangled VAE, Yang et al. 2021): the VAE and a classifier jointly on
reconstruction + KL + classification of x - G(x), then a target on x - G(x), served as
target(x - G(x)). GRFD's phases without the rectification head and L_rb.

    python -m train.cdvae --dataset=digits --smoke --workdir=runs/cdvae-demo
    python -m train.cdvae --dataset=mnist --data_dir=../shared/data/mnist \
        --train_split='test[:8000]' --eval_split='test[8000:]' --workdir=runs/cdvae-mnist
    python -m train.cdvae --dataset=cifar10 --workdir=runs/cdvae-c10
"""
import sys

from jaxdefense.cli import defense_main


def main(argv=None) -> int:
    return defense_main("cdvae", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
