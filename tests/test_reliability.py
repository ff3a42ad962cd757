"""Faults a long run survives: a stop request (SIGTERM / SIGINT) between steps, a mid-epoch
checkpoint, a full or unwritable disk. The kill-at-any-moment and lost-process tests are in
test_reliability_kills.py (slow)."""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxdefense import preemption, training
from jaxdefense.checkpoint import Checkpoints, CheckpointWriteError
from tests.conftest import REPO, run_env
from tests.test_training import _fit


def _params(state):
    return {k: np.asarray(v) for k, v in jax.device_get(state.params).items()}


def _records(run):
    return [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]


def _same_records(a, b):
    drop = ("seconds", "images_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in a] == \
        [{k: v for k, v in r.items() if k not in drop} for r in b]


def test_signals_are_noted_inside_the_context_and_restored_after():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with preemption.stop_requests():
        assert preemption.requested(3) is None
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)                       # the handler runs at the next bytecode
        assert preemption.requested(3) == "SIGTERM"
        with preemption.stop_requests():       # nested: the same request is seen
            assert preemption.requested() == "SIGTERM"
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    assert preemption.requested() is None
    with pytest.raises(KeyboardInterrupt):     # a second Ctrl-C does not wait
        with preemption.stop_requests():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            assert preemption.requested() == "SIGINT"
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    assert signal.getsignal(signal.SIGINT) == before[1]


def test_certification_stops_between_batches_when_asked(monkeypatch):
    """Randomized smoothing's certification (an hour at the reference's n = 100,000) is the
    one long loop outside `fit` and the attack cache: a SIGTERM ends it at the next batch."""
    from jaxdefense.defenses import smoothing
    cfg = smoothing.preset("digits", smoke=True, n0=4, n=8, chunk=8, certify_batch=2)
    counted, stop = [], []
    sample_counts = smoothing.sample_counts

    def counting(*args):                       # two calls per batch (selection, estimation)
        counted.append(1)
        if stop and len(counted) == 2:         # the stop arrives during the first batch
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        return sample_counts(*args)

    monkeypatch.setattr(smoothing, "sample_counts", counting)
    base_fn = lambda x: jax.numpy.zeros((x.shape[0], 10))
    x = np.zeros((6, 8, 8, 1), np.float32)
    preds, _ = smoothing.certify(base_fn, x, jax.random.key(0), cfg, 10, progress=False)
    assert len(preds) == 6 and len(counted) == 6     # without a stop request: every batch
    counted.clear()
    stop.append(True)
    with preemption.stop_requests(), pytest.raises(preemption.Preempted, match="2 of 6"):
        smoothing.certify(base_fn, x, jax.random.key(0), cfg, 10, progress=False)
    assert len(counted) == 2


def test_a_stop_request_saves_mid_epoch_and_the_same_call_resumes_exactly(tmp_path,
                                                                          monkeypatch):
    """Stopped after global step 8 (step 2 of epoch 2): the state of step 8 is saved, the
    epoch's record is not written, and the resumed run ends with the uninterrupted run's
    parameters and records (epoch 2's means over all six steps)."""
    ref = _fit(str(tmp_path / "ref"), augment=True)
    run = str(tmp_path / "run")
    monkeypatch.setattr(preemption, "requested",
                        lambda step=None: "SIGTERM" if step == 8 else None)
    with pytest.raises(preemption.Preempted, match="SIGTERM after step 2 of epoch 2/3"):
        _fit(run, augment=True)
    monkeypatch.undo()
    assert Checkpoints(os.path.join(run, "ckpt")).steps() == [1]
    assert Checkpoints(os.path.join(run, "ckpt" + training.PARTIAL), meta=True).steps() == [8]
    assert [r["epoch"] for r in _records(run)] == [1]
    resumed = _fit(run, augment=True)
    assert int(resumed.step) == 18
    for k, v in _params(ref).items():
        np.testing.assert_array_equal(_params(resumed)[k], v, err_msg=k)
    _same_records(_records(run), _records(str(tmp_path / "ref")))
    assert Checkpoints(os.path.join(run, "ckpt" + training.PARTIAL), meta=True).steps() == []


@pytest.mark.parametrize("every, newest", [
    (dict(checkpoint_every_steps=4, log_every=1), 8),
    (dict(checkpoint_every_seconds=1e-9, log_every=2), 10)])      # due at each logging step
