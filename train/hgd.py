"""Train HGD, the high-level representation guided denoiser (Liao et al. 2018), in front of a
frozen target: x + D(x) trained so that the target's embedding of it matches the clean one.

    python -m train.hgd --dataset=digits --smoke --workdir=runs/hgd-demo
    python -m train.hgd --dataset=mnist --data_dir=../shared/data/mnist \
        --train_split='test[:8000]' --eval_split='test[8000:]' --target_workdir=runs/standard \
        --seen_attacks=pgd,pgd_targeted                 # ARN's HGD_PP row
"""
import sys

from jaxdefense.cli import defense_main


def main(argv=None) -> int:
    return defense_main("hgd", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
