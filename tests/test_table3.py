"""GRFD's Table 3 command: protocols per column, the table's layout, the full smoke run."""
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdefense import table3
from jaxdefense.defended import DefendedClassifier
from tests.conftest import REPO, run_env


def _model(logits_fn, defense, stochastic=False):
    return DefendedClassifier(logits_fn=logits_fn, image_shape=(2, 2, 1), num_classes=2,
                              defense=defense, config={}, parts={}, stochastic=stochastic)


def test_each_column_is_attacked_under_its_protocol():
    w = jnp.array([[1.0, -1.0]] * 4)
    none = _model(lambda x: x.reshape(len(x), -1) @ w, "standard")
    grfd = _model(lambda x: x.reshape(len(x), -1) @ w * 2, "grfd")
    smooth = _model(lambda x, k: x.reshape(len(x), -1) @ w + jax.random.normal(k, (2,)),
                    "smoothing", stochastic=True)
    models = {"standard": none, "grfd": grfd, "smoothing": smooth, "gradreg": none}
    cols = {c.name: c for c in table3.COLUMNS}
    paper, adaptive, threat = table3.column_models(cols["grfd"], models, "mnist")
    assert threat == "transfer" and paper.source is none.logits_fn
    assert adaptive.served is grfd.logits_fn and not adaptive.stochastic
    paper, adaptive, threat = table3.column_models(cols["smoothing"], models, "mnist")
    x = jnp.ones((3, 2, 2, 1))
    assert threat == "transfer" and adaptive.stochastic
    np.testing.assert_array_equal(paper.source(x), paper.source(x))     # one fixed draw
    paper, adaptive, threat = table3.column_models(cols["gradreg"], models, "mnist")
    assert threat == "whitebox" and paper is adaptive
    paper, adaptive, threat = table3.column_models(cols["bdr"], models, "mnist")
    # bits:1 on MNIST: the served forward pass is the same; only the adaptive one has BPDA
    xs = jnp.full((1, 2, 2, 1), 0.3)
    np.testing.assert_array_equal(paper.served(xs), adaptive.served(xs))
    g = jax.grad(lambda a: adaptive.served(a)[0, 0])(xs)
    g_flat = jax.grad(lambda a: paper.served(a)[0, 0])(xs)
    assert float(jnp.abs(g).sum()) > 0 and float(jnp.abs(g_flat).sum()) == 0


def test_markdown_layout_and_paper_values(tmp_path):
    row = {"clean": 0.99, "fgsm": 0.5, "pgd": 0.25, "autoattack": 0.0, "eotpgd": 0.25,
           "vmifgsm": 0.5, "avg": 0.3, "worst_case": 0.0}
    columns = {c.name: {"label": c.label, "paper_protocol": table3.PAPER_PROTOCOL[c.paper],
                        "status": "measured", "paper": row,
                        "adaptive": {**row, "pgd": 0.0} if c.name == "diffpure" else row}
               for c in table3.COLUMNS}
    result = {"dataset": "mnist", "examples": 500, "preset": "grfd-mnist", "columns": columns,
              "paper_values": {"source": "S", "note": "",
                               "values": {"grfd": {"pgd": 0.912, "avg": 0.9}}}}
    text = table3.markdown(result)
    lines = text.splitlines()
    header = next(l for l in lines if l.startswith("| |"))
    assert header.split("|")[2:-1] == [f" {c.label} " for c in table3.COLUMNS]
    pgd_rows = [l for l in lines if l.startswith("| PGD |")]
    assert len(pgd_rows) == 2                                    # both protocols
    assert pgd_rows[0].endswith("| 25.0 (91.2) |") and pgd_rows[1].endswith("| 25.0 |")
    assert pgd_rows[0].count("| 25.0 ") == len(table3.COLUMNS)   # one cell per column
    assert pgd_rows[1].split("|")[-3] == " 0.0 "                   # DiffPure, adaptive
    assert next(l for l in lines if l.startswith("| Avg (5 attacks) |")).endswith("| 30.0 (90.0) |")
    # a subset's average is not the paper's five-attack average: no paper value beside it
    sub = table3.markdown({**result, "attacks": {"fgsm": {}, "pgd": {}}})
    assert next(l for l in sub.splitlines() if l.startswith("| Avg (2 attacks) |")).endswith("| 30.0 |")
    assert table3.figure(str(tmp_path / "t.png"), result) and (tmp_path / "t.png").stat().st_size > 1000
    ref = table3.paper_values("cifar10")
    assert ref["source"] and isinstance(ref["values"], dict)


