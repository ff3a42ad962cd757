"""GRFD phase-I training-step time for a preset, the share of L_rb, and its cost in K.

    python bench/grfd_step.py --dataset=mnist --steps=10
    python bench/grfd_step.py --dataset=mnist --steps=5 --ks=1,4 --torch
    python bench/grfd_step.py --dataset=mnist --steps=5 --ks=1,4 --kernels=3

Prints a markdown table: per configuration the median step time (ms) over --steps timed
steps after one compile+warm-up step, images/s, and XLA's temporary buffer size for the step
(peak working memory of the compiled program, MiB). Timing only; nothing is asserted.

--torch: the same networks and loss in PyTorch (bench/torch_grfd.py; torch is a
benchmark-only dependency), holding the same initial weights, with `torch.set_num_threads`
at the CPU count. First a check on the timing batch that both compute the same step, fed
JAX's random draws (the VAE's sampling noise and L_rb's perturbations), for the preset at
the largest K and for L_rb alone (delta 1, the other weights 0, noise 1.0 in normalized
units, so that the cosines are well below 1):
  * the relative difference of each loss term's batch mean, jax vs torch;
  * the gradient of the step, jax and torch (float32) each against the port run in float64
    (worst tensor's max|difference| / max|reference|). Reported, not asserted (L_rb's
    input gradients are piecewise constant in x_r, so rounding differences of x_r move
    them; before the models' BatchNorm computed the variance in two passes, JAX's float32
    VAE gradients were 3.4e-2 from float64 here);
  * L_rb alone on one x_r fed to both: per-sample values and gradients with respect to x_r,
    and the RSM parameter gradient (the second-order part), jax vs torch.
It stops if a loss term differs by more than 1e-3, or more than 5% of the samples' L_rb or
x_r-gradient in the shared-x_r check. Then per configuration the median ms of one full step
in both (forward, backward including L_rb's second order, AdamW) and the ratio torch/jax:
--rounds alternating rounds of --steps steps of each library (so that a slow spell of the
machine, which moves both by tens of percent here, hits both), the median of the rounds'
medians.
The table also gives each library's CPU time per step (the whole process, all threads) and
the cores that keeps busy. torch's threads spin-wait (they count as busy): its times suffer
far more than JAX's when other processes load the CPU, so time on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import resource
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdefense import cpu_kernels
from jaxdefense.cli import setup_process
from jaxdefense.data import dataset_info
from jaxdefense.defenses import grfd
from jaxdefense.defenses.grfd.config import preset


TERMS = ("l_rc", "l_kl", "l_rf", "l_cl", "l_rb", "loss")
TOLERANCE = 1e-3         # loss terms (batch means), relative
MAX_FLIPPED = 0.05       # share of samples whose L_rb may differ in the shared-x_r check


def setup(cfg):
    """(initial state, batch (x, y), hparams): the same for every timing and check."""
    state = grfd.init_generator_state(cfg, jax.random.key(0), 100)
    x = jax.random.uniform(jax.random.key(1), (cfg.batch_size, *dataset_info(cfg.dataset)["shape"]))
    y = jnp.arange(cfg.batch_size) % 10
    return state, (x, y), {"alpha": jnp.float32(10.0)}


def wall_and_cpu_ms(run, steps: int) -> tuple[float, float]:
    """(median wall ms, mean CPU ms of the whole process, all threads, user + system) per
    call over `steps` calls of the blocking `run`, after one warm-up call. CPU / wall is
    the cores the step kept busy (spin-waiting threads count as busy)."""
    run()
    times = []
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(steps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
    return 1000 * statistics.median(times), 1000 * cpu / steps


def median_ms(run, steps: int) -> float:
    """Median wall time of `steps` calls of the blocking `run`, after one warm-up call."""
    return wall_and_cpu_ms(run, steps)[0]


def step_runner(cfg):
    """(run, temp MiB): `run()` does one blocking phase-I step on the timing batch, compiled
    as `training.fit` compiles it (CPU kernels as JAXDEFENSE_CPU_KERNELS says), with a fresh
    key each call; temp MiB is XLA's temporary buffer size for the compiled step."""
    state, batch, hp = setup(cfg)
    step = jax.jit(cpu_kernels.use(grfd.make_generator_step(cfg)), donate_argnums=(0,))
    compiled = step.lower(state, batch, jax.random.key(2), hp).compile()
    mem = compiled.memory_analysis()
    temp_mib = getattr(mem, "temp_size_in_bytes", 0) / 2 ** 20 if mem is not None else float("nan")
    keys = list(jax.random.split(jax.random.key(3), 64))
    calls = 0

    def run():
        nonlocal state, calls
        state, m = compiled(state, batch, keys[calls % len(keys)], hp)
        calls += 1
        jax.block_until_ready(m)
    return run, temp_mib


