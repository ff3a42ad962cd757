"""ARN, adversarial noise removal with attack-invariant features (Zhou et al., ICML 2021).

An encoder-decoder purifier in front of a frozen target: served logits are
target(G(E(x))) with z = mean in evaluation. One training step updates four networks from
gradients at the same parameters (one Adam per parameter, identical settings, so one optax
transform serves all):
- D_A (attack discriminator): cross-entropy of which seen attack made the input, on z of
  the adversarial inputs (z held fixed);
- D_I (image discriminator): real = natural image, fake = G(E(x~)) of adversarial inputs;
  non-saturating GAN loss plus `gp_weight` * (||grad D_I||_2 - 1)^2 on interpolates (the
  reference's gradient penalty);
- E and G: rec_weight * ||G(E(x~)) - x||^2 (summed over pixels, per image, as the KL is
  summed over latent dims; with a per-pixel mean the KL term wins and the adversarial
  encodings collapse to the prior) over natural and adversarial inputs
  + lambda1 * L_att (cross-entropy of D_A's prediction against the uniform distribution)
  + lambda2 * L_nor (KL of each seen attack's encoding to N(0, I))
  + theta * L_gan (D_I should call G's output real).
The reference updates D_A and D_I before E/G within a step and detaches z for the GAN term;
here all four use the step's starting parameters and the GAN term also reaches E (see
docs/purification.md).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from jaxdefense.config import SMOKE as CLASSIFIER_SMOKE, build_preset, with_cifar100
from jaxdefense.data import dataset_info
from jaxdefense.defenses import purification
from jaxdefense.defenses.grfd.core import gaussian_kl
from jaxdefense.defenses.purification import PurificationConfig
from jaxdefense.models.arn import AttackDiscriminator, Decoder, Encoder, ImageDiscriminator
from jaxdefense.training import TrainState


@dataclasses.dataclass
class ARNConfig(PurificationConfig):
    workdir: str = "runs/arn"
    arn_base: int = 128               # first encoder conv width (reference 128)
    z_dim: int = 2048
    rec_weight: float = 1.0           # squared error to the natural image, summed per image
    lambda1: float = 0.1              # L_att, encoder vs attack discriminator (paper, MNIST)
    lambda2: float = 0.01             # L_nor, KL of seen attacks' encodings to N(0, I)
    theta: float = 0.1                # L_gan, decoder vs image discriminator
    gp_weight: float = 30.0           # D_I gradient penalty (reference code)
    adam_b1: float = 0.5


PRESETS = with_cifar100({
    "mnist": dict(dataset="mnist", epochs=20),
    "digits": dict(purification.DIGITS, purifier_epochs=30),
    "cifar10": dict(dataset="cifar10", classifier="wide_resnet", augment=True,
                    attack_eps=8 / 255, attack_step_size=2 / 255, attack_steps=10,
                    lambda1=100.0, lambda2=10.0, theta=100.0),
})
SMOKE = dict(CLASSIFIER_SMOKE, attack_steps=5, purifier_epochs=2, purifier_batch_size=64,
             arn_base=8, z_dim=32)


Config = ARNConfig


def preset(dataset: str, smoke: bool = False, **overrides) -> ARNConfig:
    return build_preset(ARNConfig, PRESETS, SMOKE, "ARN ", dataset, smoke, overrides)


def networks(cfg: ARNConfig):
    info = dataset_info(cfg.dataset)
    h, _, c = info["shape"]
    return dict(encoder=Encoder(cfg.arn_base, cfg.z_dim),
                decoder=Decoder(c, h, cfg.arn_base),
                d_att=AttackDiscriminator(len(cfg.attacks()), cfg.arn_base),
                d_img=ImageDiscriminator(cfg.arn_base))


def init_state(cfg: ARNConfig, key) -> TrainState:
    nets = networks(cfg)
    x = jnp.zeros((1, *dataset_info(cfg.dataset)["shape"]))
    z = jnp.zeros((1, cfg.z_dim))
    keys = jax.random.split(key, 4)
    inits = dict(encoder=nets["encoder"].init(keys[0], x), decoder=nets["decoder"].init(keys[1], z),
                 d_att=nets["d_att"].init(keys[2], z), d_img=nets["d_img"].init(keys[3], x))
    tx = optax.adam(cfg.purifier_lr, b1=cfg.adam_b1, b2=0.999)
    return TrainState.create(apply_fn=None, params={k: v["params"] for k, v in inits.items()},
                             batch_stats={k: inits[k]["batch_stats"]
                                          for k in ("encoder", "decoder")}, tx=tx)


def make_purifier(nets: dict, params, batch_stats):
    """x -> G(E(x)) with z = mean (evaluation mode): [0, 1] images to [0, 1] images."""
    def purify(x):
        mu, _ = nets["encoder"].apply({"params": params["encoder"],
                                       "batch_stats": batch_stats["encoder"]}, x)
        return nets["decoder"].apply({"params": params["decoder"],
                                      "batch_stats": batch_stats["decoder"]}, mu)
    return purify


def train_step(cfg: ARNConfig):
    nets = networks(cfg)
    channels = dataset_info(cfg.dataset)["shape"][-1]
    num_attacks = len(cfg.attacks())

    def autoencode(params, batch_stats, x, key):
        (mu, logvar), bs_e = nets["encoder"].apply(
            {"params": params["encoder"], "batch_stats": batch_stats["encoder"]}, x,
            train=True, mutable=["batch_stats"])
        z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape)
        recon, bs_d = nets["decoder"].apply(
            {"params": params["decoder"], "batch_stats": batch_stats["decoder"]}, z,
            train=True, mutable=["batch_stats"])
        return mu, logvar, z, recon, {"encoder": bs_e["batch_stats"],
                                      "decoder": bs_d["batch_stats"]}

    def d_img(p, x):
        return nets["d_img"].apply({"params": p}, x)

    def step(state, batch, key, hparams):
        xs, _ = batch
        parts = purification.split_stack(xs, channels)
        x_nat, b = parts[0], parts[0].shape[0]
        inputs = jnp.concatenate(parts, 0)                        # [(1 + A) B, ...]
        targets = jnp.tile(x_nat, (1 + num_attacks, 1, 1, 1))
        attack_labels = jnp.repeat(jnp.arange(num_attacks), b)
        k_z, k_gp = jax.random.split(key)
        params = state.params

        def ae_loss(p_ae):
            p = {**params, **p_ae}
            mu, logvar, z, recon, bs = autoencode(p, state.batch_stats, inputs, k_z)
            rec = jnp.sum((recon - targets) ** 2, axis=(1, 2, 3))   # per image, like the KL
            da_logits = nets["d_att"].apply({"params": jax.lax.stop_gradient(params["d_att"])},
                                            z[b:])
            att = -jnp.mean(jax.nn.log_softmax(da_logits), axis=-1)   # CE to uniform
            nor = gaussian_kl(mu[b:], logvar[b:]) * mu.shape[-1]    # summed over dims
            gan = jax.nn.softplus(-d_img(jax.lax.stop_gradient(params["d_img"]), recon[b:]))
            loss = (cfg.rec_weight * rec.mean() + cfg.lambda1 * att.mean()
                    + cfg.lambda2 * nor.mean() + cfg.theta * gan.mean())
            return loss, (bs, z, recon, dict(rec=rec.mean(), att=att.mean(), nor=nor.mean(),
                                             gan=gan.mean(), loss=loss))

        (_, (bs, z, recon, metrics)), g_ae = jax.value_and_grad(ae_loss, has_aux=True)(
            {"encoder": params["encoder"], "decoder": params["decoder"]})
        z_adv, fake = jax.lax.stop_gradient(z[b:]), jax.lax.stop_gradient(recon[b:])

        def da_loss(p):
            logits = nets["d_att"].apply({"params": p}, z_adv)
            return optax.softmax_cross_entropy_with_integer_labels(logits, attack_labels).mean()

        def di_loss(p):
            real = jnp.tile(x_nat, (num_attacks, 1, 1, 1))
            gan = jax.nn.softplus(-d_img(p, real)) + jax.nn.softplus(d_img(p, fake))
            t = jax.random.uniform(k_gp, (len(fake), 1, 1, 1))
            mix = t * real + (1 - t) * fake
            grad = jax.grad(lambda m: d_img(p, m).sum())(mix)
            gp = (jnp.sqrt(jnp.sum(grad ** 2, axis=(1, 2, 3)) + 1e-12) - 1.0) ** 2
            return (gan + cfg.gp_weight * gp).mean()

        l_da, g_da = jax.value_and_grad(da_loss)(params["d_att"])
        l_di, g_di = jax.value_and_grad(di_loss)(params["d_img"])
        grads = {**g_ae, "d_att": g_da, "d_img": g_di}
        metrics.update(d_att=l_da, d_img=l_di)
        return state.apply_gradients(grads=grads, batch_stats=bs), metrics
    return step


def train_and_evaluate(cfg: ARNConfig, progress: bool = True) -> dict:
    """Target (or --target_workdir), seen attacks, then ARN; closing report with both the
    papers' protocol (target-only) and white-box numbers."""
    ready = purification.prepare(cfg, "arn", progress)
    if "stopped" in ready:
        return ready
    state = purification.fit_purifier(cfg, init_state(cfg, jax.random.key(cfg.seed + 1)),
                                      train_step(cfg), ready, "arn", progress)
    if state is None:
        return {"stopped": "arn"}
    purify = make_purifier(networks(cfg), state.params, state.batch_stats)
    return purification.closing_report(cfg, purify, ready, progress)


def build(cfg: ARNConfig) -> purification.PurifierNets:
    return purification.build_nets(cfg, networks(cfg))


def restore(workdir: str, cfg: ARNConfig, nets) -> dict:
    return purification.restore_purifier(workdir, cfg, "arn", init_state(cfg, jax.random.key(0)))


def serve(cfg: ARNConfig, nets, variables):
    """(logits_fn, parts): target(G(E(x)))."""
    return purification.serve_restored(make_purifier, nets, variables)
