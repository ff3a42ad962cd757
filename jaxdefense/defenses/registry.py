"""Every defense, reached the same way: one line here per defense module.

A defense module exports
    Config                         its config dataclass (an `ExperimentConfig`)
    PRESETS                        dataset -> field values, one per dataset the project names
    preset(dataset, smoke=False, **overrides) -> Config
    train_and_evaluate(cfg, progress=True) -> dict   train (or resume) in cfg.workdir, report
    build(cfg) -> nets             its Flax modules, built once (a frozen dataclass)
    restore(workdir, cfg, nets) -> variables          the newest checkpoints
    serve(cfg, nets, variables) -> (logits_fn, parts) the served classifier and its stages
`jaxdefense.load`, `eval.table3` and the `python -m train.<name>` command lines read this
registry; a new defense is a module with that surface plus one line in DEFENSES.
"""
from __future__ import annotations

import dataclasses
import importlib


@dataclasses.dataclass(frozen=True)
class Defense:
    """One registered defense. stochastic: its served logits_fn takes (x, key)."""
    name: str
    module: str
    stochastic: bool = False

    @property
    def api(self):
        """The defense's module (imported on first use)."""
        return importlib.import_module(self.module)

    @property
    def Config(self):         # noqa: N802 (the module's class)
        return self.api.Config

    @property
    def presets(self) -> dict:
        return self.api.PRESETS

    def preset(self, dataset: str, smoke: bool = False, **overrides):
        return self.api.preset(dataset, smoke, **overrides)

    def train_and_evaluate(self, cfg, progress: bool = True) -> dict:
        return self.api.train_and_evaluate(cfg, progress=progress)

    def build(self, cfg):
        return self.api.build(cfg)

    def restore(self, workdir: str, cfg, nets):
        return self.api.restore(workdir, cfg, nets)

    def serve(self, cfg, nets, variables):
        return self.api.serve(cfg, nets, variables)


DEFENSES = {d.name: d for d in (
    Defense("standard", "jaxdefense.defenses.standard"),
    Defense("grfd", "jaxdefense.defenses.grfd"),
    Defense("cdvae", "jaxdefense.defenses.cdvae"),
    Defense("smoothing", "jaxdefense.defenses.smoothing", stochastic=True),
    Defense("gradreg", "jaxdefense.defenses.gradreg"),
    Defense("doa", "jaxdefense.defenses.doa"),
    Defense("fsr", "jaxdefense.defenses.fsr"),
    Defense("arn", "jaxdefense.defenses.arn"),
    Defense("idfr", "jaxdefense.defenses.idfr"),
    Defense("apegan", "jaxdefense.defenses.apegan"),
    Defense("hgd", "jaxdefense.defenses.hgd"),
    Defense("diffpure", "jaxdefense.defenses.diffpure", stochastic=True),
)}


def get(name: str) -> Defense:
    """The registered defense `name`; ValueError naming the choices otherwise."""
    if name not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}; choose one of {sorted(DEFENSES)}")
    return DEFENSES[name]
