"""C&W-L2, DDN, JSMA, stAdv and targeted PGD against advertorch 0.2.3 (the library the ARN
paper attacked with), run with torch on a model built from the same numpy weights. Skipped
unless torch and advertorch are installed (README's install line; CI fails instead, with
JAXDEFENSE_REQUIRE_REFERENCES=1):

    pip install torch==2.13.0 && pip install --no-deps advertorch==0.2.3
    python -m pytest tests/test_advertorch_agreement.py -m slow -n 0

advertorch 0.2.3 imports two things newer torch no longer has (`zero_gradients`, used by its
FAB) and torchvision (used by its JPEG filter); neither is on the path these tests run, so
the import is given stand-ins for them here, nothing in advertorch is changed.
"""
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdefense import attacks
from tests.conftest import import_reference

torch = import_reference("torch")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def advertorch():
    gradcheck = sys.modules.get("torch.autograd.gradcheck")
    if gradcheck is not None and not hasattr(gradcheck, "zero_gradients"):
        gradcheck.zero_gradients = lambda x: None
    if "torchvision" not in sys.modules:
        tv = types.ModuleType("torchvision")
        tr = types.ModuleType("torchvision.transforms")
        tr.ToPILImage = tr.ToTensor = lambda *a, **k: None
        tv.transforms = tr
        sys.modules["torchvision"], sys.modules["torchvision.transforms"] = tv, tr
    mod = import_reference("advertorch.attacks")
    torch.set_num_threads(1)
    return mod


SHAPE, K, N = (8, 8, 1), 10, 32


def _models(seed: int = 0):
    """(jax logits_fn on NHWC, torch module on NCHW): a ReLU MLP with the same weights."""
    rng = np.random.default_rng(seed)
    d = int(np.prod(SHAPE))
    params = [rng.normal(size=(d, 64)) * np.sqrt(2 / d), rng.normal(size=64) * 0.1,
              rng.normal(size=(64, K)) * 0.5, np.zeros(K)]
    params = [p.astype(np.float32) for p in params]
    jp, tp = [jnp.asarray(p) for p in params], [torch.from_numpy(p) for p in params]

    def jax_fn(x):
        return jax.nn.relu(x.reshape(x.shape[0], -1) @ jp[0] + jp[1]) @ jp[2] + jp[3]

    class TorchModel(torch.nn.Module):
        def forward(self, x):
            h = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1) @ tp[0] + tp[1]
            return torch.relu(h) @ tp[2] + tp[3]
    return jax_fn, TorchModel().eval()


def _data(f, seed=1):
    x = np.random.default_rng(seed).uniform(0.1, 0.9, size=(N, *SHAPE)).astype(np.float32)
    y = np.asarray(jnp.argmax(f(jnp.asarray(x)), 1))
    return x, y


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


def _l2(a, x):
    return np.sqrt(((a - x) ** 2).reshape(len(x), -1).sum(1))


def _fooled(f, a, label, targeted=False):
    p = np.asarray(jnp.argmax(f(jnp.asarray(a)), 1))
    return p == label if targeted else p != label


@pytest.mark.parametrize("targeted", [False, True])
def test_cw_l2_matches_advertorch(advertorch, targeted):
    """ARN's setting (confidence 1, c from 1, 4 search rounds) at 200 steps: the same points
    found, at the same distances."""
    f, net = _models()
    x, y = _data(f)
    label = (y + 1) % K if targeted else y
    params = dict(confidence=1.0, initial_const=1.0, binary_search_steps=4,
                  max_iterations=200, learning_rate=0.01)
    ours = np.asarray(attacks.cw_l2(f, jnp.asarray(x), jnp.asarray(y),
                                    target=jnp.asarray(label) if targeted else None, **params))
    attack = advertorch.CarliniWagnerL2Attack(net, K, targeted=targeted, **params)
    theirs = _nhwc(attack.perturb(_nchw(x), torch.from_numpy(label.astype(np.int64))))
    fo, ft = _fooled(f, ours, label, targeted), _fooled(f, theirs, label, targeted)
    assert ft.mean() > 0.5 and np.array_equal(fo, ft)
    np.testing.assert_allclose(_l2(ours, x)[ft], _l2(theirs, x)[ft], rtol=2e-3, atol=1e-4)


