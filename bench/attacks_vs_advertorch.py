"""Speed and agreement of the ARN tables' unseen attacks against advertorch 0.2.3 (the library
the ARN paper attacked with) on one CPU, on the same advertorch LeNet-5 weights.

    pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    pip install --no-deps advertorch==0.2.3
    python bench/attacks_vs_advertorch.py --workdir=runs/arn/none --data_dir=../shared/data/mnist

The workdir holds a trained `classifier=lenet5_advertorch` run (the ARN tables' NONE row);
its weights are copied into advertorch's architecture in torch (logits checked equal). Each
attack runs on the same batch of `test[8000:]` in both libraries: median of --repeats timed
runs (jax's after a warm-up: compile excluded; the warm-up's own time is the last
column), and the
fraction of the batch each leaves classified right (targeted attacks: aimed at the
runner-up class). Iteration counts are set below ARN's settings (--cw_iterations,
--stadv_iterations) so the whole bench takes minutes; the per-iteration cost is what it
compares. advertorch 0.2.3 imports two things newer torch lacks; they get stand-ins here,
as in tests/test_advertorch_agreement.py.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn as tnn

from jaxdefense import attacks as ja
from jaxdefense import checkpoint, cpu_kernels, data
from jaxdefense.cli import setup_process
from jaxdefense.defenses import registry


def import_advertorch():
    gradcheck = sys.modules.get("torch.autograd.gradcheck")
    if gradcheck is not None and not hasattr(gradcheck, "zero_gradients"):
        gradcheck.zero_gradients = lambda x: None
    if "torchvision" not in sys.modules:
        tv, tr = types.ModuleType("torchvision"), types.ModuleType("torchvision.transforms")
        tr.ToPILImage = tr.ToTensor = lambda *a, **k: None
        tv.transforms = tr
        sys.modules["torchvision"], sys.modules["torchvision.transforms"] = tv, tr
    import advertorch.attacks
    return advertorch.attacks


class TorchAdvertorchLeNet5(tnn.Module):
    """advertorch's test_utils.LeNet5 with the normalization jaxdefense's model does inside."""

    def __init__(self, mean: float, std: float):
        super().__init__()
        self.mean, self.std = mean, std
        self.c1, self.c2 = tnn.Conv2d(1, 32, 3, padding=1), tnn.Conv2d(32, 64, 3, padding=1)
        self.f1, self.f2 = tnn.Linear(7 * 7 * 64, 200), tnn.Linear(200, 10)

    def forward(self, x):
        x = (x - self.mean) / self.std
        x = torch.relu(tnn.functional.max_pool2d(self.c1(x), 2))
        x = torch.relu(tnn.functional.max_pool2d(self.c2(x), 2))
        x = x.permute(0, 2, 3, 1).flatten(1)          # flax's NHWC flatten order
        return self.f2(torch.relu(self.f1(x)))


def torch_copy(params, mean: float, std: float) -> TorchAdvertorchLeNet5:
    net = TorchAdvertorchLeNet5(mean, std).eval()
    p = jax.tree.map(np.asarray, params)
    with torch.no_grad():
        for name, conv in (("Conv_0", net.c1), ("Conv_1", net.c2)):
            conv.weight.copy_(torch.from_numpy(p[name]["kernel"].transpose(3, 2, 0, 1).copy()))
            conv.bias.copy_(torch.from_numpy(p[name]["bias"]))
        for name, fc in (("Dense_0", net.f1), ("head", net.f2)):
            fc.weight.copy_(torch.from_numpy(p[name]["kernel"].T.copy()))
            fc.bias.copy_(torch.from_numpy(p[name]["bias"]))
    return net


def timed(fn, repeats: int, warm_up: bool = True):
    """(output, median ms of `repeats` runs, the warm-up's s); torch needs no warm-up (nothing
    compiles), so its first run is timed."""
    warm = None
    if warm_up:
        t0 = time.perf_counter()
        fn()
        warm = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, 1000 * statistics.median(times), warm


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="runs/arn/none")
    p.add_argument("--data_dir", default="../shared/data/mnist")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cw_iterations", type=int, default=100)
    p.add_argument("--stadv_iterations", type=int, default=100)
    p.add_argument("--only", default=None, help="comma list of attack names")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    args = p.parse_args(argv)
    setup_process()
    torch.set_num_threads(args.threads)
    adv = import_advertorch()
    name, cfg_dict = checkpoint.load_config(args.workdir)
    entry = registry.get(name)
    cfg = entry.Config(**cfg_dict)
    nets = entry.build(cfg)
    variables = entry.restore(args.workdir, cfg, nets)
    served, _ = entry.serve(cfg, nets, variables)
    logits_fn = cpu_kernels.attacked(served)      # as the harness hands it to attacks
    info = data.dataset_info(cfg.dataset)
    net = torch_copy(variables["params"], info["mean"][0], info["std"][0])
    ds = data.load(cfg.dataset, "test[8000:]", args.data_dir).take(args.batch)
    x, y = jnp.asarray(ds.x), jnp.asarray(ds.y)
    xt = torch.from_numpy(np.ascontiguousarray(ds.x.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        gap = float(np.max(np.abs(net(xt).numpy() - np.asarray(logits_fn(x)))))
    runner_up = jnp.argsort(-logits_fn(x), 1)[:, 1]
    yt, tt = torch.from_numpy(ds.y.astype(np.int64)), torch.from_numpy(
        np.asarray(runner_up).astype(np.int64))
    cw = dict(confidence=1.0, initial_const=1.0, learning_rate=0.01, binary_search_steps=1,
              max_iterations=args.cw_iterations)
    key = jax.random.key(0)
    cases = {
        f"C&W-L2 ({args.cw_iterations} steps, 1 search round)": (
            lambda: ja.cw_l2(logits_fn, x, y, **cw),
            adv.CarliniWagnerL2Attack(net, 10, **cw), yt),
        "DDN (100 steps)": (
            lambda: ja.ddn(logits_fn, x, y, key, steps=100),
            adv.DDNL2Attack(net, nb_iter=100, gamma=0.05, init_norm=1.0, quantize=True,
                            levels=256), yt),
        "JSMA targeted (theta 1, gamma 1)": (
            lambda: ja.jsma(logits_fn, x, y, target=runner_up),
            adv.JacobianSaliencyMapAttack(net, 10, theta=1.0, gamma=1.0), tt),
        f"stAdv ({args.stadv_iterations} L-BFGS iterations, 1 search step)": (
            lambda: ja.stadv(logits_fn, x, y, tau=1.0, max_iterations=args.stadv_iterations,
                             failed="zeros"),
            adv.SpatialTransformAttack(net, 10, initial_const=1.0,
                                       max_iterations=args.stadv_iterations), yt),
    }
    only = args.only.split(",") if args.only else None
    print(f"# {platform.processor() or platform.machine()}, jax {jax.__version__}, torch "
          f"{torch.__version__} ({args.threads} threads); batch {args.batch}; logits within "
          f"{gap:.1e}")
    print("| attack | jaxdefense ms/batch | advertorch ms/batch | speed ratio (advertorch/jax) "
          "| jax right | advertorch right | jax warm-up s |")
    print("|---|---|---|---|---|---|---|")
    for label, (ours, theirs, labels) in cases.items():
        if only and not any(o.lower() in label.lower() for o in only):
            continue
        a, t_j, warm = timed(lambda: jax.block_until_ready(ours()), args.repeats)
        b, t_t, _ = timed(lambda: theirs.perturb(xt, labels), args.repeats, warm_up=False)
        right_j = float(np.mean(np.asarray(jnp.argmax(logits_fn(a), 1)) == ds.y))
        with torch.no_grad():
            right_t = float(np.mean(net(b).argmax(1).numpy() == ds.y))
        print(f"| {label} | {t_j:.0f} | {t_t:.0f} | {t_t / t_j:.2f} | {right_j:.4f} | "
              f"{right_t:.4f} | {warm:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
