"""GPU run book: the figures issue 11 asks for, in one run, on whatever accelerator jax sees.

    python bench/gpu.py                         # on a GPU machine: the real sizes
    python bench/gpu.py --smoke                 # anywhere: tiny sizes, checks the script runs

Prints, as markdown:
1. the device and its measured dense-matmul rate (8192^2 float32 and bfloat16 matmuls), the
   reference for "utilisation";
2. GRFD phase I on CIFAR-100 (WRN-28-10 RSM, residual LVCVAE z 2048) at batch 128, float32
   and bfloat16 compute, K = 1 and 4 L_rb draws: ms/step, images/s, the step's FLOPs (XLA
   cost analysis) per second and as a share of the measured matmul rate;
3. the same for GRFD phase III (the WRN-28-10 target on x_r);
4. PGD-20, APGD-CE (100 steps) and the standard AutoAttack on a WRN-28-10 at batch 128
   (random weights: attack cost does not depend on accuracy much, except that AutoAttack
   drops fooled points, so its time here is an upper bound), ms per batch;
5. the projected wall time of the paper's schedule (150 epochs of phase I and of phase III
   over CIFAR-100's 50,000 training images, batch 128) from the measured steps.
With torch and torchattacks importable and --torch, item 4 is repeated in PyTorch on the same
weights (bench/attacks_vs_torchattacks.py shows the pattern; a WRN-28-10 port for it is
not written yet, so today the flag reports that and skips).
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp


def timed(fn, repeats: int) -> float:
    """Median seconds of fn() (which must block) over `repeats` runs after one warm-up."""
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def matmul_tflops(n: int, dtype, repeats: int) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    f = jax.jit(lambda a: a @ a)
    return 2 * n ** 3 / timed(lambda: f(a).block_until_ready(), repeats) / 1e12


def step_figures(state, step, batch, hp, repeats: int) -> dict:
    jstep = jax.jit(step, donate_argnums=(0,))
    compiled = jstep.lower(state, batch, jax.random.key(1), hp).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    holder = {"state": state}

    def run():
        holder["state"], m = jstep(holder["state"], batch, jax.random.key(1), hp)
        jax.block_until_ready(m)
    seconds = timed(run, repeats)
    return dict(ms=1000 * seconds, img_s=len(batch[0]) / seconds,
                tflops=float(cost.get("flops", float("nan"))) / seconds / 1e12)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny models, batch 8 (any machine)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--torch", action="store_true")
    args = p.parse_args()
    from jaxdefense import attacks
    from jaxdefense.defenses import grfd
    from jaxdefense.training import classifier_step

    batch_size = 8 if args.smoke else 128
    n = 512 if args.smoke else 8192
    dev = jax.devices()[0]
    print(f"# GPU run book: {dev.platform} {dev.device_kind}, {jax.device_count()} device(s), "
          f"jax {jax.__version__}{' (smoke sizes)' if args.smoke else ''}\n")
    peak = {d: matmul_tflops(n, d, args.repeats) for d in (jnp.float32, jnp.bfloat16)}
    print(f"measured matmul ({n}^2): float32 {peak[jnp.float32]:.3g} TFLOP/s, "
          f"bfloat16 {peak[jnp.bfloat16]:.3g} TFLOP/s\n")

    print(f"| step (CIFAR-100, batch {batch_size}) | dtype | K | ms/step | images/s | "
          f"TFLOP/s | share of matmul rate |\n|---|---|---|---|---|---|---|")
    x = jax.random.uniform(jax.random.key(2), (batch_size, 32, 32, 3))
    y = jnp.arange(batch_size) % 100
    ms = {}
    for dtype in ("float32", "bfloat16"):
        for k in (1, 4):
            cfg = grfd.preset("cifar100", smoke=args.smoke, dtype=dtype, rb_samples=k)
            f = step_figures(grfd.init_generator_state(cfg, jax.random.key(0), 390),
                             grfd.make_generator_step(cfg), (x, y),
                             {"alpha": jnp.float32(10.0)}, args.repeats)
            ms[("phase1", dtype, k)] = f["ms"]
            share = f["tflops"] / peak[jnp.dtype(dtype).type]
            print(f"| GRFD phase I | {dtype} | {k} | {f['ms']:.1f} | {f['img_s']:.0f} | "
                  f"{f['tflops']:.3g} | {100 * share:.0f}% |", flush=True)
        cfg = grfd.preset("cifar100", smoke=args.smoke, dtype=dtype)
        f = step_figures(grfd.init_target_state(cfg, jax.random.key(0), 390),
                         classifier_step(grfd.make_classifier(cfg)), (x, y), {}, args.repeats)
        ms[("phase3", dtype)] = f["ms"]
        share = f["tflops"] / peak[jnp.dtype(dtype).type]
        print(f"| GRFD phase III | {dtype} | - | {f['ms']:.1f} | {f['img_s']:.0f} | "
              f"{f['tflops']:.3g} | {100 * share:.0f}% |", flush=True)

    cfg = grfd.preset("cifar10", smoke=args.smoke)
    model = grfd.make_classifier(cfg)
    variables = model.init(jax.random.key(3), x[:1])
    logits_fn = jax.jit(lambda xb: model.apply(variables, xb, train=False))
    yy = y % 10
    steps = 2 if args.smoke else None
    runs = {
        "PGD-20": lambda: attacks.pgd(logits_fn, x, yy, jax.random.key(4), eps=8 / 255,
                                      step_size=2 / 255, steps=steps or 20),
        "APGD-CE": lambda: attacks.apgd(logits_fn, x, yy, jax.random.key(4), eps=8 / 255,
                                        steps=steps or 100),
        "AutoAttack (standard)": lambda: attacks.autoattack(logits_fn, x, yy, jax.random.key(4),
                                                            eps=8 / 255),
    }
    print(f"\n| attack on WRN (batch {batch_size}) | ms / batch (jax) | torchattacks |\n|---|---|---|")
    for name, fn in runs.items():
        if args.smoke and name.startswith("AutoAttack"):
            print(f"| {name} | skipped in --smoke | - |")
            continue
        s = timed(lambda: jax.block_until_ready(fn()), max(1, args.repeats // 5))
        print(f"| {name} | {1000 * s:.0f} | "
              f"{'no WRN port yet' if args.torch else 'not run (--torch)'} |", flush=True)

    steps_per_epoch = 50_000 // 128
    print("\nprojected wall time of the paper's schedule (150 + 150 epochs, "
          f"{steps_per_epoch} steps each, from the steps above"
          f"{'; smoke sizes, not meaningful' if args.smoke else ''}):")
    for dtype in ("float32", "bfloat16"):
        for k in (1, 4):
            hours = 150 * steps_per_epoch * (ms[("phase1", dtype, k)] +
                                            ms[("phase3", dtype)]) / 1000 / 3600
            print(f"- {dtype}, K = {k}: {hours:.1f} h")


if __name__ == "__main__":
    main()
