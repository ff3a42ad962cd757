"""Square attack, jaxdefense against the reference code (auto-attack's square.py), L2 and Linf.

    python bench/square_l2_vs_reference.py [--queries 1000] [--mirror PATH]

Runs the reference `SquareAttack` (read with `git show` from a clone or mirror of
github.com/fra31/auto-attack, executed with torch; its L1-only import is replaced by a
dummy) and `jaxdefense.attacks.square` on the same linear model (one weight matrix; NCHW
input in torch, NHWC in JAX) and the same random images in [0, 1] (64, 16x16x3, 10 classes,
labels = the model's clean predictions). The two use different random draws (the reference
one window per batch, ours per sample), so the robust accuracies and mean final margins
(z_y - max_{i != y} z_i, at each attack's best points) are compared, not the points.
Also runs the
reference once with resc_schedule=False against ours with rescale_schedule=False. torch is
a benchmark-only dependency.
"""
from __future__ import annotations

import argparse
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from jaxdefense.attacks.square import square

N, H, W, C, K = 64, 16, 16, 3, 10


def reference_square_attack(mirror: str):
    """The reference's SquareAttack class, from autoattack/square.py at the mirror's HEAD."""
    src = subprocess.run(["git", "-C", mirror, "show", "HEAD:autoattack/square.py"],
                         capture_output=True, text=True, check=True).stdout
    src = src.replace("from autoattack.autopgd_base import L1_projection",
                      "L1_projection = None  # L1 only; not used here")
    ns: dict = {}
    exec(compile(src, "autoattack/square.py", "exec"), ns)
    return ns["SquareAttack"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mirror", default="/work/.mirror/fra31+auto-attack/repo")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)

    rng = np.random.default_rng(args.seed)
    x = rng.uniform(0.0, 1.0, (N, H, W, C)).astype(np.float32)
    w = rng.normal(0.0, 1.0, (H * W * C, K)).astype(np.float32)   # rows in NHWC order

    def jax_logits(xa):
        return (xa.reshape(len(xa), -1) - 0.5) @ jnp.asarray(w)

    wt = torch.from_numpy(w)

    def torch_logits(xt):                                        # NCHW -> NHWC, same weights
        return (xt.permute(0, 2, 3, 1).reshape(len(xt), -1) - 0.5) @ wt

    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    zj, zt = np.asarray(jax_logits(jnp.asarray(x))), torch_logits(xt).numpy()
    np.testing.assert_allclose(zj, zt, rtol=1e-4, atol=1e-4)
    y = zj.argmax(1)

    def report(z):
        zy = z[np.arange(N), y]
        other = np.where(np.eye(K, dtype=bool)[y], -np.inf, z).max(1)
        return float(np.mean(z.argmax(1) == y)), float(np.mean(zy - other))

    SquareAttack = reference_square_attack(args.mirror)
    print(f"{N} images {H}x{W}x{C}, {K} classes, linear model, {args.queries} queries; "
          f"clean accuracy {report(zj)[0]:.3f}, mean clean margin {report(zj)[1]:.3f}")
    print(f"{'norm':5s} {'eps':>7s} {'rescale':>7s} | {'ours acc':>8s} {'margin':>7s} {'s':>5s} | "
          f"{'ref acc':>8s} {'margin':>7s} {'s':>5s}")
    for norm, eps, rescale in (("L2", 0.5, True), ("Linf", 8 / 255, True), ("L2", 0.5, False),
                               ("Linf", 8 / 255, False)):
        t0 = time.perf_counter()
        adv = square(jax_logits, jnp.asarray(x), jnp.asarray(y), jax.random.key(args.seed),
                     eps=eps, n_queries=args.queries, norm=norm, rescale_schedule=rescale)
        adv = np.asarray(jax.block_until_ready(adv))
        t_ours = time.perf_counter() - t0
        ref = SquareAttack(torch_logits, norm=norm, eps=eps, n_queries=args.queries,
                           p_init=0.8, seed=args.seed, resc_schedule=rescale)
        t0 = time.perf_counter()
        ref.init_hyperparam(xt)                 # perturb's setup, then its one restart's run:
        torch.manual_seed(args.seed)            # its best points, fooled or not (as ours)
        with torch.no_grad():
            adv_ref = ref.attack_single_run(xt.clone(), torch.from_numpy(y).long())[1]
        t_ref = time.perf_counter() - t0
        adv_ref = adv_ref.permute(0, 2, 3, 1).numpy()
        for a in (adv, adv_ref):
            d = (a - x).reshape(N, -1)
            size = (np.sqrt((d.astype(np.float64) ** 2).sum(1)) if norm == "L2"
                    else np.abs(d).max(1))
            assert size.max() <= eps * (1 + 1e-5) and a.min() >= 0 and a.max() <= 1
        (acc, m), (acc_r, m_r) = report(np.asarray(jax_logits(adv))), report(
            torch_logits(torch.from_numpy(adv_ref).permute(0, 3, 1, 2)).numpy())
        print(f"{norm:5s} {eps:7.4f} {str(rescale):>7s} | {acc:8.3f} {m:7.3f} {t_ours:5.1f} | "
              f"{acc_r:8.3f} {m_r:7.3f} {t_ref:5.1f}")
    print("(acc: robust accuracy; margin: mean z_y - max_{i != y} z_i at the best points "
          "(the reference's attack_single_run, which perturb calls once); s: seconds, ours "
          "including compilation)")


if __name__ == "__main__":
    main()
