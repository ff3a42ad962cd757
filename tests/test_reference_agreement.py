"""FAB-T and Square against the reference code (Croce & Hein's `fra31/auto-attack`), run with
torch on models built from the same numpy weights. The reference's files are read from a git
clone at JAXDEFENSE_AUTOATTACK_REPO (default /work/.mirror/fra31+auto-attack/repo), else from
the `pyautoattack` package (the same files on PyPI, their imports of each other made
relative: written back), and executed unmodified as modules of a stand-in `autoattack`
package. Skipped without torch or either source (README's install line; CI fails instead,
with JAXDEFENSE_REQUIRE_REFERENCES=1):

    pip install torch==2.13.0 && pip install --no-deps pyautoattack==0.2.0
    python -m pytest tests/test_reference_agreement.py -m slow -n 0
"""
import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdefense.attacks.fab import fab_targeted, projection_l2, projection_linf
from jaxdefense.attacks.square import square
from tests.conftest import import_reference, reference_missing

torch = import_reference("torch")
REPO = os.environ.get("JAXDEFENSE_AUTOATTACK_REPO", "/work/.mirror/fra31+auto-attack/repo")
CLONE = subprocess.run(["git", "-C", REPO, "cat-file", "-e", "HEAD:autoattack/fab_pt.py"],
                       capture_output=True).returncode == 0
PACKAGE = importlib.util.find_spec("pyautoattack")
if not (CLONE or PACKAGE):
    reference_missing(f"no fra31/auto-attack clone at {REPO} and no pyautoattack installed")
pytestmark = pytest.mark.slow


def _source(name: str) -> str:
    """autoattack/<name>.py as the reference repository has it."""
    if CLONE:
        return subprocess.run(["git", "-C", REPO, "show", f"HEAD:autoattack/{name}.py"],
                              capture_output=True, text=True, check=True).stdout
    text = pathlib.Path(PACKAGE.submodule_search_locations[0], f"{name}.py").read_text()
    return re.sub(r"^from \.", "from autoattack.", text, flags=re.M)


@pytest.fixture(scope="module")
def reference():
    """The reference's FAB modules and SquareAttack class."""
    torch.set_num_threads(1)
    package = types.ModuleType("autoattack")
    package.__path__ = []
    sys.modules["autoattack"] = package
    mods = {}
    for name in ("fab_projections", "other_utils", "fab_base", "fab_pt"):
        mod = types.ModuleType(f"autoattack.{name}")
        sys.modules[mod.__name__] = mod
        setattr(package, name, mod)
        exec(compile(_source(name), f"autoattack/{name}.py", "exec"), mod.__dict__)
        mods[name] = mod
    square_ns: dict = {}
    exec(compile(_source("square").replace(
        "from autoattack.autopgd_base import L1_projection", "L1_projection = None"),
        "autoattack/square.py", "exec"), square_ns)
    yield types.SimpleNamespace(projection_linf=mods["fab_projections"].projection_linf,
                                projection_l2=mods["fab_projections"].projection_l2,
                                FAB=mods["fab_pt"].FABAttack_PT,
                                Square=square_ns["SquareAttack"])
    for name in [m for m in sys.modules if m.split(".")[0] == "autoattack"]:
        del sys.modules[name]


