"""Clean and white-box FGSM / PGD accuracy of a trained defense's served pipeline.

    python -m eval.robustness --workdir=runs/grfd-mnist --examples=1000

The attacks see the whole defended model `target(x - G(x))` end to end. Data, split and
attack preset default to what the workdir recorded. Writes robustness.json in the workdir.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import jax

import jaxdefense
from jaxdefense import data
from jaxdefense.attacks.presets import PRESETS, preset_for
from jaxdefense.checkpoint import CheckpointError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.robustness", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="a workdir written by python -m train.*")
    p.add_argument("--data_dir", default=None, help="(default: the workdir's)")
    p.add_argument("--split", default=None, help="(default: the workdir's eval_split)")
    p.add_argument("--examples", type=int, default=1000, help="first N examples (default: 1000)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="attack settings (default: the GRFD paper's for the dataset)")
    p.add_argument("--max_steps", type=int, default=None, help="cap on iterative attack steps")
    p.add_argument("--batch_size", type=int, default=256, help="(default: 256)")
    p.add_argument("--seed", type=int, default=0, help="(default: 0)")
    args = p.parse_args(argv)
    try:
        model = jaxdefense.load(args.workdir)
        cfg = model.config
        ds = data.load(cfg["dataset"], args.split or cfg["eval_split"],
                       args.data_dir or cfg["data_dir"]).take(args.examples)
    except (CheckpointError, data.DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from jaxdefense.defenses.grfd_train import robustness_report
    report = robustness_report(model.logits_fn, ds, jax.random.key(args.seed),
                               args.preset or preset_for(cfg["dataset"]), args.max_steps)
    print(f"{'attack':<8} {'params':<48} accuracy")
    print(f"{'clean':<8} {'':<48} {report['clean_acc']:.4f}")
    for name in ("fgsm", "pgd"):
        params = ", ".join(f"{k}={v:.4g}" for k, v in report[f"{name}_params"].items())
        print(f"{name:<8} {params:<48} {report[f'{name}_acc']:.4f}")
    with open(os.path.join(args.workdir, "robustness.json"), "w") as f:
        json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
