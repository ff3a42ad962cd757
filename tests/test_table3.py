"""GRFD's Table 3 command: protocols per column, the table's layout, the full smoke run."""
import dataclasses
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdefense import files, robustness
from jaxdefense.tables import (grfd, measure, planning, protocols, record, rendering, spec,
                               stamps)
from jaxdefense.defended import DefendedClassifier
from tests.conftest import REPO, run_env


def _model(logits_fn, defense, stochastic=False):
    return DefendedClassifier(logits_fn=logits_fn, image_shape=(2, 2, 1), num_classes=2,
                              defense=defense, config={}, parts={}, stochastic=stochastic)


def test_each_column_is_attacked_under_its_protocol():
    w = jnp.array([[1.0, -1.0]] * 4)
    none = _model(lambda x: x.reshape(len(x), -1) @ w, "standard")
    defended = _model(lambda x: x.reshape(len(x), -1) @ w * 2, "grfd")
    smooth = _model(lambda x, k: x.reshape(len(x), -1) @ w + jax.random.normal(k, (2,)),
                    "smoothing", stochastic=True)
    models = {"standard": none, "grfd": defended, "smoothing": smooth, "gradreg": none}
    cols = {c.name: c for c in grfd.TABLE3.systems}
    paper, adaptive, threat = protocols.system_models(grfd.TABLE3, cols["grfd"], models, "mnist")
    assert threat == "transfer" and paper.source is none.logits_fn
    assert adaptive.served is defended.logits_fn and not adaptive.stochastic
    paper, adaptive, threat = protocols.system_models(grfd.TABLE3, cols["smoothing"], models,
                                                      "mnist")
    x = jnp.ones((3, 2, 2, 1))
    assert threat == "transfer" and adaptive.stochastic
    np.testing.assert_array_equal(paper.source(x), paper.source(x))     # one fixed draw
    paper, adaptive, threat = protocols.system_models(grfd.TABLE3, cols["gradreg"], models,
                                                      "mnist")
    assert threat == "whitebox" and paper is adaptive
    paper, adaptive, threat = protocols.system_models(grfd.TABLE3, cols["bdr"], models,
                                                      "mnist")
    # bits:1 on MNIST: the served forward pass is the same; only the adaptive one has BPDA
    xs = jnp.full((1, 2, 2, 1), 0.3)
    np.testing.assert_array_equal(paper.served(xs), adaptive.served(xs))
    g = jax.grad(lambda a: adaptive.served(a)[0, 0])(xs)
    g_flat = jax.grad(lambda a: paper.served(a)[0, 0])(xs)
    assert float(jnp.abs(g).sum()) > 0 and float(jnp.abs(g_flat).sum()) == 0


