"""Every CIFAR preset at its real size: parameters, FLOPs per image, compiled memory, one step.

    python bench/full_size.py                       # all, batch 128, float32 and bfloat16
    python bench/full_size.py --only=grfd-phase1 --run_batch=2

For each training step a CIFAR preset runs (GRFD phase I on CIFAR-100 with WRN-28-10 and the
residual LVCVAE z 2048, K = 1; GRFD phase III; FSR + PGD-AT on ResNet-18 and WRN-34-10;
the purifiers' WRN-28-10 target; APE-GAN; DiffPure's score network) it compiles the jitted,
donated step at --batch without allocating it (abstract inputs) and prints XLA's own figures
for that program on this backend: FLOPs per image (cost analysis) and memory (arguments +
outputs + temporaries - donated aliases), in float32 and bfloat16 compute (parameters stay
float32), and which GPU sizes hold it with 10% headroom. Then it runs one real step at
--run_batch on this machine and checks the loss is finite. The memory figures are XLA:CPU's
plan: a GPU compile fuses differently (bench/gpu.py measures there). Timing is not the point.
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdefense.cli import setup_process
from jaxdefense.data import dataset_info

GPU_GIB = (16, 40, 80)


@dataclasses.dataclass
class Case:
    name: str
    what: str
    dataset: str
    init: Callable          # dtype -> TrainState (concrete; under eval_shape: abstract)
    step: Callable          # dtype -> step(state, batch, key, hparams)
    hparams: dict
    channels_factor: int = 1   # APE-GAN trains on (x, x_adv) stacked along channels
    dtype_applies: bool = True


def cases(attack_steps: int | None = None) -> list[Case]:
    """attack_steps: PGD steps inside FSR's adversarial training (default: the preset's 10);
    the tests take 1, the networks stay full size."""
    from jaxdefense.defenses import apegan, diffpure, grfd, standard
    from jaxdefense.defenses.fsr import config as fsr_config
    from jaxdefense.defenses.fsr import train as fsr_train
    from jaxdefense.training import classifier_step

    def g(dtype):
        return grfd.preset("cifar100", dtype=dtype, rb_samples=1)

    def fsr_cfg(arch, dtype, **kw):
        if attack_steps is not None:
            kw["train_steps"] = attack_steps
        return fsr_config.preset("cifar10", classifier=arch, method="at", dtype=dtype, **kw)

    def std(dtype):
        return standard.preset("cifar10", dtype=dtype)

    def ape(dtype):
        return apegan.preset("cifar10", dtype=dtype)

    def diff(dtype):
        return diffpure.preset("cifar10", dtype=dtype)
    k = jax.random.key(0)
    return [
        Case("grfd-phase1", "GRFD phase I, CIFAR-100: LVCVAE (residual, z 2048) + WRN-28-10 RSM, "
             "L_rb K=1", "cifar100",
             lambda d: grfd.init_generator_state(g(d), k, 390),
             lambda d: grfd.make_generator_step(g(d)), {"alpha": 10.0}),
        Case("grfd-phase3", "GRFD phase III, CIFAR-100: WRN-28-10 target on x_r", "cifar100",
             lambda d: grfd.init_target_state(g(d), k, 390),
             lambda d: classifier_step(grfd.make_classifier(g(d))), {}),
        Case("fsr-resnet18", "FSR + PGD-10 AT, CIFAR-10, ResNet-18", "cifar10",
             lambda d: fsr_train.init_state(fsr_cfg("resnet18", d), k, 390),
             lambda d: fsr_train.make_step(fsr_cfg("resnet18", d)), {}),
        Case("fsr-wrn34-10", "FSR + PGD-10 AT, CIFAR-10, WRN-34-10", "cifar10",
             lambda d: fsr_train.init_state(fsr_cfg("wide_resnet", d, wrn_depth=34,
                                                    wrn_widen=10), k, 390),
             lambda d: fsr_train.make_step(fsr_cfg("wide_resnet", d, wrn_depth=34,
                                                   wrn_widen=10)), {}),
        Case("target-wrn28-10", "purifiers' target (train.standard), CIFAR-10, WRN-28-10",
             "cifar10", lambda d: standard.init_state(std(d), k, 390),
             lambda d: classifier_step(standard.config.make_classifier(std(d))), {}),
        Case("apegan", "APE-GAN generator + discriminator, CIFAR-10 (x, FGSM x_adv)", "cifar10",
             lambda d: apegan.init_state(ape(d), apegan.networks(ape(d)), k),
             lambda d: apegan.train_step(ape(d), apegan.networks(ape(d))), {},
             channels_factor=2, dtype_applies=False),
        Case("diffpure-score", "DiffPure score network (DDPM++ size), CIFAR-10", "cifar10",
             lambda d: diffpure.init_state(diff(d), diffpure.make_score_net(diff(d)), k),
             lambda d: diffpure.train_step(diff(d), diffpure.make_score_net(diff(d))), {},
             dtype_applies=False),
    ]


def _batch(case: Case, n: int, abstract: bool):
    h, w, c = dataset_info(case.dataset)["shape"]
    shape = (n, h, w, c * case.channels_factor)
    if abstract:
        return (jax.ShapeDtypeStruct(shape, jnp.float32), jax.ShapeDtypeStruct((n,), jnp.int32))
    x = jax.random.uniform(jax.random.key(1), shape)
    return x, jnp.arange(n, dtype=jnp.int32) % dataset_info(case.dataset)["num_classes"]


def compiled_figures(case: Case, dtype: str, batch: int) -> dict:
    """Compile the donated step at `batch` from abstract inputs: XLA's FLOPs and memory."""
    state = jax.eval_shape(lambda: case.init(dtype))
    hp = {k: jax.ShapeDtypeStruct((), jnp.float32) for k in case.hparams}
    key = jax.eval_shape(lambda: jax.random.key(2))
    t0 = time.perf_counter()
    compiled = (jax.jit(case.step(dtype), donate_argnums=(0,))
                .lower(state, _batch(case, batch, True), key, hp).compile())
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    total = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
             - mem.alias_size_in_bytes)
    params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
    return dict(params=params, gflops_per_image=float(cost.get("flops", float("nan"))) / batch / 1e9,
                total_gib=total / 2 ** 30, temp_gib=mem.temp_size_in_bytes / 2 ** 30,
                compile_s=seconds)


