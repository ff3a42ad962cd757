"""Certify a randomized-smoothing run (Cohen et al.'s CERTIFY) at L2 radii.

    python -m eval.certify --workdir=runs/smooth-mnist --n=10000 --examples=500
    python -m eval.certify --workdir=runs/smooth-c10 --n=100000 --alpha=0.001   # the paper's

Prints certified accuracy at each radius (abstentions count as wrong) and writes
certify.json and certify.png (certified accuracy against radius) to --out_dir. Time grows
with --n times --examples; the largest certifiable radius is sigma * Phi^-1(alpha^(1/n)).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import jax
import numpy as np

from jaxdefense import data, files, plots
from jaxdefense.checkpoint import CheckpointError, load_config
from jaxdefense.cli import setup_process


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m eval.certify", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="a python -m train.smoothing workdir")
    p.add_argument("--n0", type=int, default=None, help="selection draws (default: the run's)")
    p.add_argument("--n", type=int, default=None, help="estimation draws (default: the run's)")
    p.add_argument("--alpha", type=float, default=None, help="(default: the run's)")
    p.add_argument("--sigma", type=float, default=None,
                   help="smoothing noise (default: the training sigma)")
    p.add_argument("--radii", default=None, help="comma list of L2 radii (default: the run's)")
    p.add_argument("--examples", type=int, default=500, help="first N examples (default: 500)")
    p.add_argument("--split", default=None, help="(default: the workdir's eval_split)")
    p.add_argument("--data_dir", default=None, help="(default: the workdir's)")
    p.add_argument("--seed", type=int, default=0, help="(default: 0)")
    p.add_argument("--out_dir", default=None, help="(default: the workdir)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    import jaxdefense
    from jaxdefense.defenses import smoothing
    args = parse_args(sys.argv[1:] if argv is None else argv)
    setup_process()
    try:
        defense, saved = load_config(args.workdir)
        if defense != "smoothing":
            raise ValueError(f"{args.workdir} holds a {defense!r} run; certification needs a "
                             f"python -m train.smoothing run")
        changes = {k: v for k, v in dict(n0=args.n0, n=args.n, alpha=args.alpha,
                                         sigma=args.sigma, radii=args.radii).items()
                   if v is not None}
        cfg = dataclasses.replace(smoothing.SmoothingConfig(**saved), **changes)
        cfg.validate()
        ds = data.load(cfg.dataset, args.split or cfg.eval_split,
                       args.data_dir or cfg.data_dir).take(args.examples)
        base_fn = jaxdefense.load(args.workdir).parts["classifier"]
    except (CheckpointError, data.DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    num_classes = data.dataset_info(cfg.dataset)["num_classes"]
    preds, radii = smoothing.certify(base_fn, ds.x, jax.random.key(args.seed), cfg, num_classes)
    acc = smoothing.certified_accuracy(preds, radii, ds.y, cfg.radius_list())
    result = dict(workdir=args.workdir, examples=len(ds), sigma=cfg.sigma, n0=cfg.n0, n=cfg.n,
                  alpha=cfg.alpha, abstain=float(np.mean(preds < 0)),
                  clean_smoothed_acc=float(np.mean(preds == ds.y)), certified_acc=acc,
                  max_certifiable_radius=float(smoothing.max_radius(cfg)))
    print(f"\nrandomized smoothing on {cfg.dataset}: sigma {cfg.sigma}, n0 {cfg.n0}, n {cfg.n}, "
          f"alpha {cfg.alpha}, {len(ds)} examples (abstain {result['abstain']:.3f})")
    print(f"{'L2 radius':>10} {'certified acc':>14}")
    for r, a in acc.items():
        print(f"{r:>10} {a:>14.4f}")
    out_dir = args.out_dir or args.workdir
    grid = np.linspace(0, max(cfg.radius_list() + (result["max_certifiable_radius"],)), 50)
    curve = [float(np.mean((preds == ds.y) & (radii >= r))) for r in grid]
    png = plots.line_plot(os.path.join(out_dir, "certify.png"), grid, {"certified": curve},
                          xlabel="L2 radius (pixel units)", ylabel="certified accuracy",
                          title=f"smoothing sigma {cfg.sigma} on {cfg.dataset}, n={cfg.n}")
    files.write_json(os.path.join(out_dir, "certify.json"), result)
    print(f"\nwrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
