"""Train a classifier against occlusion (DOA, Wu, Tong and Vorobeychik 2020): every batch
replaced by its rectangular occlusion attack (ROA) examples at the current parameters.

    python -m train.doa --dataset=digits --smoke --workdir=runs/doa-demo
    python -m train.doa --dataset=mnist --data_dir=../shared/data/mnist \
        --train_split='test[:8000]' --eval_split='test[8000:]'          # 7 x 7, 30 epochs
"""
import sys

from jaxdefense.cli import defense_main


def main(argv=None) -> int:
    return defense_main("doa", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
