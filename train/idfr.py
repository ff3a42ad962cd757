"""IDFR: train a target classifier (or take --target_workdir), craft the seen attacks against
it, train the input denoiser, then the feature restorer; report the papers' protocol and
the white-box numbers.

    python -m train.idfr --dataset=digits --smoke --workdir=runs/idfr-demo
    python -m train.idfr --dataset=mnist --data_dir=../shared/data/mnist \\
        --train_split='test[:8000]' --eval_split='test[8000:]' --workdir=runs/idfr-mnist
    python -m eval.robustness --workdir=runs/idfr-mnist --threats=target-only,whitebox
"""
from __future__ import annotations

import sys

from jaxdefense.cli import run_main
from jaxdefense.defenses.idfr import PRESETS, IDFRConfig, preset


def main(argv=None) -> int:
    from jaxdefense.defenses.idfr import train_and_evaluate
    return run_main(argv, IDFRConfig, preset, PRESETS, "python -m train.idfr", __doc__,
                    train_and_evaluate)


if __name__ == "__main__":
    sys.exit(main())
