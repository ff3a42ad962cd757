"""Train GRFD (phases I-III) and report the served defense's FGSM / PGD accuracy.

    python -m train.grfd --dataset=digits --smoke          # embedded data, about a minute
    python -m train.grfd --dataset=mnist --data_dir=../shared/data/mnist \
        --train_split='test[:8000]' --eval_split='test[8000:]'
    python -m train.grfd --dataset=cifar100 --workdir=runs/grfd-c100

`--dataset` picks the preset, `--smoke` shrinks every model and the data; every other
field of GRFDConfig is a flag (see --help). Re-running with the same --workdir resumes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing

from jaxdefense.data import DatasetError
from jaxdefense.defenses.grfd_config import PRESETS, GRFDConfig, preset


def _parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes"):
        return True
    if s.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def _optional(kind):
    return lambda s: None if s.lower() == "none" else kind(s)


def build_parser(defaults: GRFDConfig) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.grfd", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help="tiny models, 512 examples, 2 epochs: a full run in about a minute")
    hints = typing.get_type_hints(GRFDConfig)
    for f in dataclasses.fields(GRFDConfig):
        hint = hints[f.name]
        args = typing.get_args(hint)
        base = next((a for a in args if a is not type(None)), hint)
        kind = {bool: _parse_bool, int: int, float: float, str: str}[base]
        if type(None) in args:
            kind = _optional(kind)
        default = getattr(defaults, f.name)
        choices = sorted(PRESETS) if f.name == "dataset" else None
        p.add_argument(f"--{f.name}", type=kind, default=default, choices=choices,
                       help=f"(default: {default})")
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--dataset", default="mnist")
    first.add_argument("--smoke", action="store_true")
    known, _ = first.parse_known_args(argv)
    if known.dataset not in PRESETS:
        build_parser(GRFDConfig()).parse_args(argv)   # argparse explains the choices
    args = build_parser(preset(known.dataset, known.smoke)).parse_args(argv)
    fields = {k: v for k, v in vars(args).items() if k != "smoke"}
    cfg = GRFDConfig(**fields)
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
