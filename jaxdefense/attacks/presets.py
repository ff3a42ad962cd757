"""Attack settings from papers, by name: {attack: params}. eps and steps in pixel units."""
from __future__ import annotations

PRESETS = {
    # GRFD paper, Table 1 (MNIST)
    "grfd-mnist": {
        "fgsm": dict(eps=26 / 255),
        "pgd": dict(eps=18 / 255, step_size=8 / 255, steps=100),
        "autoattack": dict(eps=20 / 255),
        "eotpgd": dict(eps=18 / 255, step_size=8 / 255, steps=100),
        "vmifgsm": dict(eps=18 / 255, step_size=8 / 255, steps=100),
    },
    # GRFD paper, Table 1 (CIFAR-10/100)
    "grfd-cifar": {
        "fgsm": dict(eps=8 / 255),
        "pgd": dict(eps=1 / 255, step_size=1 / 255, steps=200),
        "autoattack": dict(eps=4 / 255),
        "eotpgd": dict(eps=4 / 255, step_size=2 / 255, steps=10),
        "vmifgsm": dict(eps=4 / 255, step_size=2 / 255, steps=10),
    },
    # RobustBench's Linf standard: AutoAttack (standard version) at 8/255.
    "robustbench": {"autoattack": dict(eps=8 / 255)},
    # RobustBench's L2 standard: AutoAttack (standard version) at L2 0.5.
    "robustbench-l2": {"autoattack": dict(eps=0.5, norm="L2")},
    # L2 checks at RobustBench's budget: PGD-20 (step eps / 4) and APGD-CE.
    "l2-0.5": {
        "pgd": dict(eps=0.5, step_size=0.125, steps=20, norm="L2"),
        "apgd": dict(eps=0.5, norm="L2"),
    },
    # FSR paper protocol: FGSM, PGD-20 / PGD-100 (step eps/10, no random start), C&W-Linf.
    "fsr": {
        "fgsm": dict(eps=8 / 255),
        "pgd": dict(eps=8 / 255, step_size=0.8 / 255, steps=20, random_start=False),
        "pgd100": dict(eps=8 / 255, step_size=0.8 / 255, steps=100, random_start=False),
        "cw": dict(eps=8 / 255, step_size=0.8 / 255, steps=30, random_start=False, loss="margin"),
    },
    # The FSR protocol at MNIST's usual budget (eps 0.3, step eps/10).
    "fsr-mnist": {
        "fgsm": dict(eps=0.3),
        "pgd": dict(eps=0.3, step_size=0.03, steps=20, random_start=False),
        "pgd100": dict(eps=0.3, step_size=0.03, steps=100, random_start=False),
        "cw": dict(eps=0.3, step_size=0.03, steps=30, random_start=False, loss="margin"),
    },
    # A quick check: FGSM and PGD-20 at 8/255.
    "linf-8": {
        "fgsm": dict(eps=8 / 255),
        "pgd": dict(eps=8 / 255, step_size=2 / 255, steps=20),
    },
}

# Preset entries whose name is not the attack function's name.
ALIASES = {"pgd100": "pgd", "cw": "pgd"}


def preset_for(dataset: str, config: dict | None = None) -> str:
    """The default attack preset of a run: its config's `attack_preset` when it has one,
    else the GRFD paper's settings for the dataset."""
    if config and config.get("attack_preset"):
        return config["attack_preset"]
    return "grfd-mnist" if dataset in ("mnist", "digits") else "grfd-cifar"


def get_preset(name: str, max_steps: int | None = None, only=None) -> dict:
    """A preset's attacks (optionally only those named); max_steps caps iterations and
    Square queries, for smoke runs."""
    if name not in PRESETS:
        raise ValueError(f"unknown attack preset {name!r}; choose one of {sorted(PRESETS)}")
    unknown = set(only or ()) - set(PRESETS[name])
    if unknown:
        raise ValueError(f"preset {name!r} has no {sorted(unknown)}; it has {sorted(PRESETS[name])}")
    out = {}
    for attack, params in PRESETS[name].items():
        if only and attack not in only:
            continue
        params = dict(params)
        if max_steps is not None:
            if attack == "autoattack":
                params.update(steps=min(params.get("steps", 100), max_steps),
                              square_queries=min(params.get("square_queries", 5000), 10 * max_steps))
            elif "steps" in params:
                params["steps"] = min(params["steps"], max_steps)
        out[attack] = params
    return out
