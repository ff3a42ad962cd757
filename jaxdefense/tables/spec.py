"""A paper's table as data: the systems it compares, the runs they need, the attacks, the
protocol of each system's cells, the metric and the published values.

The engine (`planning`, `protocols`, `measure`, `rendering`) trains the runs, attacks every
system on the same examples under the paper's protocol and under the adaptive white-box attack, and renders the table
with the published value beside each measured cell.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

# How a system's cells are attacked under the paper's protocol. 'from:RUN' takes a run name.
PROTOCOLS = {
    "transfer": "transfer from the undefended model",
    "whitebox": "white-box on the model",
    "fixed-draw": "white-box, one fixed noise draw, no EOT",
    "target-only": "crafted on the bare target, then through the defense",
    "bpda": "white-box through the purifier with BPDA (identity backward)",
    "from": "crafted on another pipeline (gray-box)",
}


def chosen_attacks(order, names=None) -> tuple:
    """The attacks of a table's `order` that `names` picks (default: all), in table order;
    ValueError naming the unknown ones, or when none is chosen."""
    names = tuple(order) if names is None else tuple(names)
    unknown = set(names) - set(order)
    if unknown or not names:
        raise ValueError(f"unknown attacks {sorted(unknown)}; choose from {list(order)}"
                         if unknown else "no attack chosen")
    return tuple(n for n in order if n in names)


@dataclasses.dataclass(frozen=True)
class Run:
    """A training run under the table's root: a registered defense and the training fields
    the table sets for it, per dataset kind ('mnist' for MNIST and digits, 'cifar') or for
    all ('all')."""
    defense: str
    overrides: tuple = ()          # ((kind, ((field, value), ...)), ...): hashable

    def fields(self, kind: str) -> dict:
        out = {}
        for k, items in self.overrides:
            if k in ("all", kind):
                out.update(dict(items))
        return out


def run(defense: str, all=None, **by_kind) -> Run:    # noqa: A002 (a dataset kind)
    """Run(defense) with overrides given as dicts: run('apegan', all={...}, mnist={...})."""
    items = ([("all", tuple(sorted(all.items())))] if all else []) + [
        (k, tuple(sorted(v.items()))) for k, v in sorted(by_kind.items())]
    return Run(defense, tuple(items))


@dataclasses.dataclass(frozen=True)
class System:
    """One defended system of the table (a column of GRFD's Table 3, a row of ARN's).

    run: the training run it serves; paper: its protocol (a key of PROTOCOLS, or
    'from:RUN' for examples crafted on RUN's served pipeline); preprocess: a squeezer in
    front of the source run's model ({dataset kind: spec}) instead of a run's own model."""
    name: str
    label: str
    run: str
    paper: str
    preprocess: Optional[dict] = None

    @property
    def protocol(self) -> str:
        return self.paper.split(":", 1)[0]

    @property
    def crafted_on(self) -> Optional[str]:
        return self.paper.split(":", 1)[1] if self.protocol == "from" else None


@dataclasses.dataclass(frozen=True)
class Spec:
    """A table. `attacks(dataset, max_steps, eot_samples)` -> {name: params} in the table's
    order (params as `robustness.craft_fn` takes them); `published(dataset)` -> {'source',
    'note', 'values': {system: {row: accuracy in [0, 1]}}}. `source`: the undefended run
    (transfer source, the squeezers' model and the purifiers' target). `metric`: how cells
    are shown ('accuracy' or 'error', in %). `systems_as_rows`: ARN's layout (systems down,
    attacks across) instead of GRFD's. `average`: an Avg row over the attacks.
    `worst_over`: the per-example worst case over clean and every attack ('all'), or over
    the attacks only ('attacks': FSR's Ensemble), shown as `worst_label`."""
    paper: str
    table: str
    title: str
    systems: tuple
    runs: dict
    source: str
    attack_order: tuple
    labels: dict
    attacks: Callable
    published: Callable
    datasets: tuple
    metric: str = "accuracy"
    systems_as_rows: bool = False
    average: bool = True
    note: str = ""
    check_pgd: Optional[dict] = None    # the checks' PGD (default: the table's 'pgd')
    preset: Optional[Callable] = None   # dataset -> the attack settings' name (header)
    worst_over: str = "all"
    worst_label: str = "Worst case"

    def __post_init__(self):
        if self.worst_over not in ("all", "attacks"):
            raise ValueError(f"worst_over must be 'all' or 'attacks', got {self.worst_over!r}")

    @property
    def stem(self) -> str:
        """Output file stem: table3 for GRFD's Table 3 (as before), else PAPER-tableN (a
        figure: PAPER-figN)."""
        if (self.paper, self.table) == ("grfd", "3"):
            return "table3"
        return f"{self.paper}-{'table' if self.table[0].isdigit() else ''}{self.table}"

    def system(self, name: str) -> System:
        for s in self.systems:
            if s.name == name:
                return s
        raise ValueError(f"unknown system {name!r}; choose from "
                         f"{[s.name for s in self.systems]}")

    def runs_of(self, systems) -> list:
        """The runs the given systems need, the source first, then in table order."""
        need = [self.source]
        for s in systems:
            for r in (s.run, s.crafted_on):
                if r and r not in need:
                    need.append(r)
        return need