def test_markdown_layout_and_paper_values(tmp_path):
    row = {"clean": 0.99, "fgsm": 0.5, "pgd": 0.25, "autoattack": 0.0, "eotpgd": 0.25,
           "vmifgsm": 0.5, "avg": 0.3, "worst_case": 0.0}
    columns = {c.name: {"label": c.label, "paper_protocol": spec.PROTOCOLS[c.paper],
                        "status": "measured", "paper": row,
                        "adaptive": {**row, "pgd": 0.0} if c.name == "diffpure" else row}
               for c in grfd.TABLE3.systems}
    columns["fs"]["checks"] = [dict(check="white-box <= papers' protocol (PGD)", passed=False,
                                    detail="95.4 vs 95.0"),
                               dict(check="unbounded", passed=True, detail="")]
    result = {"dataset": "mnist", "examples": 500, "preset": "grfd-mnist", "columns": columns,
              "eval_draws": 3, "eot_samples": 7,
              "paper_values": {"source": "S", "note": "",
                               "values": {"grfd": {"pgd": 0.912, "avg": 0.9}}}}
    text = rendering.markdown(grfd.TABLE3, result)
    lines = text.splitlines()
    assert "every one of 3 draws" in text and "7 EOT draws" in text
    header = next(l for l in lines if l.startswith("| |"))
    assert header.split("|")[2:-1] == [f" {c.label} " for c in grfd.TABLE3.systems]
    pgd_rows = [l for l in lines if l.startswith("| PGD |")]
    assert len(pgd_rows) == 2                                    # both protocols
    # measured, then the published value and the difference, under both protocols
    assert pgd_rows[0].endswith("| 25.0 (91.2, -66.2) |")
    assert pgd_rows[1].endswith("| 25.0 (91.2, -66.2) |")
    assert pgd_rows[0].count("| 25.0 ") == len(grfd.TABLE3.systems)   # one cell per column
    assert pgd_rows[1].split("|")[-3] == " 0.0 "                   # DiffPure, adaptive
    assert next(l for l in lines if l.startswith("| Avg (5 attacks) |")).endswith(
        "| 30.0 (90.0, -60.0) |")
    assert "Sanity checks: 1 of 2 passed; failed:" in text
    assert "- F.S.: white-box <= papers' protocol (PGD): 95.4 vs 95.0" in text
    # a subset's average is not the paper's five-attack average: no paper value beside it
    sub = rendering.markdown(grfd.TABLE3, {**result, "attacks": {"fgsm": {}, "pgd": {}}})
    assert next(l for l in sub.splitlines() if l.startswith("| Avg (2 attacks) |")).endswith("| 30.0 |")
    diff = rendering.differences(grfd.TABLE3, columns, result["paper_values"]["values"])
    assert diff["grfd"]["paper"] == pytest.approx({"pgd": 0.25 - 0.912, "avg": 0.3 - 0.9})
    assert diff["none"] == {"paper": {}, "adaptive": {}}
    assert "avg" not in rendering.differences(grfd.TABLE3, columns,
                                              result["paper_values"]["values"],
                                              shown_avg=False)["grfd"]["paper"]


def test_figure_puts_published_bars_beside_measured(tmp_path, monkeypatch):
    from jaxdefense import plots
    seen = {}
    monkeypatch.setattr(plots, "grouped_bars",
                        lambda path, groups, series, *a: seen.update(series) or path)
    row = {"avg": 0.5, "worst_case": 0.25}
    columns = {c.name: {"label": c.label, "paper": row, "adaptive": row}
               for c in grfd.TABLE3.systems}
    result = {"dataset": "mnist", "examples": 8, "columns": columns,
              "paper_values": grfd.TABLE3.published("mnist")}
    rendering.figure(grfd.TABLE3, str(tmp_path / "t.png"), result)
    names = list(seen)
    assert names.index("published avg") == names.index("papers' protocol, avg (measured)") + 1
    assert seen["published avg"][-1] == pytest.approx(0.9369)          # GRFD, MNIST
    monkeypatch.undo()
    assert rendering.figure(grfd.TABLE3, str(tmp_path / "t.png"), result) and \
        (tmp_path / "t.png").stat().st_size > 1000


SHARED = REPO.parent / "shared" / "data" / "grfd-paper"


def _tsv(name):
    lines = [l.rstrip("\n").split("\t") for l in (SHARED / name).read_text().splitlines()
             if l.strip() and not l.startswith("#")]
    return lines[0], lines[1:]


