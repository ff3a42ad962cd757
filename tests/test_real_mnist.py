"""A short GRFD run on the real MNIST test files: 8,000 to train, 2,000 held out."""
import json
import os

import pytest

from jaxdefense.defenses.grfd.config import preset
from jaxdefense.defenses.grfd.train import train_and_evaluate
from tests.conftest import mnist_dir


@pytest.mark.slow
def test_grfd_on_real_mnist_beats_chance(tmp_path):
    cfg = preset("mnist", data_dir=mnist_dir(), train_split="test[:8000]",
                 eval_split="test[8000:]", epochs=2, lenet_width=0.5, vae_base=16, z_dim=64,
                 attack_examples=100, workdir=str(tmp_path / "run"))
    report = train_and_evaluate(cfg, progress=False)
    print(json.dumps(report))
    # chance is 0.10; measured 0.88 after 2 epochs at this width, 0.95 after 3 at full width
    assert report["clean_acc_full_eval"] > 0.8
    assert report["pgd_acc"] <= report["fgsm_acc"] + 0.05
    assert os.path.exists(os.path.join(cfg.workdir, "figures", "latent.png"))
