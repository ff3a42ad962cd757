"""Measure a table's systems on the same examples under the paper's protocol and the
adaptive white-box attack (`protocols`), each column kept in the record (`record`) as soon as
it is done and resumed batch by batch.

The adaptive row of every system is the white-box attack on the whole served pipeline (EOT
over randomness, BPDA through non-differentiable stages), each cell the per-example worst of
it and the paper's attack, the worst case over every attack run on the example. Randomized
systems count an example as right only if right on every one of `eval_draws` draws.
Examples crafted on one model are crafted once and shared by every system (and table) that
attacks that model with the same attack.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Optional

import jax
import numpy as np

from jaxdefense import files, robustness
from jaxdefense.tables import record
from jaxdefense.tables.planning import kind
from jaxdefense.tables.protocols import (EVAL_DRAWS, attacked_ids, system_models,
                                         system_reports)
from jaxdefense.tables.spec import PROTOCOLS, Spec, System
from jaxdefense.tables.stamps import crafts_dir, examples_digest, identity

CHECKS_STREAM = 10_000      # fold_in constant of the checks' keys


def _with_avg(spec: Spec, result: dict) -> dict:
    row = {k: result[k] for k in spec.attack_order if k in result}
    if spec.average:
        row["avg"] = float(np.mean(list(row.values()))) if row else None
    row["worst_case"] = result["worst_case"]
    return row


def _worst_of_attacks(spec: Spec, report: dict, threat: str):
    """The per-example worst case over the table's attacks alone (`spec.worst_over`
    'attacks'), from a report's per-example outcomes; None when no attack ran."""
    runs = [report["per_example"][f"{threat}/{n}"] for n in spec.attack_order
            if f"{threat}/{n}" in report["per_example"]]
    return float(np.logical_and.reduce(runs).mean()) if runs else None


def combine(spec: Spec, paper: dict, adaptive: dict) -> dict:
    """The adaptive row from the per-example results of both protocols (`robustness.report`
    with per_example): each attack the per-example worst of its white-box run and its
    papers'-protocol run, the worst case over every attack of both, clean from both."""
    pe_p, pe_a = paper["per_example"], adaptive["per_example"]
    worst = pe_p["clean"] & pe_a["clean"]
    if spec.worst_over == "attacks":
        worst = np.ones_like(worst)
    row = {"clean": adaptive["clean"]}
    for name in spec.attack_order:
        runs = [v for pe in (pe_p, pe_a) for k, v in pe.items() if k.endswith("/" + name)]
        if runs:
            ok = np.logical_and.reduce(runs)
            row[name] = float(ok.mean())
            worst &= ok
    return {**_with_avg(spec, {**row, "worst_case": float(worst.mean())}),
            "clean": row["clean"]}


