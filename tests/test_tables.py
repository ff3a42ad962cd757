"""The table engine and the papers' specs: every spec is complete, ARN's published values are
the paper's, each protocol attacks what it should, targeted entries get wrong-class targets,
the ARN layout shows errors with the published value beside each cell."""
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdefense import robustness, tables
from jaxdefense.defenses import registry
from jaxdefense.tables import arn, measure, planning, protocols, rendering, stamps
from tests.conftest import REPO

SHARED = REPO.parent / "shared" / "data" / "arn-paper"


def test_every_spec_names_registered_runs_labels_and_published_cells():
    for (paper, number), spec in tables.TABLES.items():
        assert tables.get(paper, number) is spec
        assert spec.source in spec.runs
        for s in spec.systems:
            assert s.run in spec.runs and s.protocol in tables.spec.PROTOCOLS
            assert s.crafted_on is None or s.crafted_on in spec.runs
        for r in spec.runs.values():
            registry.get(r.defense)
        for dataset in spec.datasets:
            attacks = spec.attacks(dataset, None, None)
            assert tuple(attacks) == spec.attack_order
            assert set(spec.labels) >= set(attacks)
            values = spec.published(dataset)["values"]
            assert set(values) <= {s.name for s in spec.systems}
            for row in values.values():
                assert set(row) <= set(rendering.rows(spec)) and all(0 <= v <= 1 for v in row.values())
    with pytest.raises(ValueError, match="no table arn 9"):
        tables.get("arn", "9")


def _tsv(name):
    lines = [l.rstrip("\n").split("\t") for l in (SHARED / name).read_text().splitlines()
             if l.strip() and not l.startswith("#")]
    return lines[0], lines[1:]


def test_packaged_arn_values_are_the_papers():
    if not SHARED.exists():
        pytest.skip(f"{SHARED} not found")
    for name, spec, columns in (("table1.tsv", tables.get("arn", "1"), arn.PUBLISHED1),
                                ("table2.tsv", tables.get("arn", "2"), arn.PUBLISHED2)):
        head, rows = _tsv(name)
        values = spec.published("mnist")["values"]
        by_row = {r[1]: dict(zip(head[2:], r[2:])) for r in rows if r[0] == "LeNet"}
        for system, row_name in arn.ROW_NAMES.items():
            for ours, theirs in columns.items():
                assert 100 * (1 - values[system][ours]) == pytest.approx(
                    float(by_row[row_name][theirs]), abs=1e-6)
    head, rows = _tsv("table3_4_5.tsv")
    for number, cells in ((3, arn.CELLS3), (4, arn.CELLS4)):
        values = tables.get("arn", str(number)).published("mnist")["values"]
        for r in rows:
            key = tuple(r[1:5])
            if int(r[0]) == number and key in cells:
                system, attack = cells[key]
                assert 100 * (1 - values[system][attack]) == pytest.approx(float(r[5]))
    assert arn.published_tables()["tables_3_4_5"]["cells"][0]["value"] == 99.84


def test_arn_attacks_are_the_reference_settings_and_caps_apply():
    a = tables.get("arn", "1").attacks("mnist", None, None)
    assert a["pgd"] == dict(attack="pgd", eps=0.3, step_size=0.01, steps=40, eot_samples=20)
    assert a["pgd_t"]["targeted"] and a["jsma_t"]["targeted"] and a["aa_eps2"]["eps"] == 0.4
    assert a["cw"]["max_iterations"] == 500 and a["cw"]["binary_search_steps"] == 4
    capped = tables.get("arn", "2").attacks("mnist", 5, 2, ["sta", "fwa"])
    assert list(capped) == ["sta", "fwa"]
    assert capped["sta"]["max_iterations"] == 5 and capped["sta"]["search_steps"] == 2
    assert capped["fwa"]["steps"] == 5 and capped["fwa"]["eot_samples"] == 2
    with pytest.raises(ValueError, match="unknown attacks"):
        tables.get("arn", "1").attacks("mnist", None, None, ["sta"])


