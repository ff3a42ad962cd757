"""One engine for every paper's table (`spec.Spec`): plan and train the runs under one root,
attack every system on the same examples under the paper's protocol and the adaptive
white-box attack, keep each system's measurement as soon as it is done, render the table
with the published values beside the measured cells.

Protocols (`spec.PROTOCOLS`): transfer from the undefended run; white-box on the model; a
fixed noise draw without EOT; crafted on the bare target then sent through the defense;
BPDA through a purifier; crafted on another run's pipeline (gray-box). The adaptive row of
every system is the white-box attack on the whole served pipeline (EOT over randomness,
BPDA through non-differentiable stages), each cell the per-example worst of it and the
paper's attack, the worst case over every attack run on the example. Randomized systems
count an example as right only if right on every one of `eval_draws` draws. Examples
crafted on one model are crafted once and shared by every system (and table) that attacks
that model with the same attack.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
from typing import Optional

import jax
import numpy as np

from jaxdefense import files, plots, robustness
from jaxdefense.tables import record
from jaxdefense.tables.spec import PROTOCOLS, Spec, System

EVAL_DRAWS = 4      # randomized systems: right on every one of this many draws (smoke: 2)
CHECKS_STREAM = 10_000      # fold_in constant of the checks' keys


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


def system_models(spec: Spec, system: System, models: dict, dataset: str,
                  eval_draws: int = EVAL_DRAWS):
    """(paper Models, adaptive Models, paper threat) for a system from loaded models (run ->
    DefendedClassifier); a randomized system is scored on `eval_draws` draws under both."""
    from jaxdefense.defenses import preprocessing
    none = models[spec.source]
    if system.preprocess:
        pre = system.preprocess[kind(dataset)]
        served = preprocessing.preprocessed(none.logits_fn, pre, use_bpda=False)
        adaptive = robustness.Models(served=preprocessing.preprocessed(none.logits_fn, pre))
        return robustness.Models(served=served, source=none.logits_fn), adaptive, "transfer"
    model = models[system.run]
    draws = eval_draws if model.stochastic else 1
    adaptive = robustness.Models(served=model.logits_fn, stochastic=model.stochastic,
                                 eval_draws=draws)
    protocol = system.protocol
    if protocol == "whitebox":
        return adaptive, adaptive, "whitebox"
    if protocol == "fixed-draw":
        return (robustness.Models(served=model.logits_fn,
                                  source=robustness.fixed_key(model.logits_fn),
                                  stochastic=True, eval_draws=draws), adaptive, "transfer")
    if protocol == "target-only":
        return (robustness.Models(served=model.logits_fn, classifier=_part(model, "classifier"),
                                  stochastic=model.stochastic, eval_draws=draws),
                adaptive, "target-only")
    if protocol == "bpda":
        source = _bpda_pipeline(model)
    elif protocol == "from":
        source = models[system.crafted_on].logits_fn
        if models[system.crafted_on].stochastic:
            source = robustness.fixed_key(source)
    else:
        source = none.logits_fn
    return (robustness.Models(served=model.logits_fn, source=source,
                              stochastic=model.stochastic, eval_draws=draws),
            adaptive, "transfer")


def system_reports(paper_m, adaptive_m, threat: str) -> list:
    """[(protocol, Models, threat)] of a system's reports (`system_models`' output): the
    papers' protocol, and the adaptive white-box run unless it is the same report."""
    return [("paper", paper_m, threat)] + (
        [] if paper_m is adaptive_m else [("adaptive", adaptive_m, "whitebox")])


def _part(model, name: str):
    if name not in model.parts:
        raise ValueError(f"{model.defense} serves no {name!r} stage (it has "
                         f"{sorted(model.parts)}): the protocol needs one")
    return model.parts[name]


@functools.lru_cache(maxsize=16)
def _bpda_cached(purify, classifier):
    from jaxdefense.attacks.bpda import bpda
    stage = bpda(purify)
    return lambda x: classifier(stage(x))


def _bpda_pipeline(model):
    """classifier(purify(x)) with the purifier's gradient replaced by the identity; cached
    per model so the attacks compile once."""
    return _bpda_cached(_part(model, "purify"), _part(model, "classifier"))


