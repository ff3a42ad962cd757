"""Randomized smoothing (Cohen, Rosenfeld and Kolter, ICML 2019; code `locuslab/smoothing`).

The base classifier f is trained on Gaussian-noise-augmented images x + N(0, sigma^2 I)
(pixel units, [0, 1] images, no clipping; normalization stays inside the model, as the
reference). The smoothed classifier g(x) = argmax_c P(f(x + n) = c):
- `predict`: counts of f's votes over n draws; the top class unless a two-sided binomial
  test of its count against the runner-up's (p = 0.5) gives a p-value above alpha, then it
  abstains (-1);
- `certify`: n0 draws select the top class cA, n more draws count it; pA_lower is the
  one-sided (1 - alpha) Clopper-Pearson lower bound, and g is certified at L2 radius
  sigma * Phi^-1(pA_lower) when pA_lower > 1/2, else it abstains.
Abstentions count as wrong. Draws are vmapped in chunks of `chunk` inside one `lax.scan`.

For attacks the served model is the *soft* smoothed classifier of Salman et al. (2019):
logits_fn(x, key) = log of the mean softmax of f over `served_draws` noise draws. It is
random (fresh draws per key), so white-box attacks use EOT through the harness, and
its argmax tends to g's prediction as served_draws grows.
"""
from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats
from tqdm.auto import tqdm

from jaxdefense import config, evaluation, files, preemption, robustness
from jaxdefense.attacks.presets import get_preset, preset_for
from jaxdefense.config import CLASSIFIER_PRESETS, SMOKE as CLASSIFIER_SMOKE, ExperimentConfig
from jaxdefense.data import dataset_info
from jaxdefense.defenses import standard
from jaxdefense.training import append_jsonl, classifier_step


