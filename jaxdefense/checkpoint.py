"""Orbax checkpoints of training states, and the config a workdir records about itself."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or of another architecture; the message says which."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint's files cannot be read (a truncated or damaged file)."""


class CheckpointWriteError(CheckpointError, OSError):
    """A checkpoint could not be written (a full, read-only or vanished disk); the message
    names the newest checkpoint that was written whole, from which the run resumes."""


class Checkpoints:
    """Checkpoints of a pytree under `directory`, keeping the latest `keep`.

    Steps are whatever the caller counts (training: completed epochs; mid-epoch checkpoints:
    optimizer steps). Saving is asynchronous and atomic (orbax writes a temporary directory
    and renames it; one left by a kill is removed when the directory is opened again);
    `close()` waits. meta: each checkpoint also holds a small JSON dict (`save(..., meta=)`,
    `restore_newest_good` then returns it too).
    """

    def __init__(self, directory: str, keep: int = 3, meta: bool = False):
        self.directory = os.path.abspath(directory)
        self.meta = meta
        handlers = ({"state": ocp.StandardCheckpointHandler(),
                     "meta": ocp.JsonCheckpointHandler()} if meta
                    else ocp.StandardCheckpointHandler())
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, cleanup_tmp_directories=True),
            item_handlers=handlers)

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, tree, meta: dict | None = None) -> None:
        """Start writing `tree` (and `meta`) as `step`; a failed write (this one's start or
        the previous one's finish) raises CheckpointWriteError."""
        args = (ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                   meta=ocp.args.JsonSave(meta or {}))
                if self.meta else ocp.args.StandardSave(tree))
        with self._writing(step):
            self.manager.save(step, args=args)

    def wait(self) -> None:
        """Block until the save in flight is on disk (CheckpointWriteError if it failed)."""
        with self._writing(None):
            self.manager.wait_until_finished()

    def delete(self, step: int) -> None:
        self.manager.delete(step)

    @contextlib.contextmanager
    def _writing(self, step):
        try:
            yield
        except CheckpointWriteError:
            raise
        except Exception as e:     # tensorstore reports a full disk as a ValueError
            try:
                try:
                    self.manager.wait_until_finished()    # an earlier save may still land
                except Exception:
                    pass
                self.manager.reload()
                good = self.latest()
            except Exception:          # the disk may refuse the listing too
                good = None
            where = f" (saving step {step} or the one before)" if step is not None else ""
            raise CheckpointWriteError(
                f"could not write a checkpoint{where} in {self.directory} "
                f"({type(e).__name__}: {e}); the newest checkpoint written whole is "
                f"{'step ' + str(good) if good is not None else 'none'}; the same command "
                f"resumes from it (a full disk: once it has room, or use another --workdir)"
            ) from e

    def restore(self, template, step: int | None = None):
        """Restore into the structure, shapes and shardings of `template`. When the newest
        checkpoint is corrupt, the error names the newest older one that restores."""
        explicit = step is not None
        step = self.latest() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory} yet; finish training first")
        try:
            return self._restore(template, step)
        except CorruptCheckpointError as e:
            if explicit:
                raise
            good = next((s for s in self.steps() if s < step and self._restores(template, s)),
                        None)
            hint = (f"; the newest good checkpoint is step {good} (resuming the training run "
                    f"falls back to it)" if good is not None else
                    "; no older checkpoint restores either")
            raise CorruptCheckpointError(f"{e}{hint}") from e

    def restore_newest_good(self, template):
        """(step, state) from the newest checkpoint that restores, or (0, template) when none
        does; with `meta`, (step, state, meta) and meta {} when none does. A corrupt
        checkpoint is moved aside to DIRECTORY.corrupt/STEP-TIME (nothing is deleted) with a
        warning, so training redoes its epochs and saves them again."""
        for step in self.steps():
            try:
                restored = self._restore(template, step)
                return (step, *restored) if self.meta else (step, restored)
            except CorruptCheckpointError as e:
                aside = os.path.join(f"{self.directory}.corrupt", f"{step}-{int(time.time())}")
                os.makedirs(os.path.dirname(aside), exist_ok=True)
                shutil.move(os.path.join(self.directory, str(step)), aside)
                self.manager.reload()
                warnings.warn(f"{e}; moved it to {aside} and resuming from an older checkpoint",
                              stacklevel=2)
        return (0, template, {}) if self.meta else (0, template)

    def steps(self) -> list[int]:
        """Saved steps, newest first."""
        return sorted(self.manager.all_steps(), reverse=True)

    def _restores(self, template, step: int) -> bool:
        try:
            self._restore(template, step)
            return True
        except CorruptCheckpointError:
            return False

    def _restore(self, template, step: int):
        self._check_shapes(template, step)
        try:
            if self.meta:
                out = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore()))
                return out["state"], dict(out["meta"])
            return self.manager.restore(step, args=ocp.args.StandardRestore(template))
        except Exception as e:  # orbax raises many types for damaged files
            raise CorruptCheckpointError(f"cannot restore {self.directory} step {step}: the "
                                         f"checkpoint looks corrupt ({type(e).__name__}: {e})"
                                         ) from e

    def _check_shapes(self, template, step: int) -> None:
        try:
            meta = self.manager.item_metadata(step)
        except Exception as e:
            raise CorruptCheckpointError(f"cannot read {self.directory} step {step}: the "
                                         f"checkpoint looks corrupt ({type(e).__name__}: {e})"
                                         ) from e
        if meta is not None and self.meta:
            meta = meta["state"] if "state" in meta else None
        if meta is None:
            raise CorruptCheckpointError(f"{self.directory} step {step} has no readable metadata")
        want = {_path(p): tuple(np.shape(v))
                for p, v in jax.tree_util.tree_leaves_with_path(template)}
        have = {_path(p): tuple(getattr(v, "shape", ()) or ())
                for p, v in jax.tree_util.tree_leaves_with_path(meta)}
        missing = sorted(set(want) - set(have))
        extra = sorted(set(have) - set(want))
        wrong = sorted(k for k in set(want) & set(have) if want[k] != have[k])
        if missing or extra or wrong:
            lines = ([f"  missing {k}" for k in missing[:5]] + [f"  unexpected {k}" for k in extra[:5]]
                     + [f"  {k}: checkpoint {have[k]} vs model {want[k]}" for k in wrong[:5]])
            raise CheckpointError(
                f"checkpoint {self.directory} step {step} is of another architecture "
                f"({len(missing)} missing, {len(extra)} unexpected, {len(wrong)} reshaped "
                f"arrays):\n" + "\n".join(lines))

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.manager.close()


