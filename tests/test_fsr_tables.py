"""FSR's Tables 1 and 2 on the table engine: the published cells are the paper's, cell by
cell; the attacks are section 4.1's; Ensemble is the worst case over the attacks alone; the
runs are the registry's FSR preset with each method, with and without the module."""
import csv
import json

import numpy as np
import pytest

from jaxdefense import tables
from jaxdefense.tables import fsr, measure, planning, rendering
from tests.conftest import REPO

SHARED = REPO.parent / "shared" / "data" / "fsr-paper"
ROWS = {"Natural": "clean", "FGSM": "fgsm", "PGD-20": "pgd", "PGD-100": "pgd100", "CW": "cw",
        "Ensemble": "worst_case"}


@pytest.mark.parametrize("number", ["1", "2"])
def test_published_cells_are_the_papers_tsv_cell_by_cell(number):
    if not SHARED.exists():
        pytest.skip(f"{SHARED} not found")
    lines = [l for l in (SHARED / f"table{number}.tsv").read_text().splitlines()
             if not l.startswith("#")]
    head, *body = list(csv.reader(lines, delimiter="\t"))
    seen = 0
    for variant in (number, f"{number}-last"):
        spec = tables.get("fsr", variant)
        for row in body:
            dataset = {"CIFAR-10": "cifar10", "SVHN": "svhn_cropped"}[row[0]]
            system = row[1].lower().replace("+fsr", "_fsr")
            values = spec.published(dataset)["values"][system]
            for column, text in zip(head[2:], row[2:]):
                assert values[ROWS[column]] == pytest.approx(float(text) / 100, abs=1e-9)
                seen += 1
    assert seen == 2 * 72


def test_attacks_are_section_4_1_and_the_last_iterate_variant():
    a = fsr.TABLES["1"].attacks("cifar10", None, None)
    assert list(a) == ["fgsm", "pgd", "pgd100", "cw"]
    assert a["pgd"] == dict(eps=8 / 255, step_size=0.8 / 255, steps=20, random_start=False)
    assert a["pgd100"]["steps"] == 100 and a["cw"]["loss"] == "margin" and a["cw"]["steps"] == 30
    assert not any("return_last" in p for p in a.values())
    last = fsr.TABLES["1-last"].attacks("cifar10", 5, None)
    assert all(p.get("return_last") for n, p in last.items() if n != "fgsm")
    assert last["pgd100"]["steps"] == 5 and "return_last" not in last["fgsm"]
    with pytest.raises(ValueError, match="unknown attacks"):
        fsr.TABLES["2"].attacks("cifar10", None, None, ["pgd", "aa"])
    assert fsr.TABLES["1-last"].stem == "fsr-table1-last"


def test_runs_are_each_method_with_and_without_the_module(tmp_path):
    for number, classifier in (("1", "resnet18"), ("2", "vgg16_bn")):
        planned = planning.plan(tables.get("fsr", number), str(tmp_path / number), "cifar10",
                                True, {}, {})
        assert len(planned) == 6
        got = {(p.cfg.method, p.cfg.fsr, p.cfg.classifier) for p in planned.values()}
        assert got == {(m, f, classifier) for m in ("at", "trades", "mart")
                       for f in (False, True)}
        assert all(p.defense == "fsr" for p in planned.values())
    one, two = (set(tables.get("fsr", n).runs) for n in ("1", "2"))
    assert not one & two          # other models: their own runs in one root and record


