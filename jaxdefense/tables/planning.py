"""A table's runs: planned (every config checked before anything trains) and trained or
resumed under one root (`python -m eval.table`)."""
from __future__ import annotations

import dataclasses
import functools
import os

from jaxdefense.tables.spec import Spec


def kind(dataset: str) -> str:
    return "mnist" if dataset in ("mnist", "digits") else "cifar"


def finished(workdir: str) -> bool:
    return os.path.isfile(os.path.join(workdir, "results.json"))


@dataclasses.dataclass
class Planned:
    """One run of a table: its defense, workdir, and the config it trains with (None when
    taken from --existing)."""
    defense: str
    workdir: str
    cfg: object = None


def _split_rows(split: str, size: int, limit=None) -> range:
    """The rows of its base split that a `split` such as 'test[:8000]' names, first `limit`."""
    from jaxdefense.data.sources import parse_split
    _, lo, hi = parse_split(split)
    rows = range(size)[slice(lo, hi)]
    return rows[:limit] if limit is not None else rows


@functools.lru_cache(maxsize=8)
def _split_size(dataset: str, base: str, data_dir) -> int:
    """Examples in a base split, read once per process however many runs a table checks."""
    from jaxdefense import data
    return len(data.load(dataset, base, data_dir))


def check_disjoint(dataset: str, data_dir, train_split: str, limit_train, eval_split: str,
                   examples: int, who: str) -> None:
    """Refuse a run whose training rows include attacked examples (same base split and
    overlapping rows; differently named splits are disjoint)."""
    from jaxdefense.data.sources import parse_split
    base = parse_split(eval_split)[0]
    if parse_split(train_split)[0] != base:
        return
    size = _split_size(dataset, base, data_dir)
    train_rows = _split_rows(train_split, size, limit_train)
    eval_rows = _split_rows(eval_split, size, examples)
    both = set(train_rows) & set(eval_rows)
    if both:
        raise ValueError(f"{who} trains on {train_split!r} (first {limit_train}), which holds "
                         f"{len(both)} of the {len(eval_rows)} attacked examples of "
                         f"{eval_split!r}: choose disjoint --train_split and --eval_split")


def plan(spec: Spec, root: str, dataset: str, smoke: bool, overrides: dict, existing: dict,
         only=None, user_keys=(), examples: int = 500) -> dict:
    """Everything checked before anything trains: run -> Planned for the runs the systems
    of `only` (default: all) need, the source run first. Each config is the run's defense
    preset for `dataset`, the table's fields for the run, then `overrides` (fields a defense
    lacks are skipped), and must validate; a workdir that already holds a run must hold this
    one (else ValueError: a changed --set or --epochs is never ignored); an --existing
    purifier must sit in front of the source run's model; `user_keys` (the --set keys) must
    each be a field of some run of the table; no run may train on the attacked examples
    (the first `examples` of the source run's eval split)."""
    from jaxdefense import checkpoint, config
    from jaxdefense.defenses import registry
    if dataset not in spec.datasets:
        raise ValueError(f"{spec.title} has no {dataset} setting; choose from "
                         f"{list(spec.datasets)}")
    unknown = set(existing) - set(spec.runs)
    if unknown:
        raise ValueError(f"--existing names unknown runs {sorted(unknown)}; choose from "
                         f"{sorted(spec.runs)}")
    systems = [s for s in spec.systems if only is None or s.name in only]
    out, seen_fields = {}, set()
    for name in spec.runs_of(systems):
        r = spec.runs[name]
        if name in existing:
            out[name] = Planned(r.defense, existing[name])
            continue
        workdir = os.path.join(root, name)
        try:
            cfg = registry.get(r.defense).preset(dataset, smoke)
        except ValueError as e:
            raise ValueError(f"run {name!r} cannot run on {dataset}: {e}") from None
        fields = {f.name for f in dataclasses.fields(cfg)}
        seen_fields |= fields
        extra = {**r.fields(kind(dataset)),
                 **{k: v for k, v in overrides.items() if k in fields}}
        cfg = dataclasses.replace(cfg, workdir=workdir, **extra)
        try:    # the purifiers' target is the source run, which may not exist yet
            dataclasses.replace(cfg, **({"target_workdir": None} if "target_workdir" in fields
                                        else {})).validate()
        except ValueError as e:
            raise ValueError(f"run {name!r}: {e}") from None
        if "target_workdir" in fields:
            cfg = dataclasses.replace(cfg, target_workdir=out[spec.source].workdir)
        config.check_workdir(cfg, r.defense)
        out[name] = Planned(r.defense, workdir, cfg)
    if user_keys:           # the runs not chosen count too
        for name, r in spec.runs.items():
            if name not in out:
                seen_fields |= {f.name for f in dataclasses.fields(
                    registry.get(r.defense).preset(dataset, smoke))}
    bad = set(user_keys) - seen_fields
    if bad:
        raise ValueError(f"--set names fields no run has: {sorted(bad)}")
    source = out[spec.source]
    source_dir = os.path.realpath(source.workdir)
    std = (dataclasses.asdict(source.cfg) if source.cfg is not None
           else checkpoint.load_config(source.workdir)[1])
    for name, p in out.items():
        saved = dataclasses.asdict(p.cfg) if p.cfg is not None else \
            checkpoint.resolved_config(p.workdir, checkpoint.load_config(p.workdir)[1])
        if p.cfg is None and "target_workdir" in saved:
            target = saved.get("target_workdir")
            if not target or os.path.realpath(target) != source_dir:
                raise ValueError(f"--existing {name}:{p.workdir} purifies for the target "
                                 f"in {target or p.workdir + '/target'}, not the source "
                                 f"run's model in {source.workdir}: the table needs both "
                                 f"in front of the same network")
        check_disjoint(dataset, std.get("data_dir"), saved["train_split"],
                       saved.get("limit_train"), std["eval_split"], examples,
                       f"{name} ({p.workdir})")
    return out


def train(planned: dict, progress: bool = True) -> dict:
    """Train (or resume) every planned run without a results.json, in plan order (the source
    first). Returns run -> workdir."""
    from jaxdefense.defenses import registry
    for name, p in planned.items():
        if p.cfg is None or finished(p.workdir):
            continue
        if progress:
            print(f"== training {name} ({p.defense}) in {p.workdir}", flush=True)
        out = registry.get(p.defense).train_and_evaluate(p.cfg, progress=progress)
        if "stopped" in out:
            raise RuntimeError(f"{name} stopped early in {p.workdir} ({out}); run again "
                               f"to resume")
    return {name: p.workdir for name, p in planned.items()}