def _with_avg(spec: Spec, result: dict) -> dict:
    row = {k: result[k] for k in spec.attack_order if k in result}
    if spec.average:
        row["avg"] = float(np.mean(list(row.values()))) if row else None
    row["worst_case"] = result["worst_case"]
    return row


def _run_stamp(workdirs: dict, run: str) -> str:
    """A run's identity: its model's digest (`checkpoint.model_digest`: config and served
    variables) where it holds a model, else the digest of its results.json, else its
    workdir's absolute path."""
    w = workdirs[run]
    if os.path.isfile(os.path.join(w, "config.json")):
        made = [os.path.join(w, f) for f in ("model.json", "results.json")
                if os.path.isfile(os.path.join(w, f))]
        return _model_digest(os.path.abspath(w), max((os.stat(f).st_mtime_ns for f in made),
                                                     default=0))
    path = os.path.join(w, "results.json")
    return hashlib.sha256(open(path, "rb").read()).hexdigest() if os.path.isfile(path) \
        else os.path.abspath(w)


@functools.lru_cache(maxsize=64)
def _model_digest(path: str, made: int) -> str:
    """`checkpoint.model_digest`, once per model and version (`made`: its files' time)."""
    from jaxdefense import checkpoint
    return checkpoint.model_digest(path)


def examples_digest(x, y) -> str:
    """sha256 of the attacked examples: images as float32, labels as int64."""
    h = hashlib.sha256(np.ascontiguousarray(np.asarray(x, np.float32)).tobytes())
    h.update(np.ascontiguousarray(np.asarray(y, np.int64)).tobytes())
    return h.hexdigest()


def identity(spec: Spec, system: System, workdirs: dict, dataset: str, x, y, attacks: dict,
             key, batch_size: int, eval_draws: int = EVAL_DRAWS, checks=True) -> dict:
    """What a system's measurement is, the code aside: the paper, table and dataset, the
    system (its run, protocol and preprocessing), every attack setting, the key, the
    batch, the evaluation draws, the checks (False, or their PGD settings), the examples
    and the models it loads (`_run_stamp`, keyed by run name). Its digest
    (`record.stamp`) names the system's record; the code that measured it is provenance
    (`record`)."""
    runs = {d: _run_stamp(workdirs, d)
            for d in sorted({r for r in (system.run, spec.source, system.crafted_on) if r})}
    return json.loads(json.dumps(dict(
        paper=spec.paper, table=spec.table, dataset=dataset, system=system.name,
        run=system.run, protocol=system.paper, preprocess=system.preprocess, runs=runs,
        attacks=attacks, batch_size=batch_size, key=record.key_data(key),
        eval_draws=eval_draws, checks=checks, examples=examples_digest(x, y),
        count=int(len(x))), sort_keys=True, default=str))


def _served_id(models: dict, run: str) -> tuple:
    """What attacking run's served pipeline attacks: its plain network for an undefended
    run (the same network a purifier in front of it has as its classifier part)."""
    return ("model", run) if models[run].defense == "standard" else ("served", run)


def attacked_ids(spec: Spec, system: System, models: dict, workdirs: dict,
                 dataset: str) -> tuple:
    """(papers' protocol, adaptive): what each protocol's attacks are crafted on, as (kind,
    run) (kind: 'model', 'served', 'classifier', 'fixed-draw', 'bpda', or a preprocessing's
    'bpda:<name>'). Systems whose attacks see the same function under the same name share
    their crafted examples: the transfer columns all craft on the source model, the
    purifiers in front of one target on that target, a gray-box row on the pipeline it
    names."""
    if system.preprocess:
        return ("model", spec.source), (f"bpda:{system.preprocess[kind(dataset)]}", spec.source)
    adaptive = _served_id(models, system.run)
    protocol = system.protocol
    if protocol == "whitebox":
        return adaptive, adaptive
    if protocol == "fixed-draw":
        return ("fixed-draw", system.run), adaptive
    if protocol == "bpda":
        return ("bpda", system.run), adaptive
    if protocol == "from":
        other = system.crafted_on
        return (("fixed-draw", other) if models[other].stochastic
                else _served_id(models, other)), adaptive
    if protocol == "target-only":
        target = (models[system.run].config or {}).get("target_workdir")
        for run, w in workdirs.items():
            if target and os.path.realpath(w) == os.path.realpath(target) and \
                    models[run].defense == "standard":
                return ("model", run), adaptive
        return ("classifier", system.run), adaptive
    return ("model", spec.source), adaptive


