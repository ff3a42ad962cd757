"""Resuming past a damaged checkpoint: fall back, set it aside, log each epoch once."""
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdefense import training
from jaxdefense.checkpoint import Checkpoints, CorruptCheckpointError
from tests.conftest import linear_step


def _fit(workdir, **kw):
    rng = np.random.RandomState(0)
    x = rng.rand(64, 4, 4, 1).astype(np.float32)
    y = (x.mean((1, 2, 3)) > 0.5).astype(np.int32)

    state = training.TrainState.create(apply_fn=None, tx=optax.adam(0.05),
                                       params={"w": jnp.zeros((16, 2)), "b": jnp.zeros(2)})
    return training.fit(state, linear_step, x, y, epochs=3, batch_size=16, seed=0,
                        ckpt_dir=os.path.join(workdir, "ckpt"), phase="p",
                        metrics_path=os.path.join(workdir, "metrics.jsonl"), progress=False, **kw)


def test_resume_falls_back_past_a_truncated_checkpoint(tmp_path):
    ref = _fit(str(tmp_path / "ref"))
    run = tmp_path / "run"
    _fit(str(run))
    step3 = run / "ckpt" / "3"
    biggest = max((p for p in step3.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])   # cut short
    template = jax.tree.map(jnp.zeros_like, ref)
    with pytest.raises(CorruptCheckpointError, match="newest good checkpoint is step 2"):
        Checkpoints(str(run / "ckpt")).restore(template)
    with pytest.warns(UserWarning, match="step 3: the checkpoint looks corrupt.*moved it to"):
        resumed = _fit(str(run))
    chex.assert_trees_all_close(resumed.params, ref.params)        # same run as no damage
    epochs = [json.loads(l)["epoch"] for l in open(run / "metrics.jsonl")]
    assert epochs == [1, 2, 3]                                    # epoch 3 redone, logged once
    assert [p.name.split("-")[0] for p in (tmp_path / "run" / "ckpt.corrupt").iterdir()] == ["3"]
    assert Checkpoints(str(run / "ckpt")).steps() == [3, 2, 1]