def test_packaged_published_values_are_the_papers():
    """Every Table 3 cell of the packaged file equals the transcription beside the checkout,
    and the attack presets are the paper's Table 1."""
    if not SHARED.is_dir():
        pytest.skip("../shared/data/grfd-paper is not beside this checkout")
    head, rows = _tsv("table3.tsv")
    labels = {c.label: c.name for c in grfd.TABLE3.systems}
    metric = {"Clean Acc": "clean", "FGSM": "fgsm", "PGD": "pgd", "AA": "autoattack",
              "EOTPGD": "eotpgd", "VMIFGSM": "vmifgsm", "Average": "avg"}
    assert len(rows) == 3 * 7
    for r in rows:
        values = grfd.TABLE3.published(r[0].lower())["values"]
        for label, v in zip(head[2:], r[2:]):
            assert values[labels[label]][metric[r[1]]] == pytest.approx(float(v) / 100), r
    c100 = grfd.TABLE3.published("cifar100")
    assert c100["values"]["grfd"]["avg"] == pytest.approx(0.5891)
    assert "10.32604/cmc.2025.066370" in c100["source"]
    assert grfd.TABLE3.published("digits")["values"]["none"]["clean"] == pytest.approx(0.9918)
    _, t1 = _tsv("table1.tsv")
    names = {"FGSM": "fgsm", "PGD": "pgd", "AA": "autoattack", "EOTPGD": "eotpgd",
             "VMIFGSM": "vmifgsm"}
    for ds, attack, eps, step, steps in t1:
        preset = grfd.attacks("mnist" if ds == "MNIST" else "cifar10", None, None)
        p = preset[names[attack]]
        assert p["eps"] == pytest.approx(int(eps.split("/")[0]) / 255)
        if step != "-":
            assert p["step_size"] == pytest.approx(int(step.split("/")[0]) / 255)
            assert p["steps"] == int(steps)
    _, t2 = _tsv("table2.tsv")
    grid = grfd.published_tables()["table2"]["rows"]
    assert [r["avg"] for r in grid] == [float(r[-1]) for r in t2]


def test_every_column_builds_for_every_dataset(tmp_path):
    """Each column's preset and config for every dataset the project names, quick and smoke,
    and every registered defense's preset, before anything trains."""
    import importlib
    for dataset in grfd.DATASETS:
        for smoke in (False, True):
            plan = planning.plan(grfd.TABLE3, str(tmp_path / dataset), dataset, smoke, {}, {})
            assert set(plan) == {c.run for c in grfd.TABLE3.systems}
            for p in plan.values():
                assert p.cfg.dataset == dataset and p.workdir.startswith(str(tmp_path))
            assert plan["apegan"].cfg.target_workdir == plan["standard"].workdir
        for module in ("standard", "cdvae", "smoothing", "gradreg", "apegan", "diffpure",
                       "arn", "idfr", "grfd.config", "fsr.config"):
            mod = importlib.import_module(f"jaxdefense.defenses.{module}")
            assert mod.preset(dataset).dataset == dataset


def _saved(workdir, defense, finished=True, **fields):
    from jaxdefense import checkpoint
    from jaxdefense.defenses import standard
    base = dataclasses.asdict(standard.preset("digits", True, workdir=str(workdir)))
    checkpoint.save_config(str(workdir), defense, {**base, **fields})
    if finished:
        (workdir / "results.json").write_text("{}")


def test_the_plan_refuses_what_would_be_silently_wrong(tmp_path):
    root = tmp_path / "t"
    _saved(root / "standard", "standard", epochs=1)
    plan = lambda **kw: planning.plan(grfd.TABLE3, str(root), "digits", True,
                                      kw.pop("over", {}), kw.pop("existing", {}), **kw)
    assert plan(over={"epochs": 1}, only={"none"})["standard"].cfg.epochs == 1
    with pytest.raises(ValueError, match=r"other settings \{'epochs': '1 -> 3'\}"):
        plan(over={"epochs": 3}, only={"none"})                    # finished, then --epochs
    with pytest.raises(ValueError, match=r"--set names fields no run has: \['z_dimm'\]"):
        plan(over={"epochs": 1, "z_dimm": 8}, user_keys=("z_dimm",))
    # a field of a column not chosen this time is not a typo
    assert plan(over={"epochs": 1, "z_dim": 8}, user_keys=("z_dim",), only={"none"})
    with pytest.raises(ValueError, match="unknown runs"):
        plan(over={"epochs": 1}, existing={"jpeg": "x"})
    other = tmp_path / "apegan-elsewhere"
    _saved(other, "apegan", target_workdir=str(tmp_path / "another-standard"))
    with pytest.raises(ValueError, match="not the source run's model"):
        plan(over={"epochs": 1}, existing={"apegan": str(other)}, only={"apegan"})
    _saved(other, "apegan", target_workdir=str(root / "standard"))
    assert plan(over={"epochs": 1}, existing={"apegan": str(other)},
                only={"apegan"})["apegan"].cfg is None


