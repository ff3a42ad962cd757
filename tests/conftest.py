import os
import pathlib

import pytest

from jaxdefense.defenses.grfd.config import preset

REPO = pathlib.Path(__file__).resolve().parents[1]
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"


@pytest.fixture
def tiny_cfg(tmp_path):
    """The smallest GRFD config that still exercises every part (digits, 2 epochs)."""
    return preset("digits", smoke=True, workdir=str(tmp_path / "run"), limit_train=128,
                  limit_eval=64, batch_size=32, z_dim=8, vae_base=4, lenet_width=0.25,
                  attack_examples=32, epochs=2)


def mnist_dir():
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST files not found in {MNIST_DIR}")
    return str(MNIST_DIR)


def run_env(devices: int = 1) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PYTHONPATH"] = str(REPO)
    return env
