"""Time PGD-20 on LeNet-5, or the GRFD phase-I step, at several commits of this repository,
in one run.

    python bench/compare_commits.py --commits=22b89c2,HEAD --rounds=5
    python bench/compare_commits.py --what=grfd --rb_samples=1 --commits=686d6a3,HEAD

Each commit is checked out into a temporary git worktree; the timing runs in a fresh Python
process per (round, commit) with that worktree first on sys.path, the commits alternating
round by round so that a machine that slows down or speeds up during the run affects every
commit alike. Per process, --what=pgd: LeNet-5 with its defaults (random init, seed 0), a
batch of 128 random images, `attacks.pgd(eps=0.1, step_size=0.025, steps=20)`; --what=grfd:
one phase-I step of the MNIST preset (`grfd.make_generator_step`, jitted with the state
donated, a fresh key per step) with --rb_samples noise draws (0: delta = 0, no L_rb) on a
batch of random images. One warm-up call (compiles), then the median of --repeats timed
calls. Prints each commit's median over the rounds and its ratio to the first commit.
Timing only; nothing is asserted.
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
try:      # as the command lines run (a commit whose import did this itself has no cli hook)
    from jaxdefense.cli import setup_process
    setup_process()
except ImportError:
    pass
import os
if os.path.isdir(os.path.join(sys.argv[1], "jaxdefense", "cpu_kernels")):
    from jaxdefense.cpu_kernels import use    # the step compiled as training.fit compiles it
else:     # (an editable install would otherwise find the package of the working tree)
    use = lambda fn: fn
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

GRFD_SNIPPET = r"""
import statistics, sys, time
sys.path.insert(0, sys.argv[1])
import jax, jax.numpy as jnp
try:      # as the command lines run (a commit whose import did this itself has no cli hook)
    from jaxdefense.cli import setup_process
    setup_process()
except ImportError:
    pass
import os
if os.path.isdir(os.path.join(sys.argv[1], "jaxdefense", "cpu_kernels")):
    from jaxdefense.cpu_kernels import use    # the step compiled as training.fit compiles it
else:     # (an editable install would otherwise find the package of the working tree)
    use = lambda fn: fn
from jaxdefense.defenses import grfd
from jaxdefense.defenses.grfd.config import preset
k = int(sys.argv[4])
cfg = preset("mnist", batch_size=int(sys.argv[2]), **({"delta": 0.0} if k == 0 else {"rb_samples": k}))
state = grfd.init_generator_state(cfg, jax.random.key(0), 100)
batch = (jax.random.uniform(jax.random.key(1), (cfg.batch_size, 28, 28, 1)),
         jax.numpy.arange(cfg.batch_size) % 10)
hp = {"alpha": jax.numpy.float32(10.0)}
step = jax.jit(use(grfd.make_generator_step(cfg)), donate_argnums=(0,))
keys = list(jax.random.split(jax.random.key(3), int(sys.argv[3]) + 1))
def run(key):
    global state
    state, m = step(state, batch, key, hp)
    jax.block_until_ready(m)
run(keys[0])
ts = []
for key in keys[1:]:
    t0 = time.perf_counter(); run(key); ts.append(time.perf_counter() - t0)
print(1000 * statistics.median(ts))
"""


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--commits", default="HEAD~1,HEAD")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--what", choices=("pgd", "grfd"), default="pgd")
    p.add_argument("--rb_samples", type=int, default=1,
                   help="--what=grfd: L_rb's noise draws K (0: delta = 0)")
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
                snippet = SNIPPET if args.what == "pgd" else GRFD_SNIPPET
                out = subprocess.run([sys.executable, "-c", snippet, trees[c],
                                      str(args.batch_size), str(args.repeats),
                                      str(args.rb_samples)],
                                     check=True, capture_output=True, text=True)
                times[c].append(float(out.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}: " + ", ".join(f"{c} {times[c][-1]:.0f} ms" for c in commits),
                  flush=True)
    finally:
        for path in trees.values():
            subprocess.run(["git", "-C", repo, "worktree", "remove", "--force", path],
                           capture_output=True)
    base = statistics.median(times[commits[0]])
    what = ("PGD-20 ms/batch" if args.what == "pgd" else
            f"GRFD step ms (K = {args.rb_samples})" if args.rb_samples else "GRFD step ms (delta 0)")
    print(f"| commit | {what} of {args.batch_size} (median of {args.rounds} rounds) "
          f"| relative to {commits[0]} |\n|---|---|---|")
    for c in commits:
        m = statistics.median(times[c])
        print(f"| {c} | {m:.0f} | {m / base:.2f} |")


if __name__ == "__main__":
    main()
