"""What `jaxdefense.host_memory` saves: the GRFD phase-I step per malloc setting.

    python bench/host_memory.py --alternations=3

Runs the MNIST preset's step (batch 128; no L_rb, K = 1, K = 4) in a fresh process per
setting of JAXDEFENSE_KEEP_FREED_MEMORY (0: glibc's default, 1: the import's default,
one_arena), the settings alternating --alternations times so that a slow spell of the machine
hits each. Prints per setting and step the medians over the alternations of: wall ms, CPU ms
(user + system, both cores) and minor page faults per step. CPU time moves less than wall
time on a shared VM. Linux with glibc only (the settings change nothing elsewhere).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

SETTINGS = ("0", "1", "one_arena")
STEPS = {"no L_rb (delta=0)": dict(delta=0.0), "L_rb, K=1": dict(rb_samples=1),
         "L_rb, K=4": dict(rb_samples=4)}


def child(steps: int, rounds: int) -> None:
    """In a fresh process: {step name: [wall ms, CPU ms, faults]} per step, as JSON."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import grfd_step
    from jaxdefense.defenses.grfd.config import preset
    out = {}
    for name, kw in STEPS.items():
        run, _ = grfd_step.step_runner(preset("mnist", **kw))
        run()
        rows = []
        for _ in range(rounds):
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            for _ in range(steps):
                run()
            r1, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t0
            cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
            rows.append((1000 * wall / steps, 1000 * cpu / steps,
                         (r1.ru_minflt - r0.ru_minflt) / steps))
        out[name] = [statistics.median(col) for col in zip(*rows)]
    print("RESULT " + json.dumps(out))


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--alternations", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per process")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.steps, args.rounds)
    results = {s: [] for s in SETTINGS}
    for _ in range(args.alternations):
        for s in SETTINGS:
            env = dict(os.environ, JAXDEFENSE_KEEP_FREED_MEMORY=s)
            r = subprocess.run([sys.executable, __file__, "--child", f"--steps={args.steps}",
                                f"--rounds={args.rounds}"], env=env, capture_output=True,
                               text=True, check=True)
            line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")][-1]
            results[s].append(json.loads(line[len("RESULT "):]))
            print(f"JAXDEFENSE_KEEP_FREED_MEMORY={s}: done", file=sys.stderr, flush=True)
    print("| step (MNIST preset, batch 128) | JAXDEFENSE_KEEP_FREED_MEMORY | wall ms | CPU ms | "
          "page faults / step |\n|---|---|---|---|---|")
    for name in STEPS:
        for s in SETTINGS:
            wall, cpu, faults = (statistics.median(run[name][i] for run in results[s])
                                 for i in range(3))
            print(f"| {name} | {s} | {wall:.0f} | {cpu:.0f} | {faults:,.0f} |")


if __name__ == "__main__":
    main()