def test_mid_epoch_checkpoints_resume_mid_epoch(tmp_path, monkeypatch, every, newest):
    """Every 4 steps, or every logging step once the time is due: a run that dies (any
    exception) at step 11 or 12 resumes from step `newest`, not from the epoch boundary at
    6, to the uninterrupted parameters."""
    ref = _fit(str(tmp_path / "ref"), **every)
    run = str(tmp_path / "run")
    real = training._host_means
    steps = []

    def dies_after_10(pending):
        steps.extend(pending)
        if len(steps) > 10:
            raise RuntimeError("the machine went away")
        return real(pending)
    monkeypatch.setattr(training, "_host_means", dies_after_10)
    with pytest.raises(RuntimeError):
        _fit(run, **every)
    monkeypatch.undo()
    partial = Checkpoints(os.path.join(run, "ckpt" + training.PARTIAL), meta=True)
    assert partial.steps()[0] == newest
    assert Checkpoints(os.path.join(run, "ckpt")).steps() == [1]
    resumed = _fit(run, **every)
    for k, v in _params(ref).items():
        np.testing.assert_array_equal(_params(resumed)[k], v, err_msg=k)
    assert [r["epoch"] for r in _records(run)] == [1, 2, 3]


def test_a_failed_checkpoint_write_stops_clearly_and_keeps_the_last_good_one(tmp_path,
                                                                               monkeypatch):
    ref = _fit(str(tmp_path / "ref"))
    run = str(tmp_path / "run")
    real = ocp.CheckpointManager.save

    def full_at_2(self, step, *a, **k):
        if step == 2 and "partial" not in str(self.directory):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, step, *a, **k)
    monkeypatch.setattr(ocp.CheckpointManager, "save", full_at_2)
    with pytest.raises(CheckpointWriteError, match="No space left.*written whole is step 1"):
        _fit(run)
    monkeypatch.undo()
    assert Checkpoints(os.path.join(run, "ckpt")).steps() == [1]
    resumed = _fit(run)                        # room again: the same call resumes
    for k, v in _params(ref).items():
        np.testing.assert_array_equal(_params(resumed)[k], v, err_msg=k)
    assert [r["epoch"] for r in _records(run)] == [1, 2, 3]


FILE_LIMIT_SCRIPT = r"""
import json, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)     # a too-large write fails with EFBIG
from jaxdefense import training
from jaxdefense.checkpoint import CheckpointWriteError
from tests.test_training import _fit
evals = []

def eval_fn(state):
    evals.append(1)
    if len(evals) == 2 and sys.argv[2] == "limit":  # the disk 'fills' during epoch 2's save
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, resource.RLIM_INFINITY))
    return {}
try:
    state = _fit(sys.argv[1], eval_fn=eval_fn)
    print(json.dumps({"step": int(state.step),
                      "w": [float(v) for v in state.params["w"].ravel()]}))
except CheckpointWriteError as e:
    print("CheckpointWriteError:", e)
"""


def test_a_disk_that_fills_mid_run_fails_the_real_writer_clearly(tmp_path):
    """Orbax / tensorstore really failing to write (a per-file size limit, EFBIG): the run
    stops with CheckpointWriteError, what is on disk restores, and the resumed run ends
    where an uninterrupted one does."""
    def go(workdir, mode):
        p = subprocess.run([sys.executable, "-c", FILE_LIMIT_SCRIPT, str(workdir), mode],
                           capture_output=True, text=True, timeout=300, cwd=REPO,
                           env=run_env(1))
        assert p.returncode == 0, p.stderr[-3000:]
        return p.stdout.strip().splitlines()[-1]
    ref = json.loads(go(tmp_path / "ref", "none"))
    out = go(tmp_path / "run", "limit")
    assert out.startswith("CheckpointWriteError: could not write a checkpoint") and \
        "File too large" in out, out
    resumed = json.loads(go(tmp_path / "run", "none"))
    assert resumed == ref
    assert [r["epoch"] for r in _records(str(tmp_path / "run"))] == [1, 2, 3]


def test_an_unwritable_or_full_workdir_is_refused_before_training(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(CheckpointWriteError, match="cannot write checkpoints to"):
        _fit(str(blocker / "run"))
    monkeypatch.setattr(training.shutil, "disk_usage",
                        lambda p: type("U", (), {"free": 1000})())
    with pytest.raises(CheckpointWriteError, match=r"MiB free on its disk.*needed"):
        _fit(str(tmp_path / "run"))
    assert not (tmp_path / "run" / "ckpt").exists() or not any(
        (tmp_path / "run" / "ckpt").iterdir())              # no checkpoint written
    # the command line says so before loading any data, exit status 2
    p = subprocess.run([sys.executable, "-m", "train.standard", "--dataset=digits",
                        f"--workdir={blocker / 'run'}"], capture_output=True, text=True,
                       cwd=REPO, env=run_env(1), timeout=300)
    assert p.returncode == 2 and "cannot write to --workdir" in p.stderr, p.stderr[-2000:]