def test_training_rows_never_include_the_attacked_examples():
    mnist = str(REPO.parent / "shared" / "data" / "mnist")
    planning.check_disjoint("mnist", mnist, "test[:8000]", None, "test[8000:]", 1000, "none")
    planning.check_disjoint("digits", None, "train", None, "test", 1000, "none")
    with pytest.raises(ValueError, match="holds 100 of the 500 attacked examples"):
        planning.check_disjoint("mnist", mnist, "test[:8000]", None, "test[7900:]", 500, "grfd")
    # a limit keeps the training rows clear of them
    planning.check_disjoint("mnist", mnist, "test", 7900, "test[7900:]", 500, "grfd")


def test_adaptive_row_is_the_per_example_worst_over_both_protocols():
    t = lambda *v: np.array(v, bool)
    paper = {"clean": 1.0, "per_example": {"clean": t(1, 1, 1, 1), "transfer/pgd": t(1, 0, 1, 1),
                                           "transfer/fgsm": t(1, 1, 1, 1)}}
    adaptive = {"clean": 1.0, "per_example": {"clean": t(1, 1, 1, 1),
                                              "whitebox/pgd": t(1, 1, 0, 1),
                                              "whitebox/fgsm": t(0, 1, 1, 1)}}
    row = measure.combine(grfd.TABLE3, paper, adaptive)
    assert row["pgd"] == 0.5 and row["fgsm"] == 0.75      # the transferred PGD counts too
    assert row["worst_case"] == 0.25 and row["avg"] == pytest.approx(0.625)
    assert row["clean"] == 1.0


def test_column_checks_flag_what_is_wrong():
    w = jnp.asarray(np.random.default_rng(0).normal(size=(4, 10)), jnp.float32)
    linear = lambda x: x.reshape(len(x), -1) @ w
    masked = lambda x: linear(jnp.round(x * 4) / 4)        # flat gradients: masked
    x = np.asarray(np.random.default_rng(1).uniform(size=(16, 2, 2, 1)), np.float32)
    y = np.asarray(jnp.argmax(linear(x), 1))
    pgd = dict(eps=0.1, step_size=0.025, steps=5, eot_samples=2)
    checks = lambda f, wb, pp: {c["check"]: c["passed"] for c in measure.checks(
        grfd.TABLE3, robustness.Models(served=f), x, y, jax.random.key(0), pgd, wb, pp, 10)}
    ok = checks(linear, {"pgd": 0.2}, {"pgd": 0.3})
    assert all(ok.values()) and len(ok) == 3, ok
    bad = checks(masked, {"pgd": 0.9}, {"pgd": 0.5})
    assert not bad["white-box <= papers' protocol (PGD)"]
    assert not bad["unbounded PGD (eps 0.5, 5 steps) reaches chance"]


