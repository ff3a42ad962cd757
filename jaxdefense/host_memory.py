"""Keep freed host memory in the process instead of returning it to the OS (glibc malloc).

XLA:CPU allocates each compiled program's temporary buffer (tens to hundreds of MiB: 47 MiB
for the MNIST GRFD step) when the program runs and frees it when it ends. glibc serves such
a large block with a fresh `mmap` and unmaps it on free, so every step faults in every page
of it again: about 12,000 page faults and 25-40 ms of kernel time per MNIST GRFD step on
this project's CPU VM (BENCHMARKS.md), a fifth of the step's CPU time. With the mmap
threshold and the trim threshold raised, the block comes from malloc's heap and its pages
stay mapped between steps: no faults after the first step.

Importing jaxdefense leaves malloc alone. The command lines (`python -m train.*`,
`python -m eval.*`, the benchmarks) call `apply_default()` first; a library user who wants
the same calls it (or `keep_freed_memory()`) before the first computation. The cost is that
up to `limit_bytes` of freed memory stays in the process (its resident size stays near its
peak). The environment variable JAXDEFENSE_KEEP_FREED_MEMORY, read by `apply_default()`,
chooses:
  * `1` (default): the two thresholds above;
  * `one_arena`: also one malloc arena for all threads. glibc's other arenas grow in 64 MiB
    heaps, so a block above 64 MiB that one of XLA's worker threads allocates (the GRFD
    step's 80 MiB temporary at K = 1, 150 MiB at K = 4) is still mapped afresh each step.
    Measured here: no faults and about 30-40 ms less CPU time per step at K = 1 and K = 4, but
    8-20 ms more on the step without L_rb (threads share one arena's lock). Must be set
    before the first computation (threads keep the arena they first used);
  * `0`: leave malloc as it is.
It changes nothing off glibc (macOS, musl, Windows), where it returns False. glibc's own
MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ / MALLOC_ARENA_MAX, set before Python starts,
do the same for the whole process.
"""
from __future__ import annotations

import ctypes
import os
import platform
import sys

ENV = "JAXDEFENSE_KEEP_FREED_MEMORY"
CHOICES = ("0", "1", "one_arena")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -3, -4, -8   # mallopt


def is_glibc() -> bool:
    """Whether this process runs on Linux with glibc's malloc (the only one tuned here)."""
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def keep_freed_memory(limit_bytes: int = 1 << 30, one_arena: bool = False) -> bool:
    """Serve allocations below `limit_bytes` (bytes) from malloc's heap and keep up to
    `limit_bytes` of freed memory mapped; `one_arena`: one arena for all threads (see the
    module doc). True when applied (glibc on Linux), else False."""
    if not is_glibc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    limit = min(int(limit_bytes), 2 ** 31 - 1)
    if not mallopt(_M_MMAP_THRESHOLD, limit):
        # where glibc refuses so high a threshold: no mmap'ed blocks at all instead.
        if not mallopt(_M_MMAP_MAX, 0):
            return False
    if one_arena and not mallopt(_M_ARENA_MAX, 1):
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, limit))


APPLIED = False     # whether `apply_default()` changed malloc in this process


def apply_default() -> bool:
    """`keep_freed_memory()` as JAXDEFENSE_KEEP_FREED_MEMORY says (the command lines call
    it first); True when malloc was changed. ValueError on an unknown setting."""
    global APPLIED
    choice = os.environ.get(ENV, "1")
    if choice not in CHOICES:
        raise ValueError(f"{ENV}={choice!r}: expected one of {', '.join(CHOICES)}")
    if choice != "0":
        APPLIED = keep_freed_memory(one_arena=choice == "one_arena") or APPLIED
    return APPLIED
