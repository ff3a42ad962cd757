import contextlib
import importlib
import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"

# XLA's persistent compilation cache, shared by every test process and the command lines the
# tests start (`run_env`): the same programs (a digits LeNet-5 step, a table's attacks, a
# command resumed after a kill) are compiled once per run instead of once per process, and
# a second run compiles only what changed. JAXDEFENSE_TEST_CACHE=0 turns it off; a path
# moves it; `rm -rf .cache` empties it. Kept under 512 MiB (least recently used entries
# evicted; jax needs `filelock` for that). An entry cut short by a killed process is read
# as a miss (jax warns and compiles).
_CACHE = os.environ.get("JAXDEFENSE_TEST_CACHE") or str(REPO / ".cache" / "jax-tests")
_CACHE_ENV = {} if _CACHE == "0" else {
    "JAX_COMPILATION_CACHE_DIR": _CACHE, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.1",
    "JAX_COMPILATION_CACHE_MAX_SIZE": str(512 * 2**20)}
if _CACHE != "0":
    import jax
    jax.config.update("jax_compilation_cache_dir", _CACHE)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    jax.config.update("jax_compilation_cache_max_size", 512 * 2**20)
    # entries written without the size bound have no access-time file, which jax's eviction
    # then fails to read on every write: drop them (under jax's own lock on the directory)
    import filelock
    pathlib.Path(_CACHE).mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(pathlib.Path(_CACHE) / ".lockfile", timeout=30):
        for entry in pathlib.Path(_CACHE).glob("*-cache"):
            if not entry.with_name(entry.name[:-len("cache")] + "atime").exists():
                entry.unlink(missing_ok=True)

# The test process is a library user's process: the command lines its tests call in-process
# (`cli.main([...])`) leave malloc as it is instead of retuning it halfway through the run
# (`host_memory.apply_default`); the command lines the tests start as processes (`run_env`)
# choose as a user's do.
_MALLOC_SET_HERE = "JAXDEFENSE_KEEP_FREED_MEMORY" not in os.environ
os.environ.setdefault("JAXDEFENSE_KEEP_FREED_MEMORY", "0")

from jaxdefense.defenses.grfd.config import preset  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop every compiled program after each test module. XLA:CPU maps about 3 memory
    regions per live executable, all released by `jax.clear_caches` (bench/executable_maps.py);
    the whole suite in one process (`-n 0`) otherwise keeps ~20,000 alive and crosses Linux's
    vm.max_map_count (65,530), where the next compilation dies with SIGSEGV (after about 210
    tests)."""
    yield
    import jax
    jax.clear_caches()


@pytest.fixture
def tiny_cfg(tmp_path):
    """The smallest GRFD config that still exercises every part (digits, 2 epochs)."""
    return preset("digits", smoke=True, workdir=str(tmp_path / "run"), limit_train=128,
                  limit_eval=64, batch_size=32, z_dim=8, vae_base=4, lenet_width=0.25,
                  attack_examples=32, epochs=2)


def mnist_dir():
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST files not found in {MNIST_DIR}")
    return str(MNIST_DIR)


# The agreement tests compare with reference code (torch, advertorch 0.2.3, fra31/auto-attack)
# and skip where it is missing; CI sets JAXDEFENSE_REQUIRE_REFERENCES=1, which makes that a
# failure, so a reference that stopped installing cannot pass as skipped tests.
REQUIRE_REFERENCES = os.environ.get("JAXDEFENSE_REQUIRE_REFERENCES", "0") not in ("", "0")


def reference_missing(reason: str):
    """Skips (the whole module when called at import), or fails where
    JAXDEFENSE_REQUIRE_REFERENCES is set."""
    if REQUIRE_REFERENCES:
        pytest.fail(f"{reason}; JAXDEFENSE_REQUIRE_REFERENCES is set", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def import_reference(name: str):
    """`pytest.importorskip(name)`, failing instead where JAXDEFENSE_REQUIRE_REFERENCES is
    set."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        reference_missing(f"reference module {name!r} not importable ({e})")


def run_env(devices: int = 1, cache: bool = True) -> dict:
    """The environment of a command line a test starts: `devices` host devices, this
    checkout on the path, the tests' compilation cache unless `cache` is False (runs whose
    timing the test relies on: a warm cache would change how long they take)."""
    env = dict(os.environ)
    if _MALLOC_SET_HERE:
        env.pop("JAXDEFENSE_KEEP_FREED_MEMORY")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PYTHONPATH"] = str(REPO)
    if cache:
        env.update(_CACHE_ENV)
    else:
        for k in _CACHE_ENV:
            env.pop(k, None)
    return env


def linear_step(state, batch, key, hparams):
    """A training step of a linear softmax classifier (params 'w' [D, K], 'b' [K]) for tests
    of the harness: metrics 'loss' (times 1 + hparams['poison'], to make it NaN on purpose)
    and 'rows' (the batch size the step saw)."""
    import jax
    import jax.numpy as jnp
    import optax
    xb, yb = batch

    def loss(p):
        logits = xb.reshape(len(xb), -1) @ p["w"] + p["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
    value, grads = jax.value_and_grad(loss)(state.params)
    value = value * (1.0 + hparams.get("poison", 0.0))
    return state.apply_gradients(grads=grads), {"loss": value, "rows": jnp.float32(len(xb))}


@contextlib.contextmanager
def square_segments():
    """Records the batch size of each segment of Square queries run inside the context."""
    sq = importlib.import_module("jaxdefense.attacks.square")
    sizes, real = [], sq._square_queries

    def spy(f, xs, *args):
        sizes.append(len(xs))
        return real(f, xs, *args)
    sq._square_queries = spy
    try:
        yield sizes
    finally:
        sq._square_queries = real