W = jax.random.normal(jax.random.key(0), (16, 10))


def _net(x):
    return x.reshape(x.shape[0], -1) @ W


def test_targeted_entries_aim_every_example_at_a_wrong_class(monkeypatch):
    x = jax.random.uniform(jax.random.key(1), (64, 4, 4, 1))
    y = jnp.argmax(_net(x), 1)
    t = robustness.random_targets(_net, x, y, jax.random.key(2))
    assert np.all(np.asarray(t) != np.asarray(y)) and len(set(np.asarray(t).tolist())) > 5
    seen = {}

    def fake_pgd(f, xx, yy, k, **kw):
        seen.update(kw)
        return xx
    monkeypatch.setitem(robustness.attack_lib.ATTACKS, "pgd", fake_pgd)
    craft = robustness.craft_fn("pgd_t", dict(attack="pgd", eps=0.3, targeted=True,
                                              eot_samples=4), False)
    craft(_net, x, y, jax.random.key(2))
    assert seen["eps"] == 0.3 and "eot_samples" not in seen
    np.testing.assert_array_equal(np.asarray(seen["target"]), np.asarray(t))
    with pytest.raises(ValueError, match="unknown attack 'pgdd'"):
        robustness.craft_fn("x", dict(attack="pgdd"), False)


@dataclasses.dataclass
class _Model:
    logits_fn: object
    parts: dict
    stochastic: bool = False
    defense: str = "arn"
    num_classes: int = 10
    config: dict = None


def test_each_protocol_attacks_what_it_should():
    purify = lambda x: jnp.round(x * 4) / 4          # noqa: E731 (a flat purifier)
    classifier = _net
    served = lambda x: classifier(purify(x))          # noqa: E731
    other = lambda x: -_net(x)                         # noqa: E731
    models = {"none": _Model(_net, {}, defense="standard"),
              "arn_pp": _Model(served, {"purify": purify, "classifier": classifier}),
              "apegan_pp": _Model(other, {}, defense="apegan")}
    spec = tables.get("arn", "3")
    x = jax.random.uniform(jax.random.key(3), (2, 4, 4, 1))

    def protocol(system):
        return protocols.system_models(spec, system, models, "mnist")

    paper, adaptive, threat = protocol(tables.spec.System("s", "S", "arn_pp", "target-only"))
    assert threat == "target-only" and paper.classifier is classifier
    assert adaptive.served is served
    paper, _, threat = protocol(spec.system("arn_from_apegan"))
    assert threat == "transfer" and paper.source is other and paper.served is served
    paper, _, threat = protocol(tables.get("arn", "4").system("arn_pp"))
    assert threat == "transfer"
    np.testing.assert_allclose(paper.source(x), served(x))     # BPDA: the same forward
    g = jax.grad(lambda a: paper.source(a)[0, 0])(x)
    g_flat = jax.grad(lambda a: served(a)[0, 0])(x)
    assert float(jnp.abs(g).sum()) > 0 and float(jnp.abs(g_flat).sum()) == 0
    t4 = tables.get("arn", "4")
    with pytest.raises(ValueError, match="serves no 'purify' stage"):
        protocols.system_models(t4, t4.system("apegan_pp"), models, "mnist")


