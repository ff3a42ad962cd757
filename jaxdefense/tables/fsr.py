"""FSR's Tables 1 and 2 (Kim et al., CVPR 2023) as table specs: accuracy in %, training
methods down (AT, TRADES, MART, each without and with one FSR module), white-box attacks
across, on CIFAR-10 and SVHN; Table 1 on ResNet-18, Table 2 on VGG16 (ours: VGG16-BN).

The attacks are the paper's section 4.1, Linf eps 8/255 (the `fsr` preset): FGSM; PGD-20
and PGD-100 with step eps/10; CW, the C&W margin loss maximized by PGD for 30 steps of
eps/10; no random start (the paper mentions none). Ensemble is the per-example worst case
over those four attacks (clean accuracy not counted in it), as the paper defines it. Every
system is attacked white-box, so the papers' protocol and the adaptive attack are one
report. PGD keeps each example's best iterate (`--table=1`, `2`); the paper does not say
which it reports, so `--table=1-last` and `2-last` attack with the last iterate instead (as
the reference code's PGD does).
"""
from __future__ import annotations

import functools
import json
from importlib import resources

from jaxdefense.attacks.presets import get_preset
from jaxdefense.tables.spec import Spec, System, chosen_attacks, run

DATASETS = ("cifar10", "svhn_cropped")
# table -> (classifier, the paper's name, the runs' prefix: the two tables' runs are other
# models and live side by side in one root and one record)
ARCHS = {"1": ("resnet18", "ResNet-18", ""), "2": ("vgg16_bn", "VGG16", "vgg16_")}
METHODS = (("at", "AT"), ("trades", "TRADES"), ("mart", "MART"))
LABELS = {"fgsm": "FGSM", "pgd": "PGD-20", "pgd100": "PGD-100", "cw": "CW"}
PUBLISHED = {"clean": "Natural", "fgsm": "FGSM", "pgd": "PGD-20", "pgd100": "PGD-100",
             "cw": "CW", "worst_case": "Ensemble"}
DATASET_NAMES = {"cifar10": "CIFAR-10", "svhn_cropped": "SVHN"}


def _systems(prefix: str = "") -> tuple:
    return tuple(System(f"{m}{suffix}", f"{label}{plus}", f"{prefix}{m}{suffix}", "whitebox")
                 for m, label in METHODS for suffix, plus in (("", ""), ("_fsr", "+FSR")))


def _runs(classifier: str, prefix: str) -> dict:
    return {f"{prefix}{m}{suffix}": run("fsr", all=dict(method=m, fsr=suffix == "_fsr",
                                                         classifier=classifier))
            for m, _ in METHODS for suffix in ("", "_fsr")}


def _attacks(last: bool):
    def attacks(dataset: str, max_steps: int | None, eot_samples: int | None,
                names=None) -> dict:
        """The `fsr` preset's four attacks in the paper's order (`names` only), capped at
        `max_steps` iterations, PGD's last iterate with `last`; the models are
        deterministic, so `eot_samples` is unused."""
        preset = get_preset("fsr", max_steps)
        return {name: dict(preset[name], **({"return_last": True}
                                             if last and "steps" in preset[name] else {}))
                for name in chosen_attacks(LABELS, names)}
    return attacks


@functools.lru_cache(maxsize=1)
def published_tables() -> dict:
    """FSR's Tables 1 and 2 as published (`reference/fsr_paper.json`, accuracy in %)."""
    text = resources.files("jaxdefense").joinpath("reference/fsr_paper.json").read_text()
    return json.loads(text)


def _published(table: str):
    def published(dataset: str) -> dict:
        ref = published_tables()
        rows = ref[f"table{table}"]["rows"][DATASET_NAMES[dataset]]
        values = {}
        for s in _systems():
            row = rows[s.label]
            values[s.name] = {ours: round(row[theirs] / 100, 6)
                              for ours, theirs in PUBLISHED.items()}
        return {"source": f"{ref['paper']}, Table {table} ({ref[f'table{table}']['model']}, "
                          f"{DATASET_NAMES[dataset]})", "note": ref["note"], "values": values}
    return published


def _spec(table: str, last: bool = False) -> Spec:
    classifier, model, prefix = ARCHS[table]
    return Spec(paper="fsr", table=table + ("-last" if last else ""),
                title=f"FSR Table {table} (white-box, {model}"
                      f"{', PGD last iterate' if last else ''})", systems=_systems(prefix),
                runs=_runs(classifier, prefix), source=f"{prefix}at", attack_order=tuple(LABELS),
                labels=LABELS, attacks=_attacks(last), published=_published(table),
                datasets=DATASETS, systems_as_rows=True, average=False,
                worst_over="attacks", worst_label="Ensemble",
                check_pgd={k: v for k, v in get_preset("fsr")["pgd"].items()},
                preset=lambda dataset: "fsr",
                note=f"Trained as the paper's section 4.1 (PGD-10 examples, 100 epochs, SGD); "
                     f"the networks are this project's {model}"
                     + (" with batch normalization" if classifier == "vgg16_bn" else "")
                     + ("; PGD returns its last iterate." if last else
                        "; PGD keeps each example's best iterate."))


TABLES = {"1": _spec("1"), "2": _spec("2"), "1-last": _spec("1", True),
          "2-last": _spec("2", True)}
