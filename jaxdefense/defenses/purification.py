"""What the input-purification defenses (ARN, IDFR, APE-GAN, DiffPure) share: their config fields, the frozen
target classifier, and the adversarial training sets crafted against it.

The target is a standard classifier: trained in `workdir/target` with the same flags as
`python -m train.standard` (the ExperimentConfig fields describe it), or restored from
`--target_workdir`. The purifier has its own `purifier_*` fields. Seen attacks are crafted
once per run against the frozen target (it does not change, so once equals on the fly up to
the random starts) and stacked with the natural images along the channel axis, so shuffling
and crop/flip augmentation move them together.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxdefense import config, evaluation, files, plots, summaries
from jaxdefense.attacks import ddn, fgsm, pgd
from jaxdefense.cpu_kernels import attacked
from jaxdefense.checkpoint import CheckpointError, load_config, restore_variables
from jaxdefense.config import ExperimentConfig
from jaxdefense.data import padded_batches
from jaxdefense.defenses import standard
from jaxdefense.evaluation import padded_batch_size
from jaxdefense.training import append_jsonl, fit, resume_options

SEEN_ATTACKS = ("pgd", "pgd_targeted", "fgsm", "ddn")
# The purifiers' digits preset (8x8 digits upscaled to 28x28): the target's schedule and the
# seen attacks' budget; each purifier adds its own epochs.
DIGITS = dict(dataset="digits", epochs=30, batch_size=64, eval_every=5, attack_eps=0.2,
              attack_step_size=0.02, attack_steps=20, purifier_batch_size=64)


@dataclasses.dataclass
class PurificationConfig(ExperimentConfig):
    # the frozen target (the ExperimentConfig fields train it, as python -m train.standard)
    target_workdir: Optional[str] = None   # restore this train.standard run instead
    # seen attacks, crafted against the target: Linf PGD budget in pixel units
    attack_eps: float = 0.3
    attack_step_size: float = 0.01
    attack_steps: int = 40
    seen_attacks: str = "pgd,pgd_targeted"   # comma list of pgd, pgd_targeted, fgsm, ddn
    # the purifier
    purifier_epochs: int = 100
    purifier_lr: float = 1e-4
    purifier_batch_size: int = 128

    def attacks(self) -> tuple[str, ...]:
        names = tuple(a.strip() for a in self.seen_attacks.split(",") if a.strip())
        if not names or set(names) - set(SEEN_ATTACKS):
            raise ValueError(f"seen_attacks takes a comma list of {SEEN_ATTACKS}, "
                             f"got {self.seen_attacks!r}")
        return names

    def validate(self):
        super().validate()
        self.attacks()
        checks = [
            (self.attack_eps >= 0 and self.attack_step_size >= 0 and self.attack_steps >= 1,
             "attack_eps and attack_step_size must be >= 0, attack_steps >= 1"),
            (self.purifier_epochs >= 1 and self.purifier_batch_size >= 1,
             "purifier_epochs and purifier_batch_size must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        target_config(self)      # a bad --target_workdir fails before anything is written
        return self


def target_config(cfg: PurificationConfig) -> standard.StandardConfig:
    """The target's own config: a train.standard run's, or cfg's classifier fields."""
    if cfg.target_workdir:
        defense, saved = load_config(cfg.target_workdir)
        if defense != "standard":
            raise CheckpointError(f"--target_workdir must be a train.standard run, "
                                  f"{cfg.target_workdir} holds {defense!r}")
        tcfg = standard.StandardConfig(**saved)
        if tcfg.dataset != cfg.dataset:
            raise ValueError(f"target {cfg.target_workdir} was trained on {tcfg.dataset}, "
                             f"not {cfg.dataset}")
        return tcfg
    fields = {f.name for f in dataclasses.fields(standard.StandardConfig)}
    return standard.StandardConfig(**{k: v for k, v in dataclasses.asdict(cfg).items()
                                      if k in fields})


def target_dir(cfg: PurificationConfig) -> str:
    return (os.path.join(cfg.target_workdir, "classifier") if cfg.target_workdir
            else os.path.join(cfg.workdir, "target"))


