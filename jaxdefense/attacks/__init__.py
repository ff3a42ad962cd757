"""Attacks: pure functions `attack(logits_fn, x, y, key, **params) -> x_adv`.

`logits_fn` maps float32 NHWC images in [0, 1] to logits; it can be a bare model in eval
mode or a whole defended pipeline. Every output lies in the Linf eps-ball and in [0, 1].
A `logits_fn` is a static (hashed) argument: reuse the same function object across calls so
the compiled attack is reused.
"""
from jaxdefense.attacks.fgsm import fgsm
from jaxdefense.attacks.losses import LOSSES, cross_entropy, dlr, margin
from jaxdefense.attacks.pgd import pgd

ATTACKS = {"fgsm": fgsm, "pgd": pgd}

__all__ = ["fgsm", "pgd", "ATTACKS", "LOSSES", "cross_entropy", "dlr", "margin"]
