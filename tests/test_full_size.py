"""Every CIFAR preset at its real size takes one training step on CPU (batch 2): GRFD phase I
(CIFAR-100, WRN-28-10 + residual LVCVAE z 2048, K = 1) and III, FSR + PGD-AT on ResNet-18
and WRN-34-10 (one PGD step inside, to keep CI short), the purifiers' WRN-28-10 target. Memory and FLOPs at batch 128:
bench/full_size.py (figures in BENCHMARKS.md)."""
import pytest

from bench import full_size

CASES = ("grfd-phase1", "grfd-phase3", "fsr-resnet18", "fsr-wrn34-10", "target-wrn28-10")


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_full_size_step_runs_and_is_finite(name):
    case = next(c for c in full_size.cases(attack_steps=1) if c.name == name)
    result = full_size.run_one_step(case, batch=2)
    assert result["finite"], result["metrics"]
    # the real size, not a smoke size
    import jax
    import numpy as np
    params = sum(int(np.prod(p.shape)) for p in
                 jax.tree.leaves(jax.eval_shape(lambda: case.init("float32")).params))
    assert params > 10_000_000, params