def test_arn_layout_shows_errors_with_the_published_value():
    spec = tables.get("arn", "1")
    row = {"clean": 0.99, **{a: 0.5 for a in spec.attack_order}, "worst_case": 0.25}
    columns = {s.name: {"label": s.label, "paper_protocol": "p", "paper": row, "adaptive": row}
               for s in spec.systems}
    table = {"dataset": "mnist", "examples": 1000, "columns": columns,
             "paper_values": spec.published("mnist"), "attacks": spec.attacks("mnist", 5, 2)}
    text = rendering.markdown(spec, table)
    lines = text.splitlines()
    header = next(l for l in lines if l.startswith("| |"))
    assert header.split("|")[2:-1] == [" None (clean) ", *(f" {spec.labels[a]} "
                                                          for a in spec.attack_order),
                                       " Worst case "]
    arn_rows = [l for l in lines if l.startswith("| ARN_PP |")]
    assert len(arn_rows) == 2
    cells = arn_rows[0].split("|")[2:-1]
    assert cells[0] == " 1.0 (1.16, -0.2) "                  # clean: error 1.0 vs 1.16
    assert cells[1] == " 50.0 (1.85, +48.2) "                # PGD_N
    assert cells[-1] == " 75.0 "                             # worst case: none published
    assert "error in %" in text and "Avg" not in text
    # randomized systems: the attacks without EOT are named, not claimed to have it
    assert "except CW_N, DDN_N and JSMA_T, which see one fixed draw." in text
    diff = rendering.differences(spec, columns, spec.published("mnist")["values"])
    assert diff["arn_pp"]["paper"]["pgd"] == pytest.approx(0.5 - 0.9815)


def test_the_plan_builds_every_arn_run_with_its_seen_attacks(tmp_path):
    plan = planning.plan(tables.get("arn", "1"), str(tmp_path), "digits", True, {}, {})
    assert list(plan)[0] == "none" and set(plan) == set(arn.RUNS)
    assert plan["apegan_dp"].cfg.seen_attacks == "ddn,pgd"
    assert plan["arn_pp"].cfg.seen_attacks == "pgd,pgd_targeted"
    assert plan["at_pgd"].cfg.fsr is False and plan["at_pgd"].cfg.method == "at"
    assert plan["arn_dp"].cfg.target_workdir == str(tmp_path / "none")
    only = planning.plan(tables.get("arn", "1"), str(tmp_path), "digits", True, {}, {},
                         only={"arn_dp"})
    assert list(only) == ["none", "arn_dp"]
    with pytest.raises(ValueError, match="has no cifar10 setting"):
        planning.plan(tables.get("arn", "1"), str(tmp_path), "cifar10", True, {}, {})


def test_a_stopped_system_resumes_from_its_finished_batches(tmp_path, monkeypatch):
    """The engine gives each protocol's report a batch cache in the record's progress folder,
    named after the system's stamp (so a stopped measurement resumes at its first unfinished
    batch), and drops it once the system's record is written."""
    from jaxdefense.tables import record
    import jaxdefense
    spec = tables.get("arn", "4")
    purify = lambda x: x                                       # noqa: E731
    models = {"none": _Model(_net, {}, defense="standard"),
              "apegan_pp": _Model(_net, {"purify": purify, "classifier": _net},
                                  defense="apegan"),
              "arn_pp": _Model(_net, {"purify": purify, "classifier": _net})}
    monkeypatch.setattr(jaxdefense, "load", lambda w: models[os.path.basename(w)])
    for name in models:
        os.makedirs(tmp_path / "runs" / name)
    workdirs = {n: str(tmp_path / "runs" / n) for n in models}
    seen = []

    def fake_report(m, x, y, key, attacks, threats, batch_size, progress, cache=None,
                    per_example=False, crafts=None):
        seen.append(cache)
        os.makedirs(cache, exist_ok=True)
        ok = np.ones(len(x), bool)
        return {"clean": 1.0, "per_example": {"clean": ok, **{f"{threats[0]}/{a}": ok
                                                              for a in attacks}},
                threats[0]: {**{a: 1.0 for a in attacks}, "worst_case": 1.0}}
    monkeypatch.setattr(robustness, "report", fake_report)
    x = jnp.zeros((4, 4, 4, 1))
    y = jnp.zeros((4,), jnp.int32)
    store = record.Record(str(tmp_path / "c"), "arn", "4", "mnist")
    out = measure.evaluate(spec, workdirs, "mnist", x, y, spec.attacks("mnist", 2, 2),
                           jax.random.key(0), only={"arn_pp"}, store=store,
                           run_checks=False, progress=False)
    assert out["arn_pp"]["status"] == "measured"
    assert [os.path.basename(p) for p in seen] == ["paper", "adaptive"]
    parent = os.path.dirname(seen[0])
    assert os.path.dirname(parent) == os.path.join(store.dir, "progress")
    assert os.path.basename(parent).startswith("arn_pp-")
    assert not os.path.exists(parent)                 # dropped once the result is written
    assert store.read("arn_pp")["column"]["paper"] == out["arn_pp"]["paper"]


