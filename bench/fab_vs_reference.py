"""Agreement of jaxdefense's FAB-T with the reference `autoattack` code (Croce & Hein).

    pip install torch==2.13.0     # benchmark-only dependency
    python bench/fab_vs_reference.py --mirror=/work/.mirror/fra31+auto-attack/repo

The reference files (`autoattack/fab_projections.py`, `other_utils.py`, `fab_base.py`,
`fab_pt.py`) are read from a git clone of fra31/auto-attack with `git show REV:path` and
executed, unmodified, as modules of a stand-in `autoattack` package (so their
`from autoattack.X import ...` lines resolve); nothing is installed.

1. Projections: `projection_linf` / `projection_l2` against the reference's on random
   hyperplanes (w ~ N(0, I), t ~ U[0, 1]^d, b = w.t + N(0, 1) * scale with scales
   log-spaced from 1e-2 to 3e3, so every row case occurs); max |difference| of the
   displacements.
2. FAB-T on a model built from the same numpy weights in both frameworks (a linear model,
   logits = x W + c, or a one-hidden-layer ReLU MLP, on NHWC-flattened images), with
   n_restarts=1 (no random start, so both runs are deterministic), Linf and L2:
   a) one stage toward the 2nd most likely class with an unbounded budget: the distance of
      the closest adversarial point each finds, per sample;
   b) AutoAttack's setting: n_target_classes=9, eps = the threat budget: which points each
      fools within eps and at what distance.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import torch

from jaxdefense.attacks.fab import fab_targeted, projection_l2, projection_linf

REFERENCE_MODULES = ("fab_projections", "other_utils", "fab_base", "fab_pt")


def load_reference(mirror: str, rev: str) -> dict[str, types.ModuleType]:
    """The reference modules, executed from `git show rev:autoattack/<name>.py`."""
    package = types.ModuleType("autoattack")
    package.__path__ = []
    sys.modules["autoattack"] = package
    mods = {}
    for name in REFERENCE_MODULES:
        src = subprocess.run(["git", "-C", mirror, "show", f"{rev}:autoattack/{name}.py"],
                             capture_output=True, text=True, check=True).stdout
        mod = types.ModuleType(f"autoattack.{name}")
        sys.modules[mod.__name__] = mod
        setattr(package, name, mod)
        exec(compile(src, f"autoattack/{name}.py", "exec"), mod.__dict__)
        mods[name] = mod
    return mods


def compare_projections(ref, n: int, d: int, seed: int):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n, d)).astype(np.float32)
    t = rng.uniform(size=(n, d)).astype(np.float32)
    b = ((w * t).sum(1) + rng.normal(size=n) * np.logspace(-2, 3.5, n)).astype(np.float32)
    print(f"projections, N={n}, d={d}: max |ours - reference| of the displacement d "
          f"(and of its norm); rows whose hyperplane the box reaches")
    for name, ours_fn, ref_fn, size in (
            ("Linf", projection_linf, ref.projection_linf, lambda v: np.abs(v).max(1)),
            ("L2", projection_l2, ref.projection_l2, lambda v: np.sqrt((v * v).sum(1)))):
        theirs = ref_fn(torch.from_numpy(t), torch.from_numpy(w), torch.from_numpy(b)).numpy()
        ours = np.asarray(ours_fn(jnp.asarray(t), jnp.asarray(w), jnp.asarray(b)))
        reached = np.abs((w * (t + ours)).sum(1) - b) <= 1e-3 * np.abs(b - (w * t).sum(1))
        print(f"  {name:4s}: max |d diff| {np.abs(ours - theirs).max():.2e}, "
              f"max |norm diff| {np.abs(size(ours) - size(theirs)).max():.2e} "
              f"(norms up to {size(theirs).max():.3g}); {reached.sum()}/{n} rows reach")


def make_model(kind: str, d: int, k: int, hidden: int, seed: int):
    """(jax logits_fn on NHWC, torch module on NCHW) with the same float32 weights."""
    rng = np.random.default_rng(seed)
    if kind == "linear":
        params = [rng.normal(size=(d, k)) / np.sqrt(d), rng.normal(size=k) * 0.1]
    else:
        params = [rng.normal(size=(d, hidden)) * np.sqrt(2 / d), rng.normal(size=hidden) * 0.1,
                  rng.normal(size=(hidden, k)) / np.sqrt(hidden), np.zeros(k)]
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


def distances(adv, x, norm):
    delta = (adv - x).reshape(len(x), -1)
    return np.abs(delta).max(1) if norm == "Linf" else np.sqrt((delta ** 2).sum(1))


def run_fab(ref, f, net, x, y, norm, eps, n_targets, steps):
    """(ours, reference) x_adv as numpy NHWC, and their run times in s."""
    t0 = time.perf_counter()
    ours = np.asarray(jax.block_until_ready(fab_targeted(
        f, jnp.asarray(x), jnp.asarray(y), jax.random.key(0), eps=eps, norm=norm,
        steps=steps, n_target_classes=n_targets)))
    t1 = time.perf_counter()
    attack = ref.FABAttack_PT(net, norm=norm, n_restarts=1, n_iter=steps, eps=eps,
                              alpha_max=0.1, eta=1.05, beta=0.9, seed=0, targeted=True,
                              n_target_classes=n_targets)
    theirs = attack.perturb(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),
                            torch.from_numpy(y.astype(np.int64)))
    t2 = time.perf_counter()
    return ours, theirs.numpy().transpose(0, 2, 3, 1), (t1 - t0, t2 - t1)


def compare_fab(ref, args, kind: str, norm: str, eps: float):
    d = int(np.prod(args.shape))
    f, net = make_model(kind, d, args.classes, args.hidden, args.seed)
    x = np.random.default_rng(args.seed + 1).uniform(size=(args.n, *args.shape)).astype(np.float32)
    y = np.asarray(jnp.argmax(f(jnp.asarray(x)), 1))      # every point correctly classified
    with torch.no_grad():
        logit_diff = np.abs(net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
                            - np.asarray(f(jnp.asarray(x)))).max()
    print(f"\n{kind} model, {norm}, N={args.n}, images {args.shape}, {args.classes} classes, "
          f"{args.steps} iterations; max |logit diff| jax vs torch {logit_diff:.1e}")
    for label, budget, n_targets in (("a) 2nd class, unbounded eps", 1e6, 1),
                                     (f"b) 9 targets, eps={eps:g}", eps,
                                      min(9, args.classes - 1))):
        ours, theirs, (t_ours, t_ref) = run_fab(ref, f, net, x, y, norm, budget, n_targets,
                                                args.steps)
        fo = np.asarray(jnp.argmax(f(jnp.asarray(ours)), 1)) != y
        with torch.no_grad():
            ft = net(torch.from_numpy(theirs.transpose(0, 3, 1, 2).copy())).argmax(1).numpy() != y
        do, dt = distances(ours, x, norm), distances(theirs, x, norm)
        close = np.abs(do - dt) <= args.rtol * np.maximum(dt, 1e-12)
        both = fo & ft
        rel = np.abs(do - dt)[both] / dt[both] if both.any() else np.zeros(1)
        print(f"  {label}: fooled ours {fo.sum()}/{args.n}, reference {ft.sum()}/{args.n}; "
              f"same outcome {np.mean(fo == ft):.3f}; same outcome and distance within "
              f"rtol {args.rtol:g}: {np.mean((fo == ft) & close):.3f}; max rel. distance "
              f"diff where both fool {rel.max():.1e}; time ours {t_ours:.1f} s (with "
              f"compile), reference {t_ref:.1f} s")
        print("    per-sample distance (0 = not fooled), ours / reference:")
        pairs = [f"{a:.5f}/{b:.5f}" for a, b in zip(do[:args.show], dt[:args.show])]
        for i in range(0, len(pairs), 4):
            print("     ", "  ".join(pairs[i:i + 4]))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mirror", default="/work/.mirror/fra31+auto-attack/repo",
                   help="a git clone (bare is fine) of github.com/fra31/auto-attack")
    p.add_argument("--rev", default="HEAD")
    p.add_argument("--n", type=int, default=32, help="points per FAB-T comparison")
    p.add_argument("--shape", type=int, nargs=3, default=[32, 32, 3], help="H W C")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--hidden", type=int, default=64, help="MLP width")
    p.add_argument("--steps", type=int, default=100)
    # The random models are far less robust than trained ones: these budgets leave about half
    # of the points robust, so that both outcomes are compared.
    p.add_argument("--linf_eps", type=float, default=1 / 255)
    p.add_argument("--l2_eps", type=float, default=0.15)
    p.add_argument("--models", default="linear,mlp")
    p.add_argument("--rtol", type=float, default=1e-3)
    p.add_argument("--show", type=int, default=12, help="per-sample distances printed")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)

    mods = load_reference(args.mirror, args.rev)
    ref = types.SimpleNamespace(projection_linf=mods["fab_projections"].projection_linf,
                                projection_l2=mods["fab_projections"].projection_l2,
                                FABAttack_PT=mods["fab_pt"].FABAttack_PT)
    rev = subprocess.run(["git", "-C", args.mirror, "rev-parse", args.rev], capture_output=True,
                         text=True, check=True).stdout.strip()
    print(f"reference fra31/auto-attack @ {rev[:12]}; jax {jax.__version__} "
          f"({jax.devices()[0].platform}), torch {torch.__version__}")
    compare_projections(ref, 64, int(np.prod(args.shape)), args.seed)
    for kind in args.models.split(","):
        for norm, eps in (("Linf", args.linf_eps), ("L2", args.l2_eps)):
            compare_fab(ref, args, kind, norm, eps)


if __name__ == "__main__":
    main()
