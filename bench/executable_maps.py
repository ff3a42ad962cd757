"""Memory mappings per live XLA executable (Linux): why a long process must drop compiled
programs it no longer needs (`jax.clear_caches`), as the test suite does after each module.

    python bench/executable_maps.py --programs=300

Compiles --programs distinct small jitted functions, keeps them alive, and prints the
process's memory mappings (/proc/self/maps lines) before, after, and after
`jax.clear_caches()`, with the mappings added per executable, beside the kernel's ceiling
(/proc/sys/vm/max_map_count). malloc is left as it is (as in the test process).
"""
from __future__ import annotations

import argparse
import gc


def maps() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--programs", type=int, default=300, help="distinct jitted functions")
    args = p.parse_args(argv)
    import jax
    import jax.numpy as jnp
    jnp.ones(1).block_until_ready()
    start = maps()
    fns = []
    for i in range(args.programs):
        f = jax.jit(lambda x, i=i: jnp.sin(x) * i + jnp.cos(x * (i + 1)))
        f(jnp.ones(3)).block_until_ready()
        fns.append(f)
    live = maps()
    jax.clear_caches()
    del fns
    gc.collect()
    with open("/proc/sys/vm/max_map_count") as f:
        ceiling = int(f.read())
    print(f"jax {jax.__version__}, {args.programs} executables: maps {start} -> {live} "
          f"({(live - start) / args.programs:.2f} per executable), {maps()} after "
          f"jax.clear_caches(); vm.max_map_count {ceiling}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
