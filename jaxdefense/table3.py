"""GRFD's Table 3 as one comparison: every defense column trained (or resumed, or taken from
an existing workdir) under one root, attacked on the same examples with the dataset's GRFD
attack preset, under two protocols side by side:

- paper: each column as the GRFD paper evaluated it. Input-transformation and purification
  columns (bit-depth reduction, feature squeezing, CD-VAE, GRFD, APE-GAN, DiffPure): transfer
  from the undefended model (the 'none' column). Model columns (none, gradient
  regularization): white-box on the model. Randomized smoothing: white-box on one fixed
  noise draw, no EOT (what a deterministic attack library does to a random model).
- adaptive: the white-box attack on the whole served pipeline, with EOT over randomness
  (smoothing) and BPDA through non-differentiable stages (bit depth, median).
Both report the per-sample worst case over the five attacks. The paper's own numbers sit
next to each measured cell (`reference/grfd_table3.json`, with their source). A run may
take a subset of the attacks (`names`); the rows of the others stay empty, never invented.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from importlib import resources
from typing import Optional

import jax
import numpy as np

from jaxdefense import files, plots, robustness
from jaxdefense.attacks.presets import get_preset, preset_for

ATTACK_ORDER = ("fgsm", "pgd", "autoattack", "eotpgd", "vmifgsm")
ATTACK_LABELS = {"clean": "Clean", "fgsm": "FGSM", "pgd": "PGD", "autoattack": "AA",
                 "eotpgd": "EOT-PGD", "vmifgsm": "VMI-FGSM", "avg": "Avg",
                 "worst_case": "Worst case"}


@dataclasses.dataclass(frozen=True)
class Column:
    """One defense of the table. `trains`: the defense whose workdir it needs; `preprocess`: a squeezer in front of the 'none' model; `paper`: 'transfer'
    (from the none column) | 'whitebox' | 'fixed-draw' (one noise draw, no EOT)."""
    name: str
    label: str
    trains: str
    paper: str
    preprocess: Optional[dict] = None      # {dataset kind: spec}


COLUMNS = (
    Column("none", "None", "standard", "whitebox"),
    Column("bdr", "B-DR", "standard", "transfer", {"mnist": "bits:1", "cifar": "bits:5"}),
    Column("fs", "F.S.", "standard", "transfer",
           {"mnist": "squeeze:1,2", "cifar": "squeeze:5,2"}),
    Column("cdvae", "CD-VAE", "cdvae", "transfer"),
    Column("smoothing", "R.S.", "smoothing", "fixed-draw"),
    Column("gradreg", "G.R.", "gradreg", "whitebox"),
    Column("apegan", "APE-GAN", "apegan", "transfer"),
    Column("diffpure", "DiffPure", "diffpure", "transfer"),
    Column("grfd", "GRFD", "grfd", "transfer"),
)
PAPER_PROTOCOL = {"transfer": "transfer from the undefended model",
                  "whitebox": "white-box on the model",
                  "fixed-draw": "white-box, one fixed noise draw, no EOT"}


def _kind(dataset: str) -> str:
    return "mnist" if dataset in ("mnist", "digits") else "cifar"


def trainers() -> dict:
    """defense -> (preset(dataset, smoke, **overrides), train_and_evaluate(cfg, progress))."""
    from jaxdefense.defenses import apegan, cdvae, diffpure, gradreg, smoothing, standard
    from jaxdefense.defenses.grfd import config as grfd_config
    from jaxdefense.defenses.grfd import train as grfd_train
    return {"standard": (standard.preset, standard.train_and_evaluate),
            "cdvae": (cdvae.preset, cdvae.train_and_evaluate),
            "smoothing": (smoothing.preset, smoothing.train_and_evaluate),
            "gradreg": (gradreg.preset, gradreg.train_and_evaluate),
            "apegan": (apegan.preset, apegan.train_and_evaluate),
            "diffpure": (diffpure.preset, diffpure.train_and_evaluate),
            "grfd": (grfd_config.preset, grfd_train.train_and_evaluate)}


def paper_values(dataset: str) -> dict:
    """{'source': ..., 'values': {column: {row: accuracy in [0, 1] or None}}} for the dataset
    (digits reads MNIST's); empty values when the paper has no table for it."""
    text = resources.files("jaxdefense").joinpath("reference/grfd_table3.json").read_text()
    ref = json.loads(text)
    key = "mnist" if dataset == "digits" else dataset
    return {"source": ref["source"], "note": ref.get("note", ""),
            "values": ref["datasets"].get(key, {})}


def finished(workdir: str) -> bool:
    return os.path.isfile(os.path.join(workdir, "results.json"))


def train_columns(root: str, dataset: str, smoke: bool, overrides: dict, existing: dict,
                  progress: bool = True, only=None) -> dict:
    """Workdir per defense: existing[defense], else root/defense trained or resumed with
    the defense's preset plus `overrides` (fields a defense lacks are skipped). Purifiers
    (APE-GAN, DiffPure) sit in front of the 'none' column's model as their frozen target,
    so the transfer source and the target are the same network, as in the paper."""
    needed = {c.trains for c in COLUMNS if (only is None or c.name in only)}
    needed.add("standard")                       # the transfer source and the squeezers' target
    workdirs = {}
    for defense in sorted(needed, key=lambda d: d != "standard"):
        if defense in existing:
            workdirs[defense] = existing[defense]
            continue
        workdir = os.path.join(root, defense)
        workdirs[defense] = workdir
        if finished(workdir):
            continue
        make_preset, run = trainers()[defense]
        cfg = make_preset(dataset, smoke)
        fields = {f.name for f in dataclasses.fields(cfg)}
        if "target_workdir" in fields:
            overrides = {**overrides, "target_workdir": workdirs["standard"]}
        cfg = dataclasses.replace(cfg, workdir=workdir,
                                  **{k: v for k, v in overrides.items() if k in fields})
        if progress:
            print(f"== training {defense} in {workdir}", flush=True)
        out = run(cfg, progress=progress)
        if "stopped" in out:
            raise RuntimeError(f"{defense} stopped early in {workdir} ({out}); run again to "
                               f"resume")
    return workdirs


def attacks_for(dataset: str, max_steps: int | None, eot_samples: int | None,
                names=None) -> dict:
    """The dataset's GRFD preset in the table's order, `names` (default: all five) only."""
    names = ATTACK_ORDER if names is None else tuple(names)
    unknown = set(names) - set(ATTACK_ORDER)
    if unknown or not names:
        raise ValueError(f"unknown attacks {sorted(unknown)}; choose from {list(ATTACK_ORDER)}"
                         if unknown else "no attack chosen")
    attacks = get_preset(preset_for(dataset), max_steps)
    if eot_samples is not None:       # EOT draws on randomized columns (the harness's 20)
        for name in ("pgd", "autoattack", "eotpgd"):
            attacks[name]["eot_samples"] = eot_samples
    return {k: attacks[k] for k in ATTACK_ORDER if k in names}


def column_models(column: Column, models: dict, dataset: str):
    """(paper Models, adaptive Models, paper threat) for a column from loaded models."""
    from jaxdefense.defenses import preprocessing
    none = models["standard"]
    if column.preprocess:
        spec = column.preprocess[_kind(dataset)]
        served = preprocessing.preprocessed(none.logits_fn, spec, use_bpda=False)
        adaptive = robustness.Models(served=preprocessing.preprocessed(none.logits_fn, spec))
        return robustness.Models(served=served, source=none.logits_fn), adaptive, "transfer"
    model = models[column.trains]
    draws = model.config.get("eval_draws", 1)       # random columns: right on every draw
    adaptive = robustness.Models(served=model.logits_fn, stochastic=model.stochastic,
                                 eval_draws=draws)
    if column.paper == "transfer":
        return (robustness.Models(served=model.logits_fn, source=none.logits_fn,
                                  stochastic=model.stochastic, eval_draws=draws),
                adaptive, "transfer")
    if column.paper == "fixed-draw":
        return (robustness.Models(served=model.logits_fn, source=robustness.fixed_key(model.logits_fn),
                                  stochastic=True, eval_draws=draws), adaptive, "transfer")
    return adaptive, adaptive, "whitebox"


def _with_avg(result: dict) -> dict:
    row = {k: result[k] for k in ATTACK_ORDER if k in result}
    row["avg"] = float(np.mean(list(row.values()))) if row else None
    row["worst_case"] = result["worst_case"]
    return row


def _fingerprint(column: Column, workdirs: dict, x, y, attacks: dict, key,
                 batch_size: int) -> str:
    """What a column's measurement depends on: the examples, the attacks, the key, the batch
    and the finished runs it loads (their results.json, rewritten by any retraining)."""
    h = hashlib.sha256()
    runs = {}
    for d in sorted({column.trains, "standard"}):
        path = os.path.join(workdirs[d], "results.json")
        runs[d] = hashlib.sha256(open(path, "rb").read()).hexdigest() if os.path.isfile(path) \
            else os.path.abspath(workdirs[d])
    h.update(json.dumps(dict(column=column.name, attacks=attacks, batch_size=batch_size,
                             key=np.asarray(jax.random.key_data(key)).tolist(), runs=runs),
                        sort_keys=True).encode())
    h.update(np.ascontiguousarray(np.asarray(x, np.float32)).tobytes())
    h.update(np.ascontiguousarray(np.asarray(y, np.int64)).tobytes())
    return h.hexdigest()


def evaluate(workdirs: dict, dataset: str, x, y, attacks: dict, key, batch_size: int = 256,
             progress: bool = True, only=None, cache_dir: Optional[str] = None) -> dict:
    """Per column: status, paper-protocol and adaptive rows {clean, attacks..., avg,
    worst_case}; the adaptive run is skipped where it is the paper's (same attack).
    With `cache_dir`, each finished column is written to cache_dir/<column>.json and taken
    from there by a later call with the same examples, attacks, key and runs, so a table
    that stopped part-way resumes at the first unfinished column."""
    import jaxdefense
    models = {d: jaxdefense.load(w) for d, w in workdirs.items()}
    out = {}
    for i, column in enumerate(COLUMNS):
        if only is not None and column.name not in only:
            continue
        k = jax.random.fold_in(key, i)
        cached = None
        if cache_dir is not None:
            cached = os.path.join(cache_dir, f"{column.name}.json")
            stamp = _fingerprint(column, workdirs, x, y, attacks, k, batch_size)
            if os.path.isfile(cached):
                with open(cached) as f:
                    earlier = json.load(f)
                if earlier.get("fingerprint") == stamp:
                    if progress:
                        print(f"== {column.label}: measured earlier ({cached})", flush=True)
                    out[column.name] = earlier["column"]
                    continue
        entry = {"label": column.label, "paper_protocol": PAPER_PROTOCOL[column.paper]}
        paper_m, adaptive_m, threat = column_models(column, models, dataset)
        if progress:
            print(f"== attacking {column.label}", flush=True)
        paper = robustness.report(paper_m, x, y, k, attacks, (threat,), batch_size, progress)
        rows = {"paper": {"clean": paper["clean"], **_with_avg(paper[threat])}}
        if paper_m is adaptive_m:
            rows["adaptive"] = rows["paper"]
        else:
            adaptive = robustness.report(adaptive_m, x, y, k, attacks, ("whitebox",),
                                         batch_size, progress)
            rows["adaptive"] = {"clean": adaptive["clean"], **_with_avg(adaptive["whitebox"])}
        jax.clear_caches()      # this column's compiled attacks are not used again
        workdir = workdirs.get(column.trains)
        out[column.name] = {**entry, "status": "measured", "workdir": workdir,
                            "served": (f"{column.preprocess[_kind(dataset)]} in front of none"
                                       if column.preprocess else models[column.trains].defense),
                            **rows}
        if cached is not None:
            files.write_json(cached, {"fingerprint": stamp, "column": out[column.name]})
    return out


ROWS = ("clean", *ATTACK_ORDER, "avg", "worst_case")


def _cell(measured: dict, row: str, paper: dict) -> str:
    v = measured.get(row)
    text = "-" if v is None else f"{100 * v:.1f}"
    p = paper.get(row)
    return text + (f" ({100 * p:.1f})" if p is not None else "")


def markdown(table: dict) -> str:
    """Two tables in the paper's layout (attacks by defenses), accuracy in %, the paper's
    value in parentheses where it reports one."""
    cols = list(table["columns"])
    lines = [f"# GRFD Table 3 on {table['dataset']}: {table['examples']} examples, "
             f"attack preset {table['preset']}", ""]
    paper = table["paper_values"]["values"]
    for protocol, title in (("paper", "The papers' protocol"),
                            ("adaptive", "Adaptive white-box attack on the served pipeline "
                                         "(EOT, BPDA)")):
        lines += [f"## {title}", "",
                  "| | " + " | ".join(table["columns"][c]["label"] for c in cols) + " |",
                  "|---|" + "---|" * len(cols)]
        n = len(table.get("attacks", ATTACK_ORDER))
        for row in ROWS:
            # the paper's average is over all five attacks: not shown next to a subset's
            shown = protocol == "paper" and (row != "avg" or n == len(ATTACK_ORDER))
            cells = [_cell(table["columns"][c].get(protocol), row,
                           paper.get(c, {}) if shown else {}) for c in cols]
            label = ATTACK_LABELS[row]
            if row == "avg":
                label += f" ({n} attack{'s' * (n != 1)})"
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Paper protocol per column: " + "; ".join(
        f"{table['columns'][c]['label']}: {table['columns'][c]['paper_protocol']}" for c in cols),
        "", f"Paper values (in parentheses): {table['paper_values']['source']}",
        table["paper_values"].get("note", ""), ""]
    return "\n".join(lines)


def figure(path: str, table: dict) -> str:
    cols = [c for c in table["columns"]]
    labels = [table["columns"][c]["label"] for c in cols]
    series = {}
    for protocol, name in (("paper", "papers' protocol"), ("adaptive", "adaptive white-box")):
        series[f"{name}, avg"] = [table["columns"][c].get(protocol, {}).get("avg") for c in cols]
    series["adaptive, worst case"] = [table["columns"][c].get("adaptive", {}).get("worst_case")
                                      for c in cols]
    paper = table["paper_values"]["values"]
    if any(paper.get(c, {}).get("avg") is not None for c in cols):
        series["paper's reported avg"] = [paper.get(c, {}).get("avg") for c in cols]
    return plots.grouped_bars(path, labels, series, "accuracy",
                              f"Table 3 on {table['dataset']} ({table['examples']} examples)")