def run_one_step(case: Case, batch: int) -> dict:
    """One real float32 step at a small batch on this machine: finite metrics."""
    state = case.init("float32")
    step = jax.jit(case.step("float32"), donate_argnums=(0,))
    hp = {k: jnp.float32(v) for k, v in case.hparams.items()}
    t0 = time.perf_counter()
    state, metrics = step(state, _batch(case, batch, False), jax.random.key(2), hp)
    metrics = jax.device_get(metrics)
    return dict(metrics={k: float(v) for k, v in metrics.items()},
                finite=all(np.isfinite(float(v)) for v in metrics.values()),
                seconds=time.perf_counter() - t0)


def fits(total_gib: float) -> str:
    ok = [f"{g}" for g in GPU_GIB if total_gib * 1.1 <= g]
    return "/".join(ok) + " GB" if ok else "none (shard or lower the batch)"


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--run_batch", type=int, default=2, help="0: skip the real step")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--only", default="", help="comma list of case names")
    args = p.parse_args()
    setup_process()   # malloc as the command lines have it (jaxdefense.host_memory)
    only = {s for s in args.only.split(",") if s}
    dtypes = args.dtypes.split(",")
    print(f"# full-size steps: batch {args.batch}, {jax.devices()[0].platform} "
          f"({platform.processor() or platform.machine()}), jax {jax.__version__}\n")
    print("| step | params (M) | GFLOPs / image | " +
          " | ".join(f"{d} GiB (fits)" for d in dtypes) +
          f" | one step at batch {args.run_batch} |")
    print("|---" * (4 + len(dtypes)) + "|")
    for case in cases():
        if only and case.name not in only:
            continue
        row, flops = [], None
        for d in dtypes:
            if d != "float32" and not case.dtype_applies:
                row.append("float32 only")
                continue
            f = compiled_figures(case, d, args.batch)
            flops = flops if flops is not None else f
            row.append(f"{f['total_gib']:.2f} ({fits(f['total_gib'])})")
        ran = "skipped"
        if args.run_batch:
            r = run_one_step(case, args.run_batch)
            loss = r["metrics"].get("loss", next(iter(r["metrics"].values())))
            ran = f"{'finite' if r['finite'] else 'NOT FINITE'} ({loss:.3g}), {r['seconds']:.0f} s"
        print(f"| {case.name}: {case.what} | {flops['params'] / 1e6:.1f} | "
              f"{flops['gflops_per_image']:.2f} | " + " | ".join(row) + f" | {ran} |",
              flush=True)


if __name__ == "__main__":
    main()