def restore_target(cfg: PurificationConfig):
    """(model, variables) of the trained target."""
    from jaxdefense.checkpoint import is_compact, served_variables
    tcfg = target_config(cfg)
    if cfg.target_workdir and is_compact(cfg.target_workdir):    # a committed model
        return config.make_classifier(tcfg), served_variables(cfg.target_workdir)
    return config.make_classifier(tcfg), restore_variables(
        target_dir(cfg), standard.init_state(tcfg, jax.random.key(0), 1))


@dataclasses.dataclass(frozen=True)
class PurifierNets:
    """A purification defense's networks: its own modules (`purifier`, name -> module or one
    module) and the classifier behind them (`target`)."""
    purifier: Any
    target: nn.Module


def build_nets(cfg: PurificationConfig, purifier) -> PurifierNets:
    """PurifierNets of `purifier` and the configured target's architecture."""
    return PurifierNets(purifier, config.make_classifier(target_config(cfg)))


def serve_purified(nets: PurifierNets, target_vars, purify, keyed: bool = False):
    """(logits_fn, parts): target(purify(x)); parts 'classifier' (the bare target) and
    'purify'. keyed: purify(x, key), and then logits_fn(x, key)."""
    classifier = lambda x: nets.target.apply(target_vars, x)
    if keyed:
        logits_fn = lambda x, key: classifier(purify(x, key))
    else:
        logits_fn = lambda x: classifier(purify(x))
    return logits_fn, {"classifier": classifier, "purify": purify}


def serve_restored(make_purifier, nets: PurifierNets, variables):
    """`serve_purified` of a purifier whose `restore` gave {'purifier': {'params',
    'batch_stats'}, 'target': ...}, its purify function from
    make_purifier(nets.purifier, params, batch_stats) (ARN, APE-GAN)."""
    pv = variables["purifier"]
    return serve_purified(nets, variables["target"],
                          make_purifier(nets.purifier, pv["params"], pv["batch_stats"]))


def fit_purifier(cfg: PurificationConfig, state, step, ready: dict, phase: str,
                 progress: bool = True):
    """Fit a purifier's `state` with `step` on the seen-attack stack of `ready` (`prepare`),
    resumable, in workdir/<phase>; the fitted state, or None when stop_after_epochs ended
    the call early."""
    steps = len(ready["stack"]) // cfg.purifier_batch_size
    state = fit(state, step, ready["stack"], ready["train"].y, epochs=cfg.purifier_epochs,
                batch_size=cfg.purifier_batch_size, seed=cfg.seed, augment=cfg.augment,
                ckpt_dir=os.path.join(cfg.workdir, phase), phase=phase,
                metrics_path=ready["metrics_path"], **resume_options(cfg), progress=progress)
    return state if int(state.step) >= cfg.purifier_epochs * steps else None


def restore_purifier(workdir: str, cfg: PurificationConfig, phase: str, template) -> dict:
    """{'purifier': the newest workdir/<phase> checkpoint (restored into `template`, a
    TrainState of the purifier), 'target': the target's variables}."""
    return {"purifier": restore_variables(os.path.join(workdir, phase), template),
            "target": restore_target(cfg)[1]}


def train_target(cfg: PurificationConfig, train, test, metrics_path, progress=True):
    """Train the target in workdir/target (resumable), or restore --target_workdir.
    Returns (model, variables), or None if stopped early by stop_after_epochs."""
    if cfg.target_workdir:
        return restore_target(cfg)
    tcfg = target_config(cfg)
    variables, _ = standard.train(tcfg, train, test, metrics_path, jax.random.key(cfg.seed),
                                  target_dir(cfg), phase="target", progress=progress)
    return None if variables is None else (config.make_classifier(tcfg), variables)