def test_grfd_experiments_plan_one_run_per_setting_and_share_the_papers_run(tmp_path):
    """Table 2's weight grid, Fig. 4a's cases and Fig. 4b's fractions are GRFD runs with the
    paper's settings; the paper's weights are Table 3's run ('grfd'), trained once under a
    shared root; published cells come from the packaged paper values."""
    from jaxdefense.tables import grfd
    t2 = planning.plan(tables.get("grfd", "2"), str(tmp_path), "digits", True, {}, {})
    weights = {n: (p.cfg.epsilon, p.cfg.gamma, p.cfg.delta) for n, p in t2.items()
               if p.defense == "grfd"}
    assert len(weights) == 11 and weights["grfd"] == (0.6, 0.4, 0.2)
    assert weights["grfd_e0.7_g0.5_d0.2"] == (0.7, 0.5, 0.2)
    assert len(set(weights.values())) == 11
    pub = tables.get("grfd", "2").published("mnist")["values"]
    assert pub["grfd_e0.6_g0.4_d0.0"]["pgd"] == pytest.approx(0.6757)
    assert pub["none"]["autoattack"] == pytest.approx(0.3847)
    a = planning.plan(tables.get("grfd", "fig4a"), str(tmp_path), "digits", True, {}, {})
    assert (a["grfd_case2"].cfg.gamma, a["grfd_case2"].cfg.delta) == (0.0, 0.0)
    assert a["grfd_case3"].cfg.epsilon == 0.0 and a["grfd"].cfg.epsilon == 0.6
    b = planning.plan(tables.get("grfd", "fig4b"), str(tmp_path), "digits", True, {}, {})
    assert [b[f"grfd_frac{f}"].cfg.train_fraction for f in (0.1, 0.25, 0.5)] == [0.1, 0.25, 0.5]
    assert b["grfd"].cfg.train_fraction == 1.0 and b["grfd"].workdir == t2["grfd"].workdir
    assert tables.get("grfd", "fig4b").published("mnist")["values"]["grfd_frac0.1"] == {
        "clean": pytest.approx(0.952), "avg": pytest.approx(0.8732)}
    assert tables.get("grfd", "fig4a").stem == "grfd-fig4a"
    with pytest.raises(ValueError, match="cifar10"):
        planning.plan(tables.get("grfd", "2"), str(tmp_path), "cifar10", True, {}, {})
    assert grfd.TABLES["3"] is tables.get("grfd", "3")


