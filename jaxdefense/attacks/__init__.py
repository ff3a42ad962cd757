"""Attacks: pure functions `attack(logits_fn, x, y, key, **params) -> x_adv`.

`logits_fn` maps float32 NHWC images in [0, 1] to logits; it can be a bare model in eval
mode or a whole defended pipeline. Attacks on randomized models (`eotpgd`, `stochastic=True`,
AutoAttack 'rand') call `logits_fn(x, key)`. Every output lies in [0, 1]. The eps-bounded
attacks keep it in the eps-ball of their norm (`norm="Linf"` or `"L2"`, see `norms.py`);
the minimum-norm ones (C&W-L2, DDN, stAdv) return the closest adversarial point they found
(x where none), JSMA the point where it stopped, FWA its last iterate, within its
Wasserstein radius, ROA an image changed inside one rectangle. Targeted variants take `target=[B]` classes. Each loop is one compiled
`lax` loop; `logits_fn` is a static (hashed) argument, so reuse the same function object
across calls to reuse the compiled attack.
"""
from jaxdefense.attacks.apgd import apgd, apgd_targeted
from jaxdefense.attacks.autoattack import autoattack
from jaxdefense.attacks.bpda import bpda
from jaxdefense.attacks.cw import cw_l2
from jaxdefense.attacks.ddn import ddn
from jaxdefense.attacks.fab import fab_targeted
from jaxdefense.attacks.fgsm import fgsm
from jaxdefense.attacks.fwa import fwa
from jaxdefense.attacks.jsma import jsma
from jaxdefense.attacks.losses import LOSSES, cross_entropy, dlr, dlr_targeted, margin
from jaxdefense.attacks.pgd import eotpgd, pgd
from jaxdefense.attacks.roa import roa
from jaxdefense.attacks.square import square
from jaxdefense.attacks.stadv import stadv
from jaxdefense.attacks.vmifgsm import vmifgsm

ATTACKS = {"fgsm": fgsm, "pgd": pgd, "eotpgd": eotpgd, "vmifgsm": vmifgsm, "apgd": apgd,
           "apgd_targeted": apgd_targeted, "fab_targeted": fab_targeted, "square": square,
           "autoattack": autoattack, "cw_l2": cw_l2, "ddn": ddn, "jsma": jsma, "stadv": stadv,
           "fwa": fwa, "roa": roa}

__all__ = ["fgsm", "pgd", "eotpgd", "vmifgsm", "apgd", "apgd_targeted", "fab_targeted", "square",
           "autoattack", "cw_l2", "ddn", "jsma", "stadv", "fwa", "roa", "bpda", "ATTACKS",
           "LOSSES", "cross_entropy", "dlr", "dlr_targeted", "margin"]
