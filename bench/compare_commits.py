"""Time PGD-20 on LeNet-5 at several commits of this repository, in one run.

    python bench/compare_commits.py --commits=22b89c2,HEAD --rounds=5

Each commit is checked out into a temporary git worktree; the timing runs in a fresh Python
process per (round, commit) with that worktree first on sys.path, the commits alternating
round by round so that a machine that slows down or speeds up during the run affects every
commit alike. Per process: LeNet-5 with its defaults (random init, seed 0), a batch of 128
random images, `attacks.pgd(eps=0.1, step_size=0.025, steps=20)`; one warm-up call
(compiles), then the median of --repeats timed calls. Prints each commit's median over the
rounds and its ratio to the first commit. Timing only; nothing is asserted.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

SNIPPET = r"""
import statistics, sys, time
sys.path.insert(0, sys.argv[1])
import jax, jax.numpy as jnp
from jaxdefense import attacks
from jaxdefense.models import LeNet5
m = LeNet5()
x = jax.random.uniform(jax.random.key(0), (int(sys.argv[2]), 28, 28, 1))
v = m.init(jax.random.key(0), x[:1])
f = lambda xx: m.apply(v, xx)
y = jnp.argmax(f(x), 1)
run = lambda: jax.block_until_ready(attacks.pgd(f, x, y, jax.random.key(1), eps=0.1,
                                                step_size=0.025, steps=20))
run()
ts = []
for _ in range(int(sys.argv[3])):
    t0 = time.perf_counter(); run(); ts.append(time.perf_counter() - t0)
print(1000 * statistics.median(ts))
"""


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--commits", default="HEAD~1,HEAD")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch_size", type=int, default=128)
    args = p.parse_args()
    repo = subprocess.check_output(["git", "rev-parse", "--show-toplevel"], text=True).strip()
    commits = args.commits.split(",")
    tmp = tempfile.mkdtemp()
    trees = {}
    for c in commits:
        path = os.path.join(tmp, c.replace("/", "_").replace("~", "-"))
        subprocess.run(["git", "-C", repo, "worktree", "add", "--detach", path, c], check=True,
                       capture_output=True)
        trees[c] = path
    times = {c: [] for c in commits}
    try:
        for r in range(args.rounds):
            for c in commits:
                out = subprocess.run([sys.executable, "-c", SNIPPET, trees[c],
                                      str(args.batch_size), str(args.repeats)],
                                     check=True, capture_output=True, text=True)
                times[c].append(float(out.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}: " + ", ".join(f"{c} {times[c][-1]:.0f} ms" for c in commits),
                  flush=True)
    finally:
        for path in trees.values():
            subprocess.run(["git", "-C", repo, "worktree", "remove", "--force", path],
                           capture_output=True)
    base = statistics.median(times[commits[0]])
    print(f"| commit | PGD-20 ms/batch of {args.batch_size} (median of {args.rounds} rounds) "
          f"| relative to {commits[0]} |\n|---|---|---|")
    for c in commits:
        m = statistics.median(times[c])
        print(f"| {c} | {m:.0f} | {m / base:.2f} |")


if __name__ == "__main__":
    main()
