"""GRFD's Table 3: `python -m eval.table3 ARGS` is `python -m eval.table --paper=grfd
--table=3 ARGS` (train what is missing, attack every defense on the same examples under the
papers' protocol and the adaptive white-box attack, print the table; docs/table3.md).

    python -m eval.table3 --dataset=digits --smoke --root=runs/table3-demo
    python -m eval.table3 --dataset=mnist --root=runs/table3 --data_dir=../shared/data/mnist \
        --train_split='test[:8000]' --eval_split='test[8000:]' --epochs=3 --examples=500
"""
from __future__ import annotations

import sys

from eval import table


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return table.main(["--paper=grfd", "--table=3", *argv])


if __name__ == "__main__":
    sys.exit(main())
