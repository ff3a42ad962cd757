"""GRFD's three phases end to end on one workdir, resumable at any epoch.

workdir/config.json      the run's GRFDConfig (what `jaxdefense.load` rebuilds from)
workdir/metrics.jsonl    one line per epoch and phase, then the final report
workdir/generator/       orbax checkpoints of phase I (LVCVAE + RSM, optimizer)
workdir/target/          orbax checkpoints of phase III (target classifier, optimizer)
workdir/figures/         reconstructions.png (Fig. 3), latent.png (Fig. 2)
workdir/results.json     clean / FGSM / PGD accuracy of the served defense
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxdefense import attacks, checkpoint, data, evaluation, plots
from jaxdefense.attacks.presets import get_preset, preset_for
from jaxdefense.defenses import grfd
from jaxdefense.defenses.grfd_config import GRFDConfig
from jaxdefense.training import append_jsonl, classifier_step, fit

# Fields that may change between a run and its resumption.
RESUMABLE = {"workdir", "data_dir", "stop_after_epochs", "eval_every", "attack_examples",
             "keep_checkpoints", "limit_eval"}


def check_workdir(cfg: GRFDConfig) -> None:
    """Refuse to resume a workdir that was trained with a different configuration."""
    path = os.path.join(cfg.workdir, checkpoint.CONFIG_FILE)
    if not os.path.isfile(path):
        return
    defense, old = checkpoint.load_config(cfg.workdir)
    new = dataclasses.asdict(cfg)
    diff = {k: (old.get(k), v) for k, v in new.items()
            if k not in RESUMABLE and old.get(k) != v}
    if defense != "grfd" or diff:
        raise ValueError(f"{cfg.workdir} holds a {defense} run with other settings "
                         f"{ {k: f'{a} -> {b}' for k, (a, b) in diff.items()} }; "
                         f"use a new --workdir to start afresh")


def load_data(cfg: GRFDConfig):
    train = data.load(cfg.dataset, cfg.train_split, cfg.data_dir).take(cfg.limit_train)
    if cfg.train_fraction < 1:
        keep = np.sort(np.random.default_rng(cfg.seed).permutation(len(train))
                       [:max(1, int(cfg.train_fraction * len(train)))])
        train = dataclasses.replace(train, x=train.x[keep], y=train.y[keep])
    test = data.load(cfg.dataset, cfg.eval_split, cfg.data_dir).take(cfg.limit_eval)
    return train, test


def train_and_evaluate(cfg: GRFDConfig, progress: bool = True) -> dict:
    """Run phases I-III (each resumes from its checkpoints) and the closing attack check."""
    cfg.validate()
    check_workdir(cfg)
    train, test = load_data(cfg)
    checkpoint.save_config(cfg.workdir, "grfd", dataclasses.asdict(cfg))
    metrics_path = os.path.join(cfg.workdir, "metrics.jsonl")
    steps_per_epoch = len(train) // cfg.batch_size
    key_gen, key_target, key_attack = jax.random.split(jax.random.key(cfg.seed), 3)

    # Phase I: LVCVAE + RSM on the full loss.
    rsm = grfd.make_classifier(cfg)

    def eval_generator(state):
        vae_vars = grfd.generator_variables(state)
        x_r = grfd.disentangle_dataset(cfg, vae_vars, test.x)
        rsm_vars = {"params": state.params["rsm"], "batch_stats": state.batch_stats["rsm"]}
        return {"rsm_acc": evaluation.accuracy(lambda xb: rsm.apply(rsm_vars, xb), x_r, test.y)}

    state = grfd.init_generator_state(cfg, key_gen, steps_per_epoch)
    state = fit(state, grfd.make_generator_step(cfg), train.x, train.y, epochs=cfg.epochs,
                batch_size=cfg.batch_size, seed=cfg.seed, augment=cfg.augment,
                ckpt_dir=os.path.join(cfg.workdir, "generator"), phase="generator",
                hparams_fn=lambda e: {"alpha": cfg.alpha_at(e)}, eval_fn=eval_generator,
                eval_every=cfg.eval_every, metrics_path=metrics_path,
                keep=cfg.keep_checkpoints, stop_after_epochs=cfg.stop_after_epochs,
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

    def eval_target(st):
        tv = {"params": st.params, "batch_stats": st.batch_stats}
        return {"defended_acc": evaluation.accuracy(lambda xb: target.apply(tv, xb),
                                                    x_r_test, test.y)}

    tstate = grfd.init_target_state(cfg, key_target, steps_per_epoch)
    tstate = fit(tstate, classifier_step(target), x_r_train, train.y, epochs=epochs,
                 batch_size=cfg.batch_size, seed=cfg.seed + 1, augment=cfg.augment,
                 ckpt_dir=os.path.join(cfg.workdir, "target"), phase="target",
                 eval_fn=eval_target, eval_every=cfg.eval_every, metrics_path=metrics_path,
                 keep=cfg.keep_checkpoints, stop_after_epochs=cfg.stop_after_epochs,
                 progress=progress)
    if int(tstate.step) < epochs * steps_per_epoch:
        return {"stopped": "target", "epochs_done": int(tstate.step) // steps_per_epoch}

    # The served defense, attacked end to end (white-box) with the paper's FGSM / PGD.
    target_vars = {"params": tstate.params, "batch_stats": tstate.batch_stats}
    logits_fn = grfd.make_defended_logits_fn(cfg, vae_vars, target_vars)
    report = robustness_report(logits_fn, test.take(cfg.attack_examples), key_attack,
                               preset_for(cfg.dataset), progress=progress)
    report["clean_acc_full_eval"] = evaluation.accuracy(logits_fn, test.x, test.y)
    append_jsonl(metrics_path, {"phase": "report", **report})
    with open(os.path.join(cfg.workdir, "results.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def robustness_report(logits_fn, ds, key, preset: str, max_steps: int | None = None,
                      progress: bool = True) -> dict:
    """Clean accuracy and each preset attack's robust accuracy (white-box), in [0, 1]."""
    out = {"preset": preset, "examples": len(ds)}
    for i, (name, params) in enumerate(get_preset(preset, max_steps).items()):
        res = evaluation.robust_accuracy(logits_fn, attacks.ATTACKS[name], ds.x, ds.y,
                                         jax.random.fold_in(key, i),
                                         desc=name if progress else None, **params)
        out["clean_acc"] = res["clean"]
        out[f"{name}_acc"] = res["robust"]
        out[f"{name}_params"] = params
    return out


def write_figures(cfg: GRFDConfig, vae_vars, test: data.Dataset, n: int = 8) -> None:
    """Originals / x_u / x_r (paper Fig. 3) and a PCA of z = mu by class (paper Fig. 2)."""
    vae = grfd.make_vae(cfg)
    sub = test.take(min(len(test), 1000))
    out = evaluation.map_batches(lambda xb: vae.apply(vae_vars, xb)["mu"], sub.x)
    x_u, x_r = jax.jit(grfd.make_disentangle_fn(cfg, vae_vars))(jnp.asarray(sub.x[:n]))
    figs = os.path.join(cfg.workdir, "figures")
    plots.image_rows(os.path.join(figs, "reconstructions.png"),
                     {"x": sub.x[:n], "x_u": np.asarray(x_u), "x_r": np.asarray(x_r)},
                     title=f"GRFD on {cfg.dataset}: original, redundant x_u, robust x_r")
    plots.latent_scatter(os.path.join(figs, "latent.png"), out, sub.y,
                         title=f"LVCVAE latent (PCA of mu), {cfg.dataset}")