def checks(spec: Spec, models, x, y, key, pgd: dict, whitebox: dict, paper: dict,
           num_classes: int, batch_size: int = 256, n: int = 128) -> list:
    """Carlini et al.'s checks on a system's served pipeline ({'check', 'passed', 'detail'}
    each): white-box <= the papers' protocol per attack (the white-box runs alone), PGD
    accuracy does not rise with eps (eps / 2, eps, 2 eps, on the first `n` examples), and an
    unbounded PGD (eps 0.5, 20 steps, capped like `pgd`) reaches chance + 0.1."""
    out = []
    for name in spec.attack_order:
        if name in whitebox and name in paper and whitebox is not paper:
            out.append(dict(check=f"white-box <= papers' protocol ({spec.labels[name]})",
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


def evaluate(spec: Spec, workdirs: dict, dataset: str, x, y, attacks: dict, key,
             batch_size: int = 256, progress: bool = True, only=None,
             store: Optional[record.Record] = None, crafts_root: Optional[str] = None,
             eval_draws: int = EVAL_DRAWS, run_checks: bool = True,
             check_pgd: Optional[dict] = None, data: Optional[dict] = None) -> dict:
    """Per system: status, paper-protocol and adaptive rows {clean, attacks..., avg,
    worst_case} (`combine`), the white-box runs alone ('whitebox_only'), the sanity checks
    (`checks` with the PGD settings `check_pgd`, with `run_checks`) and the per-example
    results ('per_example', '0'/'1' per example). The adaptive run is skipped where it is
    the paper's (same attack).

    store: the table's record (`record.Record`). Each finished system is written there
    (`column_record`) and taken from there by a later call with the same identity
    (`identity`); a record measured by other code first replays its slice
    (`record.replay`) and is measured again when that differs (marked stale meanwhile).
    Within a system, each finished attack batch is kept in the record's progress folder
    until the system is done, so a stopped system resumes at its first unfinished batch,
    on this machine or on any clone the progress was committed to. data: how to load the
    examples again ({'split', 'data_dir'}), kept in the record for the replay.
    crafts_root: crafted examples are kept under crafts_root/crafts/ (`crafts_dir`, named
    after what they were crafted on, `attacked_ids`): systems that attack the same model
    with the same attack craft once (the transfer columns on the source model, the
    purifiers on their common target), in this table and in any other under the same
    root."""
    import time
    import jaxdefense
    models = {d: jaxdefense.load(w) for d, w in workdirs.items()}
    num_classes = models[spec.source].num_classes
    examples = examples_digest(x, y)
    checks_setting = check_pgd if run_checks else False
    out = {}
    for system in spec.systems:
        if only is not None and system.name not in only:
            continue
        k = key        # every system on the same key: equal attacks on one model agree
        paper_m, adaptive_m, threat = system_models(spec, system, models, dataset, eval_draws)
        reports = system_reports(paper_m, adaptive_m, threat)
        batches = crafts = None
        if store is not None:
            ident = identity(spec, system, workdirs, dataset, x, y, attacks, k, batch_size,
                             eval_draws, checks_setting)
            column_stamp = record.stamp(ident)
            kept = _reusable(store, system, ident, column_stamp, reports, x, y, k, attacks,
                             batch_size, progress)
            if kept is not None:
                out[system.name] = kept
                continue
            batches = store.progress(system.name, column_stamp)
            _check_progress(batches, system, reports, x, y, k, attacks, batch_size, progress)
        if crafts_root is not None:
            ids = dict(zip(("paper", "adaptive"),
                           attacked_ids(spec, system, models, workdirs, dataset)))
            crafts = (lambda protocol: lambda threat, name, params, ka: crafts_dir(
                crafts_root, ids[protocol], workdirs, name, params, ka, batch_size, examples))
        protocol = PROTOCOLS[system.protocol] + (
            f" ({system.crafted_on})" if system.crafted_on else "")
        entry = {"label": system.label, "paper_protocol": protocol}
        if progress:
            print(f"== attacking {system.label}", flush=True)
        sub = (lambda p: os.path.join(batches, p)) if batches else (lambda p: None)
        started = time.time()
        try:
            paper = robustness.report(paper_m, x, y, k, attacks, (threat,), batch_size,
                                      progress, cache=sub("paper"), per_example=True,
                                      crafts=crafts and crafts("paper"))
            paper_row = {"clean": paper["clean"], **_with_avg(spec, paper[threat])}
            if paper_m is adaptive_m:
                adaptive = paper
                wb_row = paper_row
            else:
                adaptive = robustness.report(adaptive_m, x, y, k, attacks, ("whitebox",),
                                             batch_size, progress, cache=sub("adaptive"),
                                             per_example=True,
                                             crafts=crafts and crafts("adaptive"))
                wb_row = {"clean": adaptive["clean"], **_with_avg(spec, adaptive["whitebox"])}
            if spec.worst_over == "attacks":
                paper_row["worst_case"] = _worst_of_attacks(spec, paper, threat)
                wb_row["worst_case"] = _worst_of_attacks(spec, adaptive, "whitebox")
            rows = {"paper": paper_row, "adaptive": combine(spec, paper, adaptive),
                    "whitebox_only": wb_row,
                    "per_example": {p: {k2: robustness.bits(v)
                                        for k2, v in r["per_example"].items()}
                                    for p, r in (("paper", paper), ("adaptive", adaptive))}}
            if run_checks and check_pgd is not None:
                if progress:
                    print(f"== checking {system.label}", flush=True)
                rows["checks"] = checks(spec, adaptive_m, x, y,
                                        jax.random.fold_in(k, CHECKS_STREAM), check_pgd,
                                        wb_row, paper_row, num_classes, batch_size)
        finally:
            spent = _add_wall(batches, time.time() - started)
        jax.clear_caches()      # this system's compiled attacks are not used again
        served = (f"{system.preprocess[kind(dataset)]} in front of {spec.source}"
                  if system.preprocess else models[system.run].defense)
        out[system.name] = {**entry, "status": "measured",
                            "workdir": workdirs.get(system.run),
                            "eval_draws": adaptive_m.eval_draws, "served": served, **rows}
        if store is not None:
            store.write(system.name, column_record(
                store, spec, system, ident, column_stamp, out[system.name], spent, attacks,
                workdirs, data))
            shutil.rmtree(batches, ignore_errors=True)
            try:                       # the progress folder, once no column is under way
                os.rmdir(os.path.dirname(batches))
            except OSError:
                pass
    return out


def column_record(store: record.Record, spec: Spec, system: System, ident: dict,
                  column_stamp: str, column: dict, wall_s: float, attacks: dict,
                  workdirs: dict, data: Optional[dict]) -> dict:
    """A finished column as the record keeps it: identity and stamp, the column (cells,
    per-example outcomes, checks), provenance (commit, date, machine, versions, code
    digest), wall time over every sitting, how to load its examples and models again
    (paths relative to the record), the attacks its replay measures, and its replays."""
    runs = sorted(ident["runs"])
    return {"format": record.FORMAT, "paper": spec.paper, "table": spec.table,
            "dataset": ident["dataset"], "system": system.name, "stamp": column_stamp,
            "identity": ident, "column": {k: v for k, v in column.items() if k != "workdir"},
            "provenance": record.provenance(), "wall_s": round(wall_s, 1),
            "data": data or {},
            "models": {r: os.path.relpath(workdirs[r], store.dir) for r in runs},
            "replay_attacks": record.replay_attacks(attacks), "replays": [], "stale": None}


def _add_wall(batches: Optional[str], seconds: float) -> float:
    """Add a sitting's seconds to a column's progress; its wall time so far."""
    if not batches:
        return seconds
    path = os.path.join(batches, "wall.json")
    spent = seconds
    if os.path.isfile(path):
        try:
            with open(path) as f:
                spent += float(json.load(f)["wall_s"])
        except (ValueError, KeyError):
            pass
    files.write_json(path, {"wall_s": spent, "code": files.code_digest()})
    return spent


def _reusable(store, system, ident, column_stamp, reports, x, y, key, attacks, batch_size,
              progress):
    """The recorded column of `system` when it can stand for this measurement, else None
    (with the reason printed): same identity, not stale, and measured by this code or
    replayed at it; a record of other code is replayed now (`record.replay`) and noted,
    or marked stale when its replay differs."""
    rec = store.read(system.name)
    if rec is None:
        return None
    where = store.path(system.name)
    code = files.code_digest()
    if rec["stamp"] != column_stamp:
        why = f"it was measured with other {record.differences(rec['identity'], ident)}"
    elif rec.get("stale"):
        why = f"it is stale ({rec['stale']['reason']})"
    elif code in record.accepted_codes(rec):
        if progress:
            print(f"== {system.label}: measured earlier ({where})", flush=True)
        return rec["column"]
    else:
        if progress:
            print(f"== {system.label}: recorded by other code; replaying its first batch",
                  flush=True)
        diffs = record.replay(reports, x, y, key, attacks, rec["replay_attacks"], batch_size,
                              rec["column"]["per_example"])
        here = record.provenance()
        if not diffs:
            rec["replays"].append({k: here[k] for k in ("commit", "code", "date", "machine")})
            store.write(system.name, rec)
            if progress:
                print(f"== {system.label}: replay agrees; reused ({where})", flush=True)
            return rec["column"]
        rec["stale"] = {"reason": f"replay at {here['commit']} differs: " +
                        "; ".join(f"{d['protocol']} {d['attack']} examples {d['examples']}"
                                  for d in diffs), "commit": here["commit"],
                        "date": here["date"]}
        store.write(system.name, rec)
        why = f"its replay at this code differs ({rec['stale']['reason']})"
    if progress:
        print(f"== {system.label}: the record {where} is not reused: {why}; measuring again",
              flush=True)
    return None


def _check_progress(batches, system, reports, x, y, key, attacks, batch_size, progress):
    """A column's finished batches from other code are kept only when their first batch
    replays the same (`record.replay`); otherwise they are moved aside (progress-stale/)."""
    wall = os.path.join(batches, "wall.json")
    if not os.path.isfile(wall):        # written before the first batch, with the code
        files.write_json(wall, {"wall_s": 0.0, "code": files.code_digest()})
        return
    with open(wall) as f:
        kept = json.load(f)
    if kept.get("code") == files.code_digest():
        return
    expected = record.batch0(batches, {p: t for p, _, t in reports})
    names = [a for a in attacks if any(f"{t}/{a}" in expected.get(p, {})
                                       for p, _, t in reports)][:2]
    diffs = record.replay(reports, x, y, key, attacks, names, batch_size, expected)
    if diffs:
        aside = batches.replace(os.sep + "progress" + os.sep,
                                os.sep + "progress-stale" + os.sep)
        shutil.rmtree(aside, ignore_errors=True)
        os.makedirs(os.path.dirname(aside), exist_ok=True)
        shutil.move(batches, aside)
        if progress:
            print(f"== {system.label}: finished batches from other code replay differently "
                  f"({diffs}); moved them to {aside}, measuring from the start", flush=True)
        return
    files.write_json(wall, {**kept, "code": files.code_digest()})
    if progress:
        print(f"== {system.label}: finished batches from other code replay the same; "
              f"resuming", flush=True)

