"""GRFD: robust feature disentanglement (Li et al., CMC 2025).

Phase I trains the LVCVAE generator G and a Robust Supervisory Model (RSM) jointly on
    alpha*L_rc + beta*L_kl + epsilon*L_rf + gamma*L_cl + delta*L_rb          (paper eq. 6)
with x_u = G(x) the reconstruction and x_r = x - x_u the robust feature. Phase II maps the
training set to x_r (z = mu), phase III trains the target on x_r, and the served defense is
target(x - G(x)).

Units: images and x_u, x_r are in pixel units; L_rc is measured in normalized units (as the
reference code), and the L_rb noise std (`rb_noise`) is given in normalized units and scaled
by the dataset std. L_kl is averaged over z by default (as the reference code;
`kl_reduction="sum"` is the paper's sum).
"""
from __future__ import annotations

import dataclasses
import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdefense import config, training
from jaxdefense.data import dataset_info
from jaxdefense.defenses.grfd.config import GRFDConfig
from jaxdefense.models import LVCVAE
from jaxdefense.training import TrainState, init_classifier_state, make_optimizer


def make_vae(cfg: GRFDConfig) -> LVCVAE:
    info = dataset_info(cfg.dataset)
    return LVCVAE(num_classes=info["num_classes"], z_dim=cfg.z_dim, kind=cfg.vae_kind,
                  base=cfg.vae_base, mean=info["mean"], std=info["std"],
                  dtype=jnp.dtype(cfg.dtype), rectifier=cfg.has_rectifier())


def make_classifier(cfg: GRFDConfig):
    """The RSM / target architecture. It reads x_r (pixel units, centred near 0) and divides
    by the data std: exactly the reference's normalized-space residual."""
    return config.make_classifier(cfg, residual_input=True)


def init_generator_state(cfg: GRFDConfig, key, steps_per_epoch: int) -> TrainState:
    """Phase I state: params and BatchNorm statistics of {'vae', 'rsm'}, one AdamW."""
    shape = (1, *dataset_info(cfg.dataset)["shape"])
    k_vae, k_rsm = jax.random.split(key)
    vae_vars = make_vae(cfg).init({"params": k_vae, "sample": k_vae}, jnp.zeros(shape))
    rsm_vars = make_classifier(cfg).init(k_rsm, jnp.zeros(shape))
    return TrainState.create(
        apply_fn=None,
        params={"vae": vae_vars["params"], "rsm": rsm_vars["params"]},
        batch_stats={"vae": vae_vars.get("batch_stats", {}),
                     "rsm": rsm_vars.get("batch_stats", {})},
        tx=make_optimizer(cfg, steps_per_epoch))


def init_target_state(cfg: GRFDConfig, key, steps_per_epoch: int) -> TrainState:
    """Phase III state: a fresh classifier of the RSM's architecture."""
    return init_classifier_state(make_classifier(cfg), dataset_info(cfg.dataset)["shape"],
                                 make_optimizer(cfg, steps_per_epoch), key)


def cosine_per_sample(a, b, eps: float = 1e-12):
    """Cosine similarity of a[i] and b[i] over all non-batch axes; [B]. A zero row gives 0
    with a zero gradient (as torch's cosine_similarity): an input gradient that underflows
    to exactly 0 on a confidently classified sample must not make L_rb's gradient NaN."""
    a = a.reshape(a.shape[0], -1)
    b = b.reshape(b.shape[0], -1)
    norm = lambda v: optax.safe_norm(v, 0.0, axis=1)       # d|v|/dv = 0 at v = 0, not NaN
    return jnp.sum(a * b, 1) / (norm(a) * norm(b) + eps)


def gaussian_kl(mu, logvar, reduction: str = "mean"):
    """KL(N(mu, e^logvar) || N(0, I)) per sample; [B]. reduction: "mean" over the latent
    dimensions (the default, as the reference code) or "sum" (the paper's KL).

    The reference code divides the batch sum by batch * 3 * z_dim: on 3-channel data, at the
    same beta, its KL term is ours with "mean" / 3.
    """
    terms = 1.0 + logvar - mu ** 2 - jnp.exp(logvar)
    if reduction == "sum":
        return -0.5 * jnp.sum(terms, axis=1)
    if reduction == "mean":
        return -0.5 * jnp.mean(terms, axis=1)
    raise ValueError(f"KL reduction must be mean or sum, got {reduction!r}")


def input_gradient(rsm, rsm_vars, x, y, dropout_key):
    """d/dx of sum_i CE(RSM(x)_i, y_i) with the RSM in training mode (as the reference).

    Built with `jax.grad`, so the caller can differentiate through it (second order). The
    BatchNorm statistics updated here are discarded.
    """
    return logits_and_input_gradients(rsm, rsm_vars, x[None], y, dropout_key)[0][0]