def _models(kind: str, d: int, k: int, seed: int = 0):
    """(jax logits_fn on NHWC, torch module on NCHW) with the same float32 weights."""
    rng = np.random.default_rng(seed)
    if kind == "linear":
        params = [rng.normal(size=(d, k)) / np.sqrt(d), rng.normal(size=k) * 0.1]
    else:
        params = [rng.normal(size=(d, 64)) * np.sqrt(2 / d), rng.normal(size=64) * 0.1,
                  rng.normal(size=(64, k)) / 8.0, np.zeros(k)]
    params = [p.astype(np.float32) for p in params]
    jp, tp = [jnp.asarray(p) for p in params], [torch.from_numpy(p) for p in params]

    def jax_fn(x):
        h = x.reshape(x.shape[0], -1) @ jp[0] + jp[1]
        return h if kind == "linear" else jax.nn.relu(h) @ jp[2] + jp[3]

    class TorchModel(torch.nn.Module):
        def forward(self, x):                  # NCHW -> NHWC flatten, as the JAX model
            h = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1) @ tp[0] + tp[1]
            return h if kind == "linear" else torch.relu(h) @ tp[2] + tp[3]
    return jax_fn, TorchModel().eval()


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def test_fab_projections_match_the_reference(reference):
    """Hyperplane projections within the box, every row case (offsets log-spaced from 1e-2
    to 3e3): the displacements agree to float rounding."""
    rng = np.random.default_rng(0)
    n, d = 64, 768
    w = rng.normal(size=(n, d)).astype(np.float32)
    t = rng.uniform(size=(n, d)).astype(np.float32)
    b = ((w * t).sum(1) + rng.normal(size=n) * np.logspace(-2, 3.5, n)).astype(np.float32)
    for ours_fn, ref_fn in ((projection_linf, reference.projection_linf),
                            (projection_l2, reference.projection_l2)):
        theirs = ref_fn(torch.from_numpy(t), torch.from_numpy(w), torch.from_numpy(b)).numpy()
        ours = np.asarray(ours_fn(jnp.asarray(t), jnp.asarray(w), jnp.asarray(b)))
        assert np.abs(ours - theirs).max() < 1e-5


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("norm,eps", [("Linf", 1 / 255), ("L2", 0.15)])
def test_fab_targeted_finds_the_reference_points(reference, kind, norm, eps):
    """FAB-T with one restart and no random start (both deterministic), 9 targets at the
    threat budget (about half the points robust): the same points fooled, at the same
    distance where both fool."""
    shape, k, n = (16, 16, 3), 10, 16
    f, net = _models(kind, int(np.prod(shape)), k)
    x = np.random.default_rng(1).uniform(size=(n, *shape)).astype(np.float32)
    y = np.asarray(jnp.argmax(f(jnp.asarray(x)), 1))
    ours = np.asarray(fab_targeted(f, jnp.asarray(x), jnp.asarray(y), jax.random.key(0),
                                   eps=eps, norm=norm, steps=100, n_target_classes=9))
    attack = reference.FAB(net, norm=norm, n_restarts=1, n_iter=100, eps=eps, alpha_max=0.1,
                           eta=1.05, beta=0.9, seed=0, targeted=True, n_target_classes=9)
    theirs = attack.perturb(_nchw(x), torch.from_numpy(y.astype(np.int64))).numpy()
    theirs = theirs.transpose(0, 2, 3, 1)
    fooled_ours = np.asarray(jnp.argmax(f(jnp.asarray(ours)), 1)) != y
    with torch.no_grad():
        fooled_ref = net(_nchw(theirs)).argmax(1).numpy() != y
    assert 0 < fooled_ref.sum() < n, "the budget should leave both outcomes"
    assert np.mean(fooled_ours == fooled_ref) >= 15 / 16
    size = lambda a: ((np.abs(a - x).reshape(n, -1).max(1)) if norm == "Linf"
                      else np.sqrt(((a - x).reshape(n, -1) ** 2).sum(1)))
    both = fooled_ours & fooled_ref
    np.testing.assert_allclose(size(ours)[both], size(theirs)[both], rtol=5e-3)


@pytest.mark.parametrize("norm,eps,rescale", [("L2", 0.5, False), ("Linf", 8 / 255, False),
                                              ("L2", 0.5, True)])
def test_square_reaches_the_reference_robust_accuracy(reference, norm, eps, rescale):
    """Square on a linear model, 1,000 queries: the windows are drawn differently, so the
    robust accuracy and the mean final margin agree statistically (measured: within 0.016
    and 0.07), and both stay in the threat ball."""
    n, shape, k = 64, (16, 16, 3), 10
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, (n, *shape)).astype(np.float32)
    w = rng.normal(0.0, 1.0, (int(np.prod(shape)), k)).astype(np.float32)
    jax_logits = lambda xa: (xa.reshape(len(xa), -1) - 0.5) @ jnp.asarray(w)
    wt = torch.from_numpy(w)
    torch_logits = lambda xt: (xt.permute(0, 2, 3, 1).reshape(len(xt), -1) - 0.5) @ wt
    y = np.asarray(jax_logits(jnp.asarray(x))).argmax(1)

    def report(z):
        zy = z[np.arange(n), y]
        other = np.where(np.eye(k, dtype=bool)[y], -np.inf, z).max(1)
        return float(np.mean(z.argmax(1) == y)), float(np.mean(zy - other))

    adv = np.asarray(square(jax_logits, jnp.asarray(x), jnp.asarray(y), jax.random.key(0),
                            eps=eps, n_queries=1000, norm=norm, rescale_schedule=rescale))
    ref = reference.Square(torch_logits, norm=norm, eps=eps, n_queries=1000, p_init=0.8, seed=0,
                           resc_schedule=rescale)
    ref.init_hyperparam(_nchw(x))               # perturb's setup, then its one restart
    torch.manual_seed(0)
    with torch.no_grad():
        adv_ref = ref.attack_single_run(_nchw(x), torch.from_numpy(y).long())[1]
    adv_ref = adv_ref.permute(0, 2, 3, 1).numpy()
    for a in (adv, adv_ref):
        d = (a - x).reshape(n, -1).astype(np.float64)
        size = np.sqrt((d ** 2).sum(1)) if norm == "L2" else np.abs(d).max(1)
        assert size.max() <= eps * (1 + 1e-5) and a.min() >= 0 and a.max() <= 1
    (acc, margin), (acc_ref, margin_ref) = report(np.asarray(jax_logits(adv))), report(
        torch_logits(torch.from_numpy(adv_ref).permute(0, 3, 1, 2)).numpy())
    assert abs(acc - acc_ref) <= 0.05
    assert abs(margin - margin_ref) <= 0.15
