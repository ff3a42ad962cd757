"""Throughput and agreement of jaxdefense attacks against torchattacks on one CPU.

    pip install torch==2.13.0 && pip install --no-deps torchattacks && pip install scipy
    python bench/attacks_vs_torchattacks.py --data_dir=../shared/data/mnist
    python bench/attacks_vs_torchattacks.py --norm=L2 --eps=1.5

Trains a LeNet-5 on MNIST test[:8000] for two epochs with jaxdefense, copies the weights
into the same LeNet-5 in PyTorch (logits checked equal), then times each attack on the same
batch(es) of test[8000:] in both libraries (median of --repeats runs after a warm-up, so
compile time is excluded; the warm-up's own time, compiles included, is the last column) and
reports the robust accuracy each reaches, under the Linf or the L2 threat model (`--norm`).
`--buckets=fine,pow2` times the attacks that drop fooled points with both bucket kinds. The
first row is one cross-entropy input gradient (the work of one PGD / APGD iteration; median
of at least 100 calls) in both, and how far apart the two gradients are. torchattacks' APGD and FAB default to 10 iterations (and its
AutoAttack passes none); here both libraries run the reference's 100. torch and torchattacks
are benchmark-only dependencies.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn as tnn
import torchattacks

from jaxdefense.cli import setup_process
from jaxdefense import attacks as ja
from jaxdefense import data
from jaxdefense.defenses import standard
from jaxdefense import cpu_kernels


class TorchLeNet5(tnn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = tnn.Conv2d(1, 6, 5, padding=2), tnn.Conv2d(6, 16, 5)
        self.f1, self.f2, self.f3 = tnn.Linear(400, 120), tnn.Linear(120, 84), tnn.Linear(84, 10)

    def forward(self, x):
        x = (x - 0.1307) / 0.3081
        x = tnn.functional.max_pool2d(torch.relu(self.c1(x)), 2)
        x = tnn.functional.max_pool2d(torch.relu(self.c2(x)), 2)
        x = x.flatten(1)
        return self.f3(torch.relu(self.f2(torch.relu(self.f1(x)))))


def copy_weights(params, net: TorchLeNet5):
    """flax (HWIO kernels, NHWC flatten) -> torch (OIHW, NCHW flatten)."""
    p = jax.tree.map(np.asarray, params)
    with torch.no_grad():
        for name, conv in (("Conv_0", net.c1), ("Conv_1", net.c2)):
            conv.weight.copy_(torch.from_numpy(p[name]["kernel"].transpose(3, 2, 0, 1).copy()))
            conv.bias.copy_(torch.from_numpy(p[name]["bias"]))
        k = p["Dense_0"]["kernel"].reshape(5, 5, 16, 120).transpose(2, 0, 1, 3).reshape(400, 120)
        net.f1.weight.copy_(torch.from_numpy(k.T.copy()))
        net.f1.bias.copy_(torch.from_numpy(p["Dense_0"]["bias"]))
        for name, lin in (("Dense_1", net.f2), ("head", net.f3)):
            lin.weight.copy_(torch.from_numpy(p[name]["kernel"].T.copy()))
            lin.bias.copy_(torch.from_numpy(p[name]["bias"]))


def fresh(f):
    """A new function object computing f."""
    return lambda x: f(x)


def timed(fn, repeats):
    """(median time of `repeats` runs after a warm-up, the warm-up's time, the output)."""
    t0 = time.perf_counter()
    fn()                                   # warm-up (and compile, for JAX)
    first = time.perf_counter() - t0
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), first, out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data_dir", default="../shared/data/mnist")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--norm", default="Linf", choices=["Linf", "L2"])
    p.add_argument("--eps", type=float, default=None,
                   help="budget in [0, 1] pixel units (default 0.1 Linf, 1.5 L2)")
    p.add_argument("--square_queries", type=int, default=1000)
    p.add_argument("--kernels_off", action="store_true",
                   help="add input-gradient and PGD-20 rows with the CPU kernels off "
                        "(JAXDEFENSE_CPU_KERNELS=0: flax's layers as XLA runs them)")
    p.add_argument("--buckets", default="fine",
                   help="comma list of bucket kinds ('fine', 'pow2') for the attacks that drop "
                        "fooled points (APGD-T, FAB-T, Square, AutoAttack): a row each")
    p.add_argument("--only", default=None,
                   help="comma list of name prefixes, e.g. PGD,ensemble")
    args = p.parse_args()
    setup_process()   # malloc as the command lines have it (jaxdefense.host_memory)
    torch.manual_seed(0)

    cfg = standard.preset("mnist", data_dir=args.data_dir, train_split="test[:8000]",
                          eval_split="test[8000:]", epochs=2, attack_examples=1,
                          workdir=os.path.join(tempfile.mkdtemp(), "lenet"))
    standard.train_and_evaluate(cfg, progress=False)
    import jaxdefense
    jmodel = jaxdefense.load(cfg.workdir)
    f_plain = jmodel.logits_fn
    f = cpu_kernels.attacked(f_plain)     # as the harness hands it to attacks
    net = TorchLeNet5().eval()
    params = jmodel_params(cfg.workdir)
    copy_weights(params, net)

    test = data.load("mnist", "test[8000:]", args.data_dir)
    n = args.batch_size * args.batches
    x_np, y_np = test.x[:n], test.y[:n]
    xt = torch.from_numpy(x_np.transpose(0, 3, 1, 2).copy())
    yt = torch.from_numpy(y_np.astype(np.int64))
    with torch.no_grad():
        diff = float(np.abs(net(xt).numpy() - np.asarray(f(jnp.asarray(x_np)))).max())
    norm, B = args.norm, args.batch_size
    eps = args.eps if args.eps is not None else {"Linf": 0.1, "L2": 1.5}[norm]
    step = eps / 4
    key = jax.random.key(0)
    q = args.square_queries
    torch_pgd = (torchattacks.PGD(net, eps=eps, alpha=step, steps=20, random_start=True)
                 if norm == "Linf" else
                 torchattacks.PGDL2(net, eps=eps, alpha=step, steps=20, random_start=True))
    # AutoAttack's standard ensemble as the reference runs it: 100-step APGD / FAB, Square
    # with the unrescaled p schedule
    torch_stages = [torchattacks.APGD(net, norm=norm, eps=eps, steps=100, loss="ce"),
                    torchattacks.APGDT(net, norm=norm, eps=eps, steps=100, n_classes=10),
                    torchattacks.FAB(net, norm=norm, eps=eps, steps=100, multi_targeted=True,
                                     n_classes=10),
                    torchattacks.Square(net, norm=norm, eps=eps, n_queries=q,
                                        resc_schedule=False)]
    def torch_input_gradient(xb, yb):
        xb = xb.clone().requires_grad_(True)
        loss = tnn.functional.cross_entropy(net(xb), yb, reduction="sum")
        return torch.autograd.grad(loss, xb)[0]

    jax_input_gradient = jax.jit(jax.grad(
        lambda xb, yb: ja.losses.get_loss("ce")(f(xb), yb).sum()))
    suite = {
        # one step's work for the gradient attacks: the LeNet-5's cross-entropy gradient
        # with respect to the images (what PGD's and APGD's iterations are made of)
        "input gradient (one CE step)": (jax_input_gradient, torch_input_gradient),
        "PGD-20": (lambda xb, yb: ja.pgd(f, xb, yb, key, eps=eps, step_size=step, steps=20,
                                         norm=norm), torch_pgd),
        "APGD-CE-100": (lambda xb, yb: ja.apgd(f, xb, yb, key, eps=eps, steps=100, norm=norm),
                        torch_stages[0]),
    }
    kinds = args.buckets.split(",")
    for kind in kinds:
        tag = f", buckets={kind}" if len(kinds) > 1 else ""
        # each row its own function object: jit caches key on it, so a row's first call
        # compiles everything it runs (no shapes left compiled by an earlier row)
        suite.update({
            f"APGD-T-100 (9 targets){tag}": (
                lambda xb, yb, kind=kind, g=fresh(f): ja.apgd_targeted(
                    g, xb, yb, key, eps=eps, steps=100, norm=norm, buckets=kind),
                torch_stages[1]),
            f"FAB-T-100 (9 targets){tag}": (
                lambda xb, yb, kind=kind, g=fresh(f): ja.fab_targeted(
                    g, xb, yb, key, eps=eps, steps=100, norm=norm, buckets=kind),
                torch_stages[2]),
            f"Square-{q}{tag}": (
                lambda xb, yb, kind=kind, g=fresh(f): ja.square(
                    g, xb, yb, key, eps=eps, n_queries=q, norm=norm, rescale_schedule=False,
                    buckets=kind), torch_stages[3]),
            f"AutoAttack standard (Square-{q}){tag}": (
                lambda xb, yb, kind=kind, g=fresh(f): ja.autoattack(
                    g, xb, yb, key, eps=eps, steps=100, norm=norm, square_queries=q,
                    buckets=kind), torchattacks.MultiAttack(torch_stages)),
        })
    if args.kernels_off:
        f_off = fresh(f_plain)       # flax's layers as XLA runs them (no `attacked`)

        def pgd_off(xb, yb):
            return ja.pgd(f_off, xb, yb, key, eps=eps, step_size=step, steps=20, norm=norm)
        suite["input gradient, CPU kernels off"] = (jax.jit(jax.grad(
            lambda xb, yb: ja.losses.get_loss("ce")(f_off(xb), yb).sum())),
            torch_input_gradient)
        suite["PGD-20, CPU kernels off"] = (pgd_off, torch_pgd)
    only = tuple(args.only.split(",")) if args.only else None
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores; jax {jax.__version__} "
          f"({jax.devices()[0].platform}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), torchattacks {torchattacks.__version__}")
    print(f"LeNet-5, clean acc {np.mean(np.asarray(jnp.argmax(f(jnp.asarray(x_np)), 1)) == y_np):.4f}"
          f" on {n} held-out images; max |logit difference| jax vs torch {diff:.2e}; {norm} eps "
          f"{eps}, "
          f"batch {B}")
    print("| attack | jaxdefense ms/batch | torchattacks ms/batch | speed ratio (torch/jax) |"
          " jax robust acc | torch robust acc | jax first call s (compiles) |"
          "\n|---|---|---|---|---|---|---|")
    for name, (jfn, tatk) in suite.items():
        if only and not name.startswith(only):
            continue
        gradient_row = name.startswith("input gradient")     # not an attack
        repeats = max(args.repeats, 100) if gradient_row else args.repeats
        jt, tt, jc, tc, jfirst, rel = [], [], 0, 0, 0.0, 0.0
        for b in range(args.batches):
            xb, yb = jnp.asarray(x_np[b * B:(b + 1) * B]), jnp.asarray(y_np[b * B:(b + 1) * B])
            t, first, adv = timed(lambda: jax.block_until_ready(jfn(xb, yb)), repeats)
            jt.append(t)
            jfirst += first
            xtb, ytb = xt[b * B:(b + 1) * B], yt[b * B:(b + 1) * B]
            t, _, tadv = timed(lambda: tatk(xtb, ytb), repeats)
            tt.append(t)
            if gradient_row:             # the two gradients, relative max difference
                diff = np.abs(np.asarray(adv).transpose(0, 3, 1, 2) - tadv.numpy()).max()
                rel = max(rel, float(diff / np.abs(tadv.numpy()).max()))
                continue
            jc += int(np.sum(np.asarray(jnp.argmax(f(adv), 1)) == y_np[b * B:(b + 1) * B]))
            with torch.no_grad():
                tc += int((net(tadv).argmax(1) == ytb).sum())
        jm, tm = 1000 * statistics.mean(jt), 1000 * statistics.mean(tt)
        if gradient_row:
            print(f"| {name} | {jm:.2f} | {tm:.2f} | {tm / jm:.2f} | gradients within "
                  f"{rel:.1e} (max, relative) | | {jfirst:.1f} |", flush=True)
            continue
        print(f"| {name} | {jm:.0f} | {tm:.0f} | {tm / jm:.2f} | {jc / n:.4f} | {tc / n:.4f} | "
              f"{jfirst:.1f} |", flush=True)


def jmodel_params(workdir):
    from jaxdefense.checkpoint import Checkpoints
    cfg = standard.StandardConfig(**jaxdefense_config(workdir))
    state = Checkpoints(os.path.join(workdir, "classifier")).restore(
        standard.init_state(cfg, jax.random.key(0), 1))
    return state.params


def jaxdefense_config(workdir):
    from jaxdefense.checkpoint import load_config
    return load_config(workdir)[1]


if __name__ == "__main__":
    main()
