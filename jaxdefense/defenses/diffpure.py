"""DiffPure (Nie et al., ICML 2022): purify an input by diffusing it part-way with the
VP-SDE and running the reverse process back, in front of a frozen target.

- Score model: `models.diffusion.ScoreUNet` trained here by denoising score matching
  (noise prediction, t ~ U(t_min, 1), x scaled to [-1, 1]), Adam with warmup and gradient
  clipping, an EMA of the weights that is served (score_sde's recipe).
- VP-SDE: beta(t) = beta_min + t (beta_max - beta_min); x_t = m(t) x_0 + s(t) eps with
  log m(t) = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2, s(t)^2 = 1 - m(t)^2.
- Purification: x_{t*} from the closed-form marginal, then `reverse_steps` steps of the
  reverse SDE by Euler-Maruyama (the paper; torchsde's Euler adds noise on every step) or
  DDPM ancestral steps (`reverse=ddpm`, beta_i = beta(t_i) dt; no noise on the last step),
  a `lax.scan` whose body is rematerialized (`jax.checkpoint`) in the backward pass, so the
  exact gradient through the whole chain costs memory for one step's activations plus the
  chain's states, not for every U-Net activation of every step.
- Served: target(purify(x, key)): a random model `logits_fn(x, key)`; the reports count an
  example as robust only when it is right on every one of `eval_draws` draws.
"""
from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdefense import plots, summaries
from jaxdefense.config import SMOKE as CLASSIFIER_SMOKE, build_preset, with_cifar100
from jaxdefense.data import dataset_info
from jaxdefense.defenses import purification
from jaxdefense.defenses.purification import PurificationConfig
from jaxdefense.models.diffusion import ScoreUNet
from jaxdefense.training import TrainState, fit, resume_options

REVERSE = ("sde", "ddpm")


class DiffusionState(TrainState):
    ema: dict = None              # exponential moving average of params: what is served


