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
for GRFD's Table 3, else PAPER-tableN). Each system's measurement goes to the record
(--record; docs/record.md) batch by batch as it is done: the same command after a stop, on
this machine or on a clone of the committed record, attacks only what is not yet measured.

    python -m eval.table --replay                  # every committed column's slice, again
    python -m eval.table --render=results/grfd-table3-mnist --into=BENCHMARKS.md
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import jax

from jaxdefense import data, files, preemption, robustness, tables
from jaxdefense.checkpoint import CheckpointError
from jaxdefense.cli import setup_process
from jaxdefense.tables import measure, planning, protocols, record, rendering, stamps


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, choices=("mnist", "cifar10", "cifar100", "svhn_cropped",
                                                    "digits"))
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
                        f"this many draws (default: {protocols.EVAL_DRAWS}; --smoke: 2)")
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
    p.add_argument("--record", default=None,
                   help="record root: the measured columns, their progress and the models "
                        "behind them (default: ROOT/record; 'results' is this repository's "
                        "committed record)")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m eval.table", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--paper", required=True, choices=sorted({p for p, _ in tables.TABLES}))
    p.add_argument("--table", required=True,
                   help="the paper's table: " + ", ".join(f"{p} {t}" for p, t in
                                                           sorted(tables.TABLES)))
    add_arguments(p)
    return p.parse_args(argv)


