"""A paper's table from one command: train what is missing, attack every system on the same
examples under the paper's protocol and under the adaptive white-box attack, print the
table with the published value beside each measured cell.

    python -m eval.table --paper=grfd --table=3 --dataset=digits --smoke --root=runs/t3-demo
    python -m eval.table --paper=arn --table=1 --dataset=mnist --root=runs/arn \\
        --data_dir=../shared/data/mnist --train_split='test[:8000]' \\
        --eval_split='test[8000:]' --examples=1000

Tables: grfd 3 (also `python -m eval.table3`), arn 1, 2, 3 and 4 (`tables.TABLES`).
Before anything trains, every run's preset and flags are checked for the dataset (a
workdir that holds a run with other settings, a --set field no run has, an --existing
purifier in front of another model, training rows among the attacked examples: all
refused). Each run trains in ROOT/<run> (resuming a run that stopped; a finished workdir is
taken as it is when its settings match), or comes from --existing=RUN:PATH,... The table
goes to stdout and ROOT/<stem>.md, with ROOT/<stem>.json and ROOT/<stem>.png (stem: table3
for GRFD's Table 3, else PAPER-tableN). Each system's measurement is kept in
ROOT/columns/<system>.json as soon as it is done: the same command after a stop attacks
only the systems not yet measured (with the same examples, attacks, runs and code).
"""
from __future__ import annotations

import argparse
import os
import sys

import jax

from jaxdefense import data, files, preemption, robustness, tables
from jaxdefense.checkpoint import CheckpointError
from jaxdefense.cli import setup_process
from jaxdefense.tables import engine


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, choices=("mnist", "cifar10", "cifar100", "digits"))
    p.add_argument("--root", default=None,
                   help="one workdir per run under it (default: runs/<stem>)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny models and data, capped attacks (5 steps, 2 EOT draws)")
    p.add_argument("--epochs", type=int, default=None, help="epochs of every training phase "
                   "(default: each preset's)")
    p.add_argument("--examples", type=int, default=500, help="attacked examples (default: 500)")
    p.add_argument("--max_steps", type=int, default=None,
                   help="cap on attack iterations (default: the table's; --smoke: 5)")
    p.add_argument("--eot_samples", type=int, default=None,
                   help="EOT draws per gradient on randomized systems (default: 20; --smoke: 2)")
    p.add_argument("--eval_draws", type=int, default=None,
                   help="randomized systems count an example only if right on every one of "
                        f"this many draws (default: {engine.EVAL_DRAWS}; --smoke: 2)")
    p.add_argument("--checks", type=int, default=1,
                   help="sanity checks per system: white-box <= papers' protocol, accuracy "
                        "falls with eps, unbounded PGD reaches chance (default: 1)")
    p.add_argument("--attacks", default=None, help="comma list of attacks (default: all)")
    p.add_argument("--columns", "--systems", default=None, dest="columns",
                   help="comma list of systems (columns of GRFD's table, rows of ARN's; "
                        "default: all)")
    p.add_argument("--existing", default=None,
                   help="take finished workdirs: run:path,... (run names as under ROOT)")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--train_split", default=None, help="(default: each preset's)")
    p.add_argument("--eval_split", default=None, help="(default: each preset's)")
    p.add_argument("--limit_train", type=int, default=None)
    p.add_argument("--set", default=None, dest="overrides",
                   help="more training fields for every run that has them: k=v,k=v "
                        "(e.g. n=10000,served_draws=8,lenet_width=0.5)")
    p.add_argument("--batch_size", type=int, default=256, help="attack batch (default: 256)")
    p.add_argument("--seed", type=int, default=0)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m eval.table", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--paper", required=True, choices=sorted({p for p, _ in tables.TABLES}))
    p.add_argument("--table", required=True,
                   help="the paper's table: " + ", ".join(f"{p} {t}" for p, t in
                                                           sorted(tables.TABLES)))
    add_arguments(p)
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
    """Every run's training fields from the flags, then `user` (--set, parsed)."""
    out = {k: v for k, v in dict(data_dir=args.data_dir, train_split=args.train_split,
                                 eval_split=args.eval_split, limit_train=args.limit_train,
                                 seed=args.seed).items() if v is not None}
    if args.epochs is not None:
        out.update(epochs=args.epochs, target_epochs=args.epochs)
    # the defenses' own closing reports: few examples (the table attacks them all again)
    out.update(attack_examples=min(args.examples, 100), attack_max_steps=10)
    return {**out, **user}


