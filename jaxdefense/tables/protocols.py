"""How each system of a table is attacked: one table of behaviour per paper protocol
(`spec.PROTOCOLS`), giving both what the attacks see (`system_models`) and what they are
crafted on (`attacked_ids`, the name under which crafted examples are shared).

Protocols: transfer from the undefended run; white-box on the model; a fixed noise draw
without EOT; crafted on the bare target then sent through the defense; BPDA through a
purifier; crafted on another run's pipeline (gray-box). A preprocessing system (B-DR, F.S.)
sits in front of the source run: transfer from it, BPDA through the squeezer adaptively. The
adaptive side of every system is the white-box attack on its whole served pipeline.
"""
from __future__ import annotations

import functools
import os
from typing import Callable, NamedTuple, Optional

from jaxdefense import robustness
from jaxdefense.tables.planning import kind
from jaxdefense.tables.spec import Spec, System

EVAL_DRAWS = 4      # randomized systems: right on every one of this many draws (smoke: 2)


class Paper(NamedTuple):
    """The papers' protocol of one system: the function its attacks craft on (None: the
    served pipeline itself, white-box), a classifier stage to craft on instead (target-only),
    what that is called for sharing crafted examples, and the report's threat model."""
    source: Optional[Callable]
    classifier: Optional[Callable]
    attacked: tuple
    threat: str


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


def _served_id(models: dict, run: str) -> tuple:
    """What attacking run's served pipeline attacks: its plain network for an undefended
    run (the same network a purifier in front of it has as its classifier part)."""
    return ("model", run) if models[run].defense == "standard" else ("served", run)


def _whitebox(spec, system, models, workdirs):
    return Paper(None, None, _served_id(models, system.run), "whitebox")


def _transfer(spec, system, models, workdirs):
    return Paper(models[spec.source].logits_fn, None, ("model", spec.source), "transfer")


def _fixed_draw(spec, system, models, workdirs):
    model = models[system.run]
    return Paper(robustness.fixed_key(model.logits_fn), None, ("fixed-draw", system.run),
                 "transfer")


def _bpda(spec, system, models, workdirs):
    return Paper(_bpda_pipeline(models[system.run]), None, ("bpda", system.run), "transfer")


def _crafted_on(spec, system, models, workdirs):
    other = models[system.crafted_on]
    if other.stochastic:
        return Paper(robustness.fixed_key(other.logits_fn), None,
                     ("fixed-draw", system.crafted_on), "transfer")
    return Paper(other.logits_fn, None, _served_id(models, system.crafted_on), "transfer")


def _target_only(spec, system, models, workdirs):
    """Crafted on the bare target network, then sent through the defense; shared with the
    undefended run's crafts when the target is that run's model."""
    model = models[system.run]
    attacked = ("classifier", system.run)
    target = (model.config or {}).get("target_workdir")
    for run, w in workdirs.items():
        if target and os.path.realpath(w) == os.path.realpath(target) and \
                models[run].defense == "standard":
            attacked = ("model", run)
            break
    return Paper(None, _part(model, "classifier"), attacked, "target-only")


# spec.PROTOCOLS' names -> the papers' protocol of a system (a test checks both name the same)
BEHAVIOUR = {"whitebox": _whitebox, "transfer": _transfer, "fixed-draw": _fixed_draw,
             "bpda": _bpda, "from": _crafted_on, "target-only": _target_only}


def paper_side(spec: Spec, system: System, models: dict, workdirs: dict) -> Paper:
    """The papers' protocol of a (non-preprocessing) system, from `BEHAVIOUR`."""
    if system.protocol not in BEHAVIOUR:
        raise ValueError(f"{system.name}: unknown protocol {system.protocol!r}; choose from "
                         f"{sorted(BEHAVIOUR)}")
    return BEHAVIOUR[system.protocol](spec, system, models, workdirs)


def system_models(spec: Spec, system: System, models: dict, dataset: str,
                  eval_draws: int = EVAL_DRAWS, workdirs: Optional[dict] = None):
    """(paper Models, adaptive Models, paper threat) for a system from loaded models (run ->
    DefendedClassifier); a randomized system is scored on `eval_draws` draws under both."""
    from jaxdefense.defenses import preprocessing
    if system.preprocess:
        none = models[spec.source]
        pre = system.preprocess[kind(dataset)]
        served = preprocessing.preprocessed(none.logits_fn, pre, use_bpda=False)
        adaptive = robustness.Models(served=preprocessing.preprocessed(none.logits_fn, pre))
        return robustness.Models(served=served, source=none.logits_fn), adaptive, "transfer"
    model = models[system.run]
    draws = eval_draws if model.stochastic else 1
    adaptive = robustness.Models(served=model.logits_fn, stochastic=model.stochastic,
                                 eval_draws=draws)
    side = paper_side(spec, system, models, workdirs or {})
    if side.threat == "whitebox":
        return adaptive, adaptive, "whitebox"
    paper = robustness.Models(served=model.logits_fn, source=side.source,
                              classifier=side.classifier, stochastic=model.stochastic,
                              eval_draws=draws)
    return paper, adaptive, side.threat


def system_reports(paper_m, adaptive_m, threat: str) -> list:
    """[(protocol, Models, threat)] of a system's reports (`system_models`' output): the
    papers' protocol, and the adaptive white-box run unless it is the same report."""
    return [("paper", paper_m, threat)] + (
        [] if paper_m is adaptive_m else [("adaptive", adaptive_m, "whitebox")])


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
    return (paper_side(spec, system, models, workdirs).attacked,
            _served_id(models, system.run))
