"""Adversarial training: PGD-AT (Madry et al. 2018), TRADES (Zhang et al. 2019) and MART
(Wang et al. 2020) as per-sample losses and one training step for any flax classifier.

Training examples come from the project's own `attacks.pgd` (last iterate, as the
references), crafted with the model in evaluation mode (BatchNorm running statistics, no
dropout, FSR's mask without Gumbel noise), like the reference code. AT and MART maximize
cross-entropy from a uniform random start; TRADES maximizes KL(p(x) || p(x')) from
x + 0.001 * N(0, 1).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from jaxdefense.attacks import pgd
from jaxdefense.cpu_kernels import attacked
from jaxdefense.defenses.fsr.core import top_wrong_class

METHODS = ("at", "trades", "mart")


def kl_to(p_clean, logits):
    """KL(p_clean || softmax(logits)) per sample [B]."""
    logp = jax.nn.log_softmax(logits)
    return jnp.sum(p_clean * (jnp.log(p_clean + 1e-12) - logp), axis=-1)


def at_loss(logits_adv, logits_clean, y, beta):
    """Madry PGD-AT: cross-entropy on the adversarial example."""
    return optax.softmax_cross_entropy_with_integer_labels(logits_adv, y)


def trades_loss(logits_adv, logits_clean, y, beta):
    """TRADES: CE(clean) + beta * KL(p(clean) || p(adv))."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits_clean, y)
    return ce + beta * kl_to(jax.nn.softmax(logits_clean), logits_adv)


def mart_loss(logits_adv, logits_clean, y, beta):
    """MART: boosted CE on the adversarial example (CE - log(1 - p_adv[y'])) plus
    beta * KL(p(clean) || p(adv)) weighted by 1 - p_clean[y] (misclassification-aware)."""
    p_adv, p_clean = jax.nn.softmax(logits_adv), jax.nn.softmax(logits_clean)
    y_wrong = top_wrong_class(logits_adv, y)
    p_wrong = jnp.take_along_axis(p_adv, y_wrong[:, None], 1)[:, 0]
    bce = (optax.softmax_cross_entropy_with_integer_labels(logits_adv, y)
           - jnp.log(1.0001 - p_wrong + 1e-12))
    p_true = jnp.take_along_axis(p_clean, y[:, None], 1)[:, 0]
    return bce + beta * kl_to(p_clean, logits_adv) * (1.0000001 - p_true)


LOSSES = {"at": at_loss, "trades": trades_loss, "mart": mart_loss}


def craft(eval_logits_fn: Callable, x, y, key, method: str, eps: float, step_size: float,
          steps: int):
    """Training examples for `method` against the evaluation-mode model (no gradient flows
    into the parameters through them)."""
    f = attacked(eval_logits_fn)
    if method == "trades":
        p_clean = jax.lax.stop_gradient(jax.nn.softmax(eval_logits_fn(x)))
        return pgd(f, x, y, key, eps=eps, step_size=step_size, steps=steps,
                   loss=lambda logits, _: kl_to(p_clean, logits), start_std=0.001,
                   return_last=True)
    return pgd(f, x, y, key, eps=eps, step_size=step_size, steps=steps, return_last=True)


def adversarial_step(model, method: str, *, eps: float, step_size: float, steps: int,
                     beta: float = 6.0, aux_fn: Callable | None = None):
    """A `training.fit` step: craft PGD examples, then minimize LOSSES[method] (+ aux_fn).

    aux_fn(intermediates, logits_adv, y) -> (per-sample loss [B], metrics) adds a term from
    what the model sowed on the adversarial forward pass (FSR's auxiliary head).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    cls_loss = LOSSES[method]
    mutable = ["batch_stats", "intermediates"]

    def loss_fn(params, batch_stats, x, x_adv, y, key):
        k_drop, k_gumbel = jax.random.split(key)
        rngs = {"dropout": k_drop, "gumbel": k_gumbel}
        logits_clean = None
        if method != "at":   # the references run the clean batch first, both in train mode
            logits_clean, mut = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                            train=True, rngs=rngs, mutable=mutable)
            batch_stats = mut["batch_stats"]
        logits_adv, mut = model.apply({"params": params, "batch_stats": batch_stats}, x_adv,
                                      train=True, rngs=rngs, mutable=mutable)
        loss = cls_loss(logits_adv, logits_clean, y, beta)
        metrics = {"cls": loss.mean()}
        if aux_fn is not None:
            aux, aux_metrics = aux_fn(mut.get("intermediates"), logits_adv, y)
            loss = loss + aux
            metrics.update(aux_metrics)
        metrics.update(loss=loss.mean(), acc_adv=jnp.mean(jnp.argmax(logits_adv, -1) == y))
        return loss.mean(), (mut["batch_stats"], metrics)

    def step(state, batch, key, hparams):
        x, y = batch
        k_attack, k_train = jax.random.split(key)
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        x_adv = craft(lambda xa: model.apply(variables, xa, train=False), x, y, k_attack,
                      method, eps, step_size, steps)
        x_adv = jax.lax.stop_gradient(x_adv)
        grads, (bs, metrics) = jax.grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, x, x_adv, y, k_train)
        return state.apply_gradients(grads=grads, batch_stats=bs), metrics
    return step
