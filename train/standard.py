"""Train an undefended classifier (the baseline, and the source model for transfer attacks).

    python -m train.standard --dataset=digits --smoke --workdir=runs/std-demo
    python -m train.standard --dataset=mnist --data_dir=../shared/data/mnist \
        --train_split='test[:8000]' --eval_split='test[8000:]' --workdir=runs/std-mnist
"""
from __future__ import annotations

import sys

from jaxdefense.cli import run_main
from jaxdefense.config import CLASSIFIER_PRESETS
from jaxdefense.defenses.standard import StandardConfig, preset


def main(argv=None) -> int:
    from jaxdefense.defenses.standard import train_and_evaluate
    return run_main(argv, StandardConfig, preset, CLASSIFIER_PRESETS, "python -m train.standard",
                    __doc__, train_and_evaluate)


if __name__ == "__main__":
    sys.exit(main())
