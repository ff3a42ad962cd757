"""GPU run book: the real-size step and attack figures in one run, on whatever accelerator
jax sees.

    python bench/gpu.py                         # on a GPU machine: the real sizes
    python bench/gpu.py --smoke                 # anywhere: tiny sizes, checks the script runs
    python bench/gpu.py --parts=profile --out=DIR   # where a bfloat16 step spends its time

Prints, as markdown:
1. the device and its measured dense-matmul rate (8192^2 float32 and bfloat16 matmuls), the
   reference for "utilisation";
2. GRFD phase I on CIFAR-100 (WRN-28-10 RSM, residual LVCVAE z 2048) at batch 128, float32
   and bfloat16 compute, K = 1 and 4 L_rb draws (--ks): ms/step, images/s, the step's FLOPs
   (XLA cost analysis) per second and as a share of the measured matmul rate, and the
   compiled step's memory on the device (XLA memory analysis: arguments + outputs +
   temporaries - donated aliases, GiB);
3. the same for GRFD phase III (the WRN-28-10 target on x_r);
4. PGD-20, APGD-CE (100 steps) and the standard AutoAttack on a WRN-28-10 at batch 128
   (random weights: attack cost does not depend on accuracy much, except that AutoAttack
   drops fooled points, so its time here is an upper bound), ms per batch;
5. the projected wall time of the paper's schedule (150 epochs of phase I and of phase III
   over CIFAR-100's 50,000 training images, batch 128) from the measured steps;
6. with --parts=profile: phase I with (--ks) and without L_rb and phase III, float32 against
   bfloat16, each timed and then traced (jax.profiler) for a few steps; the device's kernel
   time per step is summed by kind (convolution, matmul, convert, transpose, reduce, other
   fusions) and the costliest kernels are listed, so the two dtypes can be compared kernel
   by kernel. --out keeps the tables (and the traces, gzipped) in a folder.
With --torch (torch and torchattacks installed: `pip install torch && pip install
--no-deps torchattacks`), item 4 is repeated with torchattacks on the same weights, copied
into a PyTorch WRN (bench/torch_wrn.py; the logits are checked equal first), on the GPU
when torch sees one. Both AutoAttacks are the standard ensemble (APGD-CE, APGD-T, FAB-T,
Square) and both drop fooled points, so with random weights most of the work is APGD-CE.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from jaxdefense.cli import setup_process

try:
    from bench.grfd_step import median_ms
except ImportError:                          # run as a script: bench/ is on sys.path
    from grfd_step import median_ms


def timed(fn, repeats: int) -> float:
    """Median seconds of fn() (which must block) over `repeats` runs after one warm-up."""
    return median_ms(fn, repeats) / 1000


def matmul_tflops(n: int, dtype, repeats: int) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    f = jax.jit(lambda a: a @ a)
    return 2 * n ** 3 / timed(lambda: f(a).block_until_ready(), repeats) / 1e12


def step_cost(jstep, lowered, args) -> dict:
    """XLA's cost analysis of the lowered step ({'flops': ...}; backend-independent HLO).

    From the lowered program because XLA:GPU's compiled cost analysis leaves out the
    convolutions it hands to cuDNN (it reported 0.6 TFLOP/s for a 122 ms WRN step); and
    lowered for the CPU where the device's lowering has none (jax 0.11 on a GPU: None)."""
    def first(cost):
        return cost[0] if isinstance(cost, (list, tuple)) else cost
    cost = first(lowered.cost_analysis())
    if not cost:
        cost = first(jstep.trace(*args).lower(lowering_platforms=("cpu",)).cost_analysis())
    return cost or {}


def step_figures(state, step, batch, hp, repeats: int) -> dict:
    jstep = jax.jit(step, donate_argnums=(0,))
    lowered = jstep.lower(state, batch, jax.random.key(1), hp)
    compiled = lowered.compile()
    cost = step_cost(jstep, lowered, (state, batch, jax.random.key(1), hp))
    mem = compiled.memory_analysis()
    gib = float("nan") if mem is None else (
        mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
        - mem.alias_size_in_bytes) / 2 ** 30
    holder = {"state": state}

    def run():
        holder["state"], m = jstep(holder["state"], batch, jax.random.key(1), hp)
        jax.block_until_ready(m)
    seconds = timed(run, repeats)
    return dict(ms=1000 * seconds, img_s=len(batch[0]) / seconds, gib=gib, run=run,
                tflops=float(cost.get("flops", float("nan"))) / seconds / 1e12)


