"""ARN: train a target classifier (or take --target_workdir), craft the seen attacks against
it, train the purifier, report the papers' protocol and the white-box numbers.

    python -m train.arn --dataset=digits --smoke --workdir=runs/arn-demo
    python -m train.arn --dataset=mnist --data_dir=../shared/data/mnist \\
        --train_split='test[:8000]' --eval_split='test[8000:]' --workdir=runs/arn-mnist
    python -m eval.robustness --workdir=runs/arn-mnist --threats=target-only,whitebox
"""
import sys

from jaxdefense.cli import defense_main


def main(argv=None) -> int:
    return defense_main("arn", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
