"""What a measurement is: the digests that name a column's record (`identity`) and a crafted
set of examples (`crafts_dir`), from the models, the examples and every setting."""
from __future__ import annotations

import functools
import hashlib
import json
import os

import jax
import numpy as np

from jaxdefense import files, robustness
from jaxdefense.tables import record
from jaxdefense.tables.protocols import EVAL_DRAWS
from jaxdefense.tables.spec import Spec, System


def _run_stamp(workdirs: dict, run: str) -> str:
    """A run's identity: its model's digest (`checkpoint.model_digest`: config and served
    variables) where it holds a model, else the digest of its results.json, else its
    workdir's absolute path."""
    w = workdirs[run]
    if os.path.isfile(os.path.join(w, "config.json")):
        made = [os.path.join(w, f) for f in ("model.json", "results.json")
                if os.path.isfile(os.path.join(w, f))]
        return _model_digest(os.path.abspath(w), max((os.stat(f).st_mtime_ns for f in made),
                                                     default=0))
    path = os.path.join(w, "results.json")
    return hashlib.sha256(open(path, "rb").read()).hexdigest() if os.path.isfile(path) \
        else os.path.abspath(w)


@functools.lru_cache(maxsize=64)
def _model_digest(path: str, made: int) -> str:
    """`checkpoint.model_digest`, once per model and version (`made`: its files' time)."""
    from jaxdefense import checkpoint
    return checkpoint.model_digest(path)


def examples_digest(x, y) -> str:
    """sha256 of the attacked examples: images as float32, labels as int64."""
    h = hashlib.sha256(np.ascontiguousarray(np.asarray(x, np.float32)).tobytes())
    h.update(np.ascontiguousarray(np.asarray(y, np.int64)).tobytes())
    return h.hexdigest()


def identity(spec: Spec, system: System, workdirs: dict, dataset: str, x, y, attacks: dict,
             key, batch_size: int, eval_draws: int = EVAL_DRAWS, checks=True) -> dict:
    """What a system's measurement is, the code aside: the paper, table and dataset, the
    system (its run, protocol and preprocessing), every attack setting, the key, the
    batch, the evaluation draws, the checks (False, or their PGD settings), the examples
    and the models it loads (`_run_stamp`, keyed by run name). Its digest
    (`record.stamp`) names the system's record; the code that measured it is provenance
    (`record`)."""
    runs = {d: _run_stamp(workdirs, d)
            for d in sorted({r for r in (system.run, spec.source, system.crafted_on) if r})}
    return json.loads(json.dumps(dict(
        paper=spec.paper, table=spec.table, dataset=dataset, system=system.name,
        run=system.run, protocol=system.paper, preprocess=system.preprocess, runs=runs,
        attacks=attacks, batch_size=batch_size, key=record.key_data(key),
        eval_draws=eval_draws, checks=checks, examples=examples_digest(x, y),
        count=int(len(x))), sort_keys=True, default=str))


def crafts_dir(cache_dir: str, attacked: tuple, workdirs: dict, name: str, params: dict,
               key, batch_size: int, examples: str) -> str:
    """cache_dir/crafts/<digest>: the examples attack `name` (`params`, on `key`) crafts on
    `attacked` ((kind, run) of `attacked_ids`) from `examples` (`examples_digest`) in
    batches of `batch_size`, under the measuring code; the same settings under another
    name (Table 4's 'pgd40' is Table 1's 'pgd') give the same directory."""
    stamp = json.dumps(dict(attacked=[*attacked, _run_stamp(workdirs, attacked[1])],
                            attack=robustness.resolved_entry(name, params),
                            batch_size=batch_size,
                            key=np.asarray(jax.random.key_data(key)).tolist(),
                            examples=examples, code=files.code_digest()),
                       sort_keys=True, default=str)
    return os.path.join(cache_dir, "crafts", hashlib.sha256(stamp.encode()).hexdigest()[:24])