def torch_runs(model, variables, x, y, steps) -> dict:
    """{attack name: a blocking callable} running torchattacks on a PyTorch copy of the
    weights (on CUDA when torch sees it), after checking the copy's logits."""
    import torch
    import torchattacks
    try:
        from bench import torch_wrn
    except ImportError:                      # run as a script: bench/ is on sys.path
        import torch_wrn
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = torch_wrn.from_flax(model, variables).to(device)
    gap = torch_wrn.max_logit_gap(model, variables, net, np.asarray(x), device)
    scale = float(np.max(np.abs(np.asarray(model.apply(variables, x, train=False)))))
    # On a GPU both libraries may run float32 convolutions in TF32 (torch's cuDNN default,
    # XLA's default precision), ~1e-3 relative: the check is relative to the logits' size.
    if gap > 1e-2 * scale:
        raise SystemExit(f"the PyTorch copy's logits differ by {gap:.2e} (max |logit| "
                         f"{scale:.2e}); not comparable")
    tf32 = (f", cuDNN TF32 {torch.backends.cudnn.allow_tf32}, matmul TF32 "
            f"{torch.backends.cuda.matmul.allow_tf32}" if device == "cuda" else "")
    print(f"torch {torch.__version__} on {device}{tf32}: logits equal to {gap:.1e} "
          f"(max |logit| {scale:.1e}); jax default matmul precision "
          f"{jax.config.jax_default_matmul_precision}")
    xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).to(device)
    yt = torch.from_numpy(np.asarray(y).astype(np.int64)).to(device)
    attacks = {
        "PGD-20": torchattacks.PGD(net, eps=8 / 255, alpha=2 / 255, steps=steps or 20,
                                   random_start=True),
        "APGD-CE": torchattacks.APGD(net, eps=8 / 255, steps=steps or 100, loss="ce"),
        "AutoAttack (standard)": torchattacks.AutoAttack(net, eps=8 / 255, version="standard",
                                                         n_classes=int(model.num_classes)),
    }

    def runner(attack):
        def run():
            attack(xt, yt)
            if device == "cuda":
                torch.cuda.synchronize()
        return run
    return {name: runner(a) for name, a in attacks.items()}


def step_table(args, batch_size: int, peak: dict, ks) -> dict:
    from jaxdefense.defenses import grfd
    from jaxdefense.training import classifier_step
    print(f"| step (CIFAR-100, batch {batch_size}) | dtype | K | ms/step | images/s | "
          f"TFLOP/s | share of matmul rate | memory GiB |\n|---|---|---|---|---|---|---|---|")
    x = jax.random.uniform(jax.random.key(2), (batch_size, 32, 32, 3))
    y = jnp.arange(batch_size) % 100
    ms = {}
    for dtype in ("float32", "bfloat16"):
        for k in ks:
            cfg = grfd.preset("cifar100", smoke=args.smoke, dtype=dtype, rb_samples=k)
            f = step_figures(grfd.init_generator_state(cfg, jax.random.key(0), 390),
                             grfd.make_generator_step(cfg), (x, y),
                             {"alpha": jnp.float32(10.0)}, args.repeats)
            ms[("phase1", dtype, k)] = f["ms"]
            share = f["tflops"] / peak[jnp.dtype(dtype).type]
            print(f"| GRFD phase I | {dtype} | {k} | {f['ms']:.1f} | {f['img_s']:.0f} | "
                  f"{f['tflops']:.3g} | {100 * share:.0f}% | {f['gib']:.2f} |", flush=True)
        cfg = grfd.preset("cifar100", smoke=args.smoke, dtype=dtype)
        f = step_figures(grfd.init_target_state(cfg, jax.random.key(0), 390),
                         classifier_step(grfd.make_classifier(cfg)), (x, y), {}, args.repeats)
        ms[("phase3", dtype)] = f["ms"]
        share = f["tflops"] / peak[jnp.dtype(dtype).type]
        print(f"| GRFD phase III | {dtype} | - | {f['ms']:.1f} | {f['img_s']:.0f} | "
              f"{f['tflops']:.3g} | {100 * share:.0f}% | {f['gib']:.2f} |", flush=True)
    return ms