def test_recorded_attack_settings_are_the_ones_used(monkeypatch):
    """What table3.json records for a randomized column is what each attack receives: EOT
    draws on every gradient attack (EOT-PGD included), one fixed draw for none of them."""
    from jaxdefense import attacks as attack_lib
    calls = {}
    for name in ("fgsm", "pgd", "autoattack", "eotpgd", "vmifgsm"):
        monkeypatch.setitem(attack_lib.ATTACKS, name,
                            lambda f, x, y, k, name=name, **kw: calls.update({name: kw}) or x)
    x, y, k = jnp.zeros((2, 2, 2, 1)), jnp.zeros(2, int), jax.random.key(0)
    f = lambda a, key: jnp.zeros((len(a), 2))
    for eot in (None, 3):
        attacks = grfd.attacks("mnist", 5, eot)
        used = eot or robustness.EOT_SAMPLES
        for name, params in attacks.items():
            assert params["eot_samples"] == used
            robustness.craft_fn(name, params, stochastic=True)(f, x, y, k)
            assert calls[name]["eot_samples"] == used, (name, calls[name])
        for name in ("fgsm", "pgd", "vmifgsm"):
            assert calls[name]["stochastic"] is True
        assert calls["autoattack"]["version"] == "rand"
        for name, params in attacks.items():     # deterministic: one exact draw
            robustness.craft_fn(name, params, stochastic=False)(lambda a: f(a, k), x, y, k)
            assert calls[name].get("eot_samples", 1) == 1 and "stochastic" not in calls[name]


def test_every_randomized_column_is_scored_on_the_same_draws():
    w = jnp.array([[1.0, -1.0]] * 4)
    none = _model(lambda x: x.reshape(len(x), -1) @ w, "standard")
    noisy = lambda x, k: x.reshape(len(x), -1) @ w + jax.random.normal(k, (2,))
    smooth = _model(noisy, "smoothing", stochastic=True)
    diff = dataclasses.replace(_model(noisy, "diffpure", stochastic=True),
                               config={"eval_draws": 4})
    models = {"standard": none, "smoothing": smooth, "diffpure": diff}
    cols = {c.name: c for c in grfd.TABLE3.systems}
    for name in ("smoothing", "diffpure"):
        paper, adaptive, _ = protocols.system_models(grfd.TABLE3, cols[name], models, "mnist",
                                                     eval_draws=3)
        assert paper.eval_draws == adaptive.eval_draws == 3 and adaptive.stochastic
    paper, adaptive, _ = protocols.system_models(grfd.TABLE3, cols["fs"], models, "mnist",
                                                 eval_draws=3)
    assert adaptive.eval_draws == 1


def test_attacks_follow_the_dataset_preset():
    a = grfd.attacks("mnist", None, None)
    assert list(a) == list(grfd.ATTACK_ORDER)
    assert a["pgd"] == {"eps": 18 / 255, "step_size": 8 / 255, "steps": 100, "eot_samples": 20}
    a = grfd.attacks("cifar10", 5, 4)
    assert a["pgd"]["steps"] == 5 and a["pgd"]["eot_samples"] == 4
    assert list(grfd.attacks("mnist", None, None, ["vmifgsm", "fgsm"])) == ["fgsm", "vmifgsm"]


def test_bad_column_or_attack_is_a_clear_error(capsys, tmp_path):
    from eval import table3 as cli
    root = f"--root={tmp_path / 'never'}"
    assert cli.main(["--dataset=digits", "--columns=none,jpeg", root]) == 2
    assert "unknown columns ['jpeg']" in capsys.readouterr().err
    assert cli.main(["--dataset=digits", "--attacks=pgd,cw", root]) == 2
    assert "unknown attacks ['cw']" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()                     # nothing trained or written


