"""Train a classifier with input-gradient regularization (Ross and Doshi-Velez 2018):
cross-entropy plus grad_weight times the squared L2 norm of its input gradient.

    python -m train.gradreg --dataset=digits --smoke --workdir=runs/gradreg-demo
    python -m train.gradreg --dataset=mnist --data_dir=../shared/data/mnist \
        --train_split='test[:8000]' --eval_split='test[8000:]' --grad_weight=100
"""
from __future__ import annotations

import sys

from jaxdefense.cli import run_main
from jaxdefense.defenses.gradreg import PRESETS, GradRegConfig, preset


def main(argv=None) -> int:
    from jaxdefense.defenses.gradreg import train_and_evaluate
    return run_main(argv, GradRegConfig, preset, PRESETS, "python -m train.gradreg", __doc__,
                    train_and_evaluate)


if __name__ == "__main__":
    sys.exit(main())
