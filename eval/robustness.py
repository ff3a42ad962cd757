"""Robust accuracy of a trained model under a threat model, with sanity checks.

    python -m eval.robustness --workdir=runs/grfd-mnist --examples=1000
    python -m eval.robustness --workdir=runs/grfd-mnist --threats=whitebox,target-only,transfer \
        --source_workdir=runs/std-mnist --preset=grfd-mnist --attacks=fgsm,pgd,autoattack

Threat models: whitebox (attacks see the whole served pipeline), target-only (they see the
classifier inside it; the examples then go through the defense), transfer (they see the
model in --source_workdir, e.g. one from `python -m train.standard`). For ARN and IDFR,
target-only is their papers' protocol (craft against the bare target, then purify).
--preprocess puts bit-depth reduction or feature squeezing in front of any model, attacked
through BPDA:

    python -m eval.robustness --workdir=runs/std-mnist --preprocess=squeeze:4,2 \
        --threats=target-only,whitebox

Randomized models (smoothing, DiffPure) are attacked with EOT, and an example counts as
robust only if it is classified right on every one of --eval_draws draws.

Prints a table of clean and robust accuracy with the per-sample worst case, the sanity
checks of Carlini et al., and writes robustness.json and robustness_eps.png to --out_dir:
FGSM and PGD accuracy against eps under every threat model of --threats, and the
--source_workdir model attacked alone, on one figure.
"""
from __future__ import annotations

import argparse
import os
import sys

import jax

import jaxdefense
from jaxdefense import data, files, plots, robustness
from jaxdefense.attacks.presets import PRESETS, get_preset, preset_for
from jaxdefense.checkpoint import CheckpointError
from jaxdefense.cli import setup_process
from jaxdefense.defenses import preprocessing


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m eval.robustness", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="a workdir written by python -m train.*")
    p.add_argument("--source_workdir", default=None, help="source model for --threats=transfer")
    p.add_argument("--threats", default="whitebox",
                   help="comma list of whitebox, target-only, transfer (default: whitebox)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="attack settings (default: the run's attack_preset, else the GRFD "
                        "paper's for the dataset)")
    p.add_argument("--attacks", default=None, help="comma list: only these preset attacks")
    p.add_argument("--preprocess", default=None,
                   help="put an input transform in front of the model: bits:B, median:S, "
                        "squeeze:B,S (joined by '+'); the bit-depth / feature-squeezing baselines")
    p.add_argument("--bpda", type=int, default=1,
                   help="with --preprocess: attack through it with BPDA (identity backward); "
                        "0 uses its true, flat gradients (obfuscated; overstates robustness)")
    p.add_argument("--data_dir", default=None, help="(default: the workdir's)")
    p.add_argument("--split", default=None, help="(default: the workdir's eval_split)")
    p.add_argument("--examples", type=int, default=1000, help="first N examples (default: 1000)")
    p.add_argument("--max_steps", type=int, default=None,
                   help="cap on attack iterations (Square queries: 10x) for quick runs")
    p.add_argument("--eps_sweep", default="0,2,4,8,16,32,64",
                   help="eps values in /255 for the accuracy-vs-eps plot, or 'none'")
    p.add_argument("--eval_draws", type=int, default=None,
                   help="randomized models: robust only if right on every one of this many "
                        "draws (default: the run's eval_draws, else 1)")
    p.add_argument("--checks", type=int, default=1, help="run the sanity checks (default: 1)")
    p.add_argument("--batch_size", type=int, default=256, help="(default: 256)")
    p.add_argument("--seed", type=int, default=0, help="(default: 0)")
    p.add_argument("--out_dir", default=None, help="(default: the workdir)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    setup_process()
    threats = tuple(t.strip() for t in args.threats.split(",") if t.strip())
    try:
        model = jaxdefense.load(args.workdir)
        source = jaxdefense.load(args.source_workdir) if args.source_workdir else None
        if "transfer" in threats and source is None:
            raise ValueError("--threats=transfer needs --source_workdir")
        cfg = model.config
        ds = data.load(cfg["dataset"], args.split or cfg["eval_split"],
                       args.data_dir or cfg["data_dir"]).take(args.examples)
        only = tuple(a.strip() for a in args.attacks.split(",")) if args.attacks else None
        preset = args.preset or preset_for(cfg["dataset"], cfg)
        attacks = get_preset(preset, args.max_steps, only)
        bad = set(threats) - set(robustness.THREATS)
        if bad:
            raise ValueError(f"unknown threat models {sorted(bad)}; choose from {robustness.THREATS}")
    except (CheckpointError, data.DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    served = model.logits_fn
    if args.preprocess:
        try:
            if model.stochastic:
                raise ValueError(f"--preprocess is for deterministic models; {args.workdir} "
                                 f"holds a randomized {model.defense} model")
            served = preprocessing.preprocessed(model.logits_fn, args.preprocess, bool(args.bpda))
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    models = robustness.Models(served=served, classifier=model.parts.get("classifier"),
                               source=source.logits_fn if source else None,
                               stochastic=model.stochastic,
                               eval_draws=args.eval_draws or cfg.get("eval_draws", 1))
    key = jax.random.key(args.seed)
    result = robustness.report(models, ds.x, ds.y, key, attacks, threats, args.batch_size)
    result.update(preset=preset, attacks=attacks, workdir=args.workdir,
                  source_workdir=args.source_workdir)
    defense = model.defense + (f" + {args.preprocess}" if args.preprocess else "")
    result.update(defense=defense, bpda=bool(args.bpda) if args.preprocess else None)
    print(f"\n{defense} on {cfg['dataset']} ({len(ds)} examples, preset {preset})")
    print(robustness.format_table(result))
    if args.checks:
        checks = robustness.sanity_checks(models, ds.x, ds.y, key, result, model.num_classes,
                                          args.batch_size, attacks)
        result["checks"] = [dict(check=c, passed=ok, detail=d) for c, ok, d in checks]
        print("\nsanity checks:")
        for c, ok, d in checks:
            print(f"  [{'PASS' if ok else 'FAIL'}] {c} {d}")
    out_dir = args.out_dir or args.workdir
    if args.eps_sweep.lower() != "none":
        eps = [float(e) / 255 for e in args.eps_sweep.split(",")]
        result["eps_sweep"] = robustness.eps_sweep(models, ds.x, ds.y, key, eps,
                                                   batch_size=args.batch_size, threats=threats)
        png = plots.accuracy_vs_eps(os.path.join(out_dir, "robustness_eps.png"),
                                    result["eps_sweep"],
                                    title=f"{defense} on {cfg['dataset']}: every threat model")
        print(f"\nwrote {png}")
    files.write_json(os.path.join(out_dir, "robustness.json"), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
