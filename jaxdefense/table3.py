"""GRFD's Table 3 as one comparison: every defense column trained (or resumed, or taken from
an existing workdir) under one root, attacked on the same examples with the dataset's GRFD
attack preset, under two protocols side by side:

- paper: each column as this project reads the GRFD paper's evaluation (the paper does not
  say how its examples were crafted). Input-transformation and purification columns
  (bit-depth reduction, feature squeezing, CD-VAE, GRFD, APE-GAN, DiffPure): transfer from
  the undefended model (the 'none' column). Model columns (none, gradient regularization):
  white-box on the model. Randomized smoothing: white-box on one fixed noise draw, no EOT
  (what a deterministic attack library does to a random model).
- adaptive: the white-box attack on the whole served pipeline, with EOT over randomness
  (smoothing, DiffPure: every gradient attack) and BPDA through non-differentiable stages
  (bit depth, median). Each adaptive cell is the per-example worst of that white-box
  attack and the same attack under the papers' protocol (an adaptive attacker keeps
  whichever fools the model), and the adaptive worst case is the per-example worst over
  every attack run on the example, transferred ones included.
Randomized columns count an example as right only if it is right on every one of the
table's `eval_draws` draws (the same number for all). The paper's published value sits
beside each measured cell with the difference (`reference/grfd_paper.json`). A run may
take a subset of the attacks (`names`); the rows of the others stay empty, never invented.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from importlib import resources
from typing import Optional

import jax
import numpy as np

from jaxdefense import files, plots, robustness
from jaxdefense.attacks.presets import get_preset, preset_for

EVAL_DRAWS = 4      # randomized columns: right on every one of this many draws (smoke: 2)

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


DATASETS = ("mnist", "cifar10", "cifar100", "digits")


def trainers() -> dict:
    """defense -> (preset(dataset, smoke, **overrides), train_and_evaluate(cfg, progress))
    for every defense a column trains, from the defense registry."""
    from jaxdefense.defenses import registry
    return {d: (registry.get(d).preset, registry.get(d).train_and_evaluate)
            for d in dict.fromkeys(c.trains for c in COLUMNS)}


@functools.lru_cache(maxsize=1)
def published() -> dict:
    """The GRFD paper's tables as published (`reference/grfd_paper.json`, accuracy in %)."""
    text = resources.files("jaxdefense").joinpath("reference/grfd_paper.json").read_text()
    return json.loads(text)


def paper_values(dataset: str) -> dict:
    """{'source': ..., 'note': ..., 'values': {column: {row: accuracy in [0, 1]}}}: the paper's
    Table 3 for the dataset (digits shows MNIST's, for orientation)."""
    ref = published()
    key = "mnist" if dataset == "digits" else dataset
    values = {col: {row: v / 100 for row, v in rows.items()}
              for col, rows in ref["table3"]["datasets"].get(key, {}).items()}
    note = ref["table3"]["note"] + (
        "; digits: the paper has no digits table, these are its MNIST values" if
        dataset == "digits" else "")
    return {"source": ref["paper"] + ", Table 3", "note": note, "values": values}


def finished(workdir: str) -> bool:
    return os.path.isfile(os.path.join(workdir, "results.json"))