@dataclasses.dataclass
class SmoothingConfig(ExperimentConfig):
    workdir: str = "runs/smoothing"
    sigma: float = 0.25             # noise std, pixel units (the paper: 0.12 / 0.25 / 0.5 / 1.0)
    # certification (the reference's defaults: n0 100, n 100,000, alpha 0.001)
    n0: int = 100                   # selection draws
    n: int = 100_000                # estimation draws
    alpha: float = 0.001            # failure probability of the certificate / abstention test
    chunk: int = 1000               # draws per vmapped chunk (memory: chunk x batch images)
    certify_examples: int = 500     # eval examples certified in the closing report
    certify_batch: int = 16         # images per certification batch
    radii: str = "0,0.25,0.5,0.75,1.0"   # L2 radii (pixel units) of the certified-accuracy table
    served_draws: int = 16          # noise draws inside the served (soft smoothed) logits_fn
    eot_samples: int = 20           # EOT draws per gradient of the closing white-box attacks

    def radius_list(self) -> tuple[float, ...]:
        try:
            return tuple(float(r) for r in str(self.radii).split(",") if r.strip())
        except ValueError:
            raise ValueError(f"radii takes comma-separated L2 radii ('0,0.25,0.5'), "
                             f"got {self.radii!r}") from None

    def validate(self):
        super().validate()
        checks = [
            (self.sigma > 0, "sigma must be > 0"),
            (self.n0 >= 1 and self.n >= 1 and self.chunk >= 1, "n0, n and chunk must be >= 1"),
            (0 < self.alpha < 0.5, "alpha must be in (0, 0.5)"),
            (self.certify_examples >= 0 and self.certify_batch >= 1,
             "certify_examples must be >= 0, certify_batch >= 1"),
            (self.served_draws >= 1 and self.eot_samples >= 1,
             "served_draws and eot_samples must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        self.radius_list()
        return self


Config = SmoothingConfig
PRESETS = {
    **CLASSIFIER_PRESETS,
    # Cohen et al.'s CIFAR-10 schedule: SGD 0.1, momentum 0.9, wd 1e-4, x0.1 every 30 of 90
    # epochs (their ResNet-110; the project's CIFAR classifier is the GRFD paper's WRN-28-10).
    "cifar10": dict(CLASSIFIER_PRESETS["cifar10"], optimizer="sgd", lr=0.1, epochs=90,
                    lr_milestones="30,60", weight_decay=1e-4),
    "cifar100": dict(CLASSIFIER_PRESETS["cifar100"], optimizer="sgd", lr=0.1, epochs=90,
                     lr_milestones="30,60", weight_decay=1e-4),
}
SMOKE = dict(CLASSIFIER_SMOKE, n0=16, n=256, chunk=64, certify_examples=32, served_draws=4,
             eot_samples=2)


def preset(dataset: str, smoke: bool = False, **overrides) -> SmoothingConfig:
    return config.build_preset(SmoothingConfig, PRESETS, SMOKE, "smoothing ", dataset, smoke,
                               overrides)


def gaussian_noise(sigma: float):
    """transform(x, key) -> x + N(0, sigma^2) (pixel units, not clipped): the training
    augmentation and the smoothing distribution."""
    return lambda x, key: x + sigma * jax.random.normal(key, x.shape, x.dtype)


def make_step(cfg: SmoothingConfig):
    """Cross-entropy on noise-augmented inputs (Cohen et al.'s training)."""
    return classifier_step(config.make_classifier(cfg), transform=gaussian_noise(cfg.sigma))


def noisy_copies(x, key, sigma, draws: int):
    """[draws * B, ...]: `draws` copies of the batch x, each plus N(0, sigma^2) noise."""
    noise = jax.random.normal(key, (draws, *x.shape), x.dtype)
    return (x[None] + sigma * noise).reshape(draws * x.shape[0], *x.shape[1:])


@functools.partial(jax.jit, static_argnames=("base_fn", "num", "chunk", "num_classes"))
def sample_counts(base_fn, x, key, sigma, num: int, chunk: int, num_classes: int):
    """Votes of base_fn over `num` noise draws: int32 [B, classes].

    Draws go `chunk` at a time (vmapped, one forward pass of chunk x B images) in a
    `lax.scan`; the last chunk is masked when chunk does not divide num.
    """
    chunk = min(chunk, num)
    steps = -(-num // chunk)

    def body(counts, i):
        noisy = noisy_copies(x, jax.random.fold_in(key, i), sigma, chunk)
        votes = jnp.argmax(base_fn(noisy), -1).reshape(chunk, x.shape[0])
        valid = (i * chunk + jnp.arange(chunk)) < num                     # [chunk]
        onehot = jax.nn.one_hot(votes, num_classes, dtype=jnp.int32) * valid[:, None, None]
        return counts + onehot.sum(0), None

    counts, _ = jax.lax.scan(body, jnp.zeros((x.shape[0], num_classes), jnp.int32),
                             jnp.arange(steps))
    return counts


def lower_confidence_bound(n_a, n, alpha: float):
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion:
    Beta(alpha; n_a, n - n_a + 1) quantile, 0 where n_a = 0. Arrays of counts."""
    n_a = np.asarray(n_a, np.float64)
    with np.errstate(invalid="ignore"):
        bound = stats.beta.ppf(alpha, n_a, n - n_a + 1)
    return np.where(n_a > 0, bound, 0.0)


def predict_from_counts(counts, alpha: float) -> np.ndarray:
    """The smoothed prediction per row of vote counts [B, classes]; -1 = abstain.

    Abstains unless a two-sided binomial test of the top count against the runner-up
    (n_a of n_a + n_b at p = 1/2) has p-value <= alpha (Cohen et al.'s PREDICT).
    """
    counts = np.asarray(counts)
    order = np.argsort(-counts, axis=1, kind="stable")
    top, second = order[:, 0], order[:, 1]
    n_a = counts[np.arange(len(counts)), top]
    n_b = counts[np.arange(len(counts)), second]
    p = np.array([stats.binomtest(int(a), int(a + b), 0.5).pvalue if a + b else 1.0
                  for a, b in zip(n_a, n_b)])
    return np.where(p <= alpha, top, -1)


def certify_from_counts(counts0, counts, alpha: float, sigma: float):
    """(prediction, radius) per row: cA = argmax of the selection counts, pA_lower from the
    estimation counts, radius sigma * Phi^-1(pA_lower); (-1, 0) when pA_lower <= 1/2."""
    counts0, counts = np.asarray(counts0), np.asarray(counts)
    c_a = np.argmax(counts0, axis=1)
    n = counts.sum(1)
    p_a = lower_confidence_bound(counts[np.arange(len(counts)), c_a], n, alpha)
    ok = p_a > 0.5
    radius = np.where(ok, sigma * stats.norm.ppf(np.clip(p_a, 0.5, 1.0)), 0.0)
    return np.where(ok, c_a, -1), radius


def max_radius(cfg: SmoothingConfig) -> float:
    """The largest radius n draws can certify: every draw votes cA, pA_lower = alpha^(1/n)."""
    return float(cfg.sigma * stats.norm.ppf(cfg.alpha ** (1.0 / cfg.n)))


def certify(base_fn, x: np.ndarray, key, cfg: SmoothingConfig, num_classes: int,
            progress: bool = True):
    """Certify every image of x: (predictions [N], radii [N]); -1 = abstain. A stop request
    (`preemption`) ends it between two batches with `Preempted` (in the closing report the
    classifier is saved by then, and the same command certifies again)."""
    preds, radii = [], []
    b = cfg.certify_batch
    for i in tqdm(range(0, len(x), b), desc="certify", disable=not progress, leave=False):
        if (why := preemption.requested()) is not None:
            raise preemption.Preempted(f"stopped by {why} during certification ({i} of "
                                       f"{len(x)} certified). Run the same command to "
                                       "certify again")
        xb = jnp.asarray(x[i:i + b])
        k0, k1 = jax.random.split(jax.random.fold_in(key, i))
        c0 = sample_counts(base_fn, xb, k0, cfg.sigma, cfg.n0, cfg.chunk, num_classes)
        c1 = sample_counts(base_fn, xb, k1, cfg.sigma, cfg.n, cfg.chunk, num_classes)
        p, r = certify_from_counts(c0, c1, cfg.alpha, cfg.sigma)
        preds.append(p)
        radii.append(r)
    return np.concatenate(preds), np.concatenate(radii)


def certified_accuracy(preds, radii, y, radius_list) -> dict:
    """{radius: fraction of examples predicted correctly with a certificate >= radius}."""
    preds, radii, y = np.asarray(preds), np.asarray(radii), np.asarray(y)
    return {f"{r:g}": float(np.mean((preds == y) & (radii >= r))) for r in radius_list}


def make_served_logits_fn(base_fn, sigma: float, draws: int):
    """The soft smoothed classifier: (x, key) -> log mean_d softmax(f(x + sigma n_d))."""
    def logits_fn(x, key):
        probs = jax.nn.softmax(base_fn(noisy_copies(x, key, sigma, draws)), -1).reshape(draws, x.shape[0], -1)
        return jnp.log(jnp.mean(probs, 0) + 1e-12)
    return logits_fn


def served(cfg: SmoothingConfig, variables):
    """(base_fn, served logits_fn(x, key)) of a trained base classifier."""
    base_fn, _ = standard.serve(cfg, standard.build(cfg), variables)
    return base_fn, make_served_logits_fn(base_fn, cfg.sigma, cfg.served_draws)


def train_and_evaluate(cfg: SmoothingConfig, progress: bool = True) -> dict:
    """Noise-augmented training (resumable), then certification of the first
    certify_examples and white-box attacks (EOT) on the soft smoothed classifier."""
    train_set, test, metrics_path, _ = config.start(cfg, "smoothing")
    key_init, key_attack, key_cert = jax.random.split(jax.random.key(cfg.seed), 3)
    variables, done = standard.train(cfg, train_set, test, metrics_path, key_init,
                                     os.path.join(cfg.workdir, "classifier"), progress=progress,
                                     step=make_step(cfg))
    if variables is None:
        return {"stopped": "classifier", "epochs_done": done}
    base_fn, logits_fn = served(cfg, variables)
    num_classes = dataset_info(cfg.dataset)["num_classes"]
    cert = test.take(cfg.certify_examples)
    preds, radii = certify(base_fn, cert.x, key_cert, cfg, num_classes, progress)
    sub = test.take(cfg.attack_examples)
    attacks = get_preset(preset_for(cfg.dataset), cfg.attack_max_steps, only=("fgsm", "pgd"))
    for params in attacks.values():     # EOT on every gradient attack
        params["eot_samples"] = cfg.eot_samples
    result = (robustness.report(robustness.Models(served=logits_fn, classifier=base_fn,
                                                  stochastic=True),
                                sub.x, sub.y, key_attack, attacks, ("whitebox",),
                                progress=progress)
              if len(sub) else {"clean": None, "whitebox": {}})   # attack_examples 0
    summary = {
        "base_clean_acc_full_eval": evaluation.accuracy(base_fn, test.x, test.y),
        "certify": {"examples": len(cert), "n0": cfg.n0, "n": cfg.n, "alpha": cfg.alpha,
                    "sigma": cfg.sigma, "abstain": float(np.mean(preds < 0)),
                    "certified_acc": certified_accuracy(preds, radii, cert.y,
                                                        cfg.radius_list())},
        "attack_examples": len(sub), "served_draws": cfg.served_draws,
        "eot_samples": cfg.eot_samples,
        "clean_acc": result["clean"], "whitebox": result["whitebox"], "attacks": attacks}
    append_jsonl(metrics_path, {"phase": "report", **summary})
    files.write_json(os.path.join(cfg.workdir, "results.json"), summary)
    return summary


build, restore = standard.build, standard.restore      # the base classifier


def serve(cfg: SmoothingConfig, nets, variables):
    """(logits_fn(x, key), parts): the smoothed classifier; parts['classifier'] the base."""
    base_fn, logits_fn = served(cfg, variables)
    return logits_fn, {"classifier": base_fn}
