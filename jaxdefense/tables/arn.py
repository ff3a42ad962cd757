"""ARN's MNIST tables (Zhou et al., ICML 2021) as table specs: classification error in %,
defenses down, attacks across.

- Table 1: pixel-constrained attacks: PGD_N, PGD_T, CW_N (L2), DDN_N, AA_N, JSMA_T, and
  PGD_N / AA_N at the raised eps' 0.4 (eps 0.3 otherwise).
- Table 2: spatially-constrained attacks: STA_N, STA_T (stAdv) and FWA_N at eps 0.3 and 0.4.
- Table 3: adaptive attacks: white-box targeted PGD (40 steps, eps 0.3 and 0.5), C&W and
  DDN through each purifier, and gray-box attacks crafted on APE-GAN + LeNet or HGD + LeNet
  then sent to ARN.
- Table 4: BPDA + PGD_N (40 and 100 steps) through each purifier.

The papers' protocol: the purifier rows' examples are crafted on the bare target and then
purified (ARN's `accuracy.py` scores the target on purified examples crafted on it); the
model rows (none, AT_PGD, DOA 7x7) are attacked white-box. Attack settings follow the ARN code where
it has them (its `craft_adversarial_examples.py`: PGD eps 0.3, 40 steps of 0.01, random
start; C&W-L2 500 steps, confidence 1, c from 1, 4 search rounds; DDN 100 steps; stAdv 5000
L-BFGS iterations, 20 search steps), advertorch's defaults elsewhere (JSMA theta 1, gamma
1), and the FWA authors' MNIST script (300 steps, 5 x 5 neighbourhood, entropy 1e-3).
Targeted attacks aim at a random wrong class per example. PP purifiers train on targeted
and untargeted PGD, DP on untargeted DDN and untargeted PGD.
"""
from __future__ import annotations

import functools
import json
from importlib import resources

from jaxdefense import robustness
from jaxdefense.tables.spec import Spec, System, chosen_attacks, run

DATASETS = ("mnist", "digits")
SOURCE = "none"

# advertorch's LeNet-5, trained as advertorch's MNIST tutorial does (Adam at lr 1e-4, batch
# 50: 10 epochs clean, 90 with PGD eps 0.3, 40 steps of 0.01)
LENET = dict(classifier="lenet5_advertorch")
TUTORIAL = dict(LENET, optimizer="adamw", lr=1e-4, lr_min=1e-4, batch_size=50)
RUNS = {
    "none": run("standard", mnist=dict(TUTORIAL, epochs=10)),
    "at_pgd": run("fsr", all=dict(fsr=False, method="at"), mnist=dict(TUTORIAL, epochs=90)),
    "doa": run("doa", mnist=LENET),
    "apegan_pp": run("apegan", all=dict(seen_attacks="pgd,pgd_targeted"), mnist=LENET),
    "apegan_dp": run("apegan", all=dict(seen_attacks="ddn,pgd"), mnist=LENET),
    "hgd_pp": run("hgd", all=dict(seen_attacks="pgd,pgd_targeted"), mnist=LENET),
    "hgd_dp": run("hgd", all=dict(seen_attacks="ddn,pgd"), mnist=LENET),
    "arn_pp": run("arn", all=dict(seen_attacks="pgd,pgd_targeted"), mnist=LENET),
    "arn_dp": run("arn", all=dict(seen_attacks="ddn,pgd"), mnist=LENET),
}
# the published rows' names (reference/arn_paper.json) per system
ROW_NAMES = {"none": "NONE", "at_pgd": "AT_PGD", "doa": "DOA_7x7", "apegan_pp": "APE-G_PP",
             "apegan_dp": "APE-G_DP", "hgd_pp": "HGD_PP", "hgd_dp": "HGD_DP",
             "arn_pp": "ARN_PP", "arn_dp": "ARN_DP"}

SYSTEMS = (
    System("none", "NONE", "none", "whitebox"),
    System("at_pgd", "AT_PGD", "at_pgd", "whitebox"),
    System("doa", "DOA_7x7", "doa", "whitebox"),
    System("apegan_pp", "APE-G_PP", "apegan_pp", "target-only"),
    System("apegan_dp", "APE-G_DP", "apegan_dp", "target-only"),
    System("hgd_pp", "HGD_PP", "hgd_pp", "target-only"),
    System("hgd_dp", "HGD_DP", "hgd_dp", "target-only"),
    System("arn_pp", "ARN_PP", "arn_pp", "target-only"),
    System("arn_dp", "ARN_DP", "arn_dp", "target-only"),
)

PGD = dict(attack="pgd", eps=0.3, step_size=0.01, steps=40)
AA = dict(attack="autoattack", eps=0.3)
CW = dict(attack="cw_l2", confidence=1.0, initial_const=1.0, learning_rate=0.01,
          binary_search_steps=4, max_iterations=500)
DDN = dict(attack="ddn", steps=100)
STA = dict(attack="stadv", tau=1.0, max_iterations=5000, search_steps=20)
FWA = dict(attack="fwa", eps=0.3, steps=300, kernel=5, gamma=1e-3, dual_steps=50,
           dual_tol=1e-4)