def test_ensemble_is_the_worst_case_over_the_attacks_alone():
    """An example the model gets wrong clean but right under every attack counts in FSR's
    Ensemble (the paper's per-example worst case over the four attacks), not in a worst
    case over clean and attacks."""
    spec = fsr.TABLES["1"]
    t = np.array
    pe = {"clean": t([0, 1, 1, 1], bool), "whitebox/fgsm": t([1, 1, 0, 1], bool),
          "whitebox/pgd": t([1, 1, 1, 1], bool), "whitebox/pgd100": t([1, 1, 1, 1], bool),
          "whitebox/cw": t([1, 1, 1, 1], bool)}
    report = {"clean": 0.75, "per_example": pe}
    assert measure._worst_of_attacks(spec, report, "whitebox") == 0.75
    row = measure.combine(spec, report, report)
    assert row["worst_case"] == 0.75 and row["clean"] == 0.75
    grfd_like = tables.get("grfd", "3")       # clean counts in its worst case
    assert measure.combine(grfd_like, report, report)["worst_case"] == 0.5
    table = {"dataset": "cifar10", "examples": 4, "attacks": spec.attacks("cifar10", None, None),
             "columns": {"at": {"label": "AT", "paper_protocol": "white-box on the model",
                                "paper": {"clean": 0.75, "worst_case": 0.5},
                                "adaptive": {"clean": 0.75, "worst_case": 0.5}}},
             "paper_values": spec.published("cifar10")}
    text = rendering.markdown(spec, table)
    header = next(l for l in text.splitlines() if l.startswith("| | "))
    assert header.split("|")[-2].strip() == "Ensemble"
    assert "| AT | 75.0 (85.0, -10.0) |" in text and "| 50.0 (45.5, +4.5) |" in text
    with pytest.raises(ValueError, match="worst_over must be"):
        type(spec)(**{**{f: getattr(spec, f) for f in spec.__dataclass_fields__},
                      "worst_over": "clean"})


def test_packaged_values_name_their_source():
    ref = json.loads((REPO / "jaxdefense" / "reference" / "fsr_paper.json").read_text())
    assert "CVPR 2023" in ref["paper"] and ref["table2"]["model"] == "VGG16"
    assert "Table 1 (ResNet-18, SVHN)" in fsr.TABLES["1"].published("svhn_cropped")["source"]


@pytest.mark.slow
def test_table1_smoke_on_cifar10_fake_data_trains_and_attacks_every_row(tmp_path):
    """The whole command on fake prepared CIFAR-10: every row (AT, TRADES, MART, each with
    and without FSR, tiny ResNet-18s) trained and attacked; two of the four attacks (the
    attacks have their own tests), Ensemble their per-example worst case."""
    import subprocess
    import sys
    from jaxdefense.data import prepare
    from tests.conftest import run_env
    data_dir = tmp_path / "data"
    assert prepare.main(["--dataset=cifar10", "--fake_examples=96",
                         f"--data_dir={data_dir}"]) == 0
    root = tmp_path / "fsr"
    proc = subprocess.run(
        [sys.executable, "-m", "eval.table", "--paper=fsr", "--table=1", "--dataset=cifar10",
         "--smoke", f"--root={root}", f"--data_dir={data_dir}", "--examples=16",
         "--epochs=1", "--attacks=fgsm,cw", "--checks=0",
         "--set=limit_train=64,limit_eval=32,batch_size=32,attack_examples=0"],
        capture_output=True, text=True, timeout=1200, cwd=REPO, env=run_env(1))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads((root / "fsr-table1.json").read_text())
    assert out["examples"] == 16 and list(out["attacks"]) == ["fgsm", "cw"]
    for s in fsr.TABLES["1"].systems:
        col = out["columns"][s.name]
        assert col["status"] == "measured"
        pe = col["per_example"]["paper"]
        both = [a == b == "1" for a, b in zip(pe["whitebox/fgsm"], pe["whitebox/cw"])]
        assert col["paper"]["worst_case"] == pytest.approx(np.mean(both))
        assert out["paper_values"]["values"][s.name]["worst_case"] > 0.3
    md = (root / "fsr-table1.md").read_text()
    assert md.count("Ensemble") >= 2 and "| AT+FSR |" in md
    record = root / "record" / "fsr-table1-cifar10"
    assert sorted(p.stem for p in record.glob("*.json")) == sorted(
        s.name for s in fsr.TABLES["1"].systems)