def test_systems_attacking_one_model_craft_once(tmp_path, monkeypatch):
    """ARN Table 1: the NONE row (white-box on the target) and the purifier rows (crafted on
    the same target, then purified) craft each attack once between them; each purifier's
    adaptive attack crafts on its own pipeline; a later table under the same root crafts
    nothing it has already crafted; a retrained target is crafted on again."""
    import jaxdefense
    spec = tables.get("arn", "1")
    runs = tmp_path / "runs"
    purify_a = lambda x: jnp.round(x * 4) / 4                  # noqa: E731
    purify_b = lambda x: jnp.clip(x + 0.1, 0, 1)               # noqa: E731
    target = {"target_workdir": str(runs / "none")}
    models = {"none": _Model(_net, {"classifier": _net}, defense="standard"),
              "apegan_pp": _Model(lambda x: _net(purify_a(x)),
                                  {"purify": purify_a, "classifier": _net}, defense="apegan",
                                  config=target),
              "hgd_pp": _Model(lambda x: _net(purify_b(x)),
                               {"purify": purify_b, "classifier": _net}, defense="hgd",
                               config=target)}
    monkeypatch.setattr(jaxdefense, "load", lambda w: models[os.path.basename(w)])
    for name in models:
        os.makedirs(runs / name)
        (runs / name / "results.json").write_text(f'{{"run": "{name}"}}')
    workdirs = {n: str(runs / n) for n in models}
    calls = []

    def fake(f, x, y, k, **kw):
        calls.append(f)
        return jnp.clip(x + 0.01 * jnp.sign(jax.random.normal(k, x.shape)), 0, 1)
    for name in ("pgd", "cw_l2", "ddn", "autoattack", "jsma"):
        monkeypatch.setitem(robustness.attack_lib.ATTACKS, name, fake)
    x = jax.random.uniform(jax.random.key(4), (6, 4, 4, 1))
    y = jnp.argmax(_net(x), 1)
    attacks = spec.attacks("mnist", 2, 2)

    from jaxdefense.cpu_kernels import attacked     # as the harness hands it over
    from jaxdefense.tables import record

    def run(only, cache):
        calls.clear()
        return measure.evaluate(spec, workdirs, "mnist", x, y, attacks, jax.random.key(0),
                                batch_size=4, only=only,
                                store=record.Record(str(tmp_path / cache), "arn", "1",
                                                    "mnist"),
                                crafts_root=str(tmp_path / cache),
                                run_checks=False, progress=False)
    col = lambda cache, s: tmp_path / cache / "arn-table1-mnist" / f"{s}.json"  # noqa: E731
    out = run({"none", "apegan_pp", "hgd_pp"}, "c")
    batches = 2 * len(attacks)
    on_target = [f for f in calls if f == attacked(_net)]
    assert len(on_target) == batches                 # once for all three rows
    assert len(calls) == 3 * batches                 # + each purifier's adaptive run
    run({"apegan_pp", "hgd_pp"}, "c2")           # another cache: crafted anew, once
    assert len([f for f in calls if f == attacked(_net)]) == batches
    col("c", "apegan_pp").unlink()
    col("c", "hgd_pp").unlink()
    again = run({"apegan_pp", "hgd_pp"}, "c")    # same root: nothing crafted again
    assert calls == []
    for s in ("apegan_pp", "hgd_pp"):
        assert again[s]["paper"] == out[s]["paper"]
        assert again[s]["adaptive"] == out[s]["adaptive"]
    (runs / "none" / "results.json").write_text('{"run": "none", "retrained": 1}')
    col("c", "apegan_pp").unlink()
    run({"apegan_pp"}, "c")
    assert len([f for f in calls if f == attacked(_net)]) == batches


def test_the_crafts_directory_names_what_the_examples_depend_on(tmp_path):
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "results.json").write_text('{"clean": 0.99}')
    workdirs = {"none": str(tmp_path / "none")}
    pgd = tables.get("arn", "4").attacks("mnist", None, None)["pgd40"]
    assert pgd == tables.get("arn", "1").attacks("mnist", None, None)["pgd"]

    def where(attacked=("model", "none"), name="pgd40", params=pgd, key=0, batch=256, ex="e"):
        return stamps.crafts_dir("c", attacked, workdirs, name, params, jax.random.key(key),
                                 batch, ex)
    same = where()
    assert where(name="pgd") == same and os.path.dirname(same) == os.path.join("c", "crafts")
    assert len({same, where(attacked=("served", "none")), where(params=dict(pgd, eps=0.4)),
                where(key=1), where(batch=128), where(ex="f")}) == 6
    (tmp_path / "none" / "results.json").write_text('{"clean": 0.98}')     # retrained
    assert where() != same


