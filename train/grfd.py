"""Train GRFD (phases I-III) and report the served defense's robustness.

    python -m train.grfd --dataset=digits --smoke          # embedded data, about a minute
    python -m train.grfd --dataset=mnist --data_dir=../shared/data/mnist \
        --train_split='test[:8000]' --eval_split='test[8000:]'
    python -m train.grfd --dataset=cifar100 --workdir=runs/grfd-c100

`--dataset` picks the preset, `--smoke` shrinks every model and the data; every other
field of GRFDConfig is a flag (see below). Re-running with the same --workdir resumes.
"""
import sys

from jaxdefense.cli import defense_main


def main(argv=None) -> int:
    return defense_main("grfd", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