def time_step(cfg, steps: int) -> dict:
    """Median ms of the phase-I step."""
    run, temp_mib = step_runner(cfg)
    ms = median_ms(run, steps)
    return dict(ms=ms, img_s=cfg.batch_size / ms * 1000, temp_mib=temp_mib)


def timing_table(dataset: str, rows, steps: int) -> None:
    print(f"| {dataset} preset, batch {rows[0][1].batch_size} | ms/step | images/s | "
          f"XLA temp MiB |\n|---|---|---|---|")
    base = None
    for name, cfg in rows:
        r = time_step(cfg, steps)
        base = base or r["ms"]
        share = "" if name.startswith("no") else f" ({100 * (1 - base / r['ms']):.0f}% in L_rb)"
        print(f"| {name} | {r['ms']:.0f}{share} | {r['img_s']:.0f} | {r['temp_mib']:.0f} |",
              flush=True)


def kernels_table(dataset: str, rows, steps: int, rounds: int) -> None:
    """Each step with the CPU kernels on and off (`cpu_kernels.switched('1' / '0')`), interleaved
    over `rounds` (a slow spell of the machine then hits both); the median of the rounds'
    medians, and the range."""
    times = {(r, k): [] for r, _ in rows for k in ("1", "0")}
    for _ in range(rounds):
        for name, cfg in rows:
            for k in ("1", "0"):
                with cpu_kernels.switched(k):
                    times[name, k].append(time_step(cfg, steps)["ms"])
    print(f"| {dataset} preset, batch {rows[0][1].batch_size} | kernels on, ms | kernels off, "
          f"ms | off / on |\n|---|---|---|---|")
    for name, _ in rows:
        on, off = times[name, "1"], times[name, "0"]
        span = lambda t: f"{statistics.median(t):.0f} ({min(t):.0f}-{max(t):.0f})"
        print(f"| {name} | {span(on)} | {span(off)} | "
              f"{statistics.median(off) / statistics.median(on):.2f} |")


class _SampleNoise(nn.Module):
    """LVCVAE's draw `normal(self.make_rng('sample'), [B, z])`: flax derives a root module's
    first 'sample' key from the apply rng and a call counter only, so this root module's
    first draw is the same."""
    shape: tuple

    @nn.compact
    def __call__(self):
        return jax.random.normal(self.make_rng("sample"), self.shape)


def rb_draws(cfg, shape, key):
    """L_rb's perturbations [K, *shape] in pixel units, as `grfd.robustness_loss` draws them."""
    k_noise, _ = jax.random.split(key)
    std = cfg.rb_noise * jnp.asarray(dataset_info(cfg.dataset)["std"])
    return jax.random.normal(k_noise, (cfg.rb_samples, *shape)) * std


def jax_draws(cfg, x, key):
    """The random draws of `grfd.make_generator_step(cfg)` at `key`, split as there: the VAE's
    standard normal [B, z] and L_rb's perturbations [K, B, H, W, C] in pixel units."""
    k_sample, _, k_rb = jax.random.split(key, 3)
    sample = _SampleNoise((len(x), cfg.z_dim)).apply({}, rngs={"sample": k_sample})
    return sample, rb_draws(cfg, x.shape, k_rb)


def jax_metrics_and_grads(cfg, state, batch, key, hp):
    """The JAX step's metrics and its gradient, the step run with an optimizer that keeps
    the gradient as its state and leaves the parameters unchanged."""
    keep = optax.GradientTransformation(
        init=lambda params: params,
        update=lambda grads, _, params=None: (jax.tree.map(jnp.zeros_like, grads), grads))
    state = state.replace(tx=keep, opt_state=keep.init(state.params))
    new_state, metrics = jax.jit(cpu_kernels.use(grfd.make_generator_step(cfg)))(
        state, batch, key, hp)
    return metrics, new_state.opt_state


def _torch(a, nchw: bool = False):
    """A JAX array as a torch tensor (a copy); nchw: move the channel axis before H, W."""
    import torch
    a = np.array(a)
    return torch.from_numpy(np.moveaxis(a, -1, -3).copy() if nchw else a)


