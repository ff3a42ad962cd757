"""A measured table as text and as a figure, the published value beside each cell."""
from __future__ import annotations

from jaxdefense import plots, robustness
from jaxdefense.tables.protocols import EVAL_DRAWS
from jaxdefense.tables.spec import Spec


def rows(spec: Spec) -> tuple:
    return ("clean", *spec.attack_order, *(("avg",) if spec.average else ()), "worst_case")


def differences(spec: Spec, columns: dict, values: dict, shown_avg: bool = True) -> dict:
    """{system: {protocol: {row: measured - published}}} in accuracy [0, 1] for every cell
    the paper reports ('avg' only when `shown_avg`: all the attacks ran)."""
    out = {}
    for c, col in columns.items():
        pub = values.get(c, {})
        for protocol in ("paper", "adaptive"):
            row = col.get(protocol) or {}
            out.setdefault(c, {})[protocol] = {
                r: row[r] - pub[r] for r in rows(spec) if row.get(r) is not None and
                pub.get(r) is not None and (r != "avg" or shown_avg)}
    return out


def _cell(spec: Spec, measured: dict, row: str, paper: dict) -> str:
    """'78.2 (76.6, +1.6)': measured, then the published value and the difference, in the
    table's metric (accuracy or error, %)."""
    def shown(v):
        return 100 * (1 - v) if spec.metric == "error" else 100 * v
    v = measured.get(row)
    text = "-" if v is None else f"{shown(v):.1f}"
    p = paper.get(row)
    if p is None:
        return text
    diff = "" if v is None else f", {shown(v) - shown(p):+.1f}"
    return text + f" ({shown(p):.{2 if spec.metric == 'error' else 1}f}{diff})"


def _label(spec: Spec, row: str, n: int) -> str:
    label = {"clean": "Clean" if spec.metric == "accuracy" else "None (clean)", "avg": "Avg",
             "worst_case": spec.worst_label, **spec.labels}[row]
    if row == "avg":
        label += f" ({n} attack{'s' * (n != 1)})"
    return label


def markdown(spec: Spec, table: dict) -> str:
    """The table in the paper's layout, cells 'measured (published, measured - published)'
    in the table's metric where the paper reports one, under the papers' protocol and under
    the adaptive attack; the sanity checks that failed after them."""
    cols = list(table["columns"])
    draws = table.get("eval_draws", EVAL_DRAWS)
    eot = table.get("eot_samples", robustness.EOT_SAMPLES)
    metric = "error" if spec.metric == "error" else "accuracy"
    preset = f", attack preset {table['preset']}" if table.get("preset") else ""
    lines = [f"# {spec.title} on {table['dataset']}: {table['examples']} examples{preset}", "",
             f"Cells: measured (published, difference), {metric} in %. Randomized systems: "
             f"right on every one of {draws} draws to count; {eot} EOT draws per gradient "
             f"in their white-box attacks" + _fixed_draw_note(spec, table) + ".", ""]
    if spec.note:
        lines += [spec.note, ""]
    paper = table["paper_values"]["values"]
    n = len(table.get("attacks", spec.attack_order))
    full = n == len(spec.attack_order)
    shown_rows = [r for r in rows(spec) if r != "avg" or spec.average]

    def cell(c, protocol, row):
        # the paper's average is over all its attacks: not shown next to a subset's
        pub = paper.get(c, {}) if (row != "avg" or full) else {}
        return _cell(spec, table["columns"][c].get(protocol) or {}, row, pub)

    for protocol, title in (("paper", "The papers' protocol (this project's reading)"),
                            ("adaptive", "Adaptive white-box attack on the served pipeline "
                                         "(EOT, BPDA), per example the worst of it and the "
                                         "papers' attack")):
        lines += [f"## {title}", ""]
        if spec.systems_as_rows:
            lines += ["| | " + " | ".join(_label(spec, r, n) for r in shown_rows) + " |",
                      "|---|" + "---|" * len(shown_rows)]
            for c in cols:
                lines.append(f"| {table['columns'][c]['label']} | " +
                             " | ".join(cell(c, protocol, r) for r in shown_rows) + " |")
        else:
            lines += ["| | " + " | ".join(table["columns"][c]["label"] for c in cols) + " |",
                      "|---|" + "---|" * len(cols)]
            for r in shown_rows:
                lines.append(f"| {_label(spec, r, n)} | " +
                             " | ".join(cell(c, protocol, r) for c in cols) + " |")
        lines.append("")
    failed = [(table["columns"][c]["label"], ch) for c in cols
              for ch in table["columns"][c].get("checks", []) if not ch["passed"]]
    ran = sum(len(table["columns"][c].get("checks", [])) for c in cols)
    if ran:
        lines += [f"Sanity checks: {ran - len(failed)} of {ran} passed" +
                  ("; failed:" if failed else ".")]
        lines += [f"- {label}: {ch['check']}: {ch['detail']}" for label, ch in failed]
        lines.append("")
    lines += ["Paper protocol per system: " + "; ".join(
        f"{table['columns'][c]['label']}: {table['columns'][c]['paper_protocol']}" for c in cols),
        "", f"Published values (in parentheses): {table['paper_values']['source']}; "
        f"{table['paper_values'].get('note', '')}", ""]
    return "\n".join(lines)


def _fixed_draw_note(spec: Spec, table: dict) -> str:
    """', except X and Y, which see one fixed draw' for the table's attacks without EOT."""
    fixed = robustness.fixed_draw(table.get("attacks") or {})
    if not fixed:
        return ""
    names = [spec.labels.get(n, n) for n in fixed]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f", except {listed}, which {'sees' if len(names) == 1 else 'see'} one fixed draw"


def figure(spec: Spec, path: str, table: dict) -> str:
    """Per system the papers'-protocol value (the average over attacks, or the worst case
    where the table has no average) beside the published one, then the adaptive average
    and worst case, in the table's metric."""
    cols = list(table["columns"])
    labels = [table["columns"][c]["label"] for c in cols]
    paper = table["paper_values"]["values"]
    n = len(table.get("attacks", spec.attack_order))
    row = "avg" if spec.average else "worst_case"
    err = spec.metric == "error"

    def shown(v):
        return None if v is None else (1 - v if err else v)
    name = "avg" if spec.average else "worst case"
    series = {f"papers' protocol, {name} (measured)":
              [shown(table["columns"][c].get("paper", {}).get(row)) for c in cols]}
    if spec.average and n == len(spec.attack_order) and any(
            paper.get(c, {}).get(row) is not None for c in cols):
        series["published avg"] = [shown(paper.get(c, {}).get(row)) for c in cols]
    if spec.average:
        series["adaptive, avg (measured)"] = [
            shown(table["columns"][c].get("adaptive", {}).get("avg")) for c in cols]
    series["adaptive, worst case (measured)"] = [
        shown(table["columns"][c].get("adaptive", {}).get("worst_case")) for c in cols]
    return plots.grouped_bars(path, labels, series, "error" if err else "accuracy",
                              f"{spec.title} on {table['dataset']} ({table['examples']} "
                              f"examples, {n} attack{'s' * (n != 1)})")