def _path(keys) -> str:
    """'a/b/0' for a key path, whether it runs through attributes, dict keys or indices."""
    parts = (getattr(k, "name", getattr(k, "key", getattr(k, "idx", k))) for k in keys)
    return "/".join(str(p) for p in parts)


CONFIG_FILE = "config.json"


def save_config(workdir: str, defense: str, config: dict) -> None:
    from jaxdefense import files
    os.makedirs(workdir, exist_ok=True)
    files.write_json(os.path.join(workdir, CONFIG_FILE), {"defense": defense, "config": config},
                     sort_keys=True)


def load_config(workdir: str) -> tuple[str, dict]:
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"{workdir} is not a jaxdefense workdir (no {CONFIG_FILE})")
    try:
        with open(path) as f:
            data = json.load(f)
        return data["defense"], data["config"]
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path} is corrupt ({e})") from e


def restore_variables(directory: str, template_state) -> dict:
    """{'params', 'batch_stats'} of the newest checkpoint in `directory`, restored into the
    structure of `template_state` (a TrainState as its training made it)."""
    state = Checkpoints(directory).restore(template_state)
    return {"params": state.params, "batch_stats": state.batch_stats}


# Compact models: what a trained workdir serves, without optimizer state or history.
VARIABLES_FILE = "variables.msgpack"
MODEL_FILE = "model.json"
PATH_FIELDS = ("workdir", "target_workdir", "data_dir")     # where, not what


def is_compact(path: str) -> bool:
    """Whether `path` is a compact model (`export_model`), committed or not."""
    return os.path.isfile(os.path.join(path, MODEL_FILE))


