"""ARN: train a target classifier (or take --target_workdir), craft the seen attacks against
it, train the purifier, report the papers' protocol and the white-box numbers.

    python -m train.arn --dataset=digits --smoke --workdir=runs/arn-demo
    python -m train.arn --dataset=mnist --data_dir=../shared/data/mnist \\
        --train_split='test[:8000]' --eval_split='test[8000:]' --workdir=runs/arn-mnist
    python -m eval.robustness --workdir=runs/arn-mnist --threats=target-only,whitebox
"""
from __future__ import annotations

import sys

from jaxdefense.cli import run_main
from jaxdefense.defenses.arn import PRESETS, ARNConfig, preset


def main(argv=None) -> int:
    from jaxdefense.defenses.arn import train_and_evaluate
    return run_main(argv, ARNConfig, preset, PRESETS, "python -m train.arn", __doc__,
                    train_and_evaluate)


if __name__ == "__main__":
    sys.exit(main())
