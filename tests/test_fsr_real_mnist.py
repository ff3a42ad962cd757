"""A short AT + FSR run on the real MNIST test files: PGD accuracy clearly above chance."""
import json

import jax
import pytest

import jaxdefense
from jaxdefense import data
from jaxdefense.defenses.fsr.config import preset
from jaxdefense.defenses.fsr.train import train_and_evaluate
from jaxdefense.robustness import Models, report
from tests.conftest import mnist_dir


@pytest.mark.slow
def test_at_fsr_on_real_mnist_keeps_pgd_accuracy(tmp_path):
    cfg = preset("mnist", data_dir=mnist_dir(), train_split="test[:2000]",
                 eval_split="test[9000:]", epochs=3, lr=0.05, lr_milestones="", batch_size=64,
                 lenet_width=0.5, fsr_hidden=16, train_eps=0.1, train_step_size=0.025,
                 train_steps=7, attack_preset="linf-8", attack_examples=16,
                 workdir=str(tmp_path / "fsr"))
    train_and_evaluate(cfg, progress=False)
    model = jaxdefense.load(cfg.workdir)       # restored from the orbax checkpoint
    test = data.load("mnist", "test[9000:9200]", mnist_dir())
    attacks = {"pgd": dict(eps=0.1, step_size=0.01, steps=20)}
    result = report(Models(served=model.logits_fn), test.x, test.y, jax.random.key(0), attacks,
                    progress=False)
    print(json.dumps(result))
    assert result["clean"] > 0.6
    assert result["whitebox"]["pgd"] > 0.3        # chance is 0.1
