"""Train a classifier with adversarial training (AT / TRADES / MART), with or without FSR,
through the shared harness, then report white-box robustness."""
from __future__ import annotations

import functools
import os

import jax

from jaxdefense import config, evaluation, robustness
from jaxdefense.attacks.presets import get_preset
from jaxdefense.data import dataset_info
from jaxdefense.defenses.fsr import core as fsr
from jaxdefense.defenses.fsr.adversarial_training import adversarial_step
from jaxdefense.defenses.fsr.config import FSRConfig
from jaxdefense.training import (TrainState, fit, init_classifier_state, make_optimizer,
                                 resume_options)


def make_model(cfg: FSRConfig):
    """The backbone, with the FSR module at its insertion point when cfg.fsr."""
    hook = None
    if cfg.fsr:
        hook = fsr.FSR(num_classes=dataset_info(cfg.dataset)["num_classes"], tau=cfg.tau,
                       hidden=cfg.fsr_hidden, recalibrate=cfg.recalibrate,
                       inference_feature=cfg.inference_feature)
    return config.make_classifier(cfg, feature_hook=hook)


def init_state(cfg: FSRConfig, key, steps_per_epoch: int) -> TrainState:
    return init_classifier_state(make_model(cfg), dataset_info(cfg.dataset)["shape"],
                                 make_optimizer(cfg, steps_per_epoch), key)


def make_step(cfg: FSRConfig):
    aux = (functools.partial(fsr.aux_loss, lambda_sep=cfg.lambda_sep,
                             lambda_rec=cfg.lambda_rec if cfg.recalibrate else 0.0)
           if cfg.fsr else None)
    return adversarial_step(make_model(cfg), cfg.method, eps=cfg.train_eps,
                            step_size=cfg.train_step_size, steps=cfg.train_steps,
                            beta=cfg.beta, aux_fn=aux)


def train_and_evaluate(cfg: FSRConfig, progress: bool = True) -> dict:
    train, test, metrics_path, steps_per_epoch = config.start(cfg, "fsr")
    key_init, key_attack = jax.random.split(jax.random.key(cfg.seed))

    model = make_model(cfg)
    apply = functools.partial(model.apply, train=False)   # one object: evaluations compile once

    def eval_fn(st):
        v = {"params": st.params, "batch_stats": st.batch_stats}
        return {"acc": evaluation.accuracy(apply, test.x, test.y, variables=v)}

    state = fit(init_state(cfg, key_init, steps_per_epoch), make_step(cfg), train.x, train.y,
                epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed,
                augment=cfg.augment, ckpt_dir=os.path.join(cfg.workdir, "classifier"),
                phase=f"{cfg.method}{'+fsr' if cfg.fsr else ''}", eval_fn=eval_fn,
                eval_every=cfg.eval_every, metrics_path=metrics_path,
                **resume_options(cfg),
                progress=progress)
    if int(state.step) < cfg.epochs * steps_per_epoch:
        return {"stopped": "classifier", "epochs_done": int(state.step) // steps_per_epoch}
    from jaxdefense.defenses.standard import ClassifierNets, serve
    logits_fn, _ = serve(cfg, ClassifierNets(make_model(cfg)),
                         {"params": state.params, "batch_stats": state.batch_stats})
    attacks = {k: v for k, v in get_preset(cfg.attack_preset, cfg.attack_max_steps).items()
               if k in ("fgsm", "pgd", "cw")}
    return robustness.closing_report(cfg, logits_fn, test, key_attack, metrics_path, progress,
                                     attacks=attacks)