def craft_one(logits_fn, x, y, key, name: str, cfg: PurificationConfig):
    """One seen attack on a batch: untargeted PGD, PGD toward a random wrong class, FGSM,
    or untargeted DDN (advertorch's defaults: 100 steps, gamma 0.05; ARN's 'DP' purifiers
    see it; an L2 minimum-norm attack, not bounded by attack_eps)."""
    logits_fn = attacked(logits_fn)
    if name == "fgsm":
        return fgsm(logits_fn, x, y, key, eps=cfg.attack_eps)
    if name == "ddn":
        return ddn(logits_fn, x, y, key)
    budget = dict(eps=cfg.attack_eps, step_size=cfg.attack_step_size, steps=cfg.attack_steps,
                  return_last=True)
    if name == "pgd":
        return pgd(logits_fn, x, y, key, **budget)
    k = logits_fn(x).shape[-1]
    target = (y + jax.random.randint(jax.random.fold_in(key, 1), y.shape, 1, k)) % k
    return pgd(logits_fn, x, y, key, target=target, **budget)


def craft_set(logits_fn, x: np.ndarray, y: np.ndarray, key, cfg: PurificationConfig,
              batch_size: int = 256, progress: bool = True, desc: str = "seen attacks"):
    """[N, H, W, C * (1 + A)]: natural images then each seen attack, along channels."""
    b = padded_batch_size(batch_size, len(x))
    names = cfg.attacks()
    out = []
    batches = padded_batches(x, y, b)
    for i, (xb, yb, mask) in enumerate(tqdm(batches, total=-(-len(x) // b), desc=desc,
                                            disable=not progress, leave=False)):
        xb, yb = jnp.asarray(xb), jnp.asarray(yb)
        advs = [craft_one(logits_fn, xb, yb, jax.random.fold_in(key, 2 * i + a), n, cfg)
                for a, n in enumerate(names)]
        out.append(np.asarray(jnp.concatenate([xb, *advs], -1))[mask])
    return np.concatenate(out)


def split_stack(xs, channels: int):
    """Inverse of craft_set's stacking: [natural, attack_1, ..., attack_A]."""
    return [xs[..., i:i + channels] for i in range(0, xs.shape[-1], channels)]


def prepare(cfg: PurificationConfig, defense: str, progress: bool = True,
            craft: bool = True) -> dict:
    """Start the run, train (or restore) the target and (craft=True) craft the seen attacks
    on the training set. Returns dict(train, test, metrics_path, target=(model, vars), stack),
    or {'stopped': 'target'} when stop_after_epochs ended the call during the target phase."""
    train, test, metrics_path, _ = config.start(cfg, defense)
    target = train_target(cfg, train, test, metrics_path, progress)
    if target is None:
        return {"stopped": "target"}
    model, variables = target
    stack = craft_set(lambda x: model.apply(variables, x), train.x, train.y,
                      jax.random.key(cfg.seed + 2), cfg, progress=progress) if craft else None
    return dict(train=train, test=test, metrics_path=metrics_path, target=target, stack=stack)


def distance_to_clean(purify, x, x_adv) -> dict:
    """Mean L2 distance to the clean images of x_adv and of purify(x_adv), and of purify(x)."""
    l2 = lambda a, b: float(np.mean(np.sqrt(np.sum((np.asarray(a) - np.asarray(b)) ** 2,
                                                   axis=(1, 2, 3)))))
    p_adv = evaluation.map_batches(purify, x_adv)
    return {"adv": l2(x_adv, x), "purified_adv": l2(p_adv, x),
            "purified_clean": l2(evaluation.map_batches(purify, x), x)}


def report_cache(cfg, attacks: dict) -> str:
    """WORKDIR/report_cache/<digest of the run's settings, the attacks and the measuring code
    (`files.code_digest`)>: where the closing report keeps finished attack batches, so a
    report that was stopped (the white-box attack through a diffusion purifier runs for an
    hour on a CPU) resumes where it was, and one made by other code is never reused."""
    import hashlib
    import json
    settings = {k: v for k, v in dataclasses.asdict(cfg).items()
                if k not in ("stop_after_epochs", "workdir")}
    digest = hashlib.sha256(json.dumps([settings, attacks, files.code_digest()],
                                       sort_keys=True, default=str).encode()).hexdigest()[:16]
    return os.path.join(cfg.workdir, "report_cache", digest)


def closing_report(cfg: PurificationConfig, purify, ready: dict, progress: bool = True,
                   served=None, stochastic: bool = False, eval_draws: int = 1,
                   eot_samples: int | None = None, extra: dict | None = None) -> dict:
    """Served = target(purify(x)) unless given. On the first attack_examples of the eval
    split: FGSM and PGD at the seen-attack budget, crafted against the bare target and then
    purified (the papers' protocol, threat 'target-only') and against the whole pipeline
    ('whitebox'); the L2 distance to clean images before and after purification; a figure
    of x, target-PGD x_adv and both purified (purified.png).

    stochastic: purify(x, key) and served(x, key) are random; white-box FGSM and PGD then
    average `eot_samples` gradient draws per step, and an example counts as robust only if it is
    classified right on every one of `eval_draws` draws (also for clean accuracy).
    Finished attack batches are kept under `report_cache(cfg, attacks)`: a stopped report
    resumes where it was.
    """
    from jaxdefense import robustness
    model, variables = ready["target"]
    target_fn = lambda x: model.apply(variables, x)
    if served is None:
        served = ((lambda x, k: target_fn(purify(x, k))) if stochastic
                  else (lambda x: target_fn(purify(x))))
    one_draw = robustness.fixed_key(purify) if stochastic else purify
    test = ready["test"]
    clean_fn = (lambda x: served(x, jax.random.key(1))) if stochastic else served
    sub = test.take(cfg.attack_examples)
    if not len(sub):              # attack_examples 0: clean accuracies only
        return _written(cfg, ready, {
            "clean_acc_full_eval": evaluation.accuracy(clean_fn, test.x, test.y),
            "target_clean_acc_full_eval": evaluation.accuracy(target_fn, test.x, test.y),
            "attack_examples": 0, **(extra or {})})
    eot = {"eot_samples": eot_samples} if stochastic and eot_samples else {}
    # the EOT draws are used where the attack sees the noise (white-box)
    attacks = {"fgsm": dict(eps=cfg.attack_eps, **eot),
               "pgd": dict(eps=cfg.attack_eps, step_size=cfg.attack_step_size,
                           steps=cfg.attack_steps, **eot)}
    key = jax.random.key(cfg.seed + 3)
    models = robustness.Models(served=served, classifier=target_fn, stochastic=stochastic,
                               eval_draws=eval_draws)
    result = robustness.report(models, sub.x, sub.y, key, attacks, ("target-only", "whitebox"),
                               batch_size=128 if stochastic else 256, progress=progress,
                               cache=report_cache(cfg, attacks))
    x_adv = craft_set(target_fn, sub.x, sub.y, key, dataclasses.replace(cfg, seen_attacks="pgd"),
                      progress=False)[..., sub.x.shape[-1]:]
    summary = {"clean_acc_full_eval": evaluation.accuracy(clean_fn, test.x, test.y),
               "target_clean_acc_full_eval": evaluation.accuracy(target_fn, test.x, test.y),
               "attack_examples": len(sub), "clean_acc": result["clean"],
               "target_only": result["target-only"], "whitebox": result["whitebox"],
               "l2_to_clean_on_target_pgd": distance_to_clean(one_draw, sub.x, x_adv),
               "attacks": attacks, **(extra or {})}
    if stochastic:
        summary["eval_draws"] = eval_draws
        summary["scoring"] = (f"random defense: an example counts as correct only if it is "
                              f"classified right on all {eval_draws} draws; "
                              f"clean_acc_full_eval is one draw")
    summaries.figure(cfg.workdir, plots.image_rows(
        os.path.join(cfg.workdir, "purified.png"),
        {"x": sub.x[:8], "purified x": evaluation.map_batches(one_draw, sub.x[:8]),
         "x_adv (PGD on target)": x_adv[:8],
         "purified x_adv": evaluation.map_batches(one_draw, x_adv[:8])},
        "Purification of clean and adversarial images"))
    return _written(cfg, ready, summary)


def _written(cfg, ready: dict, summary: dict) -> dict:
    """summary, logged to metrics.jsonl and written as the run's results.json."""
    append_jsonl(ready["metrics_path"], {"phase": "report", **summary})
    files.write_json(os.path.join(cfg.workdir, "results.json"), summary)
    return summary