def step_agreement(cfg, alpha: float, torch_grfd) -> dict:
    """The whole step on the timing batch with the JAX step's draws at key 2: {term: relative
    difference of the batch means, jax vs torch}, and the worst gradient gaps (gap, tensor)
    of jax and of torch float32 against the port run in float64."""
    import torch
    state, (x, y), _ = setup(cfg)
    key = jax.random.key(2)
    metrics, grads = jax_metrics_and_grads(cfg, state, (x, y), key, {"alpha": jnp.float32(alpha)})
    sample, rb = jax_draws(cfg, x, key)
    runs = {}
    for dtype in (torch.float32, torch.float64):
        vae, rsm = (m.to(dtype) for m in torch_grfd.from_flax(cfg, state.params, state.batch_stats))
        loss, terms = torch_grfd.generator_loss(
            cfg, vae, rsm, _torch(x, True).to(dtype), _torch(y).long(), alpha,
            _torch(sample).to(dtype), _torch(rb, True).to(dtype))
        loss.backward()
        runs[dtype] = ({**{k: v.mean().item() for k, v in terms.items()}, "loss": loss.item()},
                       torch_grfd.gradients(vae, rsm))
    (ours, grad32), (_, grad64) = runs[torch.float32], runs[torch.float64]
    gaps = {k: abs(ours[k] - float(metrics[k])) / max(abs(float(metrics[k])), 1e-12)
            for k in TERMS}
    return dict(gaps, grad_jax=torch_grfd.worst_gap(torch_grfd.flax_gradients(grads, vae, rsm),
                                                     grad64),
                grad_torch=torch_grfd.worst_gap(grad32, grad64))


def rb_agreement(cfg, torch_grfd) -> dict:
    """L_rb alone (clean gradient at x_r) on one x_r, the JAX VAE's in evaluation mode, fed
    to both, jax vs torch: how many samples' L_rb differ by more than 1e-5 and the largest
    difference, how many samples' gradients with respect to x_r differ by more than 1e-3
    (max|difference| / max|jax|, per sample), and the worst RSM parameter gradient gap."""
    import torch
    state, (x, y), _ = setup(cfg)
    vae_vars = {"params": state.params["vae"], "batch_stats": state.batch_stats["vae"]}
    x_r = x - grfd.make_vae(cfg).apply(vae_vars, x, train=False)["x_u"]
    rsm, key = grfd.make_classifier(cfg), jax.random.key(4)
    std = cfg.rb_noise * jnp.asarray(dataset_info(cfg.dataset)["std"])

    def mean_rb(params, x_r):
        l_rb = grfd.robustness_loss(rsm, {"params": params}, x_r, x_r, y, key, cfg.rb_samples, std)
        return l_rb.mean(), l_rb
    (_, l_rb), (g_params, g_x) = jax.jit(cpu_kernels.use(jax.value_and_grad(
        mean_rb, (0, 1), has_aux=True)))(
        state.params["rsm"], x_r)
    vae, trsm = torch_grfd.from_flax(cfg, state.params, state.batch_stats)
    xr = _torch(x_r, True).requires_grad_()
    ours = torch_grfd.robustness_loss(trsm, xr, xr, _torch(y).long(),
                                      _torch(rb_draws(cfg, x.shape, key), True))
    ours.mean().backward()
    diff = (ours.detach() - _torch(l_rb)).abs()
    g_ref = _torch(g_x, True).flatten(1)
    g_gap = (xr.grad.flatten(1) - g_ref).abs().amax(1) / g_ref.abs().amax(1).clamp_min(1e-30)
    return dict(samples=len(diff), lrb_off=int((diff > 1e-5).sum()), lrb_max=float(diff.max()),
                grad_off=int((g_gap > 1e-3).sum()),
                params=torch_grfd.worst_gap(
                    {k: v for k, v in torch_grfd.gradients(vae, trsm).items() if k.startswith("rsm")},
                    torch_grfd.flax_gradients({"rsm": g_params}, vae, trsm)))


def check_agreement(rows, torch_grfd) -> None:
    """Print the agreement tables; stop if a loss term differs by more than TOLERANCE, or
    more than MAX_FLIPPED of the samples' L_rb or x_r-gradient in the shared-x_r check."""
    last = rows[-1][1]
    k = last.rb_samples
    lrb_only = dataclasses.replace(last, delta=1.0, beta=0.0, epsilon=0.0, gamma=0.0, rb_noise=1.0)
    print("\nagreement on the timing batch, the same draws fed to both. Loss terms: relative "
          "difference of the batch means,\njax vs torch; gradient: worst tensor's max|difference|"
          " / max|reference|, the reference being the port in float64.\n\n"
          f"| step | {' | '.join(TERMS)} | gradient jax vs f64 | gradient torch vs f64 |\n"
          f"|---|{'---|' * len(TERMS)}---|---|")
    failed = []
    for name, cfg, alpha in ((f"preset, K={k}", last, 10.0),
                             (f"L_rb only (delta 1, noise 1.0), K={k}", lrb_only, 0.0)):
        r = step_agreement(cfg, alpha, torch_grfd)
        failed += [f"{name}: {t}" for t in TERMS if r[t] > TOLERANCE]
        grads = " | ".join(f"{gap:.1e} ({where})" for gap, where in (r["grad_jax"], r["grad_torch"]))
        print(f"| {name} | {' | '.join(f'{r[t]:.1e}' for t in TERMS)} | {grads} |", flush=True)
    print(f"\nL_rb alone on one x_r fed to both, K={k}, jax vs torch. Rounding next to a ReLU or "
          "max-pool boundary moves a\nsample's piecewise-constant input gradient, so a few samples "
          "may differ; a wrong term moves them all.\n\n"
          "| L_rb alone | samples with L_rb off by > 1e-5 (largest) | samples with x_r-gradient "
          "off by > 1e-3 | RSM parameter gradient, worst tensor |\n|---|---|---|---|")
    for name, cfg in (("preset noise", last), ("noise 1.0", lrb_only)):
        r = rb_agreement(cfg, torch_grfd)
        failed += [f"L_rb alone, {name}: {what}" for what in ("lrb_off", "grad_off")
                   if r[what] > MAX_FLIPPED * r["samples"]]
        print(f"| {name} | {r['lrb_off']} of {r['samples']} ({r['lrb_max']:.1e}) | "
              f"{r['grad_off']} of {r['samples']} | {r['params'][0]:.1e} ({r['params'][1]}) |",
              flush=True)
    if failed:
        raise SystemExit(f"torch and jax differ ({', '.join(failed)}); not comparable")


