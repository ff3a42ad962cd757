"""GRFD's Table 3 from one command (`python -m eval.table --paper=grfd --table=3`): train what
is missing, attack every defense on the same examples under the papers' protocol and the
adaptive white-box attack, print the table.

    python -m eval.table3 --dataset=digits --smoke --root=runs/table3-demo
    python -m eval.table3 --dataset=mnist --root=runs/table3 --data_dir=../shared/data/mnist \
        --train_split='test[:8000]' --eval_split='test[8000:]' --epochs=3 --examples=500
    python -m eval.table3 --dataset=cifar10 --root=runs/table3-c10          # the paper's schedule

Before anything trains, every column's preset and flags are checked for the dataset (a
workdir that holds a run with other settings, a --set field no column has, an --existing
purifier in front of another model, training rows among the attacked examples: all refused).
Each column trains in ROOT/<defense> (resuming a run that stopped; a finished workdir is
taken as it is when its settings match), or comes from --existing=grfd:runs/grfd-mnist,...
The table (accuracy in %, the published value and the difference in parentheses) goes to
stdout and ROOT/table3.md, with ROOT/table3.json and ROOT/table3.png. Each column's
measurement goes to the record (--record; docs/record.md) batch by batch: run the same
command again after a stop and it attacks only what is not yet measured.
"""
from __future__ import annotations

import argparse
import sys

from eval import table
from jaxdefense import preemption
from jaxdefense.cli import setup_process
from jaxdefense.tables.grfd import ATTACK_ORDER, RUNS, SYSTEMS, TABLE3


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m eval.table3", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    table.add_arguments(p)
    for action in p._actions:        # name the choices in this table's help
        if action.dest == "attacks":
            action.help = "comma list of attacks (default: all): " + ",".join(ATTACK_ORDER)
        elif action.dest == "columns":
            action.help = ("comma list of columns (default: all): " +
                           ",".join(s.name for s in SYSTEMS))
        elif action.dest == "existing":
            action.help = f"take finished workdirs: defense:path,... ({', '.join(RUNS)})"
        elif action.dest == "root":
            action.default, action.help = "runs/table3", "one workdir per defense under it"
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.argv = ["--paper=grfd", "--table=3", *argv]    # as the record names the command
    setup_process()
    return preemption.resumable(table.run, TABLE3, args)


if __name__ == "__main__":
    sys.exit(main())
