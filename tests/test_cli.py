import dataclasses
import json
import subprocess
import sys

from jaxdefense.defenses.grfd_config import GRFDConfig
from tests.conftest import REPO, run_env


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=run_env(1),
                          capture_output=True, text=True, timeout=timeout)


def test_help_lists_every_option_with_default():
    out = _run("train.grfd", "--help").stdout
    for f in dataclasses.fields(GRFDConfig):
        assert f"--{f.name}" in out, f.name
    assert "--smoke" in out and "(default: 0.2)" in out


def test_cli_errors_are_clear():
    r = _run("train.grfd", "--dataset=imagenet")
    assert r.returncode == 2 and "invalid choice" in r.stderr
    r = _run("train.grfd", "--dataset=cifar10", "--alpha=1,2", "--workdir=/tmp/never")
    assert r.returncode == 2 and "alpha takes one value or three" in r.stderr
    r = _run("eval.robustness", "--workdir=/nonexistent")
    assert r.returncode == 2 and "not a jaxdefense workdir" in r.stderr


def test_cifar100_offline_fails_fast_naming_data_dir(tmp_path):
    # offline machines (this project's CI) must fail within seconds with the hint
    r = _run("train.grfd", "--dataset=cifar100", f"--data_dir={tmp_path}",
             f"--workdir={tmp_path / 'w'}", timeout=120)
    if r.returncode == 0:
        raise AssertionError("cifar100 cannot be prepared in an empty data_dir in a test")
    assert "--data_dir" in r.stderr or "TensorFlow" in r.stderr, r.stderr[-2000:]


def test_smoke_runs_then_eval_with_all_threat_models(tmp_path):
    w, s = tmp_path / "grfd", tmp_path / "std"
    r = _run("train.grfd", "--dataset=digits", "--smoke", f"--workdir={w}", "--limit_train=256",
             "--attack_examples=64")
    assert r.returncode == 0, r.stderr[-3000:]
    r = _run("train.standard", "--dataset=digits", "--smoke", f"--workdir={s}",
             "--limit_train=256", "--attack_examples=64")
    assert r.returncode == 0, r.stderr[-3000:]
    r = _run("eval.robustness", f"--workdir={w}", f"--source_workdir={s}", "--examples=64",
             "--max_steps=5", "--attacks=fgsm,pgd,autoattack",
             "--threats=whitebox,target-only,transfer", "--eps_sweep=0,16,64")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "worst_case" in r.stdout and "sanity checks" in r.stdout
    result = json.loads((w / "robustness.json").read_text())
    assert set(result["whitebox"]) == {"fgsm", "pgd", "autoattack", "worst_case"}
    assert result["whitebox"]["worst_case"] <= result["transfer"]["worst_case"]
    assert (w / "robustness_eps.png").stat().st_size > 1000
    r = _run("eval.robustness", f"--workdir={w}", "--threats=transfer")
    assert r.returncode == 2 and "--source_workdir" in r.stderr
