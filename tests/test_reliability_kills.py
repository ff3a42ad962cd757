"""A training run and a table run killed at random moments (SIGKILL: before, during and after
checkpoint writes) or stopped (SIGTERM) and resumed each time end exactly where an
uninterrupted run ends; a lost process in a two-process run stops its peer with a clear
error within a bounded time. Slow: each starts dozens of interpreters."""
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import REPO, run_env

pytestmark = pytest.mark.slow

TRAIN_SCRIPT = r"""
import sys
import numpy as np
from jaxdefense import preemption
from tests.test_training import _fit
with preemption.stop_requests():     # a SIGTERM from here on stops between two steps
    print("training", flush=True)
    try:
        state = _fit(sys.argv[1], epochs=8, augment=True, checkpoint_every_steps=2)
    except preemption.Preempted:
        sys.exit(preemption.EXIT_RESUMABLE)
np.savez(sys.argv[1] + "/params.npz", **{k: np.asarray(v) for k, v in state.params.items()})
print("finished", flush=True)
"""


def _start(args, workdir):
    # no compilation cache: the kill moments are drawn from an uncached run's duration
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=run_env(1, cache=False),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(proc, word: str) -> list:
    """Lines read until one starts with `word` (or the process ended)."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(word):
            break
    return seen


def _writing(workdir) -> bool:
    """An orbax temporary directory is there: the process died while writing a checkpoint."""
    return any("orbax-checkpoint-tmp" in d for _, ds, _ in os.walk(workdir) for d in ds)


def _kill_campaigns(args, workdir_of, ready: str, finished: str, duration: float,
                    kills: int, seed: int, sig=signal.SIGKILL):
    """Start `args` in fresh workdirs, send `sig` to each start at a random moment within
    `duration` seconds after it prints `ready`, and start it again until it finishes (prints
    `finished`); a stop by SIGTERM must exit with status 75. Returns
    (finished workdirs, kills tried, kills that found a checkpoint being written, exit codes
    of the stopped starts)."""
    rng = random.Random(seed)
    done, tried, during_write, codes = [], 0, 0, []
    while tried < kills:
        workdir = workdir_of(len(done))
        while True:                            # until this workdir's run finishes
            proc = _start(args(workdir), workdir)
            _wait_for(proc, ready)
            try:
                rc = proc.wait(timeout=rng.uniform(0, duration) if tried < kills else 900)
            except subprocess.TimeoutExpired:
                proc.send_signal(sig)
                out = proc.communicate(timeout=300)[0]
                rc = proc.returncode
                tried += 1
                codes.append(rc)
                during_write += _writing(workdir)
                if rc == 0 or finished in out:  # it had finished (a signal while the
                    break                       # interpreter shuts down ends it so)
                if sig != signal.SIGKILL:
                    assert rc == 75, out[-3000:]
                continue
            assert rc == 0, proc.stdout.read()[-3000:]
            break
        done.append(workdir)
    return done, tried, during_write, codes


def test_training_killed_at_random_moments_resumes_to_identical_parameters(tmp_path):
    ref = tmp_path / "ref"
    t0 = time.perf_counter()
    proc = _start(["-c", TRAIN_SCRIPT, str(ref)], ref)
    _wait_for(proc, "training")
    t1 = time.perf_counter()
    assert proc.wait(timeout=300) == 0
    duration = time.perf_counter() - t1
    want = np.load(ref / "params.npz")
    results = {}
    for name, sig, kills in (("SIGKILL", signal.SIGKILL, 16), ("SIGTERM", signal.SIGTERM, 4)):
        done, tried, during_write, codes = _kill_campaigns(
            lambda w: ["-c", TRAIN_SCRIPT, str(w)], lambda c: tmp_path / f"{name}{c}",
            "training", "finished", duration, kills, seed=0, sig=sig)
        for workdir in done:
            got = np.load(workdir / "params.npz")
            for k in want.files:
                np.testing.assert_array_equal(got[k], want[k], err_msg=f"{workdir}: {k}")
            epochs = [json.loads(line)["epoch"] for line in open(workdir / "metrics.jsonl")]
            assert epochs == list(range(1, 9)), epochs          # each epoch once
        results[name] = dict(tried=tried, survived=tried, during_write=during_write,
                             campaigns=len(done))
        if sig == signal.SIGTERM:
            assert 75 in codes                    # a stop said "resume me"
    print(f"\nkill test ({time.perf_counter() - t0:.0f} s in all; an uninterrupted training "
          f"{duration:.1f} s): {json.dumps(results)}")
    assert results["SIGKILL"]["during_write"] >= 1     # some kills landed inside a write


def test_a_table_run_killed_and_stopped_resumes_to_the_same_table(tmp_path):
    args = lambda root: ["-m", "eval.table3", "--dataset=digits", "--smoke", f"--root={root}",
                         "--columns=none", "--attacks=fgsm,pgd", "--examples=64",
                         "--batch_size=16", "--epochs=2", "--checks=0",
                         "--set=limit_train=256,limit_eval=64,batch_size=32,lenet_width=0.25,"
                         "attack_examples=0"]
    ref = tmp_path / "ref"
    proc = _start(args(ref), ref)
    t1 = time.perf_counter()
    out = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, out[-3000:]
    duration = time.perf_counter() - t1
    want = json.loads((ref / "table3.json").read_text())["columns"]["none"]
    for sig, kills in ((signal.SIGKILL, 2), (signal.SIGTERM, 2)):
        done, tried, _, codes = _kill_campaigns(
            args, lambda c: tmp_path / f"{sig.name}{c}", "", "wrote ", duration, kills, seed=1,
            sig=sig)
        for root in done:
            got = json.loads((root / "table3.json").read_text())["columns"]["none"]
            for protocol in ("paper", "adaptive"):
                assert got[protocol] == want[protocol], (root, protocol)
            assert got["per_example"] == want["per_example"]


LOST_SCRIPT = r"""
import sys, jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"localhost:{sys.argv[3]}", num_processes=2,
                           process_id=int(sys.argv[2]), heartbeat_timeout_seconds=10)
