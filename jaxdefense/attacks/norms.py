"""Threat models: the parts of an attack that depend on the norm of the perturbation.

An attack is composed of a start, a step direction, a projection and a loss (as in DeepMind's
`adversarial_robustness/jax/attacks.py`); the first three depend on the norm and live here,
the losses in `losses.py`. PGD, APGD(-T), Square, FAB-T and AutoAttack take `norm='Linf'` or
`norm='L2'` and get these parts from `get_norm(norm)`, so the norm and the loss combine
instead of multiplying keywords. All functions are per sample on NHWC batches; images stay
in [0, 1] and eps is in those pixel units (Linf: per pixel; L2: of the whole image).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

NORMS = ("Linf", "L2")


def _per_sample(v, ndim):
    return v.reshape((-1,) + (1,) * (ndim - 1))


def project_linf(x_adv, x, eps):
    """Into the Linf ball of radius eps around x, then into the image box [0, 1]."""
    return jnp.clip(jnp.clip(x_adv, x - eps, x + eps), 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class Norm:
    """One threat model; `name` is 'Linf' or 'L2'. Hashable, so it can be a static argument."""
    name: str

    def size(self, d):
        """Per-sample norm of d [B, ...] -> [B]."""
        flat = d.reshape(d.shape[0], -1)
        if self.name == "Linf":
            return jnp.max(jnp.abs(flat), axis=1)
        return jnp.sqrt(jnp.sum(flat * flat, axis=1))

    def normalize(self, d):
        """d / |d| per sample (1e-12 guards zero), as the reference code normalizes."""
        return d / (_per_sample(self.size(d), d.ndim) + 1e-12)

    def project(self, x_adv, x, eps):
        """Into the eps-ball around x, then into [0, 1] (eps scalar or per sample [B, 1, ...])."""
        if self.name == "Linf":
            return project_linf(x_adv, x, eps)
        d = x_adv - x
        scale = jnp.minimum(1.0, eps / (_per_sample(self.size(d), d.ndim) + 1e-12))
        return jnp.clip(x + d * scale, 0.0, 1.0)

    def ascent(self, g):
        """The unit-norm steepest-ascent direction for gradient g: sign(g) (Linf),
        g / |g|_2 (L2)."""
        return jnp.sign(g) if self.name == "Linf" else self.normalize(g)

    def uniform_start(self, key, x, eps):
        """A random point of the eps-ball around x, clipped to [0, 1]: uniform in the cube
        (Linf, Madry et al.); for L2 a uniform direction at radius U(0, 1) * eps (as
        torchattacks' PGDL2)."""
        if self.name == "Linf":
            return project_linf(x + jax.random.uniform(key, x.shape, minval=-eps, maxval=eps),
                                x, eps)
        kd, kr = jax.random.split(key)
        r = jax.random.uniform(kr, (x.shape[0],) + (1,) * (x.ndim - 1))
        return jnp.clip(x + eps * r * self.normalize(jax.random.normal(kd, x.shape)), 0.0, 1.0)

    def sphere_start(self, key, x, eps):
        """A random point on the eps-sphere around x, clipped to [0, 1] (APGD's start):
        eps * t / |t| with t ~ U[-1, 1]^d (Linf) or t ~ N(0, I) (L2)."""
        if self.name == "Linf":
            t = jax.random.uniform(key, x.shape, minval=-1.0, maxval=1.0)
        else:
            t = jax.random.normal(key, x.shape)
        return jnp.clip(x + eps * self.normalize(t), 0.0, 1.0)


def get_norm(norm) -> Norm:
    """The Norm named 'Linf' or 'L2' (case-insensitive); a Norm is returned as is."""
    if isinstance(norm, Norm):
        return norm
    names = {n.lower(): n for n in NORMS}
    if not isinstance(norm, str) or norm.lower() not in names:
        raise ValueError(f"unknown norm {norm!r}; choose one of {list(NORMS)}")
    return Norm(names[norm.lower()])
