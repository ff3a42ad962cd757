"""GRFD's Table 3 on the table engine (`tables.engine` with the spec `tables.grfd.TABLE3`):
every defense column trained (or resumed, or taken from an existing workdir) under one root,
attacked on the same examples with the dataset's GRFD attack preset, under the papers'
protocol and the adaptive white-box attack side by side, the published value beside each
measured cell. The names here are the engine's functions bound to GRFD's Table 3.
"""
from __future__ import annotations

from jaxdefense.attacks.presets import preset_for  # noqa: F401 (the table's preset name)
from jaxdefense.tables import engine
from jaxdefense.tables.engine import (CHECKS_STREAM, EVAL_DRAWS, Planned,  # noqa: F401
                                      check_disjoint, finished)
from jaxdefense.tables.grfd import (ATTACK_ORDER, DATASETS, TABLE3,  # noqa: F401
                                    attacks as attacks_for, published_tables as published)
from jaxdefense.tables.spec import PROTOCOLS as PAPER_PROTOCOL  # noqa: F401

SPEC = TABLE3
COLUMNS = TABLE3.systems
ATTACK_LABELS = {"clean": "Clean", **TABLE3.labels, "avg": "Avg", "worst_case": "Worst case"}
ROWS = engine.rows(TABLE3)


def trainers() -> dict:
    """defense -> (preset(dataset, smoke, **overrides), train_and_evaluate(cfg, progress))
    for every defense a column trains, from the defense registry."""
    from jaxdefense.defenses import registry
    return {d: (registry.get(d).preset, registry.get(d).train_and_evaluate)
            for d in TABLE3.runs}


def paper_values(dataset: str) -> dict:
    return TABLE3.published(dataset)


def plan_columns(root, dataset, smoke, overrides, existing, only=None, user_keys=(),
                 examples: int = 500) -> dict:
    return engine.plan(TABLE3, root, dataset, smoke, overrides, existing, only, user_keys,
                       examples)


def train_columns(plan: dict, progress: bool = True) -> dict:
    return engine.train(plan, progress)


def column_models(column, models: dict, dataset: str, eval_draws: int = EVAL_DRAWS):
    return engine.system_models(TABLE3, column, models, dataset, eval_draws)


def combine(paper: dict, adaptive: dict) -> dict:
    return engine.combine(TABLE3, paper, adaptive)


def column_checks(models, x, y, key, pgd, whitebox, paper, num_classes, batch_size=256,
                  n=128) -> list:
    return engine.checks(TABLE3, models, x, y, key, pgd, whitebox, paper, num_classes,
                         batch_size, n)


def _fingerprint(column, workdirs, x, y, attacks, key, batch_size, eval_draws=EVAL_DRAWS,
                 checks=True, dataset: str = "mnist") -> str:
    from jaxdefense.tables import record
    return record.stamp(engine.identity(TABLE3, column, workdirs, dataset, x, y, attacks, key,
                                        batch_size, eval_draws, checks))


def evaluate(workdirs: dict, dataset: str, x, y, attacks: dict, key, batch_size: int = 256,
             progress: bool = True, only=None, cache_dir=None, eval_draws: int = EVAL_DRAWS,
             checks: bool = True, check_pgd=None) -> dict:
    """`engine.evaluate` on GRFD's Table 3 (a record and crafts under `cache_dir`); the
    checks' PGD defaults to the table's PGD."""
    from jaxdefense.tables import record
    pgd = check_pgd or attacks.get("pgd") or attacks_for(
        dataset, None, next(iter(attacks.values())).get("eot_samples"), ["pgd"])["pgd"]
    store = None if cache_dir is None else record.Record(cache_dir, "grfd", "3", dataset)
    return engine.evaluate(TABLE3, workdirs, dataset, x, y, attacks, key, batch_size,
                           progress, only, store, cache_dir, eval_draws, checks, pgd)


def differences(columns: dict, values: dict, shown_avg: bool = True) -> dict:
    return engine.differences(TABLE3, columns, values, shown_avg)


def markdown(table: dict) -> str:
    return engine.markdown(TABLE3, table)


def figure(path: str, table: dict) -> str:
    return engine.figure(TABLE3, path, table)
