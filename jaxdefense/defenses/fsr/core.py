"""FSR, Feature Separation and Recalibration (Kim et al., CVPR 2023).

A module inserted into a classifier's feature map f [B, H, W, C]:
- separation net S (three 3x3 convs) gives a robustness map r; a two-class Gumbel softmax
  of (sigmoid(r), 1 - sigmoid(r)) at temperature tau gives the soft mask
  m = sigmoid((r + g1 - g2) / tau). Training draws the Gumbel noise g (rng 'gumbel');
  evaluation fixes it at U = 0.5, so the mask is exactly sigmoid(r / tau), deterministic.
- f+ = m * f (robust), f- = (1 - m) * f (non-robust);
- recalibration net R (same stack) on f-: f~- = f- + (1 - m) * R(f-);
- output f+ + f~-.
An auxiliary head h (global average pool, one linear layer) is shared by f+, f-, f~-; its
logits are sown into the 'intermediates' collection for the training loss (`aux_loss`).

Ablations (the paper's, as options): `inference_feature` replaces the output at
evaluation by f+, f- or f~-; `recalibrate=False` drops R and outputs f+ (the non-robust
part is discarded); the separation loss is removed with lambda_sep = 0 in the config.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from jaxdefense.models.common import batch_norm

INFERENCE_FEATURES = ("full", "robust", "non_robust", "recalibrated")


class ConvStack(nn.Module):
    """conv3x3(hidden, no bias)-BN-ReLU, conv3x3(hidden, no bias)-BN-ReLU, conv3x3(out)."""
    out: int
    hidden: int = 64
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        for _ in range(2):
            x = nn.Conv(self.hidden, (3, 3), padding="SAME", use_bias=False, dtype=self.dtype)(x)
            x = nn.relu(batch_norm(train, self.dtype)(x))
        return nn.Conv(self.out, (3, 3), padding="SAME", dtype=self.dtype)(x)


class FSR(nn.Module):
    """The FSR module as a backbone `feature_hook`: f [B, H, W, C] -> f [B, H, W, C]."""
    num_classes: int
    tau: float = 0.1
    hidden: int = 64
    recalibrate: bool = True
    inference_feature: str = "full"   # full | robust | non_robust | recalibrated
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, f, train: bool = False):
        if self.inference_feature not in INFERENCE_FEATURES:
            raise ValueError(f"inference_feature must be one of {INFERENCE_FEATURES}")
        c = f.shape[-1]
        r = ConvStack(c, self.hidden, self.dtype, name="separation")(f, train).astype(jnp.float32)
        if train:
            u = jax.random.uniform(self.make_rng("gumbel"), (2, *r.shape), minval=1e-10,
                                   maxval=1.0)
            g = -jnp.log(-jnp.log(u))
            mask = jax.nn.sigmoid((r + g[0] - g[1]) / self.tau)
        else:
            mask = jax.nn.sigmoid(r / self.tau)
        f32 = f.astype(jnp.float32)
        f_pos, f_neg = mask * f32, (1.0 - mask) * f32
        head = nn.Dense(self.num_classes, dtype=self.dtype, name="head")
        aux = {"pos": f_pos, "neg": f_neg}
        if self.recalibrate:
            rec = ConvStack(c, self.hidden, self.dtype, name="recalibration")(
                f_neg.astype(f.dtype), train).astype(jnp.float32)
            aux["rec"] = f_neg + (1.0 - mask) * rec
            out = f_pos + aux["rec"]
        else:
            out = f_pos
        for name, feat in aux.items():
            self.sow("intermediates", f"aux_{name}",
                     head(jnp.mean(feat, axis=(1, 2)).astype(self.dtype)).astype(jnp.float32))
        self.sow("intermediates", "robustness_map", r)
        self.sow("intermediates", "mask", mask)
        if not train and self.inference_feature != "full":
            out = {"robust": f_pos, "non_robust": f_neg,
                   "recalibrated": aux.get("rec", f_neg)}[self.inference_feature]
        return out.astype(f.dtype)


def sown(intermediates, name: str) -> list:
    """Every value sown under `name` (one per FSR insertion point), in a stable order."""
    flat = traverse_util.flatten_dict(intermediates or {})
    return [v for path, vals in sorted(flat.items()) if path[-1] == name for v in vals]


def top_wrong_class(logits, y):
    """The most probable class other than y, per sample (the paper's y')."""
    return jnp.argmax(jnp.where(jax.nn.one_hot(y, logits.shape[-1], dtype=bool), -jnp.inf,
                                logits), axis=-1)


def aux_loss(intermediates, logits, y, lambda_sep: float = 1.0, lambda_rec: float = 1.0):
    """lambda_sep * (CE(h(f+), y) + CE(h(f-), y')) + lambda_rec * CE(h(f~-), y), per sample
    [B], averaged over insertion points; y' = top wrong class of the final `logits`.
    Returns (loss [B], metrics); zeros when the model has no FSR module."""
    ce = optax.softmax_cross_entropy_with_integer_labels
    pos, neg, rec = (sown(intermediates, f"aux_{n}") for n in ("pos", "neg", "rec"))
    if not pos:
        return jnp.zeros(y.shape), {}
    y_wrong = jax.lax.stop_gradient(top_wrong_class(logits, y))
    sep = sum(ce(p, y) + ce(n, y_wrong) for p, n in zip(pos, neg)) / len(pos)
    total = lambda_sep * sep
    metrics = {"sep": sep.mean(), "acc_robust": jnp.mean(jnp.argmax(pos[0], -1) == y)}
    if rec:
        rec_loss = sum(ce(r, y) for r in rec) / len(rec)
        total = total + lambda_rec * rec_loss
        metrics["rec"] = rec_loss.mean()
    return total, metrics
