"""Robustness reports: threat models, per-sample worst case, sanity checks, eps sweeps.

Threat models (the served model is always what is scored):
- whitebox:    attacks see the whole defended pipeline (on a random one: EOT for PGD, APGD,
               FGSM, VMI-FGSM, EOT-PGD and AutoAttack 'rand'; every other attack (C&W,
               DDN, JSMA, stAdv, FWA, ROA, FAB, Square) sees one fixed draw: `fixed_draw`),
- target-only: attacks see the classifier alone; its examples then go through the defense,
- transfer:    attacks see a separate source model (the GRFD / ARN / IDFR papers' protocol).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxdefense import attacks as attack_lib, cpu_kernels, files, preemption
from jaxdefense.attacks.norms import get_norm
from jaxdefense.attacks.presets import ALIASES, get_preset, preset_for
from jaxdefense.cpu_kernels import attacked
from jaxdefense.data import padded_batches
from jaxdefense import evaluation
from jaxdefense.evaluation import padded_batch_size
from jaxdefense.training import append_jsonl
from jaxdefense.sharding import shard_batch, to_host

THREATS = ("whitebox", "target-only", "transfer")


@dataclasses.dataclass
class Models:
    """The logits functions a report needs. `served` is scored; `classifier` is the bare
    classifier inside it (for target-only); `source` an independent model (for transfer)."""
    served: Callable
    classifier: Optional[Callable] = None
    source: Optional[Callable] = None
    stochastic: bool = False        # served is logits_fn(x, key)
    eval_draws: int = 1             # stochastic: correct only if right on every draw


@functools.lru_cache(maxsize=64)
def _ignore_key(f):
    """f as `(x, key) -> f(x)`; cached so the wrapped function, a static argument of the
    compiled attacks, stays the same object and nothing recompiles."""
    return lambda x, key: f(x)


@functools.lru_cache(maxsize=64)
def fixed_key(f):
    """A randomized f(x, key) with one fixed draw, for attacks without EOT."""
    key = jax.random.key(0)
    return lambda x: f(x, key)


EOT_SAMPLES = 20       # EOT draws per gradient on a randomized model, unless an attack sets it
# attacks whose gradient steps take `stochastic=True, eot_samples=N` (EOT on a random model)
EOT_ATTACKS = ("pgd", "apgd", "apgd_targeted", "fgsm", "vmifgsm")


def craft_fn(name: str, params: dict, stochastic: bool):
    """`(logits_fn, x, y, key) -> x_adv` for a preset entry; stochastic: logits_fn(x, key).

    On a randomized model PGD, APGD, FGSM, VMI-FGSM and EOT-PGD average `eot_samples`
    draws per gradient (EOT_SAMPLES = 20 unless the entry sets it) and AutoAttack runs its
    'rand' version; every other attack (C&W, DDN, JSMA, stAdv, FWA, ROA, FAB, Square) sees
    one fixed draw (`fixed_draw` names them; tables say so under the table). On a deterministic model one draw is exact: `eot_samples` is dropped
    (EOT-PGD runs with one).

    An entry may name its attack function (`attack`: a key of `attacks.ATTACKS`, for entries
    such as 'pgd_eps2' or 'cw') and ask for a targeted attack (`targeted=True`): each
    example then gets a random wrong class as its target (`random_targets`, from the
    attack's key), as advertorch's examples choose them.
    """
    params = dict(params)
    base = params.pop("attack", None) or ALIASES.get(name, name)
    if base not in attack_lib.ATTACKS:
        raise ValueError(f"unknown attack {base!r} (entry {name!r}); choose one of "
                         f"{sorted(attack_lib.ATTACKS)}")
    if params.pop("targeted", False):
        inner = craft_fn(name, {**params, "attack": base}, stochastic)

        def targeted(f, x, y, k):
            return inner(f, x, y, k, target=random_targets(f, x, y, k, stochastic))
        return targeted
    fn = attack_lib.ATTACKS[base]
    if not stochastic:
        params.pop("eot_samples", None)     # one draw is exact on a deterministic model
        if base == "eotpgd":
            params["eot_samples"] = 1
            return lambda f, x, y, k, **kw: fn(attacked(_ignore_key(f)), x, y, k, **params, **kw)
        return lambda f, x, y, k, **kw: fn(attacked(f), x, y, k, **params, **kw)
    params.setdefault("eot_samples", EOT_SAMPLES)
    if base == "autoattack":
        params.setdefault("version", "rand")
    elif base in EOT_ATTACKS:
        params["stochastic"] = True
    elif base != "eotpgd":
        params.pop("eot_samples")
        return lambda f, x, y, k, **kw: fn(attacked(fixed_key(f)), x, y, k, **params, **kw)
    return lambda f, x, y, k, **kw: fn(attacked(f), x, y, k, **params, **kw)


def fixed_draw(attacks: dict) -> list:
    """The entries of `attacks` that see one fixed noise draw on a randomized model (no
    EOT): all but PGD, APGD, FGSM, VMI-FGSM, EOT-PGD and AutoAttack."""
    with_eot = set(EOT_ATTACKS) | {"eotpgd", "autoattack"}
    return [n for n, p in attacks.items() if resolved_entry(n, p)["attack"] not in with_eot]


TARGET_STREAM = 0x5EED      # fold_in constant of the targets' key (attacks split theirs)


def random_targets(logits_fn, x, y, key, stochastic: bool = False):
    """[B] a class other than y per example, uniform, from its own stream of `key`."""
    args = (x, key) if stochastic else (x,)
    classes = jax.eval_shape(logits_fn, *args).shape[-1]
    shift = jax.random.randint(jax.random.fold_in(key, TARGET_STREAM), y.shape, 1, classes)
    return (y + shift) % classes


SCORE_STREAM = 0x7FFFFFFF   # fold_in constant of the scoring draws' own key stream


def resolved_entry(name: str, params: dict) -> dict:
    """A preset entry with its attack function named (`attack`), whatever the entry is called:
    what the crafted examples depend on besides the model, the examples and the key."""
    return {**params, "attack": params.get("attack") or ALIASES.get(name, name)}


def attack_key(key, name: str, params: dict):
    """The key of a report's attack `name` with settings `params`: `key` folded with a digest
    of the resolved entry (its attack function and settings), so an attack gets the same key
    whatever it is called, wherever it sits in a preset and whichever threat model it runs
    under, and examples crafted on one model can be reused (`report`'s `crafts`)."""
    entry = resolved_entry(name, params)
    digest = hashlib.sha256(json.dumps(entry, sort_keys=True, default=str).encode()).digest()
    return jax.random.fold_in(key, int.from_bytes(digest[:4], "little") % SCORE_STREAM)


def score_key(key, batch: int):
    """The key of batch `batch`'s evaluation draws: from its own stream of `key`, never a key
    an attack on that batch (given `fold_in(key, batch)`) derives by split or fold_in."""
    return jax.random.fold_in(jax.random.fold_in(key, SCORE_STREAM), batch)


def make_predict(served, stochastic: bool, eval_draws: int = 1):
    """jitted (x, y, key) -> bool [B]: is `served` right on each sample (a stochastic model
    must be right on each of `eval_draws` independent draws). Build it once and pass it to
    every `correct_under` call on the same model, so it compiles once per batch shape."""
    draws = eval_draws if stochastic else 1

    def right(xb, yb, k):
        if not stochastic:
            return jnp.argmax(served(xb), -1) == yb
        hits = jax.lax.map(lambda kd: jnp.argmax(served(xb, kd), -1) == yb,
                           jax.random.split(k, draws))
        return jnp.all(hits, axis=0)
    return jax.jit(cpu_kernels.use(right))


def correct_under(served, stochastic: bool, attacked, craft, x, y, key, batch_size=256,
                  desc=None, eval_draws: int = 1, cache: str | None = None, predict=None,
                  norm: str = "Linf", crafts: str | None = None):
    """Per-sample correctness [N] of `served` on examples crafted by `craft` against
    `attacked`; also the largest distance seen in `norm` ('Linf' or 'L2'). A stochastic `served` counts a sample
    as correct only if it is right on each of `eval_draws` independent draws.

    cache: a directory where each finished batch is kept (CACHE/<i>.json: per-example
    outcomes as `bits`, and the largest distance) and read back by a
    later call, so a long attack that was stopped resumes at its first unfinished batch;
    the caller names it after everything the result depends on. With a cache, a SIGTERM /
    SIGINT inside `preemption.stop_requests()` ends the call after the batch in flight
    (`preemption.Preempted`).
    predict: `make_predict(served, stochastic, eval_draws)`, shared across calls (built here
    when not given).
    crafts: a directory of crafted batches (CRAFTS/<i>.npz, the padded batch `x_adv`): a
    batch found there is scored without attacking, a batch crafted here is kept there. The
    caller names it after everything the examples depend on (the attacked model, the attack
    and its key, the examples, the batch size), not after `served`, so that defenses in
    front of the same attacked model share one crafting."""
    b = padded_batch_size(batch_size, len(x))
    if jax.process_count() > 1:
        cache = crafts = None   # every process must make the same attack calls (collectives)
    if predict is None:
        predict = make_predict(served, stochastic, eval_draws)
    size = get_norm(norm).size
    correct, max_dist = [], 0.0
    for i, (xb, yb, mask) in enumerate(tqdm(padded_batches(x, y, b), total=-(-len(x) // b),
                                            desc=desc, disable=desc is None, leave=False)):
        done = os.path.join(cache, f"{i}.json") if cache else None
        kept = read_batch(done) if done else None
        if kept is not None:
            correct.append(kept[0])
            max_dist = max(max_dist, kept[1])
            continue
        xb, yb = shard_batch((xb, yb))
        kept_adv = os.path.join(crafts, f"{i}.npz") if crafts else None
        if kept_adv and os.path.isfile(kept_adv):
            with np.load(kept_adv) as kept:
                x_adv = shard_batch(kept["x_adv"])
        else:
            x_adv = craft(attacked, xb, yb, jax.random.fold_in(key, i))
            if kept_adv:
                os.makedirs(crafts, exist_ok=True)
                np.savez(kept_adv + ".tmp.npz", x_adv=to_host(x_adv))
                os.replace(kept_adv + ".tmp.npz", kept_adv)
        correct.append(to_host(predict(x_adv, yb, score_key(key, i)))[mask])
        dist = float(np.max(to_host(size(x_adv - xb))[mask]))
        max_dist = max(max_dist, dist)
        if done:
            files.write_json(done, {"correct": bits(correct[-1]), "max_dist": dist})
            why = preemption.requested()
            if why and (i + 1) * b < len(x):
                raise preemption.Preempted(
                    f"stopped by {why} after batch {i + 1} of {-(-len(x) // b)}"
                    f"{' of ' + desc if desc else ''}; finished batches are kept in {cache}. "
                    f"Run the same command to resume")
    return np.concatenate(correct), max_dist


def bits(ok) -> str:
    """Per-example outcomes as text, '1' right / '0' wrong, in example order."""
    return "".join("1" if v else "0" for v in np.asarray(ok, bool))


def from_bits(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), np.uint8) == ord("1")


def read_batch(path: str):
    """(correct [B] bool, largest distance) of a finished batch file, or None when there is
    none; a damaged file (a stop mid-write on a filesystem without atomic rename) is moved
    aside with a warning and the batch is measured again."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            kept = json.load(f)
        return from_bits(kept["correct"]), float(kept["max_dist"])
    except (ValueError, KeyError, TypeError) as e:
        import warnings
        aside = f"{path}.corrupt"
        os.replace(path, aside)
        warnings.warn(f"{path} is damaged ({e}); moved it to {aside}, measuring the batch "
                      f"again", stacklevel=2)
        return None


def _attacked(models: Models, threat: str):
    """The logits function a threat model's attacks see."""
    if threat not in THREATS:
        raise ValueError(f"unknown threat model {threat!r}; choose from {THREATS}")
    attacked = {"whitebox": models.served, "target-only": models.classifier,
                "transfer": models.source}[threat]
    if attacked is None:
        raise ValueError(f"threat model {threat!r} needs "
                         f"{'a classifier part' if threat == 'target-only' else 'a source model'}")
    return attacked


def report(models: Models, x, y, key, attacks: dict, threats=("whitebox",),
           batch_size: int = 256, progress: bool = True, cache: str | None = None,
           per_example: bool = False, crafts: Callable | None = None) -> dict:
    """{'clean': acc, threat: {attack: acc, ..., 'worst_case': acc}, 'max_linf': {...}}.

    'max_linf' ('max_l2' for attacks with norm='L2') holds the largest distance of each
    threat / attack's examples from the clean ones, in the attack's norm.
    worst_case is the per-sample worst case over the threat's attacks (and clean).
    cache: a directory for finished batches (see `correct_under`), one subdirectory per
    threat and attack; name it after the models, examples, attacks and key.
    Each attack runs on `attack_key(key, name, params)` under every threat model.
    crafts: (threat, name, params, attack key) -> a directory of crafted batches for that
    attack (see `correct_under`), or None.
    """
    sub = (lambda name: os.path.join(cache, name)) if cache else (lambda name: None)
    predict = make_predict(models.served, models.stochastic, models.eval_draws)
    clean, _ = correct_under(models.served, models.stochastic, None,
                             lambda f, xb, yb, k: xb, x, y, key, batch_size,
                             cache=sub("clean"), predict=predict)
    out = {"examples": int(len(x)), "clean": float(clean.mean()), "max_linf": {}}
    kept = {"clean": clean}
    for threat in threats:
        attacked = _attacked(models, threat)
        stoch = models.stochastic and threat == "whitebox"
        worst = clean.copy()
        out[threat] = {}
        for name, params in attacks.items():
            norm = params.get("norm", "Linf")
            k = attack_key(key, name, params)
            ok, dist = correct_under(models.served, models.stochastic, attacked,
                                     craft_fn(name, params, stoch), x, y, k, batch_size,
                                     desc=f"{threat} {name}" if progress else None,
                                     cache=sub(f"{threat}-{name}"), predict=predict, norm=norm,
                                     crafts=crafts(threat, name, params, k) if crafts else None)
            worst &= ok
            kept[f"{threat}/{name}"] = ok
            out[threat][name] = float(ok.mean())
            out.setdefault(f"max_{norm.lower()}", {})[f"{threat}/{name}"] = dist
        out[threat]["worst_case"] = float(worst.mean())
    if per_example:
        out["per_example"] = kept
    return out


def sanity_checks(models: Models, x, y, key, result: dict, num_classes: int,
                  batch_size: int = 256, attacks: dict | None = None
                  ) -> list[tuple[str, bool, str]]:
    """Carlini et al.'s checks, run or read off `result`: (name, passed, detail) each.

    With `attacks` holding the report's 'pgd' settings, PGD is run again with twice the
    steps (more iterations must not help the defense).
    """
    checks = []
    xs, ys = jnp.asarray(x[:min(len(x), 128)]), jnp.asarray(y[:min(len(x), 128)])
    if not models.stochastic:
        a, b = models.served(xs), models.served(xs)
        checks.append(("logits do not change between calls", bool(jnp.array_equal(a, b)), ""))
    f = models.served if not models.stochastic else (lambda xa: models.served(xa, key))
    g = jax.grad(lambda xa: jnp.sum(attack_lib.cross_entropy(f(xa), ys)))(xs)
    nz = float(jnp.mean(jnp.max(jnp.abs(g).reshape(len(xs), -1), axis=1) > 0))
    checks.append(("gradients are non-zero", nz > 0.9, f"{100 * nz:.0f}% of samples"))
    wb = result.get("whitebox", {})
    if "pgd" in wb and "fgsm" in wb:
        checks.append(("iterative beats single-step", bool(wb["pgd"] <= wb["fgsm"] + 1e-9),
                       f"PGD {wb['pgd']:.3f} vs FGSM {wb['fgsm']:.3f}"))
    if "transfer" in result:
        for name, acc in result["transfer"].items():
            if name in wb:
                checks.append((f"white-box beats transfer ({name})", bool(wb[name] <= acc + 1e-9),
                               f"{wb[name]:.3f} vs {acc:.3f}"))
    n = min(len(x), 256)
    predict = make_predict(models.served, models.stochastic)
    if attacks and "pgd" in attacks and "pgd" in wb:
        params = dict(attacks["pgd"], steps=2 * attacks["pgd"].get("steps", 10))
        more, _ = correct_under(models.served, models.stochastic, models.served,
                                craft_fn("pgd", params, models.stochastic), x, y,
                                jax.random.fold_in(key, 7), batch_size, predict=predict)
        checks.append(("more steps never help the defense", bool(more.mean() <= wb["pgd"] + 0.01),
                       f"PGD-{params['steps']} {more.mean():.3f} vs PGD-{params['steps'] // 2} "
                       f"{wb['pgd']:.3f}"))
    craft = craft_fn("pgd", dict(eps=0.5, step_size=0.05, steps=20), models.stochastic)
    big, _ = correct_under(models.served, models.stochastic, models.served, craft, x[:n], y[:n],
                           key, batch_size, predict=predict)
    chance = 1.0 / num_classes
    checks.append(("accuracy reaches chance at large eps (PGD-20, eps 0.5)",
                   bool(big.mean() <= chance + 0.1), f"{big.mean():.3f} (chance {chance:.3f})"))
    return checks


def eps_sweep(models: Models, x, y, key, eps_list, steps: int = 20, batch_size: int = 256,
              threats=("whitebox",)):
    """Accuracy at each Linf eps (in [0, 1] pixel units) under FGSM and PGD (step eps / 4,
    `steps` steps): {'eps': [...], 'THREAT/fgsm': [...], 'THREAT/pgd': [...]} for each threat
    model in `threats` (the served model scored, as in `report`), and, when `models.source`
    is given, 'source alone/...': the undefended source model attacked white-box on its own,
    the baseline the defense is meant to improve on."""
    series = [(t, models.served, _attacked(models, t), models.stochastic,
               models.stochastic and t == "whitebox") for t in threats]
    if models.source is not None:
        series.append(("source alone", models.source, models.source, False, False))
    out = {"eps": [float(e) for e in eps_list]}
    for s_i, (label, served, attacked, stochastic, eot) in enumerate(series):
        predict = make_predict(served, stochastic, models.eval_draws)
        for name in ("fgsm", "pgd"):
            out[f"{label}/{name}"] = []
        for i, eps in enumerate(eps_list):
            for name, params in (("fgsm", dict(eps=eps)),
                                 ("pgd", dict(eps=eps, step_size=eps / 4, steps=steps))):
                ok, _ = correct_under(served, stochastic, attacked, craft_fn(name, params, eot),
                                      x, y, jax.random.fold_in(key, 1000 * s_i + i), batch_size,
                                      predict=predict)
                out[f"{label}/{name}"].append(float(ok.mean()))
    return out


def format_table(result: dict) -> str:
    threats = [t for t in THREATS if t in result]
    names = sorted({a for t in threats for a in result[t]} - {"worst_case"}) + ["worst_case"]
    lines = [f"{'attack':<14}" + "".join(f"{t:>13}" for t in threats),
             f"{'clean':<14}" + "".join(f"{result['clean']:>13.4f}" for _ in threats)]
    for n in names:
        lines.append(f"{n:<14}" + "".join(
            f"{result[t][n]:>13.4f}" if n in result[t] else f"{'-':>13}" for t in threats))
    return "\n".join(lines)


def closing_report(cfg, logits_fn, test, key, metrics_path: str,
                   progress: bool = True, attacks: dict | None = None) -> dict:
    """Clean accuracy on the whole eval split, and white-box `attacks` (default: FGSM and
    PGD at the GRFD paper's settings) on its first `attack_examples`; written to
    metrics.jsonl and results.json. attack_examples 0: clean accuracy only (a table run
    attacks the model itself)."""
    sub = test.take(cfg.attack_examples)
    attacks = attacks or get_preset(preset_for(cfg.dataset), cfg.attack_max_steps,
                                    only=("fgsm", "pgd"))
    summary = {"clean_acc_full_eval": evaluation.accuracy(logits_fn, test.x, test.y),
               "attack_examples": len(sub)}
    if len(sub):
        result = report(Models(served=logits_fn), sub.x, sub.y, key, attacks,
                        progress=progress)
        summary.update(clean_acc=result["clean"], attacks=attacks,
                       **{f"{k}_acc": v for k, v in result["whitebox"].items()})
    append_jsonl(metrics_path, {"phase": "report", **summary})
    files.write_json(os.path.join(cfg.workdir, "results.json"), summary)
    return summary