@dataclasses.dataclass
class DiffPureConfig(PurificationConfig):
    workdir: str = "runs/diffpure"
    # VP-SDE and purification (paper: beta 0.1 .. 20, t* 0.1, dt 1e-3 on CIFAR-10 Linf)
    beta_min: float = 0.1
    beta_max: float = 20.0
    t_star: float = 0.1
    reverse: str = "sde"            # sde (Euler-Maruyama, the paper) | ddpm (ancestral)
    reverse_steps: int = 100        # steps from t* to 0
    remat: bool = True              # rematerialize each reverse step when differentiating
    # score network (score_sde vp/cifar10_ddpm_continuous)
    score_base: int = 128
    channel_mult: str = "1,2,2,2"
    num_res_blocks: int = 2
    attn_resolutions: str = "16"
    dropout: float = 0.1
    # score training (purifier_epochs / purifier_lr / purifier_batch_size of the harness)
    purifier_lr: float = 2e-4
    warmup_steps: int = 5000
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    t_min: float = 1e-5             # smallest training time
    # evaluation of the random served model
    eval_draws: int = 4             # robust = right on every one of this many draws
    eot_samples: int = 20           # EOT draws per white-box attack step
    sample_steps: int = 200         # reverse steps from t = 1 for the figure of samples

    def mults(self) -> tuple[int, ...]:
        return tuple(int(m) for m in self.channel_mult.split(",") if m.strip())

    def attn(self) -> tuple[int, ...]:
        return tuple(int(r) for r in self.attn_resolutions.split(",") if r.strip())

    def validate(self):
        super().validate()
        checks = [
            (self.reverse in REVERSE, f"reverse must be one of {REVERSE}, got {self.reverse!r}"),
            (0 < self.beta_min < self.beta_max, "need 0 < beta_min < beta_max"),
            (0 < self.t_star <= 1, f"t_star must be in (0, 1], got {self.t_star}"),
            (self.reverse_steps >= 1 and self.sample_steps >= 1,
             "reverse_steps and sample_steps must be >= 1"),
            (0 < self.t_min < 1, "t_min must be in (0, 1)"),
            (0 <= self.ema_decay < 1, "ema_decay must be in [0, 1)"),
            (self.eval_draws >= 1 and self.eot_samples >= 1,
             "eval_draws and eot_samples must be >= 1"),
            (bool(self.mults()), "channel_mult needs at least one level, e.g. 1,2,2"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        return self


PRESETS = with_cifar100({
    # No MNIST DiffPure in the paper: a score model 2 CPU cores train in about 25 minutes
    # (base 16: 2.2 s per step of 128 on 8000 images), t* 0.1 as on CIFAR-10, 10 reverse
    # steps (dt 1e-2) so exact-gradient attacks stay affordable; GRFD's MNIST PGD budget.
    "mnist": dict(dataset="mnist", epochs=20, score_base=16, channel_mult="1,2,2",
                  num_res_blocks=1, attn_resolutions="", dropout=0.0, purifier_epochs=10,
                  warmup_steps=100, ema_decay=0.995, reverse_steps=10, attack_eps=18 / 255,
                  attack_step_size=4 / 255, attack_steps=20, eot_samples=8),
    "digits": dict(dataset="digits", epochs=30, batch_size=64, eval_every=5, score_base=16,
                   channel_mult="1,2", num_res_blocks=1, attn_resolutions="", dropout=0.0,
                   purifier_epochs=40, purifier_batch_size=64, warmup_steps=100,
                   ema_decay=0.99, reverse_steps=10, attack_eps=0.2, attack_step_size=0.02,
                   attack_steps=20, eot_samples=4),
    # the paper's CIFAR-10 setting (score_sde's ddpm continuous model, trained here)
    "cifar10": dict(dataset="cifar10", classifier="wide_resnet", augment=True,
                    attack_eps=8 / 255, attack_step_size=2 / 255, attack_steps=10,
                    purifier_epochs=2000),
})
SMOKE = dict(CLASSIFIER_SMOKE, attack_steps=3, purifier_epochs=2, purifier_batch_size=64,
             score_base=8, channel_mult="1,2", num_res_blocks=1, attn_resolutions="",
             dropout=0.0, warmup_steps=10, ema_decay=0.9, reverse_steps=4, sample_steps=8,
             eval_draws=2, eot_samples=2, attack_examples=32)


Config = DiffPureConfig


def preset(dataset: str, smoke: bool = False, **overrides) -> DiffPureConfig:
    return build_preset(DiffPureConfig, PRESETS, SMOKE, "DiffPure ", dataset, smoke, overrides)


# ---- the VP-SDE (pure functions of t in [0, 1]) -------------------------------------------

def beta(cfg: DiffPureConfig, t):
    return cfg.beta_min + t * (cfg.beta_max - cfg.beta_min)


def marginal(cfg: DiffPureConfig, t):
    """(m(t), s(t)): x_t | x_0 ~ N(m(t) x_0, s(t)^2 I)."""
    log_mean = -0.25 * t ** 2 * (cfg.beta_max - cfg.beta_min) - 0.5 * t * cfg.beta_min
    return jnp.exp(log_mean), jnp.sqrt(1.0 - jnp.exp(2.0 * log_mean))


def diffuse(cfg: DiffPureConfig, x0, t, noise):
    """x_t for x_0 in [-1, 1] scale, t [B], noise like x0."""
    m, s = marginal(cfg, t)
    return m[:, None, None, None] * x0 + s[:, None, None, None] * noise


def reverse_step(cfg: DiffPureConfig, x, t, dt, score, z, last):
    """One step from t to t - dt given score(x, t); z standard normal like x. `last`: the
    final step (DDPM ancestral sampling adds no noise there)."""
    b = beta(cfg, t)
    if cfg.reverse == "sde":
        drift = -0.5 * b * x - b * score                 # reverse-time drift f - g^2 score
        return x - drift * dt + jnp.sqrt(b * dt) * z
    bd = b * dt
    mean = (x + bd * score) / jnp.sqrt(1.0 - bd)
    return mean + jnp.where(last, 0.0, jnp.sqrt(bd)) * z


def reverse_chain(cfg: DiffPureConfig, eps_fn, x, key, t_start: float, steps: int):
    """Run the reverse process from x at t_start down to 0 in `steps` equal steps;
    eps_fn(x, t[B]) predicts the noise, score = -eps / s(t)."""
    dt = t_start / steps
    ts = t_start - dt * jnp.arange(steps)

    def body(x, inputs):
        t, k, i = inputs
        tb = jnp.full((x.shape[0],), t)
        score = -eps_fn(x, tb) / marginal(cfg, t)[1]
        return reverse_step(cfg, x, t, dt, score, jax.random.normal(k, x.shape),
                            i == steps - 1), None
    if cfg.remat:
        body = jax.checkpoint(body)
    x, _ = jax.lax.scan(body, x, (ts, jax.random.split(key, steps), jnp.arange(steps)))
    return x


def purify(cfg: DiffPureConfig, eps_fn, x, key):
    """DiffPure on images x in [0, 1]: diffuse to t*, reverse to 0, back to [0, 1]."""
    k_fwd, k_rev = jax.random.split(key)
    x0 = 2.0 * x - 1.0
    xt = diffuse(cfg, x0, jnp.full((x.shape[0],), cfg.t_star), jax.random.normal(k_fwd, x.shape))
    out = reverse_chain(cfg, eps_fn, xt, k_rev, cfg.t_star, cfg.reverse_steps)
    return jnp.clip((out + 1.0) / 2.0, 0.0, 1.0)


# ---- the score network and its training ----------------------------------------------------

def make_score_net(cfg: DiffPureConfig) -> ScoreUNet:
    return ScoreUNet(cfg.score_base, cfg.mults(), cfg.num_res_blocks, cfg.attn(), cfg.dropout)


def eps_fn_of(net: ScoreUNet, params):
    return lambda x, t: net.apply({"params": params}, x, t, train=False)


def init_state(cfg: DiffPureConfig, net: ScoreUNet, key, params=None) -> DiffusionState:
    """Adam with linear warmup and global-norm clipping; EMA starts at the params (drawn
    from `key` unless given)."""
    if params is None:
        shape = dataset_info(cfg.dataset)["shape"]
        params = jax.jit(net.init)(key, jnp.zeros((1, *shape)), jnp.ones((1,)))["params"]
    schedule = optax.linear_schedule(0.0, cfg.purifier_lr, max(cfg.warmup_steps, 1))
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), optax.adam(schedule))
    return DiffusionState.create(apply_fn=None, params=params, batch_stats={}, tx=tx,
                                 ema=jax.tree.map(jnp.copy, params))


