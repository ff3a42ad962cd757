"""The training loop's hygiene: prefetching, metrics fetched at logging steps only, a clear
stop on NaN, and no implicit host-device transfer inside the loop."""
import json
import os
import threading

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdefense import training
from jaxdefense.checkpoint import Checkpoints
from tests.conftest import linear_step as _step


def _data():
    rng = np.random.RandomState(0)
    x = rng.rand(96, 4, 4, 1).astype(np.float32)
    y = (x.mean((1, 2, 3)) > 0.5).astype(np.int32)
    return x, y


def _state():
    return training.TrainState.create(apply_fn=None, tx=optax.adam(0.05),
                                       params={"w": jnp.zeros((16, 2)), "b": jnp.zeros(2)})


def _fit(workdir, state=None, **kw):
    x, y = _data()
    return training.fit(state or _state(), _step, x, y, epochs=kw.pop("epochs", 3),
                        batch_size=16, seed=0, ckpt_dir=os.path.join(workdir, "ckpt"),
                        phase="p", metrics_path=os.path.join(workdir, "metrics.jsonl"),
                        progress=False, **kw)


def test_prefetch_keeps_order_and_hands_on_errors():
    batches = [(np.full((2, 1), i, np.float32), np.full(2, i)) for i in range(7)]
    got = [int(b[1][0]) for b in training.prefetch(iter(batches), size=2)]
    assert got == list(range(7))

    def broken():
        yield batches[0]
        raise RuntimeError("augmentation failed")
    it = training.prefetch(broken(), size=2)
    next(it)
    with pytest.raises(RuntimeError, match="augmentation failed"):
        next(it)
    # a consumer that stops early lets the producer thread end
    before = threading.active_count()
    it = training.prefetch(iter(batches * 10), size=1)
    next(it)
    it.close()
    for t in threading.enumerate():
        if t.name == "jaxdefense-prefetch":
            t.join(timeout=5)
    assert threading.active_count() <= before


def test_prefetch_and_logging_interval_leave_the_result_unchanged(tmp_path):
    ref = _fit(str(tmp_path / "a"), prefetch_batches=0, log_every=1)
    other = _fit(str(tmp_path / "b"), prefetch_batches=3, log_every=4)
    chex.assert_trees_all_equal(jax.device_get(ref.params), jax.device_get(other.params))
    a = [json.loads(s)["train"]["loss"] for s in open(tmp_path / "a" / "metrics.jsonl")]
    b = [json.loads(s)["train"]["loss"] for s in open(tmp_path / "b" / "metrics.jsonl")]
    np.testing.assert_allclose(a, b, rtol=1e-6)       # epoch means over every step in both


def test_loop_makes_no_implicit_transfers(tmp_path):
    """Under jax's transfer guard only explicit transfers (device_put of batches and
    hyperparameters, one device_get of metrics per logging step) are allowed in the step
    loop: a float() of a device value, or a numpy array handed to the step, would raise."""
    state = _fit(str(tmp_path), epochs=2, log_every=2, transfer_guard="disallow",
                 hparams_fn=lambda epoch: {"poison": 0.0})
    assert int(jax.device_get(state.step)) == 12



def test_nan_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path):
    poison = lambda epoch: {"poison": np.nan if epoch == 1 else 0.0}   # noqa: E731
    with pytest.raises(training.NonFiniteError) as e:
        _fit(str(tmp_path), hparams_fn=poison, log_every=2)
    message = str(e.value)
    assert "p epoch 2, step 1 of 6" in message and "loss" in message   # its first logging step
    assert "checkpoint of epoch 1" in message
    assert Checkpoints(str(tmp_path / "ckpt")).steps() == [1]
    epochs = [json.loads(s)["epoch"] for s in open(tmp_path / "metrics.jsonl")]
    assert epochs == [1]
    # the cause fixed, the same command resumes from epoch 1 and finishes
    state = _fit(str(tmp_path))
    assert int(jax.device_get(state.step)) == 18


def test_slow_steps_are_logged_as_they_finish(tmp_path, monkeypatch):
    """Steps slower than SLOW_STEP_SECONDS are fetched one by one, so the bar and its img/s
    follow finished steps (dispatched ahead, a bar of slow steps would sit at its first step
    until the epoch's last); fast steps keep to `log_every`; the result is the same."""
    import time
    fetched = []
    host_means = training._host_means

    def counting(pending):
        fetched.append(len(pending))
        return host_means(pending)
    monkeypatch.setattr(training, "_host_means", counting)
    monkeypatch.setattr(training, "SLOW_STEP_SECONDS", 0.03, raising=False)
    fast = _fit(str(tmp_path / "fast"), epochs=2)                  # 6 steps an epoch
    assert len(fetched) <= 2 * 3 and sum(fetched) == 12

    def slow_step(state, batch, key, hparams):
        jax.debug.callback(lambda: time.sleep(0.1))
        return _step(state, batch, key, hparams)
    fetched.clear()
    x, y = _data()
    slow = training.fit(_state(), slow_step, x, y, epochs=2, batch_size=16, seed=0,
                        ckpt_dir=str(tmp_path / "slow" / "ckpt"), phase="p", progress=False)
    assert fetched == [1] * 12
    chex.assert_trees_all_close(jax.device_get(slow.params), jax.device_get(fast.params))
