"""GRFD phase-I training-step time for a preset, the share of L_rb, and its cost in K.

    python bench/grfd_step.py --dataset=mnist --steps=10

Prints a markdown table: per configuration the median step time (ms) over --steps timed
steps after one compile+warm-up step, images/s, and XLA's temporary buffer size for the step
(peak working memory of the compiled program, MiB). Timing only; nothing is asserted.
"""
from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time

import jax
import jax.numpy as jnp

from jaxdefense.data import dataset_info
from jaxdefense.defenses import grfd
from jaxdefense.defenses.grfd.config import preset


def time_step(cfg, steps: int) -> dict:
    state = grfd.init_generator_state(cfg, jax.random.key(0), 100)
    x = jax.random.uniform(jax.random.key(1), (cfg.batch_size, *dataset_info(cfg.dataset)["shape"]))
    y = jnp.arange(cfg.batch_size) % 10
    hp = {"alpha": jnp.float32(10.0)}
    step = jax.jit(grfd.make_generator_step(cfg), donate_argnums=(0,))
    compiled = step.lower(state, (x, y), jax.random.key(2), hp).compile()
    mem = compiled.memory_analysis()
    temp_mib = getattr(mem, "temp_size_in_bytes", 0) / 2 ** 20 if mem is not None else float("nan")
    state, m = step(state, (x, y), jax.random.key(2), hp)
    jax.block_until_ready(m)
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        state, m = step(state, (x, y), jax.random.key(3 + i), hp)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    ms = 1000 * statistics.median(times)
    return dict(ms=ms, img_s=cfg.batch_size / ms * 1000, temp_mib=temp_mib)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--ks", default="1,2,4,8")
    args = p.parse_args()
    rows = [("no L_rb (delta=0)", preset(args.dataset, delta=0.0))]
    rows += [(f"L_rb, K={k}", preset(args.dataset, rb_samples=k)) for k in
             map(int, args.ks.split(","))]
    print(f"machine: {platform.processor() or platform.machine()}, {jax.devices()[0].device_kind},"
          f" {jax.device_count()} device(s), jax {jax.__version__}")
    print(f"| {args.dataset} preset, batch {rows[0][1].batch_size} | ms/step | images/s | "
          f"XLA temp MiB |\n|---|---|---|---|")
    base = None
    for name, cfg in rows:
        r = time_step(cfg, args.steps)
        base = base or r["ms"]
        share = "" if name.startswith("no") else f" ({100 * (1 - base / r['ms']):.0f}% in L_rb)"
        print(f"| {name} | {r['ms']:.0f}{share} | {r['img_s']:.0f} | {r['temp_mib']:.0f} |",
              flush=True)
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
