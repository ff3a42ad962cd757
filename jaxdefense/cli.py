"""Command lines built from config dataclasses: every field is a flag with its default."""
from __future__ import annotations

import argparse
import dataclasses
import typing


def setup_process() -> None:
    """What every command line does before its first computation: malloc keeps XLA:CPU's
    freed temporary buffers mapped (`host_memory.apply_default`, as
    JAXDEFENSE_KEEP_FREED_MEMORY says). An unknown setting exits with a message."""
    from jaxdefense import host_memory
    try:
        host_memory.apply_default()
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def _parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes"):
        return True
    if s.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def _optional(kind):
    return lambda s: None if s.lower() == "none" else kind(s)


def config_parser(config_cls, defaults, prog: str, doc: str, presets) -> argparse.ArgumentParser:
    """A parser with --smoke and one --field per dataclass field, defaults from `defaults`."""
    p = argparse.ArgumentParser(prog=prog, description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help="tiny models and data: a full run in about a minute on 2 CPU cores")
    p.add_argument("--distributed", action="store_true",
                   help="one process of several: jax.distributed.initialize() first (its "
                        "settings from the environment: TPU pod slices, SLURM, Open MPI, or "
                        "JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID)")
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        args = typing.get_args(hints[f.name])
        base = next((a for a in args if a is not type(None)), hints[f.name])
        kind = {bool: _parse_bool, int: int, float: float, str: str}[base]
        if type(None) in args:
            kind = _optional(kind)
        default = getattr(defaults, f.name)
        names = [f"--{f.name}"] + (["--arch"] if f.name == "classifier" else [])
        p.add_argument(*names, type=kind, default=default,
                       choices=sorted(presets) if f.name == "dataset" else None,
                       help=f"(default: {default})")
    return p


def parse_config(argv, config_cls, preset_fn, presets, prog: str, doc: str):
    """Two-stage parse: --dataset and --smoke pick the preset, which sets the defaults."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--dataset", default=config_cls().dataset)
    first.add_argument("--smoke", action="store_true")
    known, _ = first.parse_known_args(argv)
    if known.dataset not in presets:   # let argparse list the choices and exit
        config_parser(config_cls, config_cls(), prog, doc, presets).parse_args(argv)
    defaults = preset_fn(known.dataset, known.smoke)
    args = config_parser(config_cls, defaults, prog, doc, presets).parse_args(argv)
    if args.distributed:
        initialize_distributed()
    return config_cls(**{k: v for k, v in vars(args).items()
                         if k not in ("smoke", "distributed")})


def initialize_distributed() -> None:
    """jax.distributed.initialize() from the environment, once; on CPU, gloo collectives.
    Every process then runs the same command; only process 0 writes files."""
    import os
    import jax
    if jax.distributed.is_initialized():
        return
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if "JAX_COORDINATOR_ADDRESS" in os.environ:
        kwargs = dict(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                      num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                      process_id=int(os.environ["JAX_PROCESS_ID"]))
    jax.distributed.initialize(**kwargs)


def run_main(argv, config_cls, preset_fn, presets, prog: str, doc: str, train_fn) -> int:
    """Parse a config, run `train_fn(cfg)`, print its result as JSON; bad input -> exit 2,
    stopped by SIGTERM / SIGINT with its progress saved -> exit 75 (run it again)."""
    import json
    import sys
    from jaxdefense import preemption
    from jaxdefense.checkpoint import CheckpointError
    from jaxdefense.data import DatasetError
    setup_process()
    cfg = parse_config(sys.argv[1:] if argv is None else argv, config_cls, preset_fn, presets,
                       prog, doc)

    def train() -> int:
        try:
            result = train_fn(cfg)
        except (CheckpointError, DatasetError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(json.dumps(result, indent=2))
        return 0
    return preemption.resumable(train)      # also the closing reports' cached attacks


def defense_main(name: str, doc: str, argv=None) -> int:
    """`python -m train.<name>`: the registered defense's presets, one flag per config field,
    its training run (`defenses.registry`)."""
    from jaxdefense.defenses import registry
    entry = registry.get(name)
    return run_main(argv, entry.Config, entry.preset, entry.presets, f"python -m train.{name}",
                    doc, entry.train_and_evaluate)