def check_settings(spec, dataset: str, max_steps, eot) -> dict:
    """The sanity checks' PGD: the spec's, else its table's 'pgd' entry; capped and with the
    EOT draws as the table's attacks."""
    if spec.check_pgd is None:
        return spec.attacks(dataset, max_steps, eot, ["pgd"])["pgd"]
    pgd = dict(spec.check_pgd, eot_samples=eot or robustness.EOT_SAMPLES)
    if max_steps is not None:
        pgd["steps"] = min(pgd["steps"], max_steps)
    return pgd


def run(spec, args) -> int:
    """Plan, train, measure and write `spec` as `args` ask; 0, or 2 with a message."""
    root = args.root or os.path.join("runs", spec.stem)
    try:
        only = None
        if args.columns:
            only = {c.strip() for c in args.columns.split(",") if c.strip()}
            unknown = only - {s.name for s in spec.systems}
            if unknown:
                raise ValueError(f"unknown columns {sorted(unknown)}; choose from "
                                 f"{[s.name for s in spec.systems]}")
        existing = dict(item.split(":", 1) for item in
                        filter(None, (args.existing or "").split(",")))
        files.code_digest()       # the code this process runs, before a long training
        user = _user_overrides(args.overrides)
        overrides = _overrides(args, user)
        max_steps = args.max_steps if args.max_steps is not None else (5 if args.smoke else None)
        eot = args.eot_samples if args.eot_samples is not None else (2 if args.smoke else None)
        draws = args.eval_draws or (2 if args.smoke else engine.EVAL_DRAWS)
        if draws < 1 or (eot is not None and eot < 1):
            raise ValueError("--eval_draws and --eot_samples must be >= 1")
        names = None if args.attacks is None else [a.strip() for a in args.attacks.split(",")
                                                    if a.strip()]
        attacks = spec.attacks(args.dataset, max_steps, eot, names)
        check_pgd = check_settings(spec, args.dataset, max_steps, eot)
        planned = engine.plan(spec, root, args.dataset, args.smoke, overrides, existing,
                              only, tuple(user), args.examples)
        workdirs = engine.train(planned)
        from jaxdefense.checkpoint import load_config
        std = load_config(workdirs[spec.source])[1]
        ds = data.load(args.dataset, std["eval_split"], std["data_dir"]).take(args.examples)
    except (CheckpointError, data.DatasetError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    columns = engine.evaluate(spec, workdirs, args.dataset, ds.x, ds.y, attacks,
                              jax.random.key(args.seed), args.batch_size, only=only,
                              cache_dir=os.path.join(root, "columns"), eval_draws=draws,
                              run_checks=bool(args.checks), check_pgd=check_pgd)
    values = spec.published(args.dataset)
    result = dict(paper=spec.paper, table=spec.table, dataset=args.dataset, examples=len(ds),
                  split=std["eval_split"],
                  preset=spec.preset(args.dataset) if spec.preset else None, attacks=attacks,
                  eot_samples=eot or robustness.EOT_SAMPLES, eval_draws=draws,
                  max_steps=max_steps, columns=columns, paper_values=values,
                  difference=engine.differences(spec, columns, values["values"],
                                                len(attacks) == len(spec.attack_order)))
    text = engine.markdown(spec, result)
    print("\n" + text)
    os.makedirs(root, exist_ok=True)
    files.write_text(os.path.join(root, f"{spec.stem}.md"), text)
    files.write_json(os.path.join(root, f"{spec.stem}.json"), result)
    print(f"wrote {engine.figure(spec, os.path.join(root, f'{spec.stem}.png'), result)}")
    return 0


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    setup_process()
    try:
        spec = tables.get(args.paper, args.table)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return preemption.resumable(run, spec, args)


if __name__ == "__main__":
    sys.exit(main())