def torch_comparison(dataset: str, rows, steps: int, rounds: int) -> None:
    """The agreement check, then the jax / torch timing table: per configuration `rounds`
    alternating rounds of each library, a round's median over `steps` steps (after a warm-up
    step), and the median of the rounds."""
    import torch
    try:
        from bench import torch_grfd
    except ImportError:                      # run as a script: bench/ is on sys.path
        import torch_grfd
    torch.set_num_threads(os.cpu_count())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    torch.manual_seed(0)
    check_agreement(rows, torch_grfd)
    print(f"\n| {dataset} preset, batch {rows[0][1].batch_size} | jax ms/step | torch ms/step | "
          f"ratio torch/jax | jax CPU ms/step (cores) | torch CPU ms/step (cores) |\n"
          f"|---|---|---|---|---|---|")
    for name, cfg in rows:
        run_jax, _ = step_runner(cfg)
        state, (x, y), hp = setup(cfg)
        vae, rsm = torch_grfd.from_flax(cfg, state.params, state.batch_stats)
        step = torch_grfd.make_step(cfg, vae, rsm)
        xt, yt = _torch(x, True), _torch(y).long()
        run_torch = lambda: step(xt, yt, float(hp["alpha"]))
        times = {"jax": [], "torch": []}
        for _ in range(rounds):   # interleaved: a slow spell of the machine hits both
            times["jax"].append(wall_and_cpu_ms(run_jax, steps))
            times["torch"].append(wall_and_cpu_ms(run_torch, steps))
        (jax_ms, jax_cpu), (torch_ms, torch_cpu) = (
            [statistics.median(t[i] for t in times[k]) for i in (0, 1)] for k in ("jax", "torch"))
        print(f"| {name} | {jax_ms:.0f} | {torch_ms:.0f} | {torch_ms / jax_ms:.2f} | "
              f"{jax_cpu:.0f} ({jax_cpu / jax_ms:.2f}) | "
              f"{torch_cpu:.0f} ({torch_cpu / torch_ms:.2f}) |", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--ks", default="1,2,4,8")
    p.add_argument("--torch", action="store_true",
                   help="check against a PyTorch port of the step, then time both")
    p.add_argument("--rounds", type=int, default=3,
                   help="--torch: alternating rounds of jax and torch steps per configuration")
    p.add_argument("--batch_size", type=int, default=None,
                   help="override the preset's batch size (quick runs)")
    p.add_argument("--kernels", type=int, default=0, metavar="ROUNDS",
                   help="time each step with the CPU kernels on and off "
                        "(jaxdefense.cpu_kernels), interleaved over ROUNDS rounds")
    args = p.parse_args()
    setup_process()   # malloc as the command lines have it (jaxdefense.host_memory)
    over = {} if args.batch_size is None else {"batch_size": args.batch_size}
    rows = [("no L_rb (delta=0)", preset(args.dataset, delta=0.0, **over))]
    rows += [(f"L_rb, K={k}", preset(args.dataset, rb_samples=k, **over)) for k in
             map(int, args.ks.split(","))]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
          f"{jax.devices()[0].device_kind}, {jax.device_count()} device(s), jax {jax.__version__}")
    if args.kernels:
        kernels_table(args.dataset, rows, args.steps, args.kernels)
    elif args.torch:
        torch_comparison(args.dataset, rows, args.steps, args.rounds)
    else:
        timing_table(args.dataset, rows, args.steps)
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
