"""Attack settings from papers, by name. eps and step sizes in pixel units ([0, 1])."""
from __future__ import annotations

PRESETS = {
    # GRFD paper, Table 1 (MNIST)
    "grfd-mnist": {
        "fgsm": dict(eps=26 / 255),
        "pgd": dict(eps=18 / 255, step_size=8 / 255, steps=100),
    },
    # GRFD paper, Table 1 (CIFAR-10/100)
    "grfd-cifar": {
        "fgsm": dict(eps=8 / 255),
        "pgd": dict(eps=1 / 255, step_size=1 / 255, steps=200),
    },
    # Standard Linf budget (RobustBench threat model), PGD-20 with step eps/4.
    "linf-8": {
        "fgsm": dict(eps=8 / 255),
        "pgd": dict(eps=8 / 255, step_size=2 / 255, steps=20),
    },
}


def preset_for(dataset: str) -> str:
    return "grfd-mnist" if dataset in ("mnist", "digits") else "grfd-cifar"


def get_preset(name: str, max_steps: int | None = None) -> dict:
    """A preset's attacks; max_steps caps iterative attacks (for smoke runs)."""
    if name not in PRESETS:
        raise ValueError(f"unknown attack preset {name!r}; choose one of {sorted(PRESETS)}")
    out = {}
    for attack, params in PRESETS[name].items():
        params = dict(params)
        if max_steps is not None and "steps" in params:
            params["steps"] = min(params["steps"], max_steps)
        out[attack] = params
    return out
