"""The training harness every defense uses: loop, sharding, checkpoints, progress, metrics.

A defense brings `step(state, batch, key, hparams) -> (state, metrics)`: pure, jit-able,
metrics a dict of scalars. `fit` shuffles deterministically from (seed, epoch), derives the
step key from (seed, state.step), saves a checkpoint after every epoch (and, when asked,
every N steps or seconds) and resumes from the latest one, so a killed or preempted run
continues to the same parameters as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from tqdm.auto import tqdm

from jaxdefense import cpu_kernels, files, preemption, summaries
from jaxdefense.checkpoint import Checkpoints
from jaxdefense.data import train_batches
from jaxdefense.sharding import (is_main_process, process_share, replicate, shard_batch,
                                 shard_local_batch)


class TrainState(train_state.TrainState):
    batch_stats: Any = None


def cosine_per_epoch(lr: float, lr_min: float, period: int, steps_per_epoch: int):
    """torch CosineAnnealingLR(T_max=period, eta_min=lr_min) stepped once per epoch.

    Past `period` epochs the cosine continues, so the rate climbs back to `lr` at 2*period.
    """
    def schedule(step):
        epoch = step // steps_per_epoch
        return lr_min + (lr - lr_min) * 0.5 * (1.0 + jnp.cos(jnp.pi * epoch / period))
    return schedule


def step_decay_per_epoch(lr: float, milestones, decay: float, steps_per_epoch: int):
    """torch MultiStepLR: lr times decay**(number of milestone epochs passed)."""
    return optax.piecewise_constant_schedule(
        lr, {int(m) * steps_per_epoch: decay for m in milestones})


def make_optimizer(cfg, steps_per_epoch: int) -> optax.GradientTransformation:
    """cfg.optimizer 'adamw': AdamW (betas 0.9/0.999) with the per-epoch cosine schedule;
    'sgd': torch SGD (weight decay added to the gradient, then momentum) with step decay."""
    if cfg.optimizer == "sgd":
        return optax.chain(
            optax.add_decayed_weights(cfg.weight_decay),
            optax.sgd(step_decay_per_epoch(cfg.lr, cfg.milestones(), cfg.lr_decay,
                                           steps_per_epoch), momentum=cfg.momentum))
    return optax.adamw(cosine_per_epoch(cfg.lr, cfg.lr_min, cfg.lr_period, steps_per_epoch),
                       b1=0.9, b2=0.999, weight_decay=cfg.weight_decay)


def init_classifier_state(model, image_shape, tx, key) -> TrainState:
    """A fresh TrainState (params, BatchNorm statistics, optimizer) for a flax classifier."""
    variables = model.init(key, jnp.zeros((1, *image_shape)))
    return TrainState.create(apply_fn=None, params=variables["params"],
                             batch_stats=variables.get("batch_stats", {}), tx=tx)


def input_gradient(logits_fn: Callable, x, y, has_aux: bool = False):
    """d/dx of sum_i CE(logits_fn(x)_i, y_i), pixel units, shape of x.

    Built with `jax.grad`, so a loss can differentiate through it (double backpropagation).
    Per sample when logits_fn treats samples independently; BatchNorm in training mode
    couples them through the batch statistics, as in the reference codes.
    has_aux: logits_fn returns (logits, aux); the result is then (gradient, (logits, aux)),
    both differentiable.
    """
    def ce_sum(xi):
        out = logits_fn(xi)
        logits = out[0] if has_aux else out
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()
        return (ce, (logits, out[1])) if has_aux else ce
    return jax.grad(ce_sum, has_aux=has_aux)(x)


def classifier_step(model, transform: Callable | None = None,
                    regularizer: Callable | None = None):
    """Cross-entropy training step for a flax classifier `model(x, train)`.

    transform(x, key) -> x': applied to the inputs first (e.g. Gaussian noise augmentation).
    regularizer(forward, x, y) -> [B]: a per-sample penalty added to the cross-entropy, where
    forward(x) gives the training-mode logits at the step's parameters (e.g. the squared
    input-gradient norm of gradient regularization); reported as metric 'penalty'.
    """
    def loss_fn(params, batch_stats, x, y, key):
        if transform is not None:
            x = transform(x, jax.random.fold_in(key, 1))
        variables = {"params": params, "batch_stats": batch_stats}

        def forward(xi):
            return model.apply(variables, xi, train=True, rngs={"dropout": key},
                               mutable=["batch_stats"])
        logits, mutated = forward(x)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        metrics = dict(acc=jnp.mean(jnp.argmax(logits, -1) == y))
        if regularizer is not None:
            penalty = regularizer(lambda xi: forward(xi)[0], x, y)
            metrics.update(ce=ce.mean(), penalty=penalty.mean())
            ce = ce + penalty
        loss = ce.mean()
        metrics["loss"] = loss
        return loss, (mutated["batch_stats"], metrics)

    def step(state, batch, key, hparams):
        x, y = batch
        grads, (bs, metrics) = jax.grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, x, y, key)
        return state.apply_gradients(grads=grads, batch_stats=bs), metrics
    return step


def append_jsonl(path: str, record: dict) -> None:
    """Append a metrics record to a JSON-lines file, and its numbers to the TensorBoard event
    files in the same directory (`summaries`)."""
    if not is_main_process():
        return
    files.append_line(path, json.dumps(record))
    summaries.scalars(os.path.dirname(os.path.abspath(path)), record)


def drop_later_epochs(path: str, phase: str, epoch: int) -> None:
    """Remove `phase` records past `epoch` from a metrics file: a run resuming from the
    checkpoint of `epoch` logs those epochs again, and each epoch appears once."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        lines = f.readlines()
    keep = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue                      # a line cut short by a kill
        if not (rec.get("phase") == phase and rec.get("epoch", 0) > epoch):
            keep.append(line if line.endswith("\n") else line + "\n")
    if keep != lines:
        files.write_text(path, "".join(keep))