def crafts_dir(cache_dir: str, attacked: tuple, workdirs: dict, name: str, params: dict,
               key, batch_size: int, examples: str) -> str:
    """cache_dir/crafts/<digest>: the examples attack `name` (`params`, on `key`) crafts on
    `attacked` ((kind, run) of `attacked_ids`) from `examples` (`examples_digest`) in
    batches of `batch_size`, under the measuring code; the same settings under another
    name (Table 4's 'pgd40' is Table 1's 'pgd') give the same directory."""
    stamp = json.dumps(dict(attacked=[*attacked, _run_stamp(workdirs, attacked[1])],
                            attack=robustness.resolved_entry(name, params),
                            batch_size=batch_size,
                            key=np.asarray(jax.random.key_data(key)).tolist(),
                            examples=examples, code=files.code_digest()),
                       sort_keys=True, default=str)
    return os.path.join(cache_dir, "crafts", hashlib.sha256(stamp.encode()).hexdigest()[:24])


def combine(spec: Spec, paper: dict, adaptive: dict) -> dict:
    """The adaptive row from the per-example results of both protocols (`robustness.report`
    with per_example): each attack the per-example worst of its white-box run and its
    papers'-protocol run, the worst case over every attack of both, clean from both."""
    pe_p, pe_a = paper["per_example"], adaptive["per_example"]
    worst = pe_p["clean"] & pe_a["clean"]
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


def rows(spec: Spec) -> tuple:
    return ("clean", *spec.attack_order, *(("avg",) if spec.average else ()), "worst_case")


def differences(spec: Spec, columns: dict, values: dict, shown_avg: bool = True) -> dict:
    """{system: {protocol: {row: measured - published}}} in accuracy [0, 1] for every cell
    the paper reports ('avg' only when `shown_avg`: all the attacks ran)."""
    out = {}
    for c, col in columns.items():
        pub = values.get(c, {})
        for protocol in ("paper", "adaptive"):
            row = col.get(protocol) or {}
            out.setdefault(c, {})[protocol] = {
                r: row[r] - pub[r] for r in rows(spec) if row.get(r) is not None and
                pub.get(r) is not None and (r != "avg" or shown_avg)}
    return out


def _cell(spec: Spec, measured: dict, row: str, paper: dict) -> str:
    """'78.2 (76.6, +1.6)': measured, then the published value and the difference, in the
    table's metric (accuracy or error, %)."""
    def shown(v):
        return 100 * (1 - v) if spec.metric == "error" else 100 * v
    v = measured.get(row)
    text = "-" if v is None else f"{shown(v):.1f}"
    p = paper.get(row)
    if p is None:
        return text
    diff = "" if v is None else f", {shown(v) - shown(p):+.1f}"
    return text + f" ({shown(p):.{2 if spec.metric == 'error' else 1}f}{diff})"


def _label(spec: Spec, row: str, n: int) -> str:
    label = {"clean": "Clean" if spec.metric == "accuracy" else "None (clean)", "avg": "Avg",
             "worst_case": "Worst case", **spec.labels}[row]
    if row == "avg":
        label += f" ({n} attack{'s' * (n != 1)})"
    return label