def _fake_runs(tmp_path, names):
    runs = tmp_path / "runs"
    for name in names:
        os.makedirs(runs / name, exist_ok=True)
        (runs / name / "results.json").write_text(f'{{"run": "{name}"}}')
    return {n: str(runs / n) for n in names}


def test_tables_and_protocols_never_share_a_record(tmp_path):
    """ARN's APE-GAN row is target-only in Table 1 and white-box in Table 3: with the same
    attack subset, the same models and examples, their stamps and record files differ."""
    from jaxdefense.tables import record
    t1, t3 = tables.get("arn", "1"), tables.get("arn", "3")
    workdirs = _fake_runs(tmp_path, ["none", "apegan_pp"])
    x, y, key = np.zeros((4, 4, 4, 1), np.float32), np.arange(4), jax.random.key(0)
    a1 = t1.attacks("mnist", 2, 2, ["pgd_t"])
    assert a1 == t3.attacks("mnist", 2, 2, ["pgd_t"])
    ids = [stamps.identity(t, t.system("apegan_pp"), workdirs, "mnist", x, y, a1, key, 4)
           for t in (t1, t3)]
    assert ids[0]["protocol"] != ids[1]["protocol"]
    assert record.stamp(ids[0]) != record.stamp(ids[1])
    paths = {record.Record("r", t.paper, t.table, "mnist").path("apegan_pp") for t in (t1, t3)}
    assert len(paths) == 2


def _record_setup(tmp_path, monkeypatch):
    """ARN Table 4's arn_pp row on fake models, real PGD: (run(store, only), calls, spec)."""
    import jaxdefense
    from jaxdefense.tables import record
    spec = tables.get("arn", "4")
    purify = lambda x: jnp.round(x * 4) / 4                   # noqa: E731
    models = {"none": _Model(_net, {"classifier": _net}, defense="standard"),
              "arn_pp": _Model(lambda x: _net(purify(x)), {"purify": purify, "classifier": _net})}
    monkeypatch.setattr(jaxdefense, "load", lambda w: models[os.path.basename(w)])
    workdirs = _fake_runs(tmp_path, models)
    x = jax.random.uniform(jax.random.key(4), (10, 4, 4, 1))
    y = jnp.argmax(_net(x), 1)
    attacks = spec.attacks("mnist", 3, 2, ["pgd40"])
    calls = []
    real = robustness.craft_fn

    def counting(name, params, stochastic):
        inner = real(name, params, stochastic)

        def craft(f, xb, yb, k, **kw):
            calls.append(name)
            return inner(f, xb, yb, k, **kw)
        return craft
    monkeypatch.setattr(robustness, "craft_fn", counting)

    def run(root, only=("arn_pp",)):
        return measure.evaluate(spec, workdirs, "mnist", x, y, attacks, jax.random.key(0),
                                batch_size=4, only=set(only), progress=False,
                                store=record.Record(str(root), "arn", "4", "mnist"),
                                run_checks=False)
    return run, calls, spec


def test_a_stopped_column_resumes_on_a_fresh_copy_of_its_record(tmp_path, monkeypatch):
    """Stopped after two batches, only the record copied to another folder (no crafts, no
    runs' caches): the same call there resumes at the first unfinished batch and ends with
    the per-example outcomes of an uninterrupted run."""
    import shutil
    from jaxdefense import preemption
    run, calls, _ = _record_setup(tmp_path, monkeypatch)
    whole = run(tmp_path / "whole")["arn_pp"]
    uninterrupted = len(calls)
    asked = []
    monkeypatch.setattr(preemption, "requested",
                        lambda: asked.append(1) or ("SIGTERM" if len(asked) == 5 else None))
    calls.clear()
    with pytest.raises(preemption.Preempted):
        run(tmp_path / "a" / "results")
    before = len(calls)
    assert 0 < before < uninterrupted
    shutil.copytree(tmp_path / "a" / "results", tmp_path / "clone" / "results")
    shutil.rmtree(tmp_path / "a")
    calls.clear()
    again = run(tmp_path / "clone" / "results")["arn_pp"]
    assert len(calls) == uninterrupted - before      # nothing finished is attacked again
    assert again["per_example"] == whole["per_example"]
    assert again["paper"] == whole["paper"] and again["adaptive"] == whole["adaptive"]