def attack_table(args, batch_size: int) -> None:
    from jaxdefense import attacks
    from jaxdefense.defenses import grfd
    x = jax.random.uniform(jax.random.key(2), (batch_size, 32, 32, 3))
    y = jnp.arange(batch_size) % 100
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
    theirs = torch_runs(model, variables, x, yy, steps) if args.torch else {}
    print(f"\n| attack on WRN (batch {batch_size}) | ms / batch (jax) | torchattacks ms | "
          f"our speed (torch ms / ours) |\n|---|---|---|---|")
    for name, fn in runs.items():
        if args.attacks and name.split(" ")[0] not in args.attacks.split(","):
            continue
        if args.smoke and name.startswith("AutoAttack"):
            print(f"| {name} | skipped in --smoke | - | - |")
            continue
        s = timed(lambda: jax.block_until_ready(fn()), max(1, args.repeats // 5))
        if name in theirs:
            t = timed(theirs[name], max(1, args.repeats // 5))
            print(f"| {name} | {1000 * s:.0f} | {1000 * t:.0f} | {t / s:.2f}x |", flush=True)
        else:
            print(f"| {name} | {1000 * s:.0f} | not run (--torch) | - |", flush=True)


def projection(args, ms: dict, ks) -> None:
    steps_per_epoch = 50_000 // 128
    print("\nprojected wall time of the paper's schedule (150 + 150 epochs, "
          f"{steps_per_epoch} steps each, from the steps above"
          f"{'; smoke sizes, not meaningful' if args.smoke else ''}):")
    for dtype in ("float32", "bfloat16"):
        for k in ks:
            hours = 150 * steps_per_epoch * (ms[("phase1", dtype, k)] +
                                            ms[("phase3", dtype)]) / 1000 / 3600
            print(f"- {dtype}, K = {k}: {hours:.1f} h")


KINDS = ("convolution", "matmul", "convert", "transpose/copy", "reduce", "other fusion",
         "other")


def kernel_kind(name: str) -> str:
    """A device kernel's kind, from its name (cuDNN, cuBLAS / cuBLASLt and XLA's fusions)."""
    n = name.lower()
    if any(k in n for k in ("xmma", "cudnn", "convolve", "fprop", "dgrad", "wgrad")):
        return "convolution"
    if any(k in n for k in ("gemm", "nvjet", "cutlass", "cublas", "triton_gemm")):
        return "matmul"
    if "convert" in n:
        return "convert"
    if "transpose" in n or "copy" in n:
        return "transpose/copy"
    if "reduce" in n:
        return "reduce"
    return "other fusion" if "fusion" in n else "other"


def trace_file(trace_dir: str) -> str:
    """The perfetto trace (.trace.json.gz) that jax.profiler.trace wrote under trace_dir."""
    return glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)[0]


def device_kernels(trace_dir: str) -> list:
    """[(kernel name, HLO operation, flax scope, microseconds)] of the kernels that ran on the
    device in a jax.profiler trace (the host's operations where no device was traced: CPU).
    The scope, e.g. `transpose(jvp(vmap(transpose(jvp(WideResNet)))))/WideBlock_4/Conv_0/
    conv_general_dilated`, says which layer and which pass of a double backward made it."""
    with gzip.open(trace_file(trace_dir)) as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    names = {e["pid"]: e.get("args", {}).get("name", "") for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    gpu = {pid for pid, n in names.items() if "GPU" in n or "gpu" in n}
    host_only = ("$", "ThunkExecutor", "PjitFunction", "TfrtCpu")   # no device traced
    out = []
    for e in events:
        if e.get("ph") != "X" or "dur" not in e:
            continue
        if (e.get("pid") in gpu) if gpu else not e["name"].startswith(host_only):
            args = e.get("args", {})
            out.append((e["name"], str(args.get("hlo_op", "")), str(args.get("name", "")),
                        float(e["dur"])))
    return out


def profile_table(args, batch_size: int, ks) -> None:
    """Float32 against bfloat16, kernel kind by kernel kind (module docstring, item 6)."""
    from jaxdefense.defenses import grfd
    from jaxdefense.training import classifier_step
    x = jax.random.uniform(jax.random.key(2), (batch_size, 32, 32, 3))
    y = jnp.arange(batch_size) % 100
    traced_steps = 3
    rows, tops = [], []
    for dtype in ("float32", "bfloat16"):
        cases = [(f"phase I, K = {k}", "phase1", dict(rb_samples=k)) for k in ks]
        cases += [("phase I, no L_rb", "phase1_no_rb", dict(delta=0.0)),
                  ("phase III", "phase3", {})]
        for label, case, over in cases:
            if case not in args.cases.split(","):
                continue
            cfg = grfd.preset("cifar100", smoke=args.smoke, dtype=dtype, **over)
            if case == "phase3":
                state = grfd.init_target_state(cfg, jax.random.key(0), 390)
                step, hp = classifier_step(grfd.make_classifier(cfg)), {}
            else:
                state = grfd.init_generator_state(cfg, jax.random.key(0), 390)
                step, hp = grfd.make_generator_step(cfg), {"alpha": jnp.float32(10.0)}
            try:
                f = step_figures(state, step, (x, y), hp, args.repeats)
                with tempfile.TemporaryDirectory(prefix="jaxdefense-trace-") as trace_dir:
                    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
                        for _ in range(traced_steps):
                            f["run"]()
                    kernels = device_kernels(trace_dir)
                    if args.out:
                        tag = f"{case}_K{over.get('rb_samples', 0)}_{dtype}"
                        shutil.copy(trace_file(trace_dir),
                                    os.path.join(args.out, f"trace_{tag}.json.gz"))
            except Exception as err:              # keep the other rows of a short lease
                print(f"{label} {dtype}: failed: {type(err).__name__}: {err}", flush=True)
                continue
            by_kind = collections.Counter()
            by_name = collections.Counter()
            for name, op, scope, us in kernels:
                by_kind[kernel_kind(name)] += us / traced_steps / 1000
                by_name[(name[:90], op[:40], scope)] += us / traced_steps / 1000
            rows.append((label, dtype, f["ms"], len(kernels) / traced_steps,
                         sum(by_kind.values()), by_kind, f["gib"]))
            tops.append((label, dtype, by_name.most_common(args.top)))
            print(f"{label} {dtype}: {f['ms']:.1f} ms/step, device kernels "
                  f"{sum(by_kind.values()):.1f} ms", flush=True)
    lines = [f"| step (CIFAR-100, batch {batch_size}) | dtype | ms/step | kernels/step | "
             f"device ms/step | " + " | ".join(KINDS) + " | memory GiB |",
             "|---" * (len(KINDS) + 6) + "|"]
    for label, dtype, ms, n, dev, kinds, gib in rows:
        lines.append(f"| {label} | {dtype} | {ms:.1f} | {n:.0f} | {dev:.1f} | " +
                     " | ".join(f"{kinds[k]:.1f}" for k in KINDS) + f" | {gib:.2f} |")
    for label, dtype, top in tops:
        lines.append(f"\n{label}, {dtype}: the {args.top} costliest kernels, ms per step\n")
        lines += [f"    {ms:7.2f}  {kernel_kind(name):14s} {name}  [{op}] {scope}"
                  for (name, op, scope), ms in top]
    text = "\n".join(lines)
    print("\n" + text, flush=True)
    if args.out:
        with open(os.path.join(args.out, "profile.md"), "w") as f:
            f.write(text + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny models, batch 8 (any machine)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--torch", action="store_true")
    p.add_argument("--parts", default="steps,attacks",
                   help="comma list: steps, attacks, profile")
    p.add_argument("--top", type=int, default=15, help="--parts=profile: kernels listed")
    p.add_argument("--cases", default="phase1,phase1_no_rb,phase3",
                   help="--parts=profile: comma list of phase1 (one row per --ks), "
                   "phase1_no_rb, phase3")
    p.add_argument("--out", default="", help="--parts=profile: a folder for the tables "
                   "and the traces")
    p.add_argument("--attacks", default="",
                   help="comma list of PGD-20, APGD-CE, AutoAttack (default: all)")
    p.add_argument("--ks", default="1,4", help="comma list of L_rb draws K for phase I")
    args = p.parse_args()
    setup_process()   # malloc as the command lines have it (jaxdefense.host_memory)
    parts = set(args.parts.split(","))
    ks = [int(k) for k in args.ks.split(",")]

    batch_size = 8 if args.smoke else 128
    n = 512 if args.smoke else 8192
    dev = jax.devices()[0]
    print(f"# GPU run book: {dev.platform} {dev.device_kind}, {jax.device_count()} device(s), "
          f"jax {jax.__version__}{' (smoke sizes)' if args.smoke else ''}\n")
    peak = {d: matmul_tflops(n, d, args.repeats) for d in (jnp.float32, jnp.bfloat16)}
    print(f"measured matmul ({n}^2): float32 {peak[jnp.float32]:.3g} TFLOP/s, "
          f"bfloat16 {peak[jnp.bfloat16]:.3g} TFLOP/s\n")

    if "steps" in parts:
        ms = step_table(args, batch_size, peak, ks)
    if "attacks" in parts:
        attack_table(args, batch_size)
    if "steps" in parts:
        projection(args, ms, ks)
    if "profile" in parts:
        if args.out:
            os.makedirs(args.out, exist_ok=True)
        profile_table(args, batch_size, ks)


if __name__ == "__main__":
    main()
