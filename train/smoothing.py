"""Randomized smoothing (Cohen et al. 2019): train the base classifier on Gaussian-noise-
augmented images, certify the smoothed classifier at L2 radii, and attack the soft smoothed
classifier white-box with EOT.

    python -m train.smoothing --dataset=digits --smoke --workdir=runs/smooth-demo
    python -m train.smoothing --dataset=mnist --data_dir=../shared/data/mnist \
        --train_split='test[:8000]' --eval_split='test[8000:]' --sigma=0.25 --n=10000
    python -m eval.certify --workdir=runs/smooth-demo --n=1000 --examples=100

--n (estimation draws, the reference's 100,000) dominates the certification time; scale it
down on a CPU (the certified radius shrinks with n: pA_lower <= alpha^(1/n)).
"""
import sys

from jaxdefense.cli import defense_main


def main(argv=None) -> int:
    return defense_main("smoothing", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
