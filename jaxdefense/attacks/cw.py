"""Carlini-Wagner L2 (Carlini & Wagner 2017) as advertorch's `CarliniWagnerL2Attack` runs it
(the library the ARN paper attacked with).

A minimum-norm attack: per sample minimize |x' - x|_2^2 + c * f(x') over w, x' = tanh(w) / 2
+ 1/2 (the box [0, 1] without clipping), with the margin on logits
    f = max(z_y - max_{i != y} z_i + confidence, 0)    (untargeted; targeted:
    f = max(max_{i != t} z_i - z_t + confidence, 0)),
by Adam (lr `learning_rate`) for `max_iterations` steps from w = atanh(x) (delta reset each
search step), then a binary search over c per sample (`binary_search_steps` rounds, from
`initial_const`; with 10 or more rounds the last uses the upper bound): after a round that found an adversarial point, upper = min(upper, c) and
c = (lower + upper) / 2; otherwise lower = max(lower, c) and c = (lower + upper) / 2 once
an upper bound below 1e9 is known, else c *= 10. The output is, per sample, the adversarial
point with the smallest L2 distance over all rounds (success judged on the
confidence-shifted logits), or x itself where none was found. Early abort as the
reference: every max_iterations // 10 steps a round stops when the batch's total loss has
not fallen below 0.999999 times its value at the last check (the batch is one problem
there, as in the reference).

Differences from advertorch: none in the math; the search is one compiled loop
(`lax.scan` over rounds, `lax.while_loop` over steps) with optax's Adam (the same update as
torch's, betas 0.9 / 0.999, eps 1e-8).
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import optax

from jaxdefense.attacks.common import check_images

_ONE_MINUS_EPS = 0.999999
_UPPER = 1e10
_UPPER_CHECK = 1e9


def cw_margin(logits, label, confidence: float = 0.0, targeted: bool = False):
    """advertorch's C&W loss term per sample [B]: max(z_y - max_other + kappa, 0) for the
    true class y (untargeted) or max(max_other - z_t + kappa, 0) for a target t."""
    onehot = jax.nn.one_hot(label, logits.shape[1], dtype=logits.dtype)
    real = jnp.sum(onehot * logits, axis=1)
    other = jnp.max((1 - onehot) * logits - onehot * 10000.0, axis=1)
    diff = other - real if targeted else real - other
    return jnp.maximum(diff + confidence, 0.0)


def succeeds(logits, label, confidence: float = 0.0, targeted: bool = False):
    """[B] bool: the prediction after shifting the label's logit by the confidence (down for
    a target, up for the true class) is the target / not the true class."""
    shift = jax.nn.one_hot(label, logits.shape[1], dtype=logits.dtype) * confidence
    pred = jnp.argmax(logits - shift if targeted else logits + shift, axis=1)
    return pred == label if targeted else pred != label


def to_tanh_space(x):
    """w with tanh(w) / 2 + 1/2 = x (shrunk by 0.999999 so that 0 and 1 stay finite)."""
    return jnp.arctanh(_ONE_MINUS_EPS * (jnp.clip(x, 0.0, 1.0) * 2 - 1))


def from_tanh_space(w):
    return jnp.tanh(w) * 0.5 + 0.5


def cw_l2(logits_fn, x, y, key=None, *, target=None, confidence: float = 0.0,
          learning_rate: float = 0.01, binary_search_steps: int = 9,
          max_iterations: int = 10000, abort_early: bool = True,
          initial_const: float = 1e-3):
    """Carlini-Wagner L2 with advertorch's defaults; returns x_adv [B, H, W, C] in [0, 1].

    target: [B] class indices for the targeted attack (None: untargeted, away from y).
    confidence: the margin kappa in logits. `key` is unused (the attack is deterministic);
    it is accepted for the common `attack(logits_fn, x, y, key, ...)` signature.
    """
    check_images(x, y)
    if binary_search_steps < 1 or max_iterations < 1:
        raise ValueError(f"binary_search_steps and max_iterations must be >= 1, got "
                         f"{binary_search_steps}, {max_iterations}")
    if not (learning_rate > 0 and initial_const > 0 and confidence >= 0):
        raise ValueError(f"learning_rate and initial_const must be > 0 and confidence >= 0, "
                         f"got {learning_rate}, {initial_const}, {confidence}")
    if target is not None and target.shape != y.shape:
        raise ValueError(f"target must have shape {y.shape}, got {target.shape}")
    label = y if target is None else target
    return _cw_l2(logits_fn, x, label, target is not None,
                  jnp.float32(confidence), jnp.float32(learning_rate), binary_search_steps,
                  max_iterations, abort_early, jnp.float32(initial_const))


@partial(jax.jit, static_argnames=("logits_fn", "targeted", "binary_search_steps",
                                   "max_iterations", "abort_early"))
def _cw_l2(logits_fn, x, label, targeted, confidence, learning_rate, binary_search_steps,
           max_iterations, abort_early, initial_const):
    b = x.shape[0]
    w0 = to_tanh_space(x)
    x_ref = from_tanh_space(w0)           # the reference measures distances from this point
    opt = optax.adam(learning_rate)
    check_every = max(max_iterations // 10, 1)

    def objective(delta, const):
        adv = from_tanh_space(w0 + delta)
        l2 = jnp.sum((adv - x_ref) ** 2, axis=(1, 2, 3))
        logits = logits_fn(adv)
        loss = jnp.sum(const * cw_margin(logits, label, confidence, targeted)) + jnp.sum(l2)
        return loss, (adv, l2, logits)

    grad_fn = jax.value_and_grad(objective, has_aux=True)

    def one_round(carry, r):
        const, lower, upper, final_l2, final_adv = carry
        if binary_search_steps >= 10:   # the reference's last round uses the upper bound
            const = jnp.where(r == binary_search_steps - 1, upper, const)

        def cond(s):
            i, stop = s[0], s[1]
            return (i < max_iterations) & ~stop

        def body(s):
            i, _, delta, opt_state, prev, cur_l2, cur_ok, final_l2, final_adv = s
            (loss, (adv, l2, logits)), g = grad_fn(delta, const)
            check = abort_early & (i % check_every == 0)
            stop = check & (loss > prev * _ONE_MINUS_EPS)
            prev = jnp.where(check, loss, prev)
            ok = succeeds(logits, label, confidence, targeted) & ~stop
            better = ok & (l2 < cur_l2)
            cur_l2 = jnp.where(better, l2, cur_l2)
            cur_ok = cur_ok | better
            best = ok & (l2 < final_l2)
            final_l2 = jnp.where(best, l2, final_l2)
            final_adv = jnp.where(best[:, None, None, None], adv, final_adv)
            updates, opt_state = opt.update(g, opt_state, delta)
            delta = jnp.where(stop, delta, optax.apply_updates(delta, updates))
            return (i + 1, stop, delta, opt_state, prev, cur_l2, cur_ok, final_l2, final_adv)

        delta = jnp.zeros_like(x)
        init = (0, jnp.bool_(False), delta, opt.init(delta), jnp.float32(1e6),
                jnp.full((b,), _UPPER), jnp.zeros((b,), bool), final_l2, final_adv)
        out = jax.lax.while_loop(cond, body, init)
        cur_ok, final_l2, final_adv = out[6], out[7], out[8]
        upper = jnp.where(cur_ok, jnp.minimum(upper, const), upper)
        lower = jnp.where(cur_ok, lower, jnp.maximum(lower, const))
        mid = (lower + upper) / 2
        const = jnp.where(upper < _UPPER_CHECK, mid, jnp.where(cur_ok, const, const * 10))
        return (const, lower, upper, final_l2, final_adv), None

    init = (jnp.full((b,), initial_const), jnp.zeros((b,)), jnp.full((b,), _UPPER),
            jnp.full((b,), _UPPER), x)
    (_, _, _, _, final_adv), _ = jax.lax.scan(one_round, init, jnp.arange(binary_search_steps))
    return final_adv