class NonFiniteError(FloatingPointError):
    """A training metric became NaN or Inf; the message names the step and the checkpoint
    the run can resume from (nothing after it was saved)."""


def prefetch(batches, size: int = 2, put_on_device: Callable = shard_batch):
    """Yield `put_on_device(b)` (default `shard_batch`) for b in `batches`, preparing up to `size` batches ahead on a
    background thread (gathering, augmenting and transferring the next batches while the
    device computes). Order is unchanged; an error in the producer is raised here. Closing
    the generator early waits for the producer to finish the batch it is preparing."""
    if size <= 0:
        for b in batches:
            yield put_on_device(b)
        return
    q: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        """Queue item unless the consumer has gone; False when it has."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for b in batches:
                if not put(put_on_device(b)):
                    return
        except BaseException as e:            # handed to the consumer
            put(e)
            return
        put(done)
    thread = threading.Thread(target=produce, daemon=True, name="jaxdefense-prefetch")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=60)   # not left inside a device transfer when the process exits


def _host_means(pending: list) -> dict:
    """One device-to-host transfer for the metrics of several steps: {key: [values]}."""
    fetched = jax.device_get(pending)
    return {k: [float(m[k]) for m in fetched] for k in fetched[0]}


def resume_options(cfg) -> dict:
    """`fit`'s checkpointing and early-stop arguments from an ExperimentConfig."""
    return dict(keep=cfg.keep_checkpoints, stop_after_epochs=cfg.stop_after_epochs,
                checkpoint_every_steps=cfg.checkpoint_every_steps,
                checkpoint_every_seconds=cfg.checkpoint_every_seconds)


PARTIAL = "-partial"     # mid-epoch checkpoints live in <ckpt_dir>-partial
# steps slower than this (seconds, measured between logging steps) are logged one by one, so
# the progress bar counts finished steps rather than steps dispatched ahead of the device
SLOW_STEP_SECONDS = 1.0


def _state_bytes(state) -> int:
    return sum(int(np.prod(np.shape(v))) * np.dtype(getattr(v, "dtype", np.float32)).itemsize
               for v in jax.tree_util.tree_leaves(state))


def check_room(ckpt_dir: str, state=None, keep: int = 3) -> None:
    """Refuse (CheckpointWriteError) a checkpoint directory that cannot be written, or (with
    `state`) whose disk has no room for `keep` + 2 checkpoints of `state`; nothing is left
    behind that was not there."""
    from jaxdefense.checkpoint import CheckpointWriteError
    try:
        files.probe_writable(ckpt_dir)
    except OSError as e:
        raise CheckpointWriteError(f"cannot write checkpoints to {ckpt_dir}: {e}; choose "
                                   f"another --workdir") from e
    if state is None:
        return
    need = (keep + 2) * _state_bytes(state)
    free = shutil.disk_usage(ckpt_dir).free
    if free < need:
        raise CheckpointWriteError(
            f"{ckpt_dir}: {free / 2**20:.1f} MiB free on its disk, {need / 2**20:.1f} MiB "
            f"needed for {keep} + 2 checkpoints of this model; free some space or choose "
            f"another --workdir")


