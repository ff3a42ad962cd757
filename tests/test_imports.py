"""Importing the package changes nothing in the process: no plotting backend chosen, no
exit handler registered (a notebook keeps its inline figures)."""
import subprocess
import sys

from tests.conftest import REPO

CHECK = """
import atexit, matplotlib
import jax, numpy, flax, optax, orbax.checkpoint, tensorboardX, matplotlib.figure  # theirs first
before = (matplotlib.rcParams._get("backend"), atexit._ncallbacks())
import jaxdefense, jaxdefense.plots, jaxdefense.summaries, jaxdefense.robustness
import jaxdefense.tables.measure, eval.table
after = (matplotlib.rcParams._get("backend"), atexit._ncallbacks())
assert before == after, (before, after)
import numpy as np
path = jaxdefense.plots.line_plot(sys.argv[1], [0, 1], {"a": [0.2, 0.4]}, "x", "y")
assert matplotlib.rcParams._get("backend") == before[0]     # drawing chose none either
print("unchanged")
"""


def test_importing_and_drawing_leave_the_process_as_it_was(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import sys\n" + CHECK,
                           str(tmp_path / "f.png")], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert proc.returncode == 0 and "unchanged" in proc.stdout, proc.stderr[-2000:]
    assert (tmp_path / "f.png").stat().st_size > 1000
