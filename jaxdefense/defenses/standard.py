"""Standard (undefended) training of a classifier: the baseline every defense is compared
with, and the source model of transfer attacks."""
from __future__ import annotations

import dataclasses
import os

import flax.linen as nn
import jax

from jaxdefense import config, evaluation, robustness
from jaxdefense.config import CLASSIFIER_PRESETS, SMOKE, ExperimentConfig, build_preset
from jaxdefense.data import dataset_info
from jaxdefense.training import (TrainState, classifier_step, fit, init_classifier_state,
                                 make_optimizer, resume_options)


@dataclasses.dataclass
class StandardConfig(ExperimentConfig):
    workdir: str = "runs/standard"


Config = StandardConfig
PRESETS = CLASSIFIER_PRESETS


def preset(dataset: str, smoke: bool = False, **overrides) -> StandardConfig:
    return build_preset(StandardConfig, CLASSIFIER_PRESETS, SMOKE, "", dataset, smoke, overrides)


def init_state(cfg: ExperimentConfig, key, steps_per_epoch: int) -> TrainState:
    return init_classifier_state(config.make_classifier(cfg), dataset_info(cfg.dataset)["shape"],
                                 make_optimizer(cfg, steps_per_epoch), key)


def train(cfg: ExperimentConfig, train_set, test, metrics_path, key, ckpt_dir: str,
          phase: str = "classifier", progress: bool = True, step=None):
    """Fit the classifier (resumable) with held-out accuracy per epoch. Returns
    (variables, epochs done); variables is None when stop_after_epochs ended this call early.

    step: the training step (default: cross-entropy, `training.classifier_step`); the
    single-classifier defenses (gradient regularization, noise augmentation) bring theirs.
    """
    model = config.make_classifier(cfg)
    step = step or classifier_step(model)
    steps_per_epoch = len(train_set) // cfg.batch_size

    apply = model.apply                   # one function object: evaluations compile once

    def eval_fn(st):
        v = {"params": st.params, "batch_stats": st.batch_stats}
        return {"acc": evaluation.accuracy(apply, test.x, test.y, variables=v)}

    state = fit(init_state(cfg, key, steps_per_epoch), step, train_set.x,
                train_set.y, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed,
                augment=cfg.augment, ckpt_dir=ckpt_dir, phase=phase, eval_fn=eval_fn,
                eval_every=cfg.eval_every, metrics_path=metrics_path, **resume_options(cfg), progress=progress)
    done = int(state.step) // steps_per_epoch
    if done < cfg.epochs:
        return None, done
    return {"params": state.params, "batch_stats": state.batch_stats}, done


def train_and_evaluate(cfg: StandardConfig, progress: bool = True, defense: str = "standard",
                       step=None) -> dict:
    """Train (resumable) into workdir/classifier, then the white-box closing report.
    defense / step: another single-classifier defense's name and training step."""
    train_set, test, metrics_path, steps_per_epoch = config.start(cfg, defense)
    key_init, key_attack = jax.random.split(jax.random.key(cfg.seed))
    variables, done = train(cfg, train_set, test, metrics_path, key_init,
                            os.path.join(cfg.workdir, "classifier"), progress=progress,
                            step=step)
    if variables is None:
        return {"stopped": "classifier", "epochs_done": done}
    logits_fn, _ = serve(cfg, build(cfg), variables)
    return robustness.closing_report(cfg, logits_fn, test, key_attack, metrics_path, progress)


@dataclasses.dataclass(frozen=True)
class ClassifierNets:
    """The networks of a single-classifier defense (standard, gradient regularization,
    randomized smoothing's base classifier)."""
    classifier: nn.Module


def build(cfg: ExperimentConfig) -> ClassifierNets:
    return ClassifierNets(config.make_classifier(cfg))


def restore(workdir: str, cfg: ExperimentConfig, nets: ClassifierNets) -> dict:
    from jaxdefense.checkpoint import restore_variables
    return restore_variables(os.path.join(workdir, "classifier"),
                             init_state(cfg, jax.random.key(0), 1))


def serve(cfg: ExperimentConfig, nets: ClassifierNets, variables):
    """(logits_fn, parts): the classifier in evaluation mode."""
    logits_fn = lambda x: nets.classifier.apply(variables, x, train=False)
    return logits_fn, {"classifier": logits_fn}