ATTACKS1 = {"pgd": PGD, "pgd_t": dict(PGD, targeted=True), "cw": CW, "ddn": DDN, "aa": AA,
            "jsma_t": dict(attack="jsma", theta=1.0, gamma=1.0, targeted=True),
            "pgd_eps2": dict(PGD, eps=0.4), "aa_eps2": dict(AA, eps=0.4)}
LABELS1 = {"pgd": "PGD_N", "pgd_t": "PGD_T", "cw": "CW_N", "ddn": "DDN_N", "aa": "AA_N",
           "jsma_t": "JSMA_T", "pgd_eps2": "PGD_N eps'", "aa_eps2": "AA_N eps'"}
PUBLISHED1 = {"pgd": "PGD_N", "pgd_t": "PGD_T", "cw": "CW_N", "ddn": "DDN_N", "aa": "AA_N",
              "jsma_t": "JSMA_T", "pgd_eps2": "PGD_N_eps'", "aa_eps2": "AA_N_eps'",
              "clean": "NONE"}

ATTACKS2 = {"sta": STA, "sta_t": dict(STA, targeted=True), "fwa": FWA,
            "fwa_eps2": dict(FWA, eps=0.4)}
LABELS2 = {"sta": "STA_N", "sta_t": "STA_T", "fwa": "FWA_N", "fwa_eps2": "FWA_N eps'"}
PUBLISHED2 = {"sta": "STA_N", "sta_t": "STA_T", "fwa": "FWA_N", "fwa_eps2": "FWA_N_eps'",
              "clean": "NONE"}

ATTACKS3 = {"pgd_t": dict(PGD, targeted=True), "pgd_t_eps5": dict(PGD, eps=0.5, targeted=True),
            "cw_t": dict(CW, targeted=True), "cw": CW, "ddn_t": dict(DDN, targeted=True),
            "ddn": DDN}
LABELS3 = {"pgd_t": "PGD_T eps 0.3", "pgd_t_eps5": "PGD_T eps 0.5", "cw_t": "CW_T",
           "cw": "CW_N", "ddn_t": "DDN_T", "ddn": "DDN_N"}
SYSTEMS3 = (
    System("apegan_pp", "APE-G (white-box)", "apegan_pp", "whitebox"),
    System("hgd_pp", "HGD (white-box)", "hgd_pp", "whitebox"),
    System("arn_pp", "ARN (white-box)", "arn_pp", "whitebox"),
    System("arn_from_apegan", "ARN (crafted on APE-G+L)", "arn_pp", "from:apegan_pp"),
    System("arn_from_hgd", "ARN (crafted on HGD+L)", "arn_pp", "from:hgd_pp"),
)

ATTACKS4 = {"pgd40": PGD, "pgd100": dict(PGD, steps=100)}
LABELS4 = {"pgd40": "P+B ITE-40", "pgd100": "P+B ITE-100"}
SYSTEMS4 = (
    System("apegan_pp", "APE-G", "apegan_pp", "bpda"),
    System("arn_pp", "ARN", "arn_pp", "bpda"),
)


def _attacks(table: dict):
    def attacks(dataset: str, max_steps: int | None, eot_samples: int | None,
                names=None) -> dict:
        """The table's attacks in order (`names` only), capped at `max_steps` iterations
        (and search rounds at 2), each with the EOT draws of randomized systems."""
        out = {}
        for name in chosen_attacks(table, names):
            params = dict(table[name], eot_samples=eot_samples or robustness.EOT_SAMPLES)
            if max_steps is not None:
                for k in ("steps", "max_iterations"):
                    if k in params:
                        params[k] = min(params[k], max_steps)
                for k in ("binary_search_steps", "search_steps"):
                    if k in params:
                        params[k] = min(params[k], 2)
                if params["attack"] == "autoattack":
                    params.update(steps=min(params.get("steps", 100), max_steps),
                                  square_queries=min(params.get("square_queries", 5000),
                                                     10 * max_steps))
            out[name] = params
        return out
    return attacks


@functools.lru_cache(maxsize=1)
def published_tables() -> dict:
    """ARN's tables as published (`reference/arn_paper.json`, error in %)."""
    text = resources.files("jaxdefense").joinpath("reference/arn_paper.json").read_text()
    return json.loads(text)


def _grid(table: str, columns: dict, systems: tuple):
    def published(dataset: str) -> dict:
        ref = published_tables()
        rows = ref[table]["models"]["LeNet"]
        values = {}
        for s in systems:
            row = rows.get(ROW_NAMES.get(s.name, ""), {})
            values[s.name] = {ours: round(1 - row[theirs] / 100, 6)
                              for ours, theirs in columns.items() if row.get(theirs) is not None}
        return {"source": ref["paper"] + f", {table.replace('table', 'Table ')} (LeNet, MNIST)",
                "note": ref["units"] + " (shown as error; accuracy = 100 - error)" +
                ("; digits: the paper has no digits table, these are its MNIST values"
                 if dataset == "digits" else ""), "values": values}
    return published


