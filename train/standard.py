"""Train an undefended classifier (the baseline, and the source model for transfer attacks).

    python -m train.standard --dataset=digits --smoke --workdir=runs/std-demo
    python -m train.standard --dataset=mnist --data_dir=../shared/data/mnist \
        --train_split='test[:8000]' --eval_split='test[8000:]' --workdir=runs/std-mnist
"""
from __future__ import annotations

import json
import sys

from jaxdefense.cli import parse_config
from jaxdefense.config import CLASSIFIER_PRESETS
from jaxdefense.data import DatasetError
from jaxdefense.defenses.standard import StandardConfig, preset


def main(argv=None) -> int:
    cfg = parse_config(sys.argv[1:] if argv is None else argv, StandardConfig, preset,
                       CLASSIFIER_PRESETS, "python -m train.standard", __doc__)
    from jaxdefense.defenses.standard import train_and_evaluate
    try:
        result = train_and_evaluate(cfg)
    except (DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