def denoising_loss(cfg: DiffPureConfig, eps_pred, noise):
    """Per-sample mean squared error of the predicted noise [B] (score_sde, reduce_mean)."""
    return jnp.mean((eps_pred - noise) ** 2, axis=tuple(range(1, noise.ndim)))


def train_step(cfg: DiffPureConfig, net: ScoreUNet):
    def step(state, batch, key, hparams):
        x0 = 2.0 * batch[0] - 1.0
        k_t, k_n, k_d = jax.random.split(key, 3)
        t = jax.random.uniform(k_t, (x0.shape[0],), minval=cfg.t_min, maxval=1.0)
        noise = jax.random.normal(k_n, x0.shape)
        xt = diffuse(cfg, x0, t, noise)

        def loss_fn(params):
            eps = net.apply({"params": params}, xt, t, train=True, rngs={"dropout": k_d})
            return denoising_loss(cfg, eps, noise).mean()
        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        state = state.apply_gradients(grads=grads)
        ema = jax.tree.map(lambda e, p: cfg.ema_decay * e + (1 - cfg.ema_decay) * p,
                           state.ema, state.params)
        return state.replace(ema=ema), {"loss": loss}
    return step


def sample(cfg: DiffPureConfig, eps_fn, key, n: int):
    """n images in [0, 1] generated from noise (reverse process from t = 1)."""
    shape = dataset_info(cfg.dataset)["shape"]
    k0, k1 = jax.random.split(key)
    x = reverse_chain(cfg, eps_fn, jax.random.normal(k0, (n, *shape)), k1, 1.0,
                      cfg.sample_steps)
    return jnp.clip((x + 1.0) / 2.0, 0.0, 1.0)