def parse_record_args(argv):
    """The record's own commands: --replay and --render."""
    p = argparse.ArgumentParser(prog="python -m eval.table", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--replay", nargs="?", const="results", metavar="ROOT",
                      help="measure every recorded column's slice again (its first batch, "
                           "clean and its replay attacks, from its committed models) and "
                           "compare the per-example outcomes (default root: results)")
    mode.add_argument("--render", metavar="DIR",
                      help="print a table record (e.g. results/grfd-table3-mnist) as "
                           "markdown, with each column's commit and date")
    p.add_argument("--into", default=None, help="with --render: replace the block between "
                   "'<!-- record: DIR -->' and '<!-- end record -->' in this file")
    p.add_argument("--mark_stale", action="store_true",
                   help="with --replay: mark a column whose replay differs stale (a "
                        "deliberate change of results) instead of failing")
    p.add_argument("--data_dir", default=None,
                   help="with --replay: where the examples are (default: as recorded)")
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
        record.commit()
        user = _user_overrides(args.overrides)
        overrides = _overrides(args, user)
        max_steps = args.max_steps if args.max_steps is not None else (5 if args.smoke else None)
        eot = args.eot_samples if args.eot_samples is not None else (2 if args.smoke else None)
        draws = args.eval_draws or (2 if args.smoke else protocols.EVAL_DRAWS)
        if draws < 1 or (eot is not None and eot < 1):
            raise ValueError("--eval_draws and --eot_samples must be >= 1")
        names = None if args.attacks is None else [a.strip() for a in args.attacks.split(",")
                                                    if a.strip()]
        attacks = spec.attacks(args.dataset, max_steps, eot, names)
        check_pgd = check_settings(spec, args.dataset, max_steps, eot)
        store = record.Record(args.record or os.path.join(root, "record"), spec.paper,
                              spec.table, args.dataset)
        plan = lambda given: planning.plan(spec, root, args.dataset, args.smoke,  # noqa: E731
                                           overrides, given, only, tuple(user), args.examples)
        planned = plan(existing)
        committed = committed_models(store, planned, existing)
        if committed:
            planned = plan({**existing, **committed})
        workdirs = keep_models(store, planning.train(planned), spec.source, argv_text(args))
        from jaxdefense.checkpoint import load_config
        std = load_config(workdirs[spec.source])[1]
        ds = data.load(args.dataset, std["eval_split"], std["data_dir"]).take(args.examples)
    except (CheckpointError, data.DatasetError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    columns = measure.evaluate(spec, workdirs, args.dataset, ds.x, ds.y, attacks,
                               jax.random.key(args.seed), args.batch_size, only=only,
                               store=store, crafts_root=os.path.join(root, "columns"),
                               eval_draws=draws, run_checks=bool(args.checks),
                               check_pgd=check_pgd,
                               data={"split": std["eval_split"], "data_dir": std["data_dir"]})
    values = spec.published(args.dataset)
    result = dict(paper=spec.paper, table=spec.table, dataset=args.dataset, examples=len(ds),
                  split=std["eval_split"],
                  preset=spec.preset(args.dataset) if spec.preset else None, attacks=attacks,
                  eot_samples=eot or robustness.EOT_SAMPLES, eval_draws=draws,
                  max_steps=max_steps, columns=columns, paper_values=values,
                  difference=rendering.differences(spec, columns, values["values"],
                                                   len(attacks) == len(spec.attack_order)))
    text = rendering.markdown(spec, result)
    print("\n" + text)
    os.makedirs(root, exist_ok=True)
    files.write_text(os.path.join(root, f"{spec.stem}.md"), text)
    files.write_json(os.path.join(root, f"{spec.stem}.json"), result)
    print(f"wrote {rendering.figure(spec, os.path.join(root, f'{spec.stem}.png'), result)}")
    return 0


def argv_text(args) -> str:
    """The command that trained a model, as the record keeps it."""
    import shlex
    return "python -m eval.table " + shlex.join(getattr(args, "argv", None) or sys.argv[1:])


def committed_models(store, planned: dict, existing: dict) -> dict:
    """run -> the record's compact model for every planned run the record holds, each
    checked against the run's planned settings (a model of other settings is refused,
    never silently measured); a run given by --existing must be the same model."""
    from jaxdefense import checkpoint, config
    out = {}
    for run, p in planned.items():
        path = store.model(run)
        if not checkpoint.is_compact(path):
            continue
        if p.cfg is None:
            if checkpoint.model_digest(p.workdir) != checkpoint.model_digest(path):
                raise ValueError(f"--existing {run}:{p.workdir} is not the model the record "
                                 f"holds in {path}: use another --record, or remove that "
                                 f"model to measure with yours")
        else:
            defense, saved = checkpoint.load_config(path)
            skip = set(checkpoint.PATH_FIELDS) | set(config.RESUMABLE)
            want = dataclasses.asdict(p.cfg)
            diff = {k: f"{saved.get(k)} -> {v}" for k, v in want.items()
                    if k not in skip and saved.get(k, v) != v}
            if defense != p.defense or diff:
                raise ValueError(f"the record's model {path} was trained with other settings "
                                 f"({defense}, {diff}): use another --record, or remove that "
                                 f"model (and the columns measured on it) to train again")
        out[run] = path
    return out


def keep_models(store, workdirs: dict, source: str, command: str) -> dict:
    """Put every run that is not yet a compact model into the record (`export_model`, the
    source first so purifiers can point at it); run -> the record's model."""
    from jaxdefense import checkpoint
    out = {}
    for run in [source] + [r for r in workdirs if r != source]:
        w, path = workdirs[run], store.model(run)
        if not checkpoint.is_compact(w):
            here = record.provenance()
            checkpoint.export_model(
                w, path, {"trained_by": command, "trained_in": w,
                          **{k: here[k] for k in ("commit", "date", "machine", "versions")}},
                target=out.get(source))
        out[run] = w if checkpoint.is_compact(w) else path
    return out


def replay_all(args) -> int:
    """--replay: every recorded column's slice measured again; 0 when all agree, 1 naming
    each difference (table, system, protocol, attack, examples)."""
    import time
    import jaxdefense
    from jaxdefense import checkpoint
    failed = 0
    stores = record.open_records(args.replay)
    if not stores:
        print(f"no table records under {args.replay}")
        return 0
    for store in stores:
        spec = tables.get(store.paper, store.table)
        for system_name, rec in store.columns().items():
            where = f"{store.paper} {store.table} on {store.dataset}, {system_name}"
            if rec.get("stale"):
                print(f"{where}: stale ({rec['stale']['reason']}), not replayed")
                continue
            started = time.time()
            ident = rec["identity"]
            workdirs = {r: os.path.normpath(os.path.join(store.dir, p))
                        for r, p in rec["models"].items()}
            try:
                ds = data.load(store.dataset, rec["data"]["split"],
                               args.data_dir or rec["data"].get("data_dir")).take(ident["count"])
                system = spec.system(system_name)
                models = {r: jaxdefense.load(w) for r, w in workdirs.items()}
            except (CheckpointError, data.DatasetError, ValueError) as e:
                print(f"FAIL {where}: cannot load what it was measured on: {e}")
                failed += 1
                continue
            problems = []
            if stamps.examples_digest(ds.x, ds.y) != ident["examples"]:
                problems.append("the examples differ from the recorded ones")
            for r, w in workdirs.items():
                if checkpoint.model_digest(w) != ident["runs"][r]:
                    problems.append(f"model {r} ({w}) differs from the one measured")
            diffs = []
            if not problems:
                reports = protocols.system_reports(*protocols.system_models(
                    spec, system, models, store.dataset, ident["eval_draws"]))
                diffs = record.replay(reports, ds.x, ds.y, record.key_from(ident["key"]),
                                      ident["attacks"], rec["replay_attacks"],
                                      ident["batch_size"], rec["column"]["per_example"])
                problems = [f"{d['protocol']} {d['attack']}: examples {d['examples']} "
                            f"differ" for d in diffs]
            took = time.time() - started
            if not problems:
                print(f"ok   {where}: {', '.join(['clean', *rec['replay_attacks']])} on the "
                      f"first batch agree ({took:.0f} s)")
                continue
            if args.mark_stale:
                here = record.provenance()
                rec["stale"] = {"reason": f"replay at {here['commit']}: " + "; ".join(problems),
                                "commit": here["commit"], "date": here["date"]}
                store.write(system_name, rec)
                print(f"stale {where}: " + "; ".join(problems))
                continue
            failed += 1
            print(f"FAIL {where}: " + "; ".join(problems))
    if failed:
        print(f"{failed} recorded column(s) differ at this code: a deliberate change of "
              f"results is recorded with --mark_stale (and the columns measured again)")
    return 1 if failed else 0


def render(args) -> int:
    """--render: a table record as markdown (stdout, or into --into between markers)."""
    folder = os.path.normpath(args.render)
    stores = [s for s in record.open_records(os.path.dirname(folder) or ".")
              if os.path.normpath(s.dir) == folder]
    if not stores:
        print(f"error: no table record in {folder}", file=sys.stderr)
        return 2
    text = render_record(stores[0], folder)
    if args.into is None:
        print(text)
        return 0
    start, end = f"<!-- record: {folder} -->", "<!-- end record -->"
    page = open(args.into).read()
    if start not in page or end not in page[page.index(start):]:
        print(f"error: {args.into} has no '{start}' ... '{end}' block to fill",
              file=sys.stderr)
        return 2
    a = page.index(start) + len(start)
    b = page.index(end, a)
    files.write_text(args.into, page[:a] + "\n" + text.rstrip("\n") + "\n" + page[b:])
    print(f"wrote {folder} into {args.into}")
    return 0


def render_record(store, folder: str) -> str:
    """The table of a record (`rendering.markdown`, headings two levels down), each column's
    provenance under it; stale columns marked."""
    spec = tables.get(store.paper, store.table)
    recs = store.columns()
    order = [s.name for s in spec.systems if s.name in recs]
    columns = {}
    for name in order:
        col = dict(recs[name]["column"])
        if recs[name].get("stale"):
            col["label"] = col["label"] + " (STALE)"
        columns[name] = col
    first = recs[order[0]]["identity"]
    attacks = first["attacks"]
    eot = next((p["eot_samples"] for p in attacks.values() if "eot_samples" in p), None)
    table = dict(dataset=store.dataset, examples=first["count"], attacks=attacks,
                 preset=spec.preset(store.dataset) if spec.preset else None,
                 eot_samples=eot or robustness.EOT_SAMPLES, eval_draws=first["eval_draws"],
                 columns=columns, paper_values=spec.published(store.dataset))
    text = rendering.markdown(spec, table)
    text = "\n".join("##" + ln if ln.startswith("#") else ln for ln in text.splitlines())
    lines = [text.rstrip(), "", f"Rendered from `{folder}` (`python -m eval.table "
             f"--render={folder}`); each column as recorded:"]
    for name in order:
        rec = recs[name]
        pv = rec["provenance"]
        line = (f"- {rec['column']['label']}: {rec['identity']['count']} examples, commit "
                f"{pv['commit']}, {pv['date']}, {pv['machine']}, jax "
                f"{pv['versions']['jax']}, {rec['wall_s'] / 60:.1f} min")
        if rec.get("replays"):
            last = rec["replays"][-1]
            line += f"; replayed at {last['commit']} ({last['date']})"
        if rec.get("stale"):
            line += f"; STALE: {rec['stale']['reason']}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a.startswith(("--replay", "--render")) for a in argv):
        args = parse_record_args(argv)
        setup_process()
        return replay_all(args) if args.replay else render(args)
    args = parse_args(argv)
    args.argv = list(argv)
    setup_process()
    try:
        spec = tables.get(args.paper, args.table)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return preemption.resumable(run, spec, args)


if __name__ == "__main__":
    sys.exit(main())
