"""bench/gpu_cells.py: the budget stops a step with SIGTERM (resumable, exit 75), unknown
steps are refused, and the smoke run fills its records on the CPU."""
import importlib.util
import json
import sys

import pytest

from tests.conftest import REPO


def _script():
    spec = importlib.util.spec_from_file_location("gpu_cells", REPO / "bench" / "gpu_cells.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_budget_stops_a_step_resumably_and_bad_steps_are_refused(capsys):
    cells = _script()
    stoppable = [sys.executable, "-c",
                 "import signal, sys, time\n"
                 "signal.signal(signal.SIGTERM, lambda *a: sys.exit(75))\n"
                 "time.sleep(60)"]
    rc, spent = cells.run_step(stoppable, 2.0)
    assert rc == 75 and spent < 30
    rc, _ = cells.run_step([sys.executable, "-c", "pass"], 30.0)
    assert rc == 0
    assert cells.main(["--steps=arn-table1,gpu"]) == 2
    assert "--steps takes some of arn-table1, diffpure, speed" in capsys.readouterr().err
    assert cells.main(["--steps=speed", "--budget_s=0"]) == 75
    assert "speed: not started (budget spent)" in capsys.readouterr().out


@pytest.mark.slow
def test_smoke_fills_the_arn_record_on_cpu(tmp_path, capsys):
    """The first step at smoke size (the DiffPure step is eval.table3's command, which the
    digits table smoke runs with its DiffPure column)."""
    cells = _script()
    out = tmp_path / "cells"
    assert cells.main(["--smoke", f"--out={out}", "--steps=arn-table1",
                       "--budget_s=1500"]) == 0
    assert "arn-table1: exit 0" in capsys.readouterr().out
    arn = json.loads((out / "record" / "arn-table1-digits" / "arn_pp.json").read_text())
    assert arn["identity"]["system"] == "arn_pp" and arn["column"]["status"] == "measured"
    assert (out / "record" / "models" / "arn-digits" / "arn_pp" / "model.json").exists()