def logits_and_input_gradients(rsm, rsm_vars, xs, y, dropout_key):
    """The RSM in training mode on N batches xs [N, B, ...] (pixel units): (d/dx of
    sum_i CE(RSM(x)_i, y_i) [N, B, ...], logits [N, B, C], the BatchNorm statistics after
    batch 0's pass). Differentiable again (second order).

    Each batch is its own forward pass (vmapped: its own BatchNorm statistics, the same
    dropout key). An RSM without BatchNorm statistics treats samples independently, so the
    N batches then run as one batch of N * B, the same math in larger matrix products
    (faster on CPU; a dropout layer would then draw different masks for the N batches).
    """
    n, b = xs.shape[:2]

    def forward(x, labels):
        def logits_fn(xi):
            logits, new_vars = rsm.apply(rsm_vars, xi, train=True,
                                         rngs={"dropout": dropout_key}, mutable=["batch_stats"])
            return logits, new_vars.get("batch_stats", {})
        return training.input_gradient(logits_fn, x, labels, has_aux=True)

    if not rsm_vars.get("batch_stats"):
        g, (logits, stats) = forward(xs.reshape(n * b, *xs.shape[2:]), jnp.tile(y, n))
        return g.reshape(xs.shape), logits.reshape(n, b, -1), stats
    g, (logits, stats) = jax.vmap(lambda x: forward(x, y))(xs)
    return g, logits, jax.tree.map(lambda a: a[0], stats)


def _rb_inputs(x_clean, x_r, key, samples: int, noise_std):
    """([x_clean, x_r + v_1, ..., x_r + v_K] [K + 1, B, ...], dropout key), v_k ~ N(0,
    noise_std^2) (pixel units, broadcast per channel)."""
    k_noise, k_drop = jax.random.split(key)
    noise = jax.random.normal(k_noise, (samples, *x_r.shape)) * noise_std
    return jnp.concatenate([x_clean[None], x_r[None] + noise]), k_drop


def _rb_from_gradients(g):
    """L_rb per sample from the input gradients [clean, perturbed_1..K]: -mean_k cos."""
    return -jnp.mean(jax.vmap(lambda gk: cosine_per_sample(g[0], gk))(g[1:]), axis=0)


def robustness_loss(rsm, rsm_vars, x_clean, x_r, y, key, samples: int, noise_std):
    """L_rb per sample: -mean_v cos(grad at x_clean, grad at x_r + v), v ~ N(0, noise_std^2).

    `noise_std` is in pixel units (broadcast per channel). The clean and the K perturbed
    gradients are one computation (`logits_and_input_gradients`)."""
    xs, k_drop = _rb_inputs(x_clean, x_r, key, samples, noise_std)
    return _rb_from_gradients(logits_and_input_gradients(rsm, rsm_vars, xs, y, k_drop)[0])


