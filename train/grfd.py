"""Train GRFD (phases I-III) and report the served defense's robustness.

    python -m train.grfd --dataset=digits --smoke          # embedded data, about a minute
    python -m train.grfd --dataset=mnist --data_dir=../shared/data/mnist \
        --train_split='test[:8000]' --eval_split='test[8000:]'
    python -m train.grfd --dataset=cifar100 --workdir=runs/grfd-c100

`--dataset` picks the preset, `--smoke` shrinks every model and the data; every other
field of GRFDConfig is a flag (see below). Re-running with the same --workdir resumes.
"""
from __future__ import annotations

import json
import sys

from jaxdefense.cli import parse_config
from jaxdefense.data import DatasetError
from jaxdefense.defenses.grfd_config import PRESETS, GRFDConfig, preset


def main(argv=None) -> int:
    cfg = parse_config(sys.argv[1:] if argv is None else argv, GRFDConfig, preset, PRESETS,
                       "python -m train.grfd", __doc__)
    from jaxdefense.defenses.grfd_train import train_and_evaluate
    try:
        result = train_and_evaluate(cfg)
    except (DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