# Table 3 / 4 cells: (crafted_on, attack, defense, setting) -> (system, our attack)
CELLS3 = {("APE-G+L", "PGD_T", "APE-G", "ITE-40 eps 0.3"): ("apegan_pp", "pgd_t"),
          ("APE-G+L", "PGD_T", "APE-G", "ITE-40 eps 0.5"): ("apegan_pp", "pgd_t_eps5"),
          ("ARN+L", "PGD_T", "ARN", "ITE-40 eps 0.3"): ("arn_pp", "pgd_t"),
          ("ARN+L", "PGD_T", "ARN", "ITE-40 eps 0.5"): ("arn_pp", "pgd_t_eps5"),
          ("APE-G+L", "PGD_T", "ARN", "ITE-40 eps 0.3"): ("arn_from_apegan", "pgd_t"),
          ("APE-G+L", "PGD_T", "ARN", "ITE-40 eps 0.5"): ("arn_from_apegan", "pgd_t_eps5"),
          ("APE-G+L", "CW", "APE-G", "targeted"): ("apegan_pp", "cw_t"),
          ("APE-G+L", "CW", "APE-G", "untargeted"): ("apegan_pp", "cw"),
          ("APE-G+L", "CW", "ARN", "targeted"): ("arn_from_apegan", "cw_t"),
          ("APE-G+L", "CW", "ARN", "untargeted"): ("arn_from_apegan", "cw"),
          ("HGD+L", "PGD_T", "HGD", "ITE-40 eps 0.3"): ("hgd_pp", "pgd_t"),
          ("HGD+L", "PGD_T", "HGD", "ITE-40 eps 0.5"): ("hgd_pp", "pgd_t_eps5"),
          ("HGD+L", "PGD_T", "ARN", "ITE-40 eps 0.3"): ("arn_from_hgd", "pgd_t"),
          ("HGD+L", "PGD_T", "ARN", "ITE-40 eps 0.5"): ("arn_from_hgd", "pgd_t_eps5"),
          ("HGD+L", "DDN", "HGD", "targeted"): ("hgd_pp", "ddn_t"),
          ("HGD+L", "DDN", "HGD", "untargeted"): ("hgd_pp", "ddn"),
          ("HGD+L", "DDN", "ARN", "targeted"): ("arn_from_hgd", "ddn_t"),
          ("HGD+L", "DDN", "ARN", "untargeted"): ("arn_from_hgd", "ddn")}
CELLS4 = {("APE-G+L", "P+B", "APE-G", "ITE-40"): ("apegan_pp", "pgd40"),
          ("APE-G+L", "P+B", "APE-G", "ITE-100"): ("apegan_pp", "pgd100"),
          ("ARN+L", "P+B", "ARN", "ITE-40"): ("arn_pp", "pgd40"),
          ("ARN+L", "P+B", "ARN", "ITE-100"): ("arn_pp", "pgd100")}


def _cells(number: int, cells: dict):
    def published(dataset: str) -> dict:
        ref = published_tables()
        values: dict = {}
        for c in ref["tables_3_4_5"]["cells"]:
            key = (c["crafted_on"], c["attack"], c["defense"], c["setting"])
            if c["table"] == number and key in cells:
                system, attack = cells[key]
                values.setdefault(system, {})[attack] = round(1 - c["value"] / 100, 6)
        return {"source": ref["paper"] + f", Table {number} (LeNet, MNIST)",
                "note": ref["units"] + " (shown as error)" +
                ("; digits: the paper's MNIST values" if dataset == "digits" else ""),
                "values": values}
    return published


def _spec(table: str, title: str, systems, attacks: dict, labels: dict, published,
          note: str = "") -> Spec:
    return Spec(paper="arn", table=table, title=title, systems=systems,
                runs={k: RUNS[k] for k in dict.fromkeys(
                    [SOURCE, *(r for s in systems for r in (s.run, s.crafted_on) if r)])},
                source=SOURCE, attack_order=tuple(attacks), labels=labels,
                attacks=_attacks(attacks), published=published, datasets=DATASETS,
                metric="error", systems_as_rows=True, average=False,
                check_pgd={k: v for k, v in PGD.items() if k != "attack"}, note=note)


_NOTE = ("The target is advertorch's LeNet-5 (conv 32-64, fc 200) as ARN's; PGD returns the "
         "per-example best iterate (advertorch's returns the last).")
TABLES = {
    "1": _spec("1", "ARN Table 1 (pixel-constrained attacks)", SYSTEMS, ATTACKS1, LABELS1,
               _grid("table1", PUBLISHED1, SYSTEMS), _NOTE),
    "2": _spec("2", "ARN Table 2 (spatially-constrained attacks)", SYSTEMS, ATTACKS2, LABELS2,
               _grid("table2", PUBLISHED2, SYSTEMS), _NOTE),
    "3": _spec("3", "ARN Table 3 (white-box and gray-box adaptive attacks)", SYSTEMS3,
               ATTACKS3, LABELS3, _cells(3, CELLS3), _NOTE),
    "4": _spec("4", "ARN Table 4 (BPDA + PGD_N)", SYSTEMS4, ATTACKS4, LABELS4,
               _cells(4, CELLS4), _NOTE),
}