def test_a_column_is_measured_again_only_when_what_it_depends_on_changed(tmp_path,
                                                                         monkeypatch):
    runs = {}
    for d in ("standard", "cdvae"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "results.json").write_text('{"clean_acc": 0.9}')
        runs[d] = str(tmp_path / d)
    col = {c.name: c for c in grfd.TABLE3.systems}
    x, y, key = np.zeros((4, 2, 2, 1), np.float32), np.arange(4), jax.random.key(0)
    attacks = grfd.attacks("mnist", 5, 2, ["fgsm", "pgd"])
    stamp = lambda c="cdvae", x=x, attacks=attacks, key=key, batch=256, draws=4: \
        record.stamp(stamps.identity(grfd.TABLE3, col[c], runs, "mnist", x, y, attacks, key,
                                     batch, draws, True))
    base = stamp()
    assert stamp() == base
    changed = [stamp(c="fs"), stamp(x=x + 0.5),
               stamp(attacks=grfd.attacks("mnist", 6, 2, ["fgsm", "pgd"])),
               stamp(attacks=grfd.attacks("mnist", 5, 3, ["fgsm", "pgd"])),
               stamp(key=jax.random.key(1)), stamp(batch=128), stamp(draws=2)]
    assert len({base, *changed}) == 1 + len(changed)
    (tmp_path / "cdvae" / "results.json").write_text('{"clean_acc": 0.8}')   # retrained
    assert stamp() != base
    retrained = stamp()
    monkeypatch.setattr(files, "code_digest", lambda *a: "other code")       # code changed
    assert stamp() == retrained      # provenance: the record replays its slice instead
    monkeypatch.undo()
    assert len(files.code_digest()) == 64 and files.code_digest() == files.code_digest()


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
            "vae_base=4,attack_examples=0"]     # no closing attacks: the table attacks
    _run_table3(args, timeout=1800)
    out = json.loads((root / "table3.json").read_text())
    assert out["examples"] == 32 and list(out["attacks"]) == ["fgsm", "pgd"]
    assert out["attacks"]["pgd"]["steps"] == 5 and out["eot_samples"] == 2
    assert out["eval_draws"] == 2 and out["attacks"]["pgd"]["eot_samples"] == 2
    for c in grfd.TABLE3.systems:
        col = out["columns"][c.name]
        assert col["status"] == "measured"
        for protocol in ("paper", "adaptive", "whitebox_only"):
            r = col[protocol]
            assert set(r) == {"clean", "fgsm", "pgd", "avg", "worst_case"}
            assert r["worst_case"] <= min(r["fgsm"], r["pgd"]) + 1e-9
        a = col["adaptive"]
        assert a["worst_case"] <= col["paper"]["worst_case"] + 1e-9     # both protocols
        assert a["pgd"] <= min(col["paper"]["pgd"], col["whitebox_only"]["pgd"]) + 1e-9
        assert {ch["check"].split(" (")[0] for ch in col["checks"]} >= {
            "PGD accuracy does not rise with eps", "unbounded PGD"}
        assert col["eval_draws"] == (2 if c.name in ("smoothing", "diffpure") else 1)
        assert set(col["per_example"]["paper"]) >= {"clean"} and all(
            len(v) == 32 for v in col["per_example"]["adaptive"].values())
        assert out["difference"][c.name]["paper"]["pgd"] == pytest.approx(
            col["paper"]["pgd"] - out["paper_values"]["values"][c.name]["pgd"])
    md = (root / "table3.md").read_text()
    assert md.count("| Worst case |") == 2 and md.count("| Avg (2 attacks) |") == 2
    assert "Sanity checks:" in md and "every one of 2 draws" in md
    aa = [l.split("|")[2:-1] for l in md.splitlines() if l.startswith("| AA |")]
    assert len(aa) == 2 and all(c.strip().startswith("- (") for r in aa for c in r)   # not run
    assert (root / "table3.png").stat().st_size > 1000
    # a second call takes the finished workdirs and the measured column: it trains and
    # attacks nothing
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()
              and "table3." not in p.name}
    out = _run_table3(args + ["--columns=none"], timeout=600)
    assert "== training" not in out and "== attacking" not in out
    kept = root / "record" / "grfd-table3-digits"
    assert f"== None: measured earlier ({kept / 'none.json'})" in out
    assert {p: p.stat().st_mtime_ns for p in before} == before
    check_the_record(tmp_path, root / "record")


def _table(args):
    return subprocess.run([sys.executable, "-m", "eval.table", *args], capture_output=True,
                          text=True, timeout=600, cwd=REPO, env=run_env(1))


