"""TensorBoard event files beside each workdir's metrics.jsonl, written with tensorboardX
(no TensorFlow needed). Open them with `tensorboard --logdir runs` (the `tensorboard`
package, installed apart).

Every metrics record becomes scalars tagged PHASE/KEY (nested keys joined by '/', e.g.
`generator/train/l_rb`, `target/eval/acc`, `report/whitebox/pgd`) at step = its epoch
(0 for the closing report); figures go in as images under their file name.
"""
from __future__ import annotations

import atexit
import numbers
import os
import time

import numpy as np

LOGDIR = "tensorboard"
_writers: dict = {}
_closing: list = []          # [True] once close() is registered to run at exit


def _writer(workdir: str):
    """One event file per workdir and process, written synchronously (SummaryWriter's queue
    thread is not drained by its flush(), so a reader could miss the last records)."""
    from tensorboardX.event_file_writer import EventsWriter
    logdir = os.path.join(os.path.abspath(workdir), LOGDIR)
    if logdir not in _writers:
        os.makedirs(logdir, exist_ok=True)
        if not _writers and not _closing:    # closed at exit, once a file is open
            atexit.register(close)
            _closing.append(True)
        _writers[logdir] = EventsWriter(os.path.join(logdir, "events"))
    return _writers[logdir]


def _write(workdir: str, summaries: list, step: int) -> None:
    from tensorboardX.proto import event_pb2
    from jaxdefense.sharding import is_main_process
    if not is_main_process():
        return
    w = _writer(workdir)
    for summary in summaries:
        w.write_event(event_pb2.Event(summary=summary, step=step, wall_time=time.time()))
    w.flush()


def _flat(record: dict, prefix: str = ""):
    for k, v in record.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}/")
        elif isinstance(v, numbers.Real) and not isinstance(v, bool) and np.isfinite(v):
            yield f"{prefix}{k}", float(v)


def scalars(workdir: str, record: dict) -> None:
    """Write a metrics record's numbers (not its epoch) as scalars, flushed to disk."""
    from tensorboardX import summary
    phase = record.get("phase", "metrics")
    values = _flat({k: v for k, v in record.items() if k not in ("phase", "epoch")})
    _write(workdir, [summary.scalar(f"{phase}/{tag}", v) for tag, v in values],
           int(record.get("epoch", 0)))


def figure(workdir: str, png_path: str, step: int = 0) -> None:
    """A saved figure (PNG) as a TensorBoard image tagged by its file name."""
    import matplotlib.image as mpimg
    from tensorboardX import summary
    img = np.asarray(mpimg.imread(png_path)[..., :3], np.float32)   # [0, 1] HWC, no alpha
    tag = os.path.splitext(os.path.basename(png_path))[0]
    _write(workdir, [summary.image(tag, img, dataformats="HWC")], step)


def close() -> None:
    for w in _writers.values():
        w.close()
    _writers.clear()