def fit(state: TrainState, step: Callable, x: np.ndarray, y: np.ndarray, *, epochs: int,
        batch_size: int, seed: int, ckpt_dir: str, phase: str, augment: bool = False,
        hparams_fn: Callable[[int], dict] = lambda epoch: {},
        eval_fn: Callable[[TrainState], dict] | None = None, eval_every: int = 1,
        metrics_path: str | None = None, keep: int = 3,
        stop_after_epochs: int | None = None, progress: bool = True,
        log_every: int = 20, prefetch_batches: int = 2,
        transfer_guard: str | None = None, checkpoint_every_steps: int = 0,
        checkpoint_every_seconds: float = 0) -> TrainState:
    """Train `state` for `epochs` epochs over (x, y), resuming from `ckpt_dir` if possible
    (from the newest checkpoint that restores: a corrupt one is set aside with a warning,
    and metrics of epochs redone are not written twice).

    A checkpoint is saved after every epoch, and inside an epoch every
    `checkpoint_every_steps` steps and, checked at each logging step, when
    `checkpoint_every_seconds` have passed since the last save (0: never); a resume from one
    continues the epoch with the batches an uninterrupted run would see, to the same
    parameters. SIGTERM / SIGINT (`preemption`) end the run after the current step with a
    checkpoint of it and raise `preemption.Preempted`; the same call resumes.

    hparams_fn(epoch) gives per-epoch scalars (e.g. GRFD's alpha) passed as arrays, so they
    never trigger a recompile. stop_after_epochs leaves early (a later call resumes).
    Metrics stay on the device between logging steps (every `log_every` steps, the first
    of an epoch, the last, and every step while steps take over SLOW_STEP_SECONDS: the bar
    then advances as steps finish), where they are fetched in one transfer and checked: a
    NaN or Inf stops with `NonFiniteError` before anything of that epoch is saved. An
    epoch's record is appended to `metrics_path` before its checkpoint is written, and
    records past the checkpoint a run resumes from are dropped, so each epoch is recorded
    once whatever moment a run was killed at. The next `prefetch_batches` batches are prepared on a
    background thread (0: inline). transfer_guard: a `jax.transfer_guard` level for the step
    loop ('disallow' turns any implicit host-device transfer there into an error; the tests
    run it so).
    """
    progress = progress and is_main_process()           # one process shows (and writes)
    steps_per_epoch = len(x) // batch_size
    template = replicate(state)
    check_room(ckpt_dir)
    ckpts = Checkpoints(ckpt_dir, keep)
    partial = Checkpoints(ckpt_dir.rstrip("/") + PARTIAL, keep=2, meta=True)
    start, state = ckpts.restore_newest_good(template)
    skip, history0, seconds0 = 0, {}, 0.0
    p_step, p_state, meta = partial.restore_newest_good(template)
    if (p_step > start * steps_per_epoch and meta.get("steps_per_epoch") == steps_per_epoch
            and meta.get("epoch", epochs) < epochs):
        start, skip, state = meta["epoch"], meta["index"], p_state
        history0, seconds0 = meta["history"], meta["seconds"]
    last = epochs if stop_after_epochs is None else min(epochs, start + stop_after_epochs)
    if start < last:
        check_room(ckpt_dir, template, keep)
    if metrics_path:
        drop_later_epochs(metrics_path, phase, start)
    base_key = jax.random.key(seed)

    def keyed_step(state, batch, hparams):
        return step(state, batch, jax.random.fold_in(base_key, state.step), hparams)
    jstep = jax.jit(cpu_kernels.use(keyed_step), donate_argnums=(0,))

    guard = ((lambda: jax.transfer_guard(transfer_guard)) if transfer_guard
             else contextlib.nullcontext)
    last_save = time.monotonic()

    def save_partial(epoch: int, done: int, history: dict, seconds: float) -> None:
        ckpts.wait()             # one save at a time (orbax's multi-process barriers)
        partial.save(epoch * steps_per_epoch + done, state, meta=dict(
            epoch=epoch, index=done, steps_per_epoch=steps_per_epoch, history=history,
            seconds=seconds))

    def timed_out() -> bool:
        if not checkpoint_every_seconds:
            return False
        due = time.monotonic() - last_save >= checkpoint_every_seconds
        if jax.process_count() > 1:        # every process must agree to save
            from jax.experimental import multihost_utils
            due = bool(np.any(multihost_utils.process_allgather(np.array(due))))
        return due

    try:
        # every_step: log each step; done / at: steps finished, time at the last logging step
        pace = {"every_step": False}
        with preemption.stop_requests():
            for epoch in range(start, last):
                first = skip if epoch == start else 0
                hp_host = {k: np.float32(v) for k, v in hparams_fn(epoch).items()}
                hparams = jax.device_put(hp_host)
                batches = prefetch(train_batches(x, y, batch_size, seed, epoch, augment,
                                                 rows=process_share(batch_size), start=first),
                                   prefetch_batches, shard_local_batch)
                bar = tqdm(batches, total=steps_per_epoch, initial=first,
                           desc=f"{phase} {epoch + 1}/{epochs}", disable=not progress,
                           leave=False)
                history: dict = ({k: list(v) for k, v in history0.items()}
                                 if epoch == start else {})
                pending, t0 = [], time.perf_counter()
                before = seconds0 if epoch == start else 0.0
                pace.update(done=first, at=t0)

                def flush(i):
                    nonlocal pending
                    values = _host_means(pending)
                    pending = []
                    now = time.perf_counter()
                    if jax.process_count() == 1:    # a local clock must not decide collectives
                        pace["every_step"] = ((now - pace["at"]) / max(i + 1 - pace["done"], 1)
                                              > SLOW_STEP_SECONDS)
                    pace.update(done=i + 1, at=now)
                    bad = {k: v[-1] for k, v in values.items() if not np.all(np.isfinite(v))}
                    if bad:
                        resume = ckpts.latest() or 0
                        raise NonFiniteError(
                            f"{phase} epoch {epoch + 1}, step {i + 1} of {steps_per_epoch}: "
                            f"non-finite {bad}. Nothing of this epoch was saved; the run "
                            f"resumes from the checkpoint of epoch {resume} in {ckpt_dir} (a "
                            f"lower learning rate, gradient clipping or float32 may help)")
                    for k, v in values.items():
                        history.setdefault(k, []).extend(v)
                    shown = {k: f"{v[-1]:.3g}" for k, v in values.items()}
                    rate = (i + 1 - first) * batch_size / (time.perf_counter() - t0)
                    shown["img/s"] = f"{rate:.0f}"
                    bar.set_postfix(shown, refresh=False)

                try:
                    for i, batch in enumerate(bar, start=first):
                        with guard():
                            state, metrics = jstep(state, batch, hparams)
                        pending.append(metrics)
                        done = i + 1
                        why = preemption.requested(epoch * steps_per_epoch + done)
                        logging = (not done % log_every or done == steps_per_epoch or
                                   done == first + 1 or pace["every_step"])
                        periodic = (checkpoint_every_steps and done < steps_per_epoch and not
                                    (epoch * steps_per_epoch + done) % checkpoint_every_steps)
                        if not (logging or periodic or why):
                            continue
                        flush(i)
                        if why or periodic or (done < steps_per_epoch and timed_out()):
                            save_partial(epoch, done, history,
                                         before + time.perf_counter() - t0)
                            last_save = time.monotonic()
                        if why:
                            partial.wait()
                            raise preemption.Preempted(
                                f"{phase}: stopped by {why} after step {done} of epoch "
                                f"{epoch + 1}/{epochs}; saved in {partial.directory}. Run the "
                                f"same command to resume")
                finally:
                    bar.close()
                    batches.close()
                seconds = before + time.perf_counter() - t0
                means = {k: float(np.mean(v)) for k, v in history.items()}
                record = dict(phase=phase, epoch=epoch + 1, train=means,
                              seconds=round(seconds, 3),
                              images_per_s=round(steps_per_epoch * batch_size / seconds, 1),
                              **{k: float(v) for k, v in hp_host.items()})
                if eval_fn is not None and (epoch + 1 == epochs or
                                            (eval_every and (epoch + 1) % eval_every == 0)):
                    record["eval"] = eval_fn(state)
                if metrics_path:           # before the checkpoint: a kill between the two
                    append_jsonl(metrics_path, record)   # redoes the epoch, drops this line
                partial.wait()
                ckpts.save(epoch + 1, state)
                last_save = time.monotonic()
                if progress:
                    summary = " ".join(f"{k}={v:.4g}" for k, v in means.items())
                    ev = " ".join(f"{k}={v:.4g}" for k, v in record.get("eval", {}).items())
                    tqdm.write(f"{phase} epoch {epoch + 1}/{epochs} ({seconds:.1f}s): "
                               f"{summary} {ev}")
                if preemption.requested():     # noted during the evaluation or the save
                    ckpts.wait()
                    raise preemption.Preempted(
                        f"{phase}: stopped by {preemption.requested()} after epoch "
                        f"{epoch + 1}/{epochs}; saved in {ckpts.directory}. Run the same "
                        f"command to resume")
            ckpts.wait()
            # mid-epoch checkpoints are superseded once the last epoch is on disk (orbax
            # keeps at most 2 meanwhile)
            for s in partial.steps():
                if s <= (ckpts.latest() or 0) * steps_per_epoch:
                    partial.delete(s)
    finally:
        try:
            ckpts.close()             # waits for a save in flight, also after an error
        finally:
            partial.close()
    return state