def make_generator_step(cfg: GRFDConfig, vae=None, rsm=None):
    """Phase I: `step(state, (x, y), key, hparams) -> (state, metrics)`; hparams['alpha'].

    vae, rsm: the built modules (default `make_vae(cfg)`, `make_classifier(cfg)`); any
    variant with the same parameters computes the same step."""
    vae = make_vae(cfg) if vae is None else vae
    rsm = make_classifier(cfg) if rsm is None else rsm
    noise_std = cfg.rb_noise * jnp.asarray(dataset_info(cfg.dataset)["std"])

    def loss_fn(params, batch_stats, x, y, key, alpha):
        k_sample, k_drop, k_rb = jax.random.split(key, 3)
        out, vae_bs = vae.apply({"params": params["vae"], "batch_stats": batch_stats["vae"]},
                                x, train=True, rngs={"sample": k_sample},
                                mutable=["batch_stats"])
        x_u = out["x_u"]
        x_r = x - x_u
        rsm_vars = {"params": params["rsm"], "batch_stats": batch_stats["rsm"]}
        logits = None
        if cfg.delta > 0:
            xs, k_rb_drop = _rb_inputs(x_r if cfg.rb_clean_at == "x_r" else x_u, x_r, k_rb,
                                       cfg.rb_samples, noise_std)
            g, rb_logits, rb_stats = logits_and_input_gradients(rsm, rsm_vars, xs, y, k_rb_drop)
            l_rb = _rb_from_gradients(g)
            if cfg.rb_clean_at == "x_r":     # the clean pass at x_r is also L_cl's forward
                logits, rsm_stats = rb_logits[0], rb_stats
        else:
            l_rb = jnp.zeros(len(y))
        if logits is None:
            logits, rsm_bs = rsm.apply(rsm_vars, x_r, train=True, rngs={"dropout": k_drop},
                                       mutable=["batch_stats"])
            rsm_stats = rsm_bs.get("batch_stats", {})
        x_norm = (x - jnp.asarray(vae.mean)) / jnp.asarray(vae.std)
        l_rc = jnp.mean((out["recon"] - x_norm) ** 2, axis=(1, 2, 3))
        l_kl = gaussian_kl(out["mu"], out["logvar"], cfg.kl_reduction)
        rectified = out["logits_z"] is not None
        l_rf = (optax.softmax_cross_entropy_with_integer_labels(out["logits_z"], y)
                if rectified else jnp.zeros(len(y)))
        l_cl = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        per_sample = (alpha * l_rc + cfg.beta * l_kl + cfg.epsilon * l_rf
                      + cfg.gamma * l_cl + cfg.delta * l_rb)
        metrics = dict(loss=per_sample.mean(), l_rc=l_rc.mean(), l_kl=l_kl.mean(),
                       l_rf=l_rf.mean(), l_cl=l_cl.mean(), l_rb=l_rb.mean(),
                       acc_rsm=jnp.mean(jnp.argmax(logits, 1) == y))
        if rectified:
            metrics["acc_head"] = jnp.mean(jnp.argmax(out["logits_z"], 1) == y)
        new_bs = {"vae": vae_bs["batch_stats"], "rsm": rsm_stats}
        return per_sample.mean(), (new_bs, metrics)

    def step(state: TrainState, batch, key, hparams):
        x, y = batch
        grads, (new_bs, metrics) = jax.grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, x, y, key, hparams["alpha"])
        metrics["grad_norm"] = optax.tree.norm(grads)
        return state.apply_gradients(grads=grads, batch_stats=new_bs), metrics

    return step


def generator_variables(state: TrainState) -> dict:
    return {"params": state.params["vae"], "batch_stats": state.batch_stats["vae"]}


def classifier_variables(params, batch_stats) -> dict:
    return {"params": params, "batch_stats": batch_stats}


@functools.lru_cache(maxsize=16)
def _residual_apply(vae: LVCVAE):
    """(vae_vars, x) -> x_r in evaluation mode, one function per VAE architecture (flax
    modules compare by their fields), so `map_batches` compiles it once per shape."""
    def residual(vae_vars, x):
        return x - vae.apply(vae_vars, x, train=False)["x_u"]
    return residual


def disentangle_dataset(cfg: GRFDConfig, vae_vars, x: np.ndarray, batch_size: int = 256):
    """Phase II: x_r for every image, in evaluation mode; numpy float32 [N, H, W, C].
    The VAE variables are an argument of the compiled function: the phase-I evaluation
    calls this every epoch with new parameters and compiles nothing after the first."""
    from jaxdefense.evaluation import map_batches
    return map_batches(_residual_apply(make_vae(cfg)), x, batch_size, variables=vae_vars)


@dataclasses.dataclass(frozen=True)
class GRFDNets:
    """The served networks: the generator G (LVCVAE) and the target trained on x_r."""
    vae: LVCVAE
    target: nn.Module


def build(cfg: GRFDConfig) -> GRFDNets:
    return GRFDNets(make_vae(cfg), make_classifier(cfg))


def restore(workdir: str, cfg: GRFDConfig, nets: GRFDNets) -> dict:
    """{'vae': G's variables, 'target': the target's} from the newest checkpoints."""
    from jaxdefense.checkpoint import restore_variables
    key = jax.random.key(0)
    gen = restore_variables(os.path.join(workdir, "generator"), init_generator_state(cfg, key, 1))
    return {"vae": {"params": gen["params"]["vae"], "batch_stats": gen["batch_stats"]["vae"]},
            "target": restore_variables(os.path.join(workdir, "target"),
                                        init_target_state(cfg, key, 1))}


def serve(cfg: GRFDConfig, nets: GRFDNets, variables):
    """(logits_fn, parts): target(x - G(x)); parts 'disentangle' (x -> (x_u, x_r)) and
    'classifier' (the bare target)."""
    vae_vars, target_vars = variables["vae"], variables["target"]

    def disentangle(x):
        x_u = nets.vae.apply(vae_vars, x, train=False)["x_u"]
        return x_u, x - x_u

    classifier = lambda x: nets.target.apply(target_vars, x, train=False)
    return (lambda x: classifier(disentangle(x)[1]),
            {"disentangle": disentangle, "classifier": classifier})
