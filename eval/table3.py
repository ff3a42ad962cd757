"""GRFD's Table 3 from one command: train what is missing, attack every defense on the same
examples under the papers' protocol and the adaptive white-box attack, print the table.

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
measurement is kept in ROOT/columns/<column>.json as soon as it is done: run the same
command again after a stop and it attacks only the columns not yet measured (with the same
examples, attacks, runs and code).
"""
from __future__ import annotations

import argparse
import os
import sys

import jax

from jaxdefense import data, files, table3
from jaxdefense.checkpoint import CheckpointError
from jaxdefense.cli import setup_process


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m eval.table3", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=("mnist", "cifar10", "cifar100", "digits"))
    p.add_argument("--root", default="runs/table3", help="one workdir per defense under it")
    p.add_argument("--smoke", action="store_true",
                   help="tiny models and data, capped attacks (5 steps, 2 EOT draws)")
    p.add_argument("--epochs", type=int, default=None, help="epochs of every training phase "
                   "(default: each preset's; the paper's 150 for GRFD)")
    p.add_argument("--examples", type=int, default=500, help="attacked examples (default: 500)")
    p.add_argument("--max_steps", type=int, default=None,
                   help="cap on attack iterations (default: the preset's; --smoke: 5)")
    p.add_argument("--eot_samples", type=int, default=None,
                   help="EOT draws per gradient on randomized columns (default: 20; --smoke: 2)")
    p.add_argument("--eval_draws", type=int, default=None,
                   help="randomized columns count an example only if right on every one of "
                        f"this many draws (default: {table3.EVAL_DRAWS}; --smoke: 2)")
    p.add_argument("--checks", type=int, default=1,
                   help="sanity checks per column: white-box <= papers' protocol, accuracy "
                        "falls with eps, unbounded PGD reaches chance (default: 1)")
    p.add_argument("--attacks", default=None,
                   help="comma list of attacks (default: all): " + ",".join(table3.ATTACK_ORDER))
    p.add_argument("--columns", default=None,
                   help="comma list of columns (default: all): " +
                        ",".join(c.name for c in table3.COLUMNS))
    p.add_argument("--existing", default=None,
                   help="take finished workdirs: defense:path,... (standard, cdvae, smoothing, "
                        "gradreg, apegan, diffpure, grfd)")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--train_split", default=None, help="(default: each preset's)")
    p.add_argument("--eval_split", default=None, help="(default: each preset's)")
    p.add_argument("--limit_train", type=int, default=None)
    p.add_argument("--set", default=None, dest="overrides",
                   help="more training fields for every defense that has them: k=v,k=v "
                        "(e.g. n=10000,served_draws=8,lenet_width=0.5)")
    p.add_argument("--batch_size", type=int, default=256, help="attack batch (default: 256)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _user_overrides(text) -> dict:
    """--set k=v,k=v as typed values."""
    out = {}
    for item in filter(None, (text or "").split(",")):
        k, sep, v = item.partition("=")
        if not sep:
            raise ValueError(f"--set takes k=v pairs, got {item!r}")
        for kind in (int, float):
            try:
                v = kind(v)
                break
            except ValueError:
                continue
        out[k.strip()] = {"true": True, "false": False}.get(v, v) if isinstance(v, str) else v
    return out


def _overrides(args, user: dict) -> dict:
    """Every defense's training fields from the flags, then `user` (--set, parsed)."""
    out = {k: v for k, v in dict(data_dir=args.data_dir, train_split=args.train_split,
                                 eval_split=args.eval_split, limit_train=args.limit_train,
                                 seed=args.seed).items() if v is not None}
    if args.epochs is not None:
        out.update(epochs=args.epochs, target_epochs=args.epochs)
    # the defenses' own closing reports: few examples (the table attacks them all again)
    out.update(attack_examples=min(args.examples, 100), attack_max_steps=10)
    return {**out, **user}


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    setup_process()
    try:
        only = None
        if args.columns:
            only = {c.strip() for c in args.columns.split(",") if c.strip()}
            unknown = only - {c.name for c in table3.COLUMNS}
            if unknown:
                raise ValueError(f"unknown columns {sorted(unknown)}; choose from "
                                 f"{[c.name for c in table3.COLUMNS]}")
        existing = dict(item.split(":", 1) for item in
                        filter(None, (args.existing or "").split(",")))
        files.code_digest()       # the code this process runs, before a long training
        user = _user_overrides(args.overrides)
        overrides = _overrides(args, user)
        max_steps = args.max_steps if args.max_steps is not None else (5 if args.smoke else None)
        eot = args.eot_samples if args.eot_samples is not None else (2 if args.smoke else None)
        draws = args.eval_draws or (2 if args.smoke else table3.EVAL_DRAWS)
        if draws < 1 or (eot is not None and eot < 1):
            raise ValueError("--eval_draws and --eot_samples must be >= 1")
        names = None if args.attacks is None else [a.strip() for a in args.attacks.split(",")
                                                    if a.strip()]
        attacks = table3.attacks_for(args.dataset, max_steps, eot, names)
        plan = table3.plan_columns(args.root, args.dataset, args.smoke, overrides, existing,
                                   only, tuple(user), args.examples)
        workdirs = table3.train_columns(plan)
        from jaxdefense.checkpoint import load_config
        std = load_config(workdirs["standard"])[1]
        ds = data.load(args.dataset, std["eval_split"], std["data_dir"]).take(args.examples)
    except (CheckpointError, data.DatasetError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    columns = table3.evaluate(workdirs, args.dataset, ds.x, ds.y, attacks,
                              jax.random.key(args.seed), args.batch_size, only=only,
                              cache_dir=os.path.join(args.root, "columns"), eval_draws=draws,
                              checks=bool(args.checks),
                              check_pgd=table3.attacks_for(args.dataset, max_steps, eot,
                                                           ["pgd"])["pgd"])
    values = table3.paper_values(args.dataset)
    result = dict(dataset=args.dataset, examples=len(ds), split=std["eval_split"],
                  preset=table3.preset_for(args.dataset), attacks=attacks,
                  eot_samples=next(iter(attacks.values()))["eot_samples"], eval_draws=draws,
                  max_steps=max_steps, columns=columns, paper_values=values,
                  difference=table3.differences(columns, values["values"],
                                                len(attacks) == len(table3.ATTACK_ORDER)))
    text = table3.markdown(result)
    print("\n" + text)
    os.makedirs(args.root, exist_ok=True)
    files.write_text(os.path.join(args.root, "table3.md"), text)
    files.write_json(os.path.join(args.root, "table3.json"), result)
    print(f"wrote {table3.figure(os.path.join(args.root, 'table3.png'), result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