def make_served(cfg: DiffPureConfig, net: ScoreUNet, ema_params, target_fn):
    """(purify(x, key), logits_fn(x, key) = target(purify(x, key)))."""
    eps_fn = eps_fn_of(net, ema_params)
    purifier = lambda x, key: purify(cfg, eps_fn, x, key)
    return purifier, lambda x, key: target_fn(purifier(x, key))


def attack_cost(cfg: DiffPureConfig, logits_fn, x, y) -> dict:
    """What one exact gradient through the served pipeline costs on a batch: score-network
    evaluations (forward, backward and rematerialized forward) and XLA's compiled memory
    (bytes of temporaries, from the compiled executable's memory analysis)."""
    from jaxdefense.attacks import cross_entropy
    grad = jax.jit(jax.grad(lambda xa, k: cross_entropy(logits_fn(xa, k), y).sum()))
    compiled = grad.lower(jnp.asarray(x), jax.random.key(0)).compile()
    stats = compiled.memory_analysis()
    temp = getattr(stats, "temp_size_in_bytes", None) if stats is not None else None
    return {"batch": int(len(x)), "reverse_steps": cfg.reverse_steps, "remat": cfg.remat,
            "score_evals_per_gradient": cfg.reverse_steps * (3 if cfg.remat else 2),
            "compiled_temp_bytes": None if temp is None else int(temp)}


def train_and_evaluate(cfg: DiffPureConfig, progress: bool = True) -> dict:
    """Target (or --target_workdir), the score model on clean training images, then the
    closing report (target-only and white-box with EOT, robust on every draw) and figures
    of samples and of purified images."""
    ready = purification.prepare(cfg, "diffpure", progress, craft=False)
    if "stopped" in ready:
        return ready
    net = make_score_net(cfg)
    train = ready["train"]
    state = fit(init_state(cfg, net, jax.random.key(cfg.seed + 1)), train_step(cfg, net),
                train.x, train.y, epochs=cfg.purifier_epochs,
                batch_size=cfg.purifier_batch_size, seed=cfg.seed, augment=cfg.augment,
                ckpt_dir=os.path.join(cfg.workdir, "score"), phase="score",
                metrics_path=ready["metrics_path"], **resume_options(cfg), progress=progress)
    if int(state.step) < cfg.purifier_epochs * (len(train) // cfg.purifier_batch_size):
        return {"stopped": "score"}
    model, variables = ready["target"]
    purifier, served = make_served(cfg, net, state.ema,
                                   lambda x: model.apply(variables, x))
    images = np.asarray(sample(cfg, eps_fn_of(net, state.ema), jax.random.key(cfg.seed + 4), 16))
    summaries.figure(cfg.workdir, plots.image_rows(
        os.path.join(cfg.workdir, "samples.png"), {"samples": images[:8], "": images[8:]},
        f"DiffPure score model: samples ({cfg.sample_steps} reverse steps from t=1)"))
    sub = ready["test"].take(min(cfg.attack_examples, 64))
    extra = {"attack_cost": attack_cost(cfg, served, sub.x, sub.y)} if len(sub) else {}
    return purification.closing_report(
        cfg, purifier, ready, progress, served=served, stochastic=True,
        eval_draws=cfg.eval_draws, eot_samples=cfg.eot_samples, extra=extra)


def build(cfg: DiffPureConfig) -> purification.PurifierNets:
    return purification.build_nets(cfg, make_score_net(cfg))


def restore(workdir: str, cfg: DiffPureConfig, nets) -> dict:
    """{'ema': the score network's EMA parameters, 'target': the target's variables}."""
    from jaxdefense.checkpoint import Checkpoints
    state = Checkpoints(os.path.join(workdir, "score")).restore(
        init_state(cfg, nets.purifier, jax.random.key(0)))
    return {"ema": state.ema, "target": purification.restore_target(cfg)[1]}


def serve(cfg: DiffPureConfig, nets, variables):
    """(logits_fn(x, key), parts): target(purify(x, key)), the reverse chain from t*."""
    eps_fn = eps_fn_of(nets.purifier, variables["ema"])
    return purification.serve_purified(nets, variables["target"],
                                       lambda x, key: purify(cfg, eps_fn, x, key), keyed=True)