import numpy as np
from jaxdefense import preemption
from tests.test_training import _fit
print("training", flush=True)
try:
    state = _fit(sys.argv[1], epochs=int(sys.argv[4]), checkpoint_every_steps=4)
except preemption.Preempted as e:
    print("stopped:", e, flush=True)
    sys.exit(preemption.EXIT_RESUMABLE)
if jax.process_index() == 0:
    np.savez(sys.argv[1] + "/params.npz", **{k: np.asarray(v) for k, v in state.params.items()})
"""


def _two_processes(workdir, epochs: int):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = [_start(["-c", LOST_SCRIPT, str(workdir), str(i), str(port), str(epochs)],
                    workdir) for i in range(2)]
    for p in procs:
        _wait_for(p, "training")
    return procs


def _finish(workdir, epochs: int) -> dict:
    """Both processes run `workdir` to the end; (params, seconds)."""
    procs = _two_processes(workdir, epochs)
    t0 = time.perf_counter()
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-3000:]
    return np.load(workdir / "params.npz"), time.perf_counter() - t0


EPOCHS = 12


@pytest.fixture(scope="module")
def two_process_reference(tmp_path_factory):
    """An uninterrupted two-process run: (params, seconds)."""
    return _finish(tmp_path_factory.mktemp("ref"), EPOCHS)


def _same(got, want):
    for k in want.files:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.mark.parametrize("lost", [0, 1])
def test_a_lost_process_stops_the_other_clearly_and_both_resume(tmp_path, lost,
                                                                  two_process_reference):
    """Process `lost` (0: the coordinator) is killed mid-run: the other stops with JAX's
    'another task died' error within the heartbeat timeout (10 s here) instead of hanging,
    and both started again finish with the uninterrupted run's parameters."""
    want, duration = two_process_reference
    procs = _two_processes(tmp_path, EPOCHS)
    time.sleep(duration / 2)
    assert procs[lost].poll() is None, "the run ended before the kill"
    procs[lost].kill()
    t0 = time.perf_counter()
    try:
        out = procs[1 - lost].communicate(timeout=120)[0]
    finally:
        for p in procs:
            p.kill()
    stopped_after = time.perf_counter() - t0
    print(f"\nlost process {lost}: the other stopped {stopped_after:.1f} s later "
          f"(exit {procs[1 - lost].returncode}; training takes {duration:.1f} s)")
    assert procs[1 - lost].returncode != 0 and stopped_after < 60
    assert "another task died" in out, out[-3000:]
    _same(_finish(tmp_path, EPOCHS)[0], want)


def test_sigterm_to_one_process_stops_both_at_the_same_step_and_both_resume(
        tmp_path, two_process_reference):
    """JAX's preemption service: a SIGTERM to process 1 alone; both processes save at the
    step the sync point names, exit 75, and restarted reach the uninterrupted parameters."""
    want, duration = two_process_reference
    procs = _two_processes(tmp_path, EPOCHS)
    time.sleep(duration / 2)
    procs[1].send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [75, 75], "\n".join(o[-2000:] for o in outs)
    said = [next(line for line in o.splitlines() if line.startswith("stopped:")) for o in outs]
    assert said[0].split(" after ")[1].split(";")[0] == said[1].split(" after ")[1].split(";")[0]
    _same(_finish(tmp_path, EPOCHS)[0], want)
