"""GRFD's Table 3 as a table spec: nine defenses (columns) against FGSM, PGD, AutoAttack,
EOT-PGD and VMI-FGSM (rows) at the GRFD paper's settings for each dataset.

The papers' protocol as this project reads the GRFD paper's evaluation (the paper does not
say how its examples were crafted): input-transformation and purification columns
(bit-depth reduction, feature squeezing, CD-VAE, GRFD, APE-GAN, DiffPure) take examples
transferred from the undefended model (the 'none' column); model columns (none, gradient
regularization) are attacked white-box; randomized smoothing white-box on one fixed noise
draw, no EOT (what a deterministic attack library does to a random model).
"""
from __future__ import annotations

import functools
import json
from importlib import resources

from jaxdefense import robustness
from jaxdefense.attacks.presets import get_preset, preset_for
from jaxdefense.tables.spec import Run, Spec, System

ATTACK_ORDER = ("fgsm", "pgd", "autoattack", "eotpgd", "vmifgsm")
ATTACK_LABELS = {"fgsm": "FGSM", "pgd": "PGD", "autoattack": "AA", "eotpgd": "EOT-PGD",
                 "vmifgsm": "VMI-FGSM"}
DATASETS = ("mnist", "cifar10", "cifar100", "digits")

SYSTEMS = (
    System("none", "None", "standard", "whitebox"),
    System("bdr", "B-DR", "standard", "transfer", {"mnist": "bits:1", "cifar": "bits:5"}),
    System("fs", "F.S.", "standard", "transfer",
           {"mnist": "squeeze:1,2", "cifar": "squeeze:5,2"}),
    System("cdvae", "CD-VAE", "cdvae", "transfer"),
    System("smoothing", "R.S.", "smoothing", "fixed-draw"),
    System("gradreg", "G.R.", "gradreg", "whitebox"),
    System("apegan", "APE-GAN", "apegan", "transfer"),
    System("diffpure", "DiffPure", "diffpure", "transfer"),
    System("grfd", "GRFD", "grfd", "transfer"),
)
# one run per defense, named after it (ROOT/<defense>, --existing=<defense>:PATH)
RUNS = {d: Run(d) for d in dict.fromkeys(s.run for s in SYSTEMS)}


def attacks(dataset: str, max_steps: int | None, eot_samples: int | None,
            names=None) -> dict:
    """The dataset's GRFD preset in the table's order, `names` (default: all five) only.
    Every entry carries the EOT draws it uses on a randomized column (`eot_samples`,
    default `robustness.EOT_SAMPLES`); deterministic columns drop them."""
    names = ATTACK_ORDER if names is None else tuple(names)
    unknown = set(names) - set(ATTACK_ORDER)
    if unknown or not names:
        raise ValueError(f"unknown attacks {sorted(unknown)}; choose from {list(ATTACK_ORDER)}"
                         if unknown else "no attack chosen")
    preset = get_preset(preset_for(dataset), max_steps)
    for params in preset.values():
        params["eot_samples"] = eot_samples or robustness.EOT_SAMPLES
    return {k: preset[k] for k in ATTACK_ORDER if k in names}


@functools.lru_cache(maxsize=1)
def published_tables() -> dict:
    """The GRFD paper's tables as published (`reference/grfd_paper.json`, accuracy in %)."""
    text = resources.files("jaxdefense").joinpath("reference/grfd_paper.json").read_text()
    return json.loads(text)


def published(dataset: str) -> dict:
    """{'source': ..., 'note': ..., 'values': {column: {row: accuracy in [0, 1]}}}: the paper's
    Table 3 for the dataset (digits shows MNIST's, for orientation)."""
    ref = published_tables()
    key = "mnist" if dataset == "digits" else dataset
    values = {col: {row: v / 100 for row, v in rows.items()}
              for col, rows in ref["table3"]["datasets"].get(key, {}).items()}
    note = ref["table3"]["note"] + (
        "; digits: the paper has no digits table, these are its MNIST values" if
        dataset == "digits" else "")
    return {"source": ref["paper"] + ", Table 3", "note": note, "values": values}


TABLE3 = Spec(paper="grfd", table="3", title="GRFD Table 3", systems=SYSTEMS, runs=RUNS,
              source="standard", attack_order=ATTACK_ORDER, labels=ATTACK_LABELS,
              attacks=attacks, published=published, datasets=DATASETS, preset=preset_for)
TABLES = {"3": TABLE3}
