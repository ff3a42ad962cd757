"""The first look: an undefended classifier and GRFD on the embedded digits, attacked under
the papers' protocol and by the adaptive white-box attack, in about two minutes on 2 CPU
cores, no download.

    python -m eval.demo                      # writes runs/demo, prints the short table
    python -m eval.demo --workdir=runs/demo2 --examples=200

Trains (or resumes) the None and GRFD columns of `eval.table3` on digits in WORKDIR/standard
and WORKDIR/grfd, attacks both on the first --examples test images with FGSM and PGD at
the GRFD paper's MNIST settings (Table 1), and prints clean accuracy, the papers' protocol
(examples crafted on the undefended model, then sent through the defense) and the adaptive
white-box attack (through the whole served pipeline), with the paper's published MNIST
values for orientation. WORKDIR/demo.json keeps the numbers; WORKDIR/grfd holds the served
model (`jaxdefense.load("runs/demo/grfd")`).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax

from jaxdefense import data, files
from jaxdefense.tables import grfd, measure, planning, record
from jaxdefense.checkpoint import CheckpointError
from jaxdefense.cli import setup_process

# Short schedules that reach classifier-like accuracy on digits in about two minutes.
TRAINING = dict(epochs=12, target_epochs=12, batch_size=64, eval_every=0, z_dim=64,
                vae_base=16, attack_examples=64, attack_max_steps=10)
COLUMNS = ("none", "grfd")
ATTACKS = ("fgsm", "pgd")

HOW_TO_READ = (
    "How to read it: the papers' protocol crafts each example on the undefended model and "
    "then sends it through the defense; the adaptive attack differentiates through the whole "
    "served pipeline, x -> target(x - G(x)), as an attacker who knows the defense would. A "
    "defense is as robust as its adaptive column (docs/table3.md).")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m eval.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="runs/demo", help="(default: runs/demo)")
    p.add_argument("--examples", type=int, default=360,
                   help="attacked test images (default: all 360)")
    p.add_argument("--max_steps", type=int, default=None,
                   help="cap on PGD's 100 steps (default: none)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def short_table(columns: dict, published: dict, examples: int, attacks: dict) -> str:
    """Rows: the undefended model and GRFD, measured, then the paper's MNIST values."""
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"
    head = (f"{'':<22}{'clean':>7}  | papers' protocol   | adaptive white-box")
    sub = f"{'':<22}{'':>7}  | {'FGSM':>7} {'PGD':>7}    | {'FGSM':>7} {'PGD':>7} {'worst':>7}"
    lines = [f"digits, {examples} test images; FGSM eps {attacks['fgsm']['eps'] * 255:g}/255, "
             f"PGD-{attacks['pgd']['steps']} eps {attacks['pgd']['eps'] * 255:g}/255; "
             f"accuracy in %", "", head, sub]
    for name, label in (("none", "undefended LeNet-5"), ("grfd", "GRFD")):
        col = columns[name]
        p, a = col["paper"], col["adaptive"]
        lines.append(f"{label:<22}{pct(p['clean']):>7}  | {pct(p['fgsm']):>7} "
                     f"{pct(p['pgd']):>7}    | {pct(a['fgsm']):>7} {pct(a['pgd']):>7} "
                     f"{pct(a['worst_case']):>7}")
    lines += ["", "published (GRFD paper, Table 3: MNIST, 60,000 training images, its protocol)"]
    for name, label in (("none", "undefended LeNet-5"), ("grfd", "GRFD")):
        v = published.get(name, {})
        lines.append(f"{label:<22}{pct(v.get('clean')):>7}  | {pct(v.get('fgsm')):>7} "
                     f"{pct(v.get('pgd')):>7}    |")
    lines += ["", "The undefended model's papers' protocol is the white-box attack on it.",
              HOW_TO_READ]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    setup_process()
    start = time.time()
    try:
        attacks = grfd.attacks("digits", args.max_steps, None, ATTACKS)
        plan = planning.plan(grfd.TABLE3, args.workdir, "digits", False,
                             dict(TRAINING, seed=args.seed), {}, set(COLUMNS),
                             examples=args.examples)
        workdirs = planning.train(plan)
        ds = data.load("digits", plan["standard"].cfg.eval_split).take(args.examples)
    except (CheckpointError, data.DatasetError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    trained = time.time() - start
    store = record.Record(os.path.join(args.workdir, "columns"), "grfd", "3", "digits")
    columns = measure.evaluate(grfd.TABLE3, workdirs, "digits", ds.x, ds.y, attacks,
                               jax.random.key(args.seed), only=set(COLUMNS), store=store,
                               crafts_root=os.path.join(args.workdir, "columns"),
                               run_checks=False)
    published = grfd.TABLE3.published("digits")["values"]
    text = short_table(columns, published, len(ds), attacks)
    total = time.time() - start
    print("\n" + text + f"\n\nTrained in {trained:.0f} s, measured in {total - trained:.0f} s; "
          f"the served GRFD model: jaxdefense.load({os.path.join(args.workdir, 'grfd')!r})")
    files.write_json(os.path.join(args.workdir, "demo.json"),
                     dict(examples=len(ds), attacks=attacks, training=TRAINING,
                          columns={c: {k: columns[c][k] for k in ("paper", "adaptive")}
                                   for c in COLUMNS},
                          published={c: published.get(c) for c in COLUMNS},
                          seconds=dict(training=trained, attacks=total - trained)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