def check_the_record(tmp_path, record):
    """The record a table run leaves: every run as a compact model, every column with its
    provenance; copied alone elsewhere (two columns and their models), its replay agrees;
    a recorded outcome this code does not give fails the replay, named; --mark_stale marks
    the column and the rendered table shows it marked."""
    import shutil
    models = record / "models" / "grfd-digits"
    from jaxdefense.tables.grfd import RUNS
    assert sorted(p.name for p in models.iterdir()) == sorted(RUNS)
    for run in models.iterdir():
        about = json.loads((run / "model.json").read_text())
        assert about["trained_by"].startswith("python -m eval.table --paper=grfd --table=3 ")
        assert len(about["digest"]) == 64 and "opt_state" not in (run / "config.json").read_text()
    clone = tmp_path / "clone" / "results"
    shutil.copytree(models.parent, clone / "models")
    (clone / "grfd-table3-digits").mkdir()
    for c in ("none", "grfd"):
        shutil.copy(record / "grfd-table3-digits" / f"{c}.json", clone / "grfd-table3-digits")
    proc = _table([f"--replay={clone}"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("ok   grfd 3 on digits") == 2
    (clone / "grfd-table3-digits" / "none.json").unlink()      # one column is enough below
    rec_path = clone / "grfd-table3-digits" / "grfd.json"
    rec = json.loads(rec_path.read_text())
    assert rec["provenance"]["commit"] and rec["wall_s"] > 0 and rec["replay_attacks"] == [
        "fgsm", "pgd"]
    bits = rec["column"]["per_example"]["adaptive"]["whitebox/pgd"]
    rec["column"]["per_example"]["adaptive"]["whitebox/pgd"] = \
        bits[:3] + ("0" if bits[3] == "1" else "1") + bits[4:]
    rec_path.write_text(json.dumps(rec))
    proc = _table([f"--replay={clone}"])
    assert proc.returncode == 1
    assert "FAIL grfd 3 on digits, grfd: adaptive pgd: examples [3] differ" in proc.stdout
    assert _table([f"--replay={clone}", "--mark_stale"]).returncode == 0
    assert json.loads(rec_path.read_text())["stale"]["reason"].startswith("replay at ")
    proc = _table([f"--render={clone / 'grfd-table3-digits'}"])
    assert proc.returncode == 0 and "GRFD (STALE)" in proc.stdout
    assert "| GRFD (STALE) |" in proc.stdout and "STALE: replay at" in proc.stdout


@pytest.mark.slow
def test_table3_smoke_on_cifar100_fake_data_has_every_column(tmp_path):
    """Every column trains and is attacked on CIFAR-100 (fake prepared data, WRN-10-1):
    the presets of every column exist for the user's main dataset. One attack, no checks
    (the digits run above covers them): about ten minutes on two cores."""
    from jaxdefense.data import prepare
    data_dir = tmp_path / "data"
    assert prepare.main(["--dataset=cifar100", "--fake_examples=96",
                         f"--data_dir={data_dir}"]) == 0
    root = tmp_path / "t3"
    _run_table3(["--dataset=cifar100", "--smoke", f"--root={root}", f"--data_dir={data_dir}",
                 "--examples=16", "--epochs=1", "--attacks=fgsm", "--checks=0",
                 "--set=limit_train=64,limit_eval=32,batch_size=32,attack_examples=0"],
                timeout=1800)
    out = json.loads((root / "table3.json").read_text())
    assert out["dataset"] == "cifar100" and out["examples"] == 16
    for c in grfd.TABLE3.systems:
        col = out["columns"][c.name]
        assert col["status"] == "measured" and "checks" not in col
        assert set(col["adaptive"]) == {"clean", "fgsm", "avg", "worst_case"}
        assert out["paper_values"]["values"][c.name]["fgsm"] > 0      # the paper's CIFAR-100
