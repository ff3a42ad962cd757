"""Writing run files once: only the main process writes (see `sharding.is_main_process`),
and each file appears whole (written to a temporary name, then renamed)."""
from __future__ import annotations

import functools
import json
import os

from jaxdefense.sharding import is_main_process


def write_text(path: str, text: str) -> None:
    """Atomically replace `path` with `text` (main process only)."""
    if not is_main_process():
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: str, obj, **kwargs) -> None:
    """Atomically replace `path` with obj as indented JSON (main process only)."""
    write_text(path, json.dumps(obj, indent=2, **kwargs))


def append_line(path: str, line: str) -> None:
    """Append one line to `path` (main process only)."""
    if not is_main_process():
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        f.write(line.rstrip("\n") + "\n")


def probe_writable(directory: str) -> None:
    """Raise OSError unless a file can be written, flushed to disk and removed in `directory`
    (main process only); directories it had to create for the probe are removed again."""
    if not is_main_process():
        return
    directory = os.path.abspath(directory)
    created = []
    d = directory
    while not os.path.exists(d) and os.path.dirname(d) != d:
        created.append(d)
        d = os.path.dirname(d)
    try:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, f".write-probe-{os.getpid()}")
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
        os.remove(probe)
    finally:
        for d in created:                  # deepest first
            try:
                os.rmdir(d)
            except OSError:
                pass


@functools.lru_cache(maxsize=None)
def code_digest() -> str:
    """sha256 of the package version and every Python source file of the package (models,
    attacks, defenses, config, data, training, checkpoints: anything that can change a
    measured result), by path relative to the package. Read once per process (at first
    use), so edits made while a long run goes on do not change its stamp; the commands
    call it before they train."""
    import hashlib
    import jaxdefense
    root = os.path.dirname(os.path.abspath(jaxdefense.__file__))
    h = hashlib.sha256(jaxdefense.__version__.encode())
    for p in code_files():
        h.update(os.path.relpath(p, root).encode())
        with open(p, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def code_files() -> list:
    """Every .py file of the package, sorted: what `code_digest` covers."""
    import jaxdefense
    root = os.path.dirname(os.path.abspath(jaxdefense.__file__))
    return sorted(os.path.join(d, f) for d, dirs, fs in os.walk(root)
                  if "__pycache__" not in d for f in fs if f.endswith(".py"))
