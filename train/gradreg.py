"""Train a classifier with input-gradient regularization (Ross and Doshi-Velez 2018):
cross-entropy plus grad_weight times the squared L2 norm of its input gradient.

    python -m train.gradreg --dataset=digits --smoke --workdir=runs/gradreg-demo
    python -m train.gradreg --dataset=mnist --data_dir=../shared/data/mnist \
        --train_split='test[:8000]' --eval_split='test[8000:]' --grad_weight=100
"""
import sys

from jaxdefense.cli import defense_main


def main(argv=None) -> int:
    return defense_main("gradreg", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