@dataclasses.dataclass
class Planned:
    """One defense run of a table: its workdir, and the config it trains with (None when
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


def plan_columns(root: str, dataset: str, smoke: bool, overrides: dict, existing: dict,
                 only=None, user_keys=(), examples: int = 500) -> dict:
    """Everything checked before anything trains: defense -> Planned for every column of
    `only` (default: all) and the 'none' column (the transfer source and the squeezers' and
    purifiers' target). Each config is the defense's preset for `dataset` plus `overrides`
    (fields a defense lacks are skipped) and must validate; a workdir that already holds a
    run must hold this one (else ValueError: a changed --set or --epochs is never ignored);
    an --existing purifier must sit in front of the 'none' column's model; `user_keys` (the
    --set keys) must each be a field of some column of the table (chosen or not); no run may
    train on the attacked examples (the first `examples` of the 'none' run's eval split)."""
    from jaxdefense import checkpoint, config
    unknown = set(existing) - set(trainers())
    if unknown:
        raise ValueError(f"--existing names unknown defenses {sorted(unknown)}; choose from "
                         f"{sorted(trainers())}")
    needed = {c.trains for c in COLUMNS if (only is None or c.name in only)} | {"standard"}
    out, seen_fields = {}, set()
    for defense in sorted(needed, key=lambda d: d != "standard"):
        if defense in existing:
            out[defense] = Planned(defense, existing[defense])
            continue
        workdir = os.path.join(root, defense)
        make_preset, _ = trainers()[defense]
        try:
            cfg = make_preset(dataset, smoke)
        except ValueError as e:
            raise ValueError(f"column {defense!r} cannot run on {dataset}: {e}") from None
        fields = {f.name for f in dataclasses.fields(cfg)}
        seen_fields |= fields
        extra = {k: v for k, v in overrides.items() if k in fields}
        cfg = dataclasses.replace(cfg, workdir=workdir, **extra)
        try:    # the purifiers' target is the 'none' run, which may not exist yet
            dataclasses.replace(cfg, **({"target_workdir": None} if "target_workdir" in fields
                                        else {})).validate()
        except ValueError as e:
            raise ValueError(f"column {defense!r}: {e}") from None
        if "target_workdir" in fields:
            cfg = dataclasses.replace(cfg, target_workdir=out["standard"].workdir)
        config.check_workdir(cfg, defense)
        out[defense] = Planned(defense, workdir, cfg)
    for defense, (make_preset, _) in trainers().items():      # the columns not chosen too
        if defense not in needed and user_keys:
            seen_fields |= {f.name for f in dataclasses.fields(make_preset(dataset, smoke))}
    bad = set(user_keys) - seen_fields
    if bad:
        raise ValueError(f"--set names fields no column has: {sorted(bad)}")
    none_dir = os.path.realpath(out["standard"].workdir)
    std = (dataclasses.asdict(out["standard"].cfg) if out["standard"].cfg is not None
           else checkpoint.load_config(out["standard"].workdir)[1])
    for p in out.values():
        saved = dataclasses.asdict(p.cfg) if p.cfg is not None else \
            checkpoint.load_config(p.workdir)[1]
        if p.cfg is None and p.defense in ("apegan", "diffpure"):
            target = saved.get("target_workdir")
            if not target or os.path.realpath(target) != none_dir:
                raise ValueError(f"--existing {p.defense}:{p.workdir} purifies for the target "
                                 f"in {target or p.workdir + '/target'}, not the None column's "
                                 f"model in {out['standard'].workdir}: the table needs both "
                                 f"in front of the same network")
        check_disjoint(dataset, std.get("data_dir"), saved["train_split"],
                       saved.get("limit_train"), std["eval_split"], examples,
                       f"{p.defense} ({p.workdir})")
    return out


def train_columns(plan: dict, progress: bool = True) -> dict:
    """Train (or resume) every planned run without a results.json; 'standard' first.
    Returns defense -> workdir."""
    for p in plan.values():
        if p.cfg is None or finished(p.workdir):
            continue
        _, run = trainers()[p.defense]
        if progress:
            print(f"== training {p.defense} in {p.workdir}", flush=True)
        out = run(p.cfg, progress=progress)
        if "stopped" in out:
            raise RuntimeError(f"{p.defense} stopped early in {p.workdir} ({out}); run again "
                               f"to resume")
    return {d: p.workdir for d, p in plan.items()}


def attacks_for(dataset: str, max_steps: int | None, eot_samples: int | None,
                names=None) -> dict:
    """The dataset's GRFD preset in the table's order, `names` (default: all five) only.
    Every entry carries the EOT draws it uses on a randomized column (`eot_samples`,
    default `robustness.EOT_SAMPLES`); deterministic columns drop them."""
    names = ATTACK_ORDER if names is None else tuple(names)
    unknown = set(names) - set(ATTACK_ORDER)
    if unknown or not names:
        raise ValueError(f"unknown attacks {sorted(unknown)}; choose from {list(ATTACK_ORDER)}"
                         if unknown else "no attack chosen")
    attacks = get_preset(preset_for(dataset), max_steps)
    for params in attacks.values():
        params["eot_samples"] = eot_samples or robustness.EOT_SAMPLES
    return {k: attacks[k] for k in ATTACK_ORDER if k in names}


def column_models(column: Column, models: dict, dataset: str, eval_draws: int = EVAL_DRAWS):
    """(paper Models, adaptive Models, paper threat) for a column from loaded models; a
    randomized column is scored on `eval_draws` draws under both protocols."""
    from jaxdefense.defenses import preprocessing
    none = models["standard"]
    if column.preprocess:
        spec = column.preprocess[_kind(dataset)]
        served = preprocessing.preprocessed(none.logits_fn, spec, use_bpda=False)
        adaptive = robustness.Models(served=preprocessing.preprocessed(none.logits_fn, spec))
        return robustness.Models(served=served, source=none.logits_fn), adaptive, "transfer"
    model = models[column.trains]
    draws = eval_draws if model.stochastic else 1
    adaptive = robustness.Models(served=model.logits_fn, stochastic=model.stochastic,
                                 eval_draws=draws)
    if column.paper == "transfer":
        return (robustness.Models(served=model.logits_fn, source=none.logits_fn,
                                  stochastic=model.stochastic, eval_draws=draws),
                adaptive, "transfer")
    if column.paper == "fixed-draw":
        return (robustness.Models(served=model.logits_fn,
                                  source=robustness.fixed_key(model.logits_fn),
                                  stochastic=True, eval_draws=draws), adaptive, "transfer")
    return adaptive, adaptive, "whitebox"


def _with_avg(result: dict) -> dict:
    row = {k: result[k] for k in ATTACK_ORDER if k in result}
    row["avg"] = float(np.mean(list(row.values()))) if row else None
    row["worst_case"] = result["worst_case"]
    return row


def _fingerprint(column: Column, workdirs: dict, x, y, attacks: dict, key,
                 batch_size: int, eval_draws: int = EVAL_DRAWS, checks=True) -> str:
    """What a column's measurement depends on: the examples, the attacks, the key, the batch,
    the evaluation draws, the checks (False, or their PGD settings), the finished runs it loads (their results.json,
    rewritten by any retraining) and the measuring code (`files.code_digest`: the package
    version and the attack, defense and model source)."""
    h = hashlib.sha256()
    runs = {}
    for d in sorted({column.trains, "standard"}):
        path = os.path.join(workdirs[d], "results.json")
        runs[d] = hashlib.sha256(open(path, "rb").read()).hexdigest() if os.path.isfile(path) \
            else os.path.abspath(workdirs[d])
    h.update(json.dumps(dict(column=column.name, attacks=attacks, batch_size=batch_size,
                             key=np.asarray(jax.random.key_data(key)).tolist(), runs=runs,
                             eval_draws=eval_draws, checks=checks, code=files.code_digest()),
                        sort_keys=True).encode())
    h.update(np.ascontiguousarray(np.asarray(x, np.float32)).tobytes())
    h.update(np.ascontiguousarray(np.asarray(y, np.int64)).tobytes())
    return h.hexdigest()


def _bits(a) -> str:
    return "".join("1" if v else "0" for v in np.asarray(a, bool))


def combine(paper: dict, adaptive: dict) -> dict:
    """The adaptive row from the per-example results of both protocols (`robustness.report`
    with per_example): each attack the per-example worst of its white-box run and its
    papers'-protocol run, the worst case over every attack of both, clean from both."""
    pe_p, pe_a = paper["per_example"], adaptive["per_example"]
    worst = pe_p["clean"] & pe_a["clean"]
    row = {"clean": adaptive["clean"]}
    for name in ATTACK_ORDER:
        runs = [v for pe in (pe_p, pe_a) for k, v in pe.items() if k.endswith("/" + name)]
        if runs:
            ok = np.logical_and.reduce(runs)
            row[name] = float(ok.mean())
            worst &= ok
    return {**_with_avg({**row, "worst_case": float(worst.mean())}), "clean": row["clean"]}


def column_checks(models, x, y, key, pgd: dict, whitebox: dict, paper: dict,
                  num_classes: int, batch_size: int = 256, n: int = 128) -> list:
    """Carlini et al.'s checks on a column's served pipeline ({'check', 'passed', 'detail'}
    each): white-box <= the papers' protocol per attack (the white-box runs alone), PGD
    accuracy does not rise with eps (eps / 2, eps, 2 eps, on the first `n` examples), and an
    unbounded PGD (eps 0.5, 20 steps, capped like `pgd`) reaches chance + 0.1."""
    out = []
    for name in ATTACK_ORDER:
        if name in whitebox and name in paper and whitebox is not paper:
            out.append(dict(check=f"white-box <= papers' protocol ({ATTACK_LABELS[name]})",
                            passed=bool(whitebox[name] <= paper[name] + 1e-9),
                            detail=f"{100 * whitebox[name]:.1f} vs {100 * paper[name]:.1f}"))
    xs, ys = x[:n], y[:n]
    predict = robustness.make_predict(models.served, models.stochastic, models.eval_draws)

    def acc(params, i):
        ok, _ = robustness.correct_under(
            models.served, models.stochastic, models.served,
            robustness.craft_fn("pgd", params, models.stochastic), xs, ys,
            jax.random.fold_in(key, i), batch_size, eval_draws=models.eval_draws,
            predict=predict)
        return float(ok.mean())

    eps = pgd["eps"]
    sweep = [acc(dict(pgd, eps=e * eps, step_size=pgd.get("step_size", eps / 4) * e), i)
             for i, e in enumerate((0.5, 1.0, 2.0))]
    tol = 1.0 / len(xs)
    out.append(dict(check="PGD accuracy does not rise with eps",
                    passed=bool(sweep[0] + tol >= sweep[1] and sweep[1] + tol >= sweep[2]),
                    detail=" / ".join(f"{100 * a:.1f}" for a in sweep) +
                    f" at eps {eps * 255 / 2:g} / {eps * 255:g} / {2 * eps * 255:g} (/255)"))
    steps = min(20, pgd.get("steps", 20))
    big = acc(dict(eps=0.5, step_size=0.05, steps=steps,
                   eot_samples=pgd.get("eot_samples", robustness.EOT_SAMPLES)), 3)
    chance = 1.0 / num_classes
    out.append(dict(check=f"unbounded PGD (eps 0.5, {steps} steps) reaches chance",
                    passed=bool(big <= chance + 0.1),
                    detail=f"{100 * big:.1f} (chance {100 * chance:.1f})"))
    return out


CHECKS_STREAM = 10_000      # fold_in constant of the checks' keys (the reports use < 1000)


def evaluate(workdirs: dict, dataset: str, x, y, attacks: dict, key, batch_size: int = 256,
             progress: bool = True, only=None, cache_dir: Optional[str] = None,
             eval_draws: int = EVAL_DRAWS, checks: bool = True,
             check_pgd: Optional[dict] = None) -> dict:
    """Per column: status, paper-protocol and adaptive rows {clean, attacks..., avg,
    worst_case} (`combine`), the white-box runs alone ('whitebox_only'), the sanity checks
    (`column_checks` with the PGD settings `check_pgd`, default the table's PGD, with
    `checks`) and the per-example results ('per_example', '0'/'1' per
    example). The adaptive run is skipped where it is the paper's (same attack).
    With `cache_dir`, each finished column is written to cache_dir/<column>.json and taken
    from there by a later call with the same examples, attacks, key, draws, runs and code,
    so a table that stopped part-way resumes at the first unfinished column."""
    import jaxdefense
    models = {d: jaxdefense.load(w) for d, w in workdirs.items()}
    num_classes = models["standard"].num_classes
    pgd = check_pgd or attacks.get("pgd") or attacks_for(
        dataset, None, next(iter(attacks.values())).get("eot_samples"), ["pgd"])["pgd"]
    out = {}
    for i, column in enumerate(COLUMNS):
        if only is not None and column.name not in only:
            continue
        k = jax.random.fold_in(key, i)
        cached = None
        if cache_dir is not None:
            cached = os.path.join(cache_dir, f"{column.name}.json")
            stamp = _fingerprint(column, workdirs, x, y, attacks, k, batch_size, eval_draws,
                                 pgd if checks else False)
            if os.path.isfile(cached):
                with open(cached) as f:
                    earlier = json.load(f)
                if earlier.get("fingerprint") == stamp:
                    if progress:
                        print(f"== {column.label}: measured earlier ({cached})", flush=True)
                    out[column.name] = earlier["column"]
                    continue
        entry = {"label": column.label, "paper_protocol": PAPER_PROTOCOL[column.paper]}
        paper_m, adaptive_m, threat = column_models(column, models, dataset, eval_draws)
        if progress:
            print(f"== attacking {column.label}", flush=True)
        paper = robustness.report(paper_m, x, y, k, attacks, (threat,), batch_size, progress,
                                  per_example=True)
        paper_row = {"clean": paper["clean"], **_with_avg(paper[threat])}
        if paper_m is adaptive_m:
            adaptive = paper
            wb_row = paper_row
        else:
            adaptive = robustness.report(adaptive_m, x, y, k, attacks,
                                         ("whitebox",), batch_size, progress, per_example=True)
            wb_row = {"clean": adaptive["clean"], **_with_avg(adaptive["whitebox"])}
        rows = {"paper": paper_row, "adaptive": combine(paper, adaptive),
                "whitebox_only": wb_row,
                "per_example": {p: {k2: _bits(v) for k2, v in r["per_example"].items()}
                                for p, r in (("paper", paper), ("adaptive", adaptive))}}
        if checks:
            if progress:
                print(f"== checking {column.label}", flush=True)
            rows["checks"] = column_checks(adaptive_m, x, y,
                                           jax.random.fold_in(k, CHECKS_STREAM), pgd, wb_row,
                                           paper_row, num_classes, batch_size)
        jax.clear_caches()      # this column's compiled attacks are not used again
        workdir = workdirs.get(column.trains)
        out[column.name] = {**entry, "status": "measured", "workdir": workdir,
                            "eval_draws": adaptive_m.eval_draws,
                            "served": (f"{column.preprocess[_kind(dataset)]} in front of none"
                                       if column.preprocess else models[column.trains].defense),
                            **rows}
        if cached is not None:
            files.write_json(cached, {"fingerprint": stamp, "column": out[column.name]})
    return out


ROWS = ("clean", *ATTACK_ORDER, "avg", "worst_case")


def differences(columns: dict, values: dict, shown_avg: bool = True) -> dict:
    """{column: {protocol: {row: measured - published}}} in accuracy [0, 1] for every cell
    the paper reports ('avg' only when `shown_avg`: all five attacks ran)."""
    out = {}
    for c, col in columns.items():
        pub = values.get(c, {})
        for protocol in ("paper", "adaptive"):
            row = col.get(protocol) or {}
            out.setdefault(c, {})[protocol] = {
                r: row[r] - pub[r] for r in ROWS if row.get(r) is not None and
                pub.get(r) is not None and (r != "avg" or shown_avg)}
    return out


def _cell(measured: dict, row: str, paper: dict) -> str:
    """'78.2 (76.6, +1.6)': measured, then the published value and the difference."""
    v = measured.get(row)
    text = "-" if v is None else f"{100 * v:.1f}"
    p = paper.get(row)
    if p is None:
        return text
    diff = "" if v is None else f", {100 * (v - p):+.1f}"
    return text + f" ({100 * p:.1f}{diff})"


def markdown(table: dict) -> str:
    """Two tables in the paper's layout (attacks by defenses), accuracy in %, each cell
    'measured (published, measured - published)' where the paper reports one; the sanity
    checks that failed after them."""
    cols = list(table["columns"])
    draws = table.get("eval_draws", EVAL_DRAWS)
    eot = table.get("eot_samples", robustness.EOT_SAMPLES)
    lines = [f"# GRFD Table 3 on {table['dataset']}: {table['examples']} examples, "
             f"attack preset {table['preset']}", "",
             f"Randomized columns: right on every one of {draws} draws to count; "
             f"{eot} EOT draws per gradient in their white-box attacks. Cells: measured "
             f"(published, difference) in %.", ""]
    paper = table["paper_values"]["values"]
    n = len(table.get("attacks", ATTACK_ORDER))
    for protocol, title in (("paper", "The papers' protocol (this project's reading)"),
                            ("adaptive", "Adaptive white-box attack on the served pipeline "
                                         "(EOT, BPDA), per example the worst of it and the "
                                         "papers' attack")):
        lines += [f"## {title}", "",
                  "| | " + " | ".join(table["columns"][c]["label"] for c in cols) + " |",
                  "|---|" + "---|" * len(cols)]
        for row in ROWS:
            # the paper's average is over all five attacks: not shown next to a subset's
            shown = row != "avg" or n == len(ATTACK_ORDER)
            cells = [_cell(table["columns"][c].get(protocol) or {}, row,
                           paper.get(c, {}) if shown else {}) for c in cols]
            label = ATTACK_LABELS[row]
            if row == "avg":
                label += f" ({n} attack{'s' * (n != 1)})"
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    failed = [(table["columns"][c]["label"], ch) for c in cols
              for ch in table["columns"][c].get("checks", []) if not ch["passed"]]
    ran = sum(len(table["columns"][c].get("checks", [])) for c in cols)
    if ran:
        lines += [f"Sanity checks: {ran - len(failed)} of {ran} passed" +
                  ("; failed:" if failed else ".")]
        lines += [f"- {label}: {ch['check']}: {ch['detail']}" for label, ch in failed]
        lines.append("")
    lines += ["Paper protocol per column: " + "; ".join(
        f"{table['columns'][c]['label']}: {table['columns'][c]['paper_protocol']}" for c in cols),
        "", f"Published values (in parentheses): {table['paper_values']['source']}; "
        f"{table['paper_values'].get('note', '')}", ""]
    return "\n".join(lines)


def figure(path: str, table: dict) -> str:
    """Average accuracy per column: measured under the papers' protocol beside the
    published value, then the adaptive average and worst case."""
    cols = [c for c in table["columns"]]
    labels = [table["columns"][c]["label"] for c in cols]
    paper = table["paper_values"]["values"]
    n = len(table.get("attacks", ATTACK_ORDER))
    row = "avg" if n == len(ATTACK_ORDER) else None
    series = {"papers' protocol, avg (measured)":
              [table["columns"][c].get("paper", {}).get("avg") for c in cols]}
    if row and any(paper.get(c, {}).get(row) is not None for c in cols):
        series["published avg"] = [paper.get(c, {}).get(row) for c in cols]
    series["adaptive, avg (measured)"] = [table["columns"][c].get("adaptive", {}).get("avg")
                                          for c in cols]
    series["adaptive, worst case (measured)"] = [
        table["columns"][c].get("adaptive", {}).get("worst_case") for c in cols]
    return plots.grouped_bars(path, labels, series, "accuracy",
                              f"Table 3 on {table['dataset']} ({table['examples']} examples,"
                              f" {n} attack{'s' * (n != 1)})")