def model_digest(path: str) -> str:
    """sha256 of a model: its defense, its config without paths (`PATH_FIELDS`) and its
    served variables (leaf paths, dtypes, shapes and bytes). A compact model is read from
    its variables file; a training workdir is restored through its defense."""
    defense, config = load_config(path)
    return _digest(defense, config, served_variables(path))


def _digest(defense: str, config: dict, variables) -> str:
    """`model_digest` of a model held in memory."""
    import hashlib
    h = hashlib.sha256(json.dumps([defense, {k: v for k, v in config.items()
                                             if k not in PATH_FIELDS}],
                                  sort_keys=True, default=str).encode())
    for p, leaf in sorted(jax.tree_util.tree_leaves_with_path(variables),
                          key=lambda item: _path(item[0])):
        leaf = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{_path(p)}:{leaf.dtype}:{leaf.shape}".encode())
        h.update(leaf.tobytes())
    return h.hexdigest()


def served_variables(path: str) -> dict:
    """The variables a defense's `serve` takes: from a compact model's variables file, or
    restored from a training workdir's newest checkpoints (through the registry)."""
    from flax import serialization
    from jaxdefense.defenses import registry
    defense, config = load_config(path)
    if is_compact(path):
        variables = os.path.join(path, VARIABLES_FILE)
        if not os.path.isfile(variables):
            with open(os.path.join(path, MODEL_FILE)) as f:
                how = json.load(f).get("trained_by", "its training command")
            raise CheckpointError(f"{path} holds the record of a model whose parameters are "
                                  f"not in the repository; train it with: {how}")
        try:
            with open(variables, "rb") as f:
                return serialization.msgpack_restore(f.read())
        except Exception as e:        # msgpack raises several types on a damaged file
            raise CorruptCheckpointError(f"{variables} is corrupt ({type(e).__name__}: {e})"
                                         ) from e
    entry = registry.get(defense)
    cfg = entry.Config(**config)
    return entry.restore(path, cfg, entry.build(cfg))


def resolved_config(path: str, config: dict) -> dict:
    """A compact model's config with its `target_workdir` (kept relative to the model's
    folder, so a clone anywhere serves it) made a path from here."""
    target = config.get("target_workdir")
    if is_compact(path) and target and not os.path.isabs(target):
        return {**config, "target_workdir": os.path.normpath(os.path.join(path, target))}
    return config


def export_model(workdir: str, out: str, about: dict, target: str | None = None) -> str:
    """Write `workdir`'s served variables as a compact model in `out`: config.json (with
    `target_workdir` pointing at `target`, the target's compact model, relative to `out`),
    variables.msgpack (parameters and batch statistics, no optimizer state) and model.json
    (`about`: how it was trained, its results, and its digest). `jaxdefense.load(out)`
    serves it. Returns its digest."""
    from flax import serialization
    from jaxdefense import files
    defense, config = load_config(workdir)
    variables = jax.tree_util.tree_map(np.asarray, served_variables(workdir))
    config = dict(config, workdir=".")
    if config.get("target_workdir"):
        if target is None:
            raise ValueError(f"{workdir} serves the target in {config['target_workdir']}: "
                             f"export the target first and name it")
        config["target_workdir"] = os.path.relpath(target, out)
    os.makedirs(out, exist_ok=True)
    tmp = os.path.join(out, VARIABLES_FILE + ".tmp")
    with open(tmp, "wb") as f:
        f.write(serialization.msgpack_serialize(variables))
    os.replace(tmp, os.path.join(out, VARIABLES_FILE))
    save_config(out, defense, config)
    results = os.path.join(workdir, "results.json")
    trained = None
    if os.path.isfile(results):
        with open(results) as f:
            trained = json.load(f)
    digest = _digest(defense, config, variables)      # paths aside: the workdir's digest
    files.write_json(os.path.join(out, MODEL_FILE),
                     {"defense": defense, **about, "training_results": trained,
                      "size_bytes": os.path.getsize(os.path.join(out, VARIABLES_FILE)),
                      "digest": digest}, sort_keys=True)
    return digest
