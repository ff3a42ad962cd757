"""Attacks: pure functions `attack(logits_fn, x, y, key, **params) -> x_adv`.

`logits_fn` maps float32 NHWC images in [0, 1] to logits; it can be a bare model in eval
mode or a whole defended pipeline. Attacks on randomized models (`eotpgd`, `stochastic=True`,
AutoAttack 'rand') call `logits_fn(x, key)`. Every output lies in the eps-ball of the attack's
norm (`norm="Linf"` or `"L2"`, see `norms.py`) and in [0, 1]. Each loop is one compiled `lax`
loop; `logits_fn` is a static (hashed) argument, so reuse the same function object across
calls to reuse the compiled attack.
"""
from jaxdefense.attacks.apgd import apgd, apgd_targeted
from jaxdefense.attacks.autoattack import autoattack
from jaxdefense.attacks.bpda import bpda
from jaxdefense.attacks.fab import fab_targeted
from jaxdefense.attacks.fgsm import fgsm
from jaxdefense.attacks.losses import LOSSES, cross_entropy, dlr, dlr_targeted, margin
from jaxdefense.attacks.pgd import eotpgd, pgd
from jaxdefense.attacks.square import square
from jaxdefense.attacks.vmifgsm import vmifgsm

ATTACKS = {"fgsm": fgsm, "pgd": pgd, "eotpgd": eotpgd, "vmifgsm": vmifgsm, "apgd": apgd,
           "apgd_targeted": apgd_targeted, "fab_targeted": fab_targeted, "square": square,
           "autoattack": autoattack}

__all__ = ["fgsm", "pgd", "eotpgd", "vmifgsm", "apgd", "apgd_targeted", "fab_targeted", "square",
           "autoattack", "bpda", "ATTACKS", "LOSSES", "cross_entropy", "dlr", "dlr_targeted",
           "margin"]
