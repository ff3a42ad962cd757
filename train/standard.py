"""Train an undefended classifier (the baseline, and the source model for transfer attacks).

    python -m train.standard --dataset=digits --smoke --workdir=runs/std-demo
    python -m train.standard --dataset=mnist --data_dir=../shared/data/mnist \
        --train_split='test[:8000]' --eval_split='test[8000:]' --workdir=runs/std-mnist
"""
import sys

from jaxdefense.cli import defense_main


def main(argv=None) -> int:
    return defense_main("standard", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
