"""jaxdefense.host_memory: freed large blocks stay mapped, so reusing them does not fault."""
import os
import subprocess
import sys

import pytest

from jaxdefense import host_memory

pytestmark = pytest.mark.skipif(not host_memory.is_glibc(), reason="glibc's malloc only")
THP = "/sys/kernel/mm/transparent_hugepage/enabled"

# Allocates, touches and frees a 64 MiB block with malloc 5 times (as XLA:CPU does with a
# program's temporary buffer); prints the page faults of the last 4.
PROBE = """
import ctypes, resource, sys, threading
import jaxdefense
from jaxdefense import host_memory
if sys.argv[3] == "cli":          # what every command line does first
    from jaxdefense.cli import setup_process
    setup_process()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
def cycle(n=int(sys.argv[1]) << 20):
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    libc.free(p)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def run():
    cycle()
    global before
    before = faults()
    for _ in range(4):
        cycle()
if sys.argv[2] == "thread":      # as XLA's worker threads do
    t = threading.Thread(target=run)
    t.start()
    t.join()
else:
    run()
print(host_memory.APPLIED, faults() - before)
"""


def _probe(env_value, mib=64, where="main", entry="cli"):
    env = dict(os.environ)
    env.pop("JAXDEFENSE_KEEP_FREED_MEMORY", None)
    if env_value is not None:
        env["JAXDEFENSE_KEEP_FREED_MEMORY"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE, str(mib), where, entry], env=env,
                         capture_output=True, text=True, check=True, timeout=120).stdout.split()
    return out[0] == "True", int(out[1])


def _huge_pages_always() -> bool:
    """Whether the kernel backs anonymous memory with transparent huge pages by default
    (then a fresh mapping faults once per 2 MiB, and fault counts cannot tell)."""
    return os.path.exists(THP) and "[always]" in open(THP).read()


def test_import_leaves_malloc_as_it_was():
    applied, faults = _probe(None, entry="import")
    assert not applied
    if not _huge_pages_always():
        assert faults > 30_000        # each block mmap'ed afresh, as without jaxdefense


def test_command_lines_keep_freed_blocks_mapped():
    applied, faults = _probe(None)
    assert applied
    # 4 x 64 MiB = 65,536 pages of 4 KiB if every block were mapped afresh.
    assert faults < 2_000


def test_one_arena_keeps_large_blocks_of_other_threads():
    # glibc's thread arenas grow in 64 MiB heaps: a 96 MiB block of a worker thread is
    # mapped afresh each time unless every thread uses the main arena.
    applied, faults = _probe("one_arena", mib=96, where="thread")
    assert applied
    assert faults < 2_000
    if not _huge_pages_always():
        assert _probe("1", mib=96, where="thread")[1] > 60_000


def test_bad_choice_is_an_error():
    env = dict(os.environ, JAXDEFENSE_KEEP_FREED_MEMORY="yes")
    r = subprocess.run([sys.executable, "-c", "import jaxdefense"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0                  # the import does not read it
    r = subprocess.run([sys.executable, "-m", "eval.table3", "--help"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0                  # nor does --help
    r = subprocess.run([sys.executable, "-m", "train.standard", "--dataset=digits", "--smoke",
                        "--epochs=0"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "expected one of 0, 1, one_arena" in r.stderr


def test_opt_out_leaves_malloc_alone():
    applied, faults = _probe("0")
    assert not applied
    if not _huge_pages_always():
        assert faults > 30_000        # each block mmap'ed afresh and faulted in again
