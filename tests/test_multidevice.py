"""A jitted, batch-sharded training run gives the same parameters on 1 and on 2 devices.

Plain SGD here: Adam's first steps move each weight by about lr * sign(grad), so a gradient
that is zero up to summation order would flip a whole lr-sized step between layouts.
"""
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import run_env

SCRIPT = r"""
import sys, jax, numpy as np
from jaxdefense.defenses import grfd
from jaxdefense.defenses.grfd.config import preset
from jaxdefense.training import fit
from jaxdefense import data
assert jax.device_count() == int(sys.argv[2]), jax.devices()
cfg = preset("digits", smoke=True, z_dim=8, vae_base=4, lenet_width=0.25, batch_size=16,
             rb_samples=2)
ds = data.load("digits", "train").take(64)
import optax
state = grfd.init_generator_state(cfg, jax.random.key(0), 4)
state = type(state).create(apply_fn=None, params=state.params, batch_stats=state.batch_stats,
                           tx=optax.sgd(0.05))
state = fit(state, grfd.make_generator_step(cfg), ds.x, ds.y, epochs=1, batch_size=16, seed=0,
            ckpt_dir=sys.argv[1] + "/ckpt", phase="g", hparams_fn=lambda e: {"alpha": 10.0},
            progress=False)
flat = {jax.tree_util.keystr(p): np.asarray(v) for p, v in
        jax.tree_util.tree_leaves_with_path(state.params)}
flat.update({"bs" + jax.tree_util.keystr(p): np.asarray(v) for p, v in
             jax.tree_util.tree_leaves_with_path(state.batch_stats)})
np.savez(sys.argv[1] + "/params.npz", **flat)
"""


@pytest.mark.slow
def test_two_devices_match_one(tmp_path):
    results = []
    for n in (1, 2):
        d = tmp_path / str(n)
        d.mkdir()
        subprocess.run([sys.executable, "-c", SCRIPT, str(d), str(n)], check=True, env=run_env(n))
        results.append(np.load(d / "params.npz"))
    one, two = results
    assert set(one.files) == set(two.files)
    for k in one.files:
        np.testing.assert_allclose(one[k], two[k], rtol=2e-4, atol=2e-5, err_msg=k)


ATTACK_SCRIPT = r"""
import sys, jax, jax.numpy as jnp, numpy as np
from jaxdefense.attacks import apgd, fab_targeted, pgd
from jaxdefense.sharding import shard_batch
assert jax.device_count() == int(sys.argv[2])
W = jax.random.normal(jax.random.key(0), (16, 10))
f = lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ W)
x = jax.random.uniform(jax.random.key(1), (8, 4, 4, 1))
y = jnp.argmax(f(x), 1)
xs, ys = shard_batch((np.asarray(x), np.asarray(y)))
a = pgd(f, xs, ys, jax.random.key(2), eps=0.1, steps=10)
b = apgd(f, xs, ys, jax.random.key(2), eps=0.1, steps=20)
# FAB-T staged on the host (robust points gathered into buckets that are multiples of the
# device count); deterministic with one restart
c = fab_targeted(f, xs, ys, jax.random.key(2), eps=0.15, steps=10, n_target_classes=3)
np.savez(sys.argv[1] + "/adv.npz", pgd=np.asarray(a), apgd=np.asarray(b), fab=np.asarray(c))
"""


@pytest.mark.slow
def test_attacks_on_sharded_batches_match_one_device(tmp_path):
    out = []
    for n in (1, 2):
        d = tmp_path / f"a{n}"
        d.mkdir()
        subprocess.run([sys.executable, "-c", ATTACK_SCRIPT, str(d), str(n)], check=True,
                       env=run_env(n))
        out.append(np.load(d / "adv.npz"))
    for k in ("pgd", "apgd", "fab"):
        np.testing.assert_allclose(out[0][k], out[1][k], atol=1e-6, err_msg=k)


PROCESS_SCRIPT = r"""
import json, os, sys, jax
out, mode = sys.argv[1], sys.argv[2]
if mode == "process":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{sys.argv[4]}", num_processes=2,
                               process_id=int(sys.argv[3]))
import numpy as np, optax, jax.numpy as jnp
from jaxdefense import data, evaluation, training
assert jax.device_count() == 2
ds = data.load("digits", "train").take(96)

from tests.conftest import linear_step as step
apply = lambda v, xb: xb.reshape(len(xb), -1) @ v["w"] + v["b"]
state = training.TrainState.create(apply_fn=None, tx=optax.sgd(0.1),
                                   params={"w": jnp.zeros((784, 10)), "b": jnp.zeros(10)})
state = training.fit(state, step, ds.x, ds.y, epochs=2, batch_size=16, seed=0, augment=True,
                     ckpt_dir=out + "/ckpt", phase="p", metrics_path=out + "/metrics.jsonl",
                     progress=False,
                     eval_fn=lambda s: {"acc": evaluation.accuracy(apply, ds.x, ds.y, 32,
                                                                   variables=s.params)})
if jax.process_index() == 0:
    np.savez(out + "/params.npz", **{k: np.asarray(v) for k, v in state.params.items()})
"""


@pytest.mark.slow
def test_two_processes_match_one_process_with_two_devices(tmp_path):
    """jax.distributed on localhost (gloo): each process gathers and augments only its share
    of every global batch; the result equals one process with two devices, and only process 0
    writes the metrics."""
    import json
    import socket
    one = tmp_path / "one"
    one.mkdir()
    subprocess.run([sys.executable, "-c", PROCESS_SCRIPT, str(one), "single"], check=True,
                   env=run_env(2), timeout=600)
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    two = tmp_path / "two"
    two.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", PROCESS_SCRIPT, str(two), "process",
                               str(i), str(port)], env=run_env(1),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
    a, b = np.load(one / "params.npz"), np.load(two / "params.npz")
    for k in a.files:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
    records = [json.loads(line) for line in open(two / "metrics.jsonl")]
    assert [r["epoch"] for r in records] == [1, 2]             # written once, not per process
    single = [json.loads(line) for line in open(one / "metrics.jsonl")]
    for r, s in zip(records, single):
        assert r["train"]["rows"] == s["train"]["rows"] == 16  # the step saw the global batch
        np.testing.assert_allclose(r["train"]["loss"], s["train"]["loss"], rtol=1e-5)
        assert r["eval"]["acc"] == s["eval"]["acc"]


@pytest.mark.slow
def test_cli_distributed_two_processes_write_once_and_match_one_process(tmp_path):
    """`--distributed` in each of two processes (env settings, as on a cluster): one config,
    one metrics file, one event file, results equal to one process with two devices."""
    import json
    import os
    import socket
    args = ["-m", "train.standard", "--dataset=digits", "--smoke", "--epochs=1",
            "--attack_examples=64"]
    subprocess.run([sys.executable, *args, f"--workdir={tmp_path / 'one'}"], check=True,
                   env=run_env(2), capture_output=True, timeout=600)
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = []
    for i in range(2):
        env = dict(run_env(1), JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                   JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i))
        procs.append(subprocess.Popen([sys.executable, *args, "--distributed",
                                       f"--workdir={tmp_path / 'two'}"], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
    two = tmp_path / "two"
    assert len(open(two / "metrics.jsonl").readlines()) == 2        # epoch 1 + the report
    assert len(os.listdir(two / "tensorboard")) == 1
    a = json.load(open(tmp_path / "one" / "results.json"))
    b = json.load(open(two / "results.json"))
    for k in ("clean_acc_full_eval", "clean_acc", "fgsm_acc", "pgd_acc"):
        assert a[k] == b[k], (k, a[k], b[k])
