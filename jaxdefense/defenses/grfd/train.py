"""GRFD's three phases end to end on one workdir, resumable at any epoch.

workdir/config.json      the run's GRFDConfig (what `jaxdefense.load` rebuilds from)
workdir/metrics.jsonl    one line per epoch and phase, then the final report
workdir/generator/       orbax checkpoints of phase I (LVCVAE + RSM, optimizer)
workdir/target/          orbax checkpoints of phase III (target classifier, optimizer)
workdir/figures/         reconstructions.png (Fig. 3), latent.png (Fig. 2)
workdir/results.json     clean / FGSM / PGD accuracy of the served defense
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxdefense import config, data, evaluation, plots, robustness, summaries
from jaxdefense.defenses.grfd import core as grfd
from jaxdefense.defenses.grfd.config import GRFDConfig
from jaxdefense.training import classifier_step, fit, resume_options


def train_and_evaluate(cfg: GRFDConfig, progress: bool = True, defense: str = "grfd") -> dict:
    """Run phases I-III (each resumes from its checkpoints) and the closing attack check.
    defense: the name recorded in the workdir ('cdvae' runs the same phases, see cdvae.py)."""
    train, test, metrics_path, steps_per_epoch = config.start(cfg, defense)
    key_gen, key_target, key_attack = jax.random.split(jax.random.key(cfg.seed), 3)

    # Phase I: LVCVAE + RSM on the full loss.
    rsm = grfd.make_classifier(cfg)
    rsm_apply = rsm.apply                 # one function object: evaluations compile once

    def eval_generator(state):
        vae_vars = grfd.generator_variables(state)
        x_r = grfd.disentangle_dataset(cfg, vae_vars, test.x)
        rsm_vars = {"params": state.params["rsm"], "batch_stats": state.batch_stats["rsm"]}
        return {"rsm_acc": evaluation.accuracy(rsm_apply, x_r, test.y, variables=rsm_vars)}

    state = grfd.init_generator_state(cfg, key_gen, steps_per_epoch)
    state = fit(state, grfd.make_generator_step(cfg), train.x, train.y, epochs=cfg.epochs,
                batch_size=cfg.batch_size, seed=cfg.seed, augment=cfg.augment,
                ckpt_dir=os.path.join(cfg.workdir, "generator"), phase="generator",
                hparams_fn=lambda e: {"alpha": cfg.alpha_at(e)}, eval_fn=eval_generator,
                eval_every=cfg.eval_every, metrics_path=metrics_path,
                **resume_options(cfg),
                progress=progress)
    if int(state.step) < cfg.epochs * steps_per_epoch:
        return {"stopped": "generator", "epochs_done": int(state.step) // steps_per_epoch}
    vae_vars = grfd.generator_variables(state)
    write_figures(cfg, vae_vars, test)

    # Phase II: disentangle the training set once (z = mu).
    x_r_train = grfd.disentangle_dataset(cfg, vae_vars, train.x)
    x_r_test = grfd.disentangle_dataset(cfg, vae_vars, test.x)

    # Phase III: a fresh target on x_r.
    target = grfd.make_classifier(cfg)
    epochs = cfg.target_epochs or cfg.epochs

    target_apply = target.apply

    def eval_target(st):
        tv = {"params": st.params, "batch_stats": st.batch_stats}
        return {"defended_acc": evaluation.accuracy(target_apply, x_r_test, test.y,
                                                    variables=tv)}

    tstate = grfd.init_target_state(cfg, key_target, steps_per_epoch)
    tstate = fit(tstate, classifier_step(target), x_r_train, train.y, epochs=epochs,
                 batch_size=cfg.batch_size, seed=cfg.seed + 1, augment=cfg.augment,
                 ckpt_dir=os.path.join(cfg.workdir, "target"), phase="target",
                 eval_fn=eval_target, eval_every=cfg.eval_every, metrics_path=metrics_path,
                 **resume_options(cfg),
                 progress=progress)
    if int(tstate.step) < epochs * steps_per_epoch:
        return {"stopped": "target", "epochs_done": int(tstate.step) // steps_per_epoch}

    # The served defense, attacked end to end (white-box) with the paper's FGSM / PGD.
    target_vars = {"params": tstate.params, "batch_stats": tstate.batch_stats}
    logits_fn, _ = grfd.serve(cfg, grfd.build(cfg), {"vae": vae_vars, "target": target_vars})
    return robustness.closing_report(cfg, logits_fn, test, key_attack, metrics_path,
                                     progress)


def write_figures(cfg: GRFDConfig, vae_vars, test: data.Dataset, n: int = 8) -> None:
    """Originals / x_u / x_r (paper Fig. 3) and a PCA of z = mu by class (paper Fig. 2)."""
    vae = grfd.make_vae(cfg)
    sub = test.take(min(len(test), 1000))
    out = evaluation.map_batches(lambda xb: vae.apply(vae_vars, xb)["mu"], sub.x)
    x_u = jax.jit(lambda xb: vae.apply(vae_vars, xb)["x_u"])(jnp.asarray(sub.x[:n]))
    x_r = sub.x[:n] - np.asarray(x_u)
    figs = os.path.join(cfg.workdir, "figures")
    name = type(cfg).__name__.removesuffix("Config")
    summaries.figure(cfg.workdir, plots.image_rows(
        os.path.join(figs, "reconstructions.png"),
        {"x": sub.x[:n], "x_u": np.asarray(x_u), "x_r": np.asarray(x_r)},
        title=f"{name} on {cfg.dataset}: original, redundant x_u, robust x_r"))
    plots.latent_scatter(os.path.join(figs, "latent.png"), out, sub.y,
                         title=f"LVCVAE latent (PCA of mu), {cfg.dataset}")