def test_a_record_of_other_code_is_reused_only_after_its_replay_agrees(tmp_path, monkeypatch,
                                                                       recwarn):
    from jaxdefense import files
    from jaxdefense.tables import record
    run, calls, spec = _record_setup(tmp_path, monkeypatch)
    root = tmp_path / "results"
    first = run(root)["arn_pp"]
    store = record.Record(str(root), "arn", "4", "mnist")
    rec = store.read("arn_pp")
    assert rec["column"]["per_example"] == first["per_example"] and rec["wall_s"] >= 0
    assert rec["provenance"]["code"] == files.code_digest() and rec["replay_attacks"]
    calls.clear()
    assert run(root)["arn_pp"]["per_example"] == first["per_example"]
    assert calls == []                                    # same code: taken as it is
    monkeypatch.setattr(files, "code_digest", lambda: "other code")
    assert run(root)["arn_pp"]["per_example"] == first["per_example"]
    assert set(calls) <= set(rec["replay_attacks"]) and calls   # the replay slice only
    replays = store.read("arn_pp")["replays"]
    assert [r["code"] for r in replays] == ["other code"]
    calls.clear()
    run(root)
    assert calls == []                                    # the replayed code is accepted
    # a record whose outcomes this code does not reproduce: stale, then measured again
    rec = store.read("arn_pp")
    flipped = rec["column"]["per_example"]["paper"]
    flipped["clean"] = ("0" if flipped["clean"][0] == "1" else "1") + flipped["clean"][1:]
    rec["replays"] = []
    store.write("arn_pp", rec)
    monkeypatch.setattr(files, "code_digest", lambda: "third code")
    calls.clear()
    again = run(root)["arn_pp"]
    assert again["per_example"] == first["per_example"]
    assert len(calls) > len(rec["replay_attacks"])        # measured again
    fresh = store.read("arn_pp")
    assert fresh["stale"] is None and fresh["provenance"]["code"] == "third code"
    # a damaged record is moved aside with a warning and measured again
    with open(store.path("arn_pp"), "w") as f:
        f.write('{"format": 1, "colu')
    calls.clear()
    run(root)
    assert calls and any("damaged" in str(w.message) for w in recwarn)
    assert any(n.startswith("arn_pp.json.corrupt") for n in os.listdir(store.dir))


def test_a_record_of_other_settings_is_never_reused_and_nothing_is_lost(tmp_path, monkeypatch):
    from jaxdefense.tables import record
    run, calls, spec = _record_setup(tmp_path, monkeypatch)
    root = tmp_path / "results"
    run(root)
    store = record.Record(str(root), "arn", "4", "mnist")
    old = store.read("arn_pp")
    (tmp_path / "runs" / "arn_pp" / "results.json").write_text('{"retrained": 1}')
    calls.clear()
    run(root)
    assert calls                                          # another model: measured again
    new = store.read("arn_pp")
    assert new["stamp"] != old["stamp"]
    kept = os.listdir(os.path.join(store.dir, "superseded"))
    assert kept == [f"arn_pp-{old['stamp'][:16]}.json"]


def test_every_protocol_has_one_behaviour():
    """One table of behaviour per protocol: what the attacks see and what their crafts are
    shared under both come from it, for every protocol a spec may name."""
    from jaxdefense.tables.spec import PROTOCOLS
    assert set(protocols.BEHAVIOUR) == set(PROTOCOLS)
    for t in tables.TABLES.values():
        for s in t.systems:
            assert s.preprocess or s.protocol in protocols.BEHAVIOUR, (t.stem, s.name)
