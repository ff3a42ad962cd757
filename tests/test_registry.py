"""The defense registry: every defense is reached the same way (preset, build, train,
restore, serve), and `jaxdefense.load`, `eval.table3` and `train.*` go through it."""
import dataclasses
import importlib
import json
import os

import jax
import numpy as np
import pytest

import jaxdefense
from jaxdefense import data
from jaxdefense.tables import grfd, planning
from jaxdefense.defenses import registry

SURFACE = ("Config", "PRESETS", "preset", "train_and_evaluate", "build", "restore", "serve")

# One training step per phase: a batch of 32 digits, one epoch, tiny networks.
STEP = dict(limit_train=32, limit_eval=32, batch_size=32, epochs=1, lenet_width=0.25,
            attack_examples=8, attack_max_steps=1, eval_every=0)
TINY = {"grfd": dict(z_dim=8, vae_base=4), "cdvae": dict(z_dim=8, vae_base=4),
        "smoothing": dict(n0=8, n=16, chunk=16, certify_examples=4, served_draws=2),
        "arn": dict(purifier_batch_size=32, purifier_epochs=1, arn_base=4, z_dim=8),
        "idfr": dict(purifier_batch_size=32, purifier_epochs=1, fr_epochs=1, unet_base=4),
        "apegan": dict(purifier_batch_size=32, purifier_epochs=1, apegan_base=4),
        "diffpure": dict(purifier_batch_size=32, purifier_epochs=1, reverse_steps=2),
        "doa": dict(roa_steps=2, roa_candidates=2),
        "hgd": dict(purifier_batch_size=32, purifier_epochs=1, hgd_levels="4,8")}


def test_every_defense_has_the_registry_surface_and_a_preset_per_dataset():
    assert sorted(registry.DEFENSES) == sorted(
        ["standard", "grfd", "cdvae", "smoothing", "gradreg", "doa", "fsr", "arn", "idfr",
         "apegan", "hgd", "diffpure"])
    for name, entry in registry.DEFENSES.items():
        for attr in SURFACE:
            assert hasattr(entry.api, attr), f"{name} lacks {attr}"
        for dataset in ("mnist", "cifar10", "cifar100", "digits"):
            cfg = entry.preset(dataset)
            assert isinstance(cfg, entry.Config) and cfg.dataset == dataset
    with pytest.raises(ValueError, match="unknown defense 'nope'; choose one of"):
        registry.get("nope")


def test_train_commands_and_the_table_read_the_registry(tmp_path):
    for name in registry.DEFENSES:
        cmd = importlib.import_module(f"train.{name}")
        with pytest.raises(SystemExit) as e:
            cmd.main(["--help"])
        assert e.value.code == 0
    planned = planning.plan(grfd.TABLE3, str(tmp_path), "digits", True, {}, {})
    assert set(planned) == set(grfd.TABLE3.runs)
    for run, p in planned.items():
        assert p.defense == grfd.TABLE3.runs[run].defense
        assert type(p.cfg) is registry.get(p.defense).Config


QUICK = ("standard", "gradreg", "smoothing")      # the others take 20-90 s each: slow suite
# trained by their command-line smoke tests (test_generative_purifiers.py), which then make
# the same checks (`check_round_trip`): one training each instead of two
BY_CLI_TESTS = ("apegan", "diffpure")


@pytest.mark.parametrize("name", [n if n in QUICK else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(registry.DEFENSES) if n not in BY_CLI_TESTS])
def test_every_defense_trains_restores_and_serves(name, tmp_path):
    """Through the registry alone: the digits preset, one training step per phase, then
    `jaxdefense.load` (build, restore, serve) gives the model the run reported on."""
    entry = registry.get(name)
    fields = {f.name for f in dataclasses.fields(entry.Config)}
    over = {k: v for k, v in {**STEP, **TINY.get(name, {})}.items() if k in fields}
    cfg = entry.preset("digits", True, workdir=str(tmp_path / name), **over)
    out = entry.train_and_evaluate(cfg, progress=False)
    assert "stopped" not in out, out
    check_round_trip(name, cfg)


def check_round_trip(name: str, cfg) -> None:
    """A finished run of `name` in cfg.workdir: `jaxdefense.load` serves it, and the
    registry's build -> restore -> serve gives the same logits."""
    entry = registry.get(name)
    model = jaxdefense.load(cfg.workdir)
    assert model.defense == name and model.stochastic == entry.stochastic
    test = data.load("digits", cfg.eval_split).take(8)
    logits = np.asarray(model(test.x))
    assert logits.shape == (8, 10) and np.all(np.isfinite(logits))
    nets = entry.build(cfg)
    variables = entry.restore(cfg.workdir, cfg, nets)
    logits_fn, parts = entry.serve(cfg, nets, variables)
    direct = logits_fn(test.x, jax.random.key(0)) if entry.stochastic else logits_fn(test.x)
    np.testing.assert_allclose(np.asarray(direct), logits, rtol=1e-4, atol=1e-4)
    assert "classifier" in parts
    with open(os.path.join(cfg.workdir, "results.json")) as f:
        assert json.load(f)          # the run wrote its report
    check_compact(cfg.workdir, test.x, logits)


def check_compact(workdir: str, x, logits) -> None:
    """The run as a compact model (`checkpoint.export_model`, as the record commits it):
    the same digest, served by `jaxdefense.load` with the same logits, no optimizer state;
    without its parameters, loading names the command that trains it."""
    from jaxdefense import checkpoint
    compact = workdir + "-compact"
    digest = checkpoint.export_model(workdir, compact, {"trained_by": "python -m train.x"})
    assert digest == checkpoint.model_digest(workdir) == checkpoint.model_digest(compact)
    model = jaxdefense.load(compact)
    np.testing.assert_allclose(np.asarray(model(x)), logits, rtol=1e-6, atol=1e-6)
    paths = lambda tree: sorted(checkpoint._path(p) for p, _ in    # noqa: E731
                                jax.tree_util.tree_leaves_with_path(tree))
    kept = paths(checkpoint.served_variables(compact))
    assert kept == paths(checkpoint.served_variables(workdir))      # what serve takes, only
    assert not any("opt_state" in p.split("/") for p in kept)
    os.remove(os.path.join(compact, checkpoint.VARIABLES_FILE))
    with pytest.raises(checkpoint.CheckpointError, match="python -m train.x"):
        jaxdefense.load(compact)


def test_attack_examples_zero_skips_the_closing_attacks(tmp_path):
    """A run a table will attack itself: clean accuracy only, no closing attack compiled."""
    entry = registry.get("standard")
    cfg = entry.preset("digits", True, workdir=str(tmp_path / "s"), **{**STEP,
                                                                        "attack_examples": 0})
    out = entry.train_and_evaluate(cfg, progress=False)
    assert out["attack_examples"] == 0 and 0 <= out["clean_acc_full_eval"] <= 1
    assert not {"pgd_acc", "fgsm_acc", "attacks"} & set(out)
    with open(os.path.join(cfg.workdir, "results.json")) as f:
        assert json.load(f) == out
    check_round_trip("standard", cfg)
