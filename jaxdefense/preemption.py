"""Stopping a long run cleanly: a SIGTERM (a preempted cloud machine) or SIGINT (Ctrl-C, a
notebook's interrupt) is noted and acted on between two steps, after the work done so far is
saved; the program then exits with `EXIT_RESUMABLE` and the same command resumes.

One process: while a `stop_requests()` context is open, SIGTERM and SIGINT set a flag (a
second SIGINT interrupts at once). Several processes (`jax.distributed`): JAX's preemption
service catches SIGTERM on any process and every process stops at the same step
(`multihost_utils.reached_preemption_sync_point`); SIGINT keeps its default there, since a
flag on one process alone would leave the others waiting in a collective.
Nothing is installed at import; handlers live only inside the context.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading

import jax

EXIT_RESUMABLE = 75   # sysexits.h EX_TEMPFAIL: "try again later"; run the same command again


class Preempted(Exception):
    """A stop was requested; what was done is saved, and the same command resumes it."""


_state = {"depth": 0, "signal": None, "saved": {}}


def _handle(signum, frame):
    if signum == signal.SIGINT and _state["signal"] == signal.SIGINT:
        raise KeyboardInterrupt          # a second Ctrl-C: stop now, unsaved
    _state["signal"] = signum


def _multi_process() -> bool:
    return jax.process_count() > 1


@contextlib.contextmanager
def stop_requests():
    """While open (contexts nest), SIGTERM / SIGINT are noted for `requested` instead of
    killing the process; on leaving the outermost, the previous handlers come back."""
    main = threading.current_thread() is threading.main_thread()
    install = main and _state["depth"] == 0
    if install:
        _state["signal"] = None
        wanted = () if _multi_process() else (signal.SIGINT, signal.SIGTERM)
        _state["saved"] = {s: signal.signal(s, _handle) for s in wanted}
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        if install:
            for s, old in _state["saved"].items():
                signal.signal(s, old)
            _state["saved"] = {}
            _state["signal"] = None


def requested(step: int | None = None) -> str | None:
    """The reason to stop now ('SIGTERM', 'SIGINT', 'preemption') or None. Several
    processes: pass the step, the same on every process, at every step (JAX's sync point
    then names the same step everywhere)."""
    if _state["signal"] is not None:
        return signal.Signals(_state["signal"]).name
    if step is not None and _multi_process():
        from jax._src import distributed
        if distributed.global_state.preemption_sync_manager is not None:
            from jax.experimental import multihost_utils
            if multihost_utils.reached_preemption_sync_point(step):
                return "preemption"
    return None


def resumable(fn, *args) -> int:
    """A command's exit status: fn(*args) inside `stop_requests()`; a stop (Preempted, the
    work saved) prints why and gives EXIT_RESUMABLE, for the same command to resume."""
    with stop_requests():
        try:
            return fn(*args)
        except Preempted as e:
            print(f"stopped: {e}", file=sys.stderr)
            return EXIT_RESUMABLE