def test_attacks_follow_the_dataset_preset():
    a = table3.attacks_for("mnist", None, None)
    assert list(a) == list(table3.ATTACK_ORDER)
    assert a["pgd"] == {"eps": 18 / 255, "step_size": 8 / 255, "steps": 100}
    a = table3.attacks_for("cifar10", 5, 4)
    assert a["pgd"]["steps"] == 5 and a["pgd"]["eot_samples"] == 4
    assert list(table3.attacks_for("mnist", None, None, ["vmifgsm", "fgsm"])) == ["fgsm", "vmifgsm"]


def test_bad_column_or_attack_is_a_clear_error(capsys, tmp_path):
    from eval import table3 as cli
    root = f"--root={tmp_path / 'never'}"
    assert cli.main(["--dataset=digits", "--columns=none,jpeg", root]) == 2
    assert "unknown columns ['jpeg']" in capsys.readouterr().err
    assert cli.main(["--dataset=digits", "--attacks=pgd,cw", root]) == 2
    assert "unknown attacks ['cw']" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()                     # nothing trained or written


def test_a_column_is_measured_again_only_when_what_it_depends_on_changed(tmp_path):
    runs = {}
    for d in ("standard", "cdvae"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "results.json").write_text('{"clean_acc": 0.9}')
        runs[d] = str(tmp_path / d)
    col = {c.name: c for c in table3.COLUMNS}
    x, y, key = np.zeros((4, 2, 2, 1), np.float32), np.arange(4), jax.random.key(0)
    attacks = table3.attacks_for("mnist", 5, 2, ["fgsm", "pgd"])
    stamp = lambda c="cdvae", x=x, attacks=attacks, key=key, batch=256: table3._fingerprint(
        col[c], runs, x, y, attacks, key, batch)
    base = stamp()
    assert stamp() == base
    changed = [stamp(c="fs"), stamp(x=x + 0.5),
               stamp(attacks=table3.attacks_for("mnist", 6, 2, ["fgsm", "pgd"])),
               stamp(key=jax.random.key(1)), stamp(batch=128)]
    assert len({base, *changed}) == 1 + len(changed)
    (tmp_path / "cdvae" / "results.json").write_text('{"clean_acc": 0.8}')   # retrained
    assert stamp() != base


def _run_table3(args, timeout):
    """The CLI in a fresh interpreter: the command as a user runs it, and the hundreds of
    programs it compiles stay out of the test process (XLA once crashed compiling there,
    late in a full CI run, and never alone)."""
    proc = subprocess.run([sys.executable, "-m", "eval.table3", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, env=run_env(1))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_table3_smoke_on_digits_trains_attacks_and_writes_everything(tmp_path):
    """The whole command on the embedded digits, every column trained and attacked under both
    protocols with two of the five attacks (the attack implementations have their own tests;
    all five on every column means about a hundred more compiles)."""
    root = tmp_path / "t3"
    args = ["--dataset=digits", "--smoke", f"--root={root}", "--examples=32", "--epochs=1",
            "--attacks=fgsm,pgd",
            "--set=limit_train=128,limit_eval=64,batch_size=32,lenet_width=0.25,z_dim=8,"
            "vae_base=4"]
    _run_table3(args, timeout=1800)
    out = json.loads((root / "table3.json").read_text())
    assert out["examples"] == 32 and list(out["attacks"]) == ["fgsm", "pgd"]
    assert out["attacks"]["pgd"]["steps"] == 5 and out["eot_samples"] == 2
    for c in table3.COLUMNS:
        col = out["columns"][c.name]
        assert col["status"] == "measured"
        for protocol in ("paper", "adaptive"):
            r = col[protocol]
            assert set(r) == {"clean", "fgsm", "pgd", "avg", "worst_case"}
            assert r["worst_case"] <= min(r["fgsm"], r["pgd"]) + 1e-9
    md = (root / "table3.md").read_text()
    assert md.count("| Worst case |") == 2 and md.count("| Avg (2 attacks) |") == 2
    assert md.count("| AA | " + " | ".join(["-"] * len(table3.COLUMNS)) + " |") == 2
    assert (root / "table3.png").stat().st_size > 1000
    # a second call takes the finished workdirs and the measured column: it trains and
    # attacks nothing
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()
              and "table3." not in p.name}
    out = _run_table3(args + ["--columns=none"], timeout=600)
    assert "== training" not in out and "== attacking" not in out
    assert f"== None: measured earlier ({root / 'columns' / 'none.json'})" in out
    assert {p: p.stat().st_mtime_ns for p in before} == before
