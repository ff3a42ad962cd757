"""Writing run files once: only the main process writes (see `sharding.is_main_process`),
and each file appears whole (written to a temporary name, then renamed)."""
from __future__ import annotations

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
