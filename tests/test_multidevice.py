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
from jaxdefense.attacks import apgd, pgd
from jaxdefense.sharding import shard_batch
assert jax.device_count() == int(sys.argv[2])
W = jax.random.normal(jax.random.key(0), (16, 10))
f = lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ W)
x = jax.random.uniform(jax.random.key(1), (8, 4, 4, 1))
y = jnp.argmax(f(x), 1)
xs, ys = shard_batch((np.asarray(x), np.asarray(y)))
a = pgd(f, xs, ys, jax.random.key(2), eps=0.1, steps=10)
b = apgd(f, xs, ys, jax.random.key(2), eps=0.1, steps=20)
np.savez(sys.argv[1] + "/adv.npz", pgd=np.asarray(a), apgd=np.asarray(b))
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
    for k in ("pgd", "apgd"):
        np.testing.assert_allclose(out[0][k], out[1][k], atol=1e-6, err_msg=k)