@pytest.mark.parametrize("targeted", [False, True])
def test_ddn_matches_advertorch(advertorch, targeted):
    f, net = _models()
    x, y = _data(f)
    label = (y + 1) % K if targeted else y
    ours = np.asarray(attacks.ddn(f, jnp.asarray(x), jnp.asarray(y), jax.random.key(0),
                                  target=jnp.asarray(label) if targeted else None, steps=100))
    attack = advertorch.DDNL2Attack(net, nb_iter=100, gamma=0.05, init_norm=1.0,
                                    quantize=True, levels=256, targeted=targeted)
    theirs = _nhwc(attack.perturb(_nchw(x), torch.from_numpy(label.astype(np.int64))))
    fo, ft = _fooled(f, ours, label, targeted), _fooled(f, theirs, label, targeted)
    assert ft.mean() > 0.9 and np.array_equal(fo, ft)
    # quantization can round a float32 hair differently; distances agree closely
    d_o, d_t = _l2(ours, x), _l2(theirs, x)
    assert np.median(np.abs(d_o - d_t) / d_t) < 1e-3
    assert np.all(np.abs(d_o - d_t) <= 0.05 * d_t + 2 / 255)


def test_jsma_matches_advertorch(advertorch):
    f, net = _models()
    x, y = _data(f)
    target = np.argsort(-np.asarray(f(jnp.asarray(x))), 1)[:, 1]     # the runner-up class
    ours = np.asarray(attacks.jsma(f, jnp.asarray(x), jnp.asarray(y),
                                   target=jnp.asarray(target)))
    attack = advertorch.JacobianSaliencyMapAttack(net, K, theta=1.0, gamma=1.0)
    theirs = _nhwc(attack.perturb(_nchw(x), torch.from_numpy(target.astype(np.int64))))
    fo, ft = _fooled(f, ours, target, True), _fooled(f, theirs, target, True)
    assert ft.mean() > 0.8
    # pixel order differs (NHWC vs NCHW only matters for ties; one channel here): the same
    # pairs are chosen, so the outputs agree but for float rounding of near-tied scores
    same = np.all(np.abs(ours - theirs) < 1e-6, axis=(1, 2, 3))
    assert same.mean() >= 0.9 and np.array_equal(fo[same], ft[same])
    assert abs(fo.mean() - ft.mean()) <= 2 / N


@pytest.mark.parametrize("targeted,tau", [(False, 0.05), (False, 0.5), (True, 0.5)])
def test_stadv_reaches_advertorch(advertorch, targeted, tau):
    """Different optimizers (optax's L-BFGS vs scipy's L-BFGS-B): about as many points fooled
    (at most 2 fewer of 32), by warps no larger in pixel L2 (mean within 20% of the
    reference's on the points both fool; at tau 0.05 ours are smaller)."""
    f, net = _models()
    x, y = _data(f)
    label = (y + 1) % K if targeted else y
    ours = np.asarray(attacks.stadv(f, jnp.asarray(x), jnp.asarray(y),
                                    target=jnp.asarray(label) if targeted else None,
                                    tau=tau, max_iterations=200, failed="zeros"))
    attack = advertorch.SpatialTransformAttack(net, K, initial_const=tau, max_iterations=200,
                                               targeted=targeted)
    theirs = _nhwc(attack.perturb(_nchw(x), torch.from_numpy(label.astype(np.int64))))
    found_o = ~np.all(ours == 0, axis=(1, 2, 3))
    found_t = ~np.all(theirs == 0, axis=(1, 2, 3))
    assert found_t.mean() > 0.5 and found_o.sum() >= found_t.sum() - 2
    assert np.all(_fooled(f, ours[found_o], label[found_o], targeted))
    both = found_o & found_t
    assert _l2(ours[both], x[both]).mean() <= 1.2 * _l2(theirs[both], x[both]).mean()


def test_targeted_pgd_matches_advertorch(advertorch):
    """advertorch's LinfPGDAttack(targeted=True) without random start returns its last
    iterate: ours with return_last gives the same points."""
    f, net = _models()
    x, y = _data(f)
    target = (y + 2) % K
    ours = np.asarray(attacks.pgd(f, jnp.asarray(x), jnp.asarray(y), jax.random.key(0),
                                  eps=0.3, step_size=0.01, steps=40, random_start=False,
                                  target=jnp.asarray(target), return_last=True))
    attack = advertorch.LinfPGDAttack(net, eps=0.3, nb_iter=40, eps_iter=0.01, rand_init=False,
                                      targeted=True)
    theirs = _nhwc(attack.perturb(_nchw(x), torch.from_numpy(target.astype(np.int64))))
    close = np.all(np.abs(ours - theirs) < 1e-5, axis=(1, 2, 3))
    assert close.mean() >= 0.9
    assert np.array_equal(_fooled(f, ours, target, True), _fooled(f, theirs, target, True))