def markdown(spec: Spec, table: dict) -> str:
    """The table in the paper's layout, cells 'measured (published, measured - published)'
    in the table's metric where the paper reports one, under the papers' protocol and under
    the adaptive attack; the sanity checks that failed after them."""
    cols = list(table["columns"])
    draws = table.get("eval_draws", EVAL_DRAWS)
    eot = table.get("eot_samples", robustness.EOT_SAMPLES)
    metric = "error" if spec.metric == "error" else "accuracy"
    preset = f", attack preset {table['preset']}" if table.get("preset") else ""
    lines = [f"# {spec.title} on {table['dataset']}: {table['examples']} examples{preset}", "",
             f"Cells: measured (published, difference), {metric} in %. Randomized systems: "
             f"right on every one of {draws} draws to count; {eot} EOT draws per gradient "
             f"in their white-box attacks" + _fixed_draw_note(spec, table) + ".", ""]
    if spec.note:
        lines += [spec.note, ""]
    paper = table["paper_values"]["values"]
    n = len(table.get("attacks", spec.attack_order))
    full = n == len(spec.attack_order)
    shown_rows = [r for r in rows(spec) if r != "avg" or spec.average]

    def cell(c, protocol, row):
        # the paper's average is over all its attacks: not shown next to a subset's
        pub = paper.get(c, {}) if (row != "avg" or full) else {}
        return _cell(spec, table["columns"][c].get(protocol) or {}, row, pub)

    for protocol, title in (("paper", "The papers' protocol (this project's reading)"),
                            ("adaptive", "Adaptive white-box attack on the served pipeline "
                                         "(EOT, BPDA), per example the worst of it and the "
                                         "papers' attack")):
        lines += [f"## {title}", ""]
        if spec.systems_as_rows:
            lines += ["| | " + " | ".join(_label(spec, r, n) for r in shown_rows) + " |",
                      "|---|" + "---|" * len(shown_rows)]
            for c in cols:
                lines.append(f"| {table['columns'][c]['label']} | " +
                             " | ".join(cell(c, protocol, r) for r in shown_rows) + " |")
        else:
            lines += ["| | " + " | ".join(table["columns"][c]["label"] for c in cols) + " |",
                      "|---|" + "---|" * len(cols)]
            for r in shown_rows:
                lines.append(f"| {_label(spec, r, n)} | " +
                             " | ".join(cell(c, protocol, r) for c in cols) + " |")
        lines.append("")
    failed = [(table["columns"][c]["label"], ch) for c in cols
              for ch in table["columns"][c].get("checks", []) if not ch["passed"]]
    ran = sum(len(table["columns"][c].get("checks", [])) for c in cols)
    if ran:
        lines += [f"Sanity checks: {ran - len(failed)} of {ran} passed" +
                  ("; failed:" if failed else ".")]
        lines += [f"- {label}: {ch['check']}: {ch['detail']}" for label, ch in failed]
        lines.append("")
    lines += ["Paper protocol per system: " + "; ".join(
        f"{table['columns'][c]['label']}: {table['columns'][c]['paper_protocol']}" for c in cols),
        "", f"Published values (in parentheses): {table['paper_values']['source']}; "
        f"{table['paper_values'].get('note', '')}", ""]
    return "\n".join(lines)


def _fixed_draw_note(spec: Spec, table: dict) -> str:
    """', except X and Y, which see one fixed draw' for the table's attacks without EOT."""
    fixed = robustness.fixed_draw(table.get("attacks") or {})
    if not fixed:
        return ""
    names = [spec.labels.get(n, n) for n in fixed]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f", except {listed}, which {'sees' if len(names) == 1 else 'see'} one fixed draw"


def figure(spec: Spec, path: str, table: dict) -> str:
    """Per system the papers'-protocol value (the average over attacks, or the worst case
    where the table has no average) beside the published one, then the adaptive average
    and worst case, in the table's metric."""
    cols = list(table["columns"])
    labels = [table["columns"][c]["label"] for c in cols]
    paper = table["paper_values"]["values"]
    n = len(table.get("attacks", spec.attack_order))
    row = "avg" if spec.average else "worst_case"
    err = spec.metric == "error"

    def shown(v):
        return None if v is None else (1 - v if err else v)
    name = "avg" if spec.average else "worst case"
    series = {f"papers' protocol, {name} (measured)":
              [shown(table["columns"][c].get("paper", {}).get(row)) for c in cols]}
    if spec.average and n == len(spec.attack_order) and any(
            paper.get(c, {}).get(row) is not None for c in cols):
        series["published avg"] = [shown(paper.get(c, {}).get(row)) for c in cols]
    if spec.average:
        series["adaptive, avg (measured)"] = [
            shown(table["columns"][c].get("adaptive", {}).get("avg")) for c in cols]
    series["adaptive, worst case (measured)"] = [
        shown(table["columns"][c].get("adaptive", {}).get("worst_case")) for c in cols]
    return plots.grouped_bars(path, labels, series, "error" if err else "accuracy",
                              f"{spec.title} on {table['dataset']} ({table['examples']} "
                              f"examples, {n} attack{'s' * (n != 1)})")
