"""A 4x4 stride-2 'SAME' transposed convolution alone: each `layers.ConvTranspose2x`
formulation against torch's ConvTranspose2d, forward and both gradients, on CPU.

    python bench/conv_transpose.py
    python bench/conv_transpose.py --shapes=7x64x32,14x32x1 --rounds=7

Per layer shape (input H = W, Cin, Cout; batch --batch) the median ms of one
`value_and_grad` of sum(y * r) with respect to the input and the kernel (fresh cotangent r,
fixed): 'scatter' (one product with every kernel tap, then overlap-add; the CPU default),
'im2col' (one product over 2x2 windows), 'subpixel' (a 3x3 convolution and depth-to-space),
'xla' (lax.conv_transpose), and torch's ConvTranspose2d (padding 1, the kernel flipped as
bench/torch_grfd.py does) on the same weights, its threads at the CPU count. The formulations
run interleaved over --rounds rounds of --repeats calls each; the median of the rounds.
Before timing, each output and gradient is checked against XLA's (max|difference| /
max|XLA's|, printed). Timing only; nothing is asserted. The default shapes are the MNIST
LVCVAE decoder's two layers, the CIFAR residual decoder's (base 16), and APE-GAN's.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from jaxdefense.models import layers

try:
    from bench.grfd_step import median_ms
except ImportError:                          # run as a script: bench/ is on sys.path
    from grfd_step import median_ms

IMPLS = {"scatter": layers.conv_transpose_scatter, "im2col": layers.conv_transpose_windows,
         "subpixel": layers.conv_transpose_subpixel,
         "xla": lambda x, k: jax.lax.conv_transpose(x, k, (2, 2), "SAME",
                                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))}
SHAPES = "7x64x32,14x32x1,8x32x16,16x16x3,7x128x64,14x64x1,8x128x64,16x64x3"


def jax_runs(x, k, r):
    """{impl: run()} each one blocking value_and_grad, and {impl: worst relative gap to xla}."""
    runs, outs = {}, {}
    for name, fn in IMPLS.items():
        f = jax.jit(jax.value_and_grad(lambda x, k, fn=fn: jnp.sum(fn(x, k) * r), (0, 1)))
        outs[name] = (fn(x, k), *f(x, k)[1])
        runs[name] = lambda f=f: jax.block_until_ready(f(x, k))
    gap = lambda a, b: float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
    gaps = {n: max(gap(a, b) for a, b in zip(o, outs["xla"])) for n, o in outs.items()}
    return runs, gaps


def torch_run(x, k, r):
    """run() for torch's ConvTranspose2d forward and backward on the same weights (NCHW)."""
    import torch
    import torch.nn.functional as F
    to = lambda a: torch.from_numpy(np.moveaxis(np.array(a), -1, 1).copy())
    xt, rt = to(x).requires_grad_(), to(r)
    wt = torch.from_numpy(np.array(k)[::-1, ::-1].transpose(2, 3, 0, 1).copy()).requires_grad_()

    def run():
        xt.grad = wt.grad = None
        (F.conv_transpose2d(xt, wt, stride=2, padding=1) * rt).sum().backward()
    return run


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=SHAPES, help="HxCinxCout,... (input height = width)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--no_torch", action="store_true")
    a = p.parse_args()
    cores = os.cpu_count()
    print(f"machine: {platform.machine()}, {cores} CPU cores, {jax.default_backend()}, "
          f"jax {jax.__version__}")
    if not a.no_torch:
        import torch
        torch.set_num_threads(cores)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    names = list(IMPLS) + ([] if a.no_torch else ["torch"])
    print(f"\nforward + input and kernel gradients, batch {a.batch}, ms (median of {a.rounds} "
          f"rounds x {a.repeats} calls)\n\n| H, Cin -> Cout | " + " | ".join(names)
          + " | torch / scatter | worst gap to xla |\n|---|" + "---|" * (len(names) + 2))
    for shape in a.shapes.split(","):
        h, cin, cout = (int(v) for v in shape.split("x"))
        kx, kk, kr = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(kx, (a.batch, h, h, cin))
        k = jax.random.normal(kk, (4, 4, cin, cout)) / np.sqrt(4 * cin)
        r = jax.random.normal(kr, (a.batch, 2 * h, 2 * h, cout))
        runs, gaps = jax_runs(x, k, r)
        if not a.no_torch:
            runs["torch"] = torch_run(x, k, r)
        times = {n: [] for n in names}
        for _ in range(a.rounds):
            for n in names:
                times[n].append(median_ms(runs[n], a.repeats))
        ms = {n: statistics.median(t) for n, t in times.items()}
        ratio = f"{ms['torch'] / ms['scatter']:.2f}" if "torch" in ms else "-"
        print(f"| {h}x{h}, {cin} -> {cout} | " + " | ".join(f"{ms[n]:.2f}" for n in names)
              + f" | {ratio} | {max(gaps.values()):.1e} |", flush=True)


if __name__ == "__main__":
    main()
