"""The three phases end to end on tiny models: served model, checkpoints, resume, errors."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import jaxdefense
from jaxdefense import data
from jaxdefense.checkpoint import CheckpointError
from jaxdefense.defenses.grfd.train import train_and_evaluate
from tests.conftest import run_env

# a full GRFD run (three phases) is this module's fixture: behind `slow` with the other runs
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from jaxdefense.defenses.grfd.config import preset
    cfg = preset("digits", smoke=True, workdir=str(tmp_path_factory.mktemp("w") / "run"),
                 limit_train=128, limit_eval=64, batch_size=32, z_dim=8, vae_base=4,
                 lenet_width=0.25, attack_examples=32, epochs=2)
    return cfg, train_and_evaluate(cfg, progress=False)


def test_run_writes_report_metrics_and_figures(trained):
    cfg, report = trained
    for k in ("clean_acc", "fgsm_acc", "pgd_acc"):
        assert 0.0 <= report[k] <= 1.0
    assert report["pgd_acc"] <= report["clean_acc"]
    lines = [json.loads(l) for l in open(os.path.join(cfg.workdir, "metrics.jsonl"))]
    assert [l["phase"] for l in lines] == ["generator"] * 2 + ["target"] * 2 + ["report"]
    assert lines[0]["alpha"] == 10.0 and "l_rb" in lines[0]["train"]
    for fig in ("reconstructions.png", "latent.png"):
        assert os.path.getsize(os.path.join(cfg.workdir, "figures", fig)) > 1000
    # the same records as TensorBoard event files, read back with TensorBoard's own reader
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(os.path.join(cfg.workdir, "tensorboard"),
                              size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    l_rb = events.Scalars("generator/train/l_rb")
    assert [e.step for e in l_rb] == [1, 2]
    assert [e.value for e in l_rb] == pytest.approx([l["train"]["l_rb"] for l in lines[:2]])
    assert events.Scalars("report/pgd_acc")[0].value == pytest.approx(report["pgd_acc"])
    assert "target/images_per_s" in events.Tags()["scalars"]
    assert events.Images("reconstructions")[0].width > 100


def test_load_in_fresh_process_gives_identical_logits(trained):
    cfg, report = trained
    x = data.load("digits", "test").x[:16]
    model = jaxdefense.load(cfg.workdir)
    here = np.asarray(model(x))
    out = os.path.join(cfg.workdir, "fresh.npy")
    code = ("import numpy as np, jaxdefense; from jaxdefense import data;"
            f"m = jaxdefense.load({cfg.workdir!r});"
            f"np.save({out!r}, np.asarray(m(data.load('digits','test').x[:16])))")
    subprocess.run([sys.executable, "-c", code], check=True, env=run_env(1))
    np.testing.assert_array_equal(np.load(out), here)
    test = data.load("digits", "test").take(cfg.limit_eval)
    assert np.mean(model.predict(test.x) == test.y) == pytest.approx(report["clean_acc_full_eval"])
    with pytest.raises(ValueError, match="expected images of shape"):
        model(np.zeros((2, 32, 32, 3), np.float32))
    # uint8 images are scaled; 0-255 floats and NaNs are refused, not silently served
    np.testing.assert_allclose(np.asarray(model(np.round(x * 255).astype(np.uint8))),
                               np.asarray(model(np.round(x * 255) / 255)), atol=1e-5)
    with pytest.raises(ValueError, match=r"in \[0, 1\].*divide by 255"):
        model(x * 255)
    with pytest.raises(ValueError, match="non-finite"):
        model(np.where(np.arange(x.size).reshape(x.shape) == 3, np.nan, x))


def test_resume_reaches_same_parameters(trained, tmp_path):
    cfg, _ = trained
    interrupted = dataclasses.replace(cfg, workdir=str(tmp_path / "resumed"), stop_after_epochs=1)
    assert train_and_evaluate(interrupted, progress=False)["stopped"] == "generator"
    assert train_and_evaluate(interrupted, progress=False)["stopped"] == "target"
    train_and_evaluate(dataclasses.replace(interrupted, stop_after_epochs=None), progress=False)
    x = data.load("digits", "test").x[:16]
    np.testing.assert_array_equal(np.asarray(jaxdefense.load(interrupted.workdir)(x)),
                                  np.asarray(jaxdefense.load(cfg.workdir)(x)))


def test_workdir_of_other_settings_is_refused(trained):
    cfg, _ = trained
    with pytest.raises(ValueError, match="use a new --workdir"):
        train_and_evaluate(dataclasses.replace(cfg, z_dim=16), progress=False)


def test_checkpoint_of_other_architecture_and_corrupt_checkpoint(trained, tmp_path):
    cfg, _ = trained
    import shutil
    other = tmp_path / "other"
    shutil.copytree(cfg.workdir, other)
    conf = json.load(open(other / "config.json"))
    conf["config"]["z_dim"] = 16
    json.dump(conf, open(other / "config.json", "w"))
    with pytest.raises(CheckpointError, match="another architecture"):
        jaxdefense.load(str(other))

    broken = tmp_path / "broken"
    shutil.copytree(cfg.workdir, broken)
    for root, _, files in os.walk(broken / "target"):
        for f in files:
            if f != "_CHECKPOINT_METADATA":
                with open(os.path.join(root, f), "wb") as fh:
                    fh.write(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        jaxdefense.load(str(broken))
    with pytest.raises(CheckpointError, match="not a jaxdefense workdir"):
        jaxdefense.load(str(tmp_path))


def test_quickstart_notebook_runs_on_a_finished_run(trained, tmp_path):
    """examples/quickstart.ipynb executed as a user runs it (its parameters cell replaced,
    as papermill does), so the notebook cannot rot: on this module's digits run, and on the
    GRFD MNIST model the repository commits (its default), which it finds from examples/."""
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient
    from tests.conftest import REPO
    cfg, report = trained
    mnist = REPO.parent / "shared" / "data" / "mnist"
    for workdir, data_dir, shown in ((repr(cfg.workdir), None, "grfd on digits"),
                                     (None, str(mnist), "grfd on mnist")):
        nb = nbformat.read(os.path.join(os.path.dirname(__file__), "..", "examples",
                                        "quickstart.ipynb"), as_version=4)
        params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1
        params[0].source = (f"WORKDIR = {workdir}\nDATA_DIR = {data_dir!r}\nTRAIN = {{}}\n"
                            f"EXAMPLES = 32")
        where = tmp_path / shown.split()[-1]
        where.mkdir()
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(REPO / "examples")
                                               if workdir is None else str(where)}}).execute()
        text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                       for o in c.get("outputs", []))
        assert shown in text and "PGD-20 at eps 0.1 (white-box)" in text
        if workdir is None:
            assert "results/models/grfd-mnist/grfd" in text
        images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                  if "image/png" in o.get("data", {})]
        assert len(images) == 3                                   # parts, attack, eps figure
    assert os.path.getsize(tmp_path / "digits" / "runs" / "notebook" / "eps.png") > 1000
    shutil.rmtree(REPO / "examples" / "runs", ignore_errors=True)
