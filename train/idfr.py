"""IDFR: train a target classifier (or take --target_workdir), craft the seen attacks against
it, train the input denoiser, then the feature restorer; report the papers' protocol and
the white-box numbers.

    python -m train.idfr --dataset=digits --smoke --workdir=runs/idfr-demo
    python -m train.idfr --dataset=mnist --data_dir=../shared/data/mnist \\
        --train_split='test[:8000]' --eval_split='test[8000:]' --workdir=runs/idfr-mnist
    python -m eval.robustness --workdir=runs/idfr-mnist --threats=target-only,whitebox
"""
import sys

from jaxdefense.cli import defense_main


def main(argv=None) -> int:
    return defense_main("idfr", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
