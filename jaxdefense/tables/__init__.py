"""Papers' tables as data (`spec.Spec`) and the one engine that measures them
(`planning`, `protocols`, `stamps`, `measure`, `record`, `rendering`):
`python -m eval.table --paper=P --table=N`. A new table is a spec plus a line in TABLES."""
from __future__ import annotations

from jaxdefense.tables import arn, fsr, grfd

TABLES = {**{("grfd", n): s for n, s in grfd.TABLES.items()},
          **{("arn", n): s for n, s in arn.TABLES.items()},
          **{("fsr", n): s for n, s in fsr.TABLES.items()}}


def get(paper: str, table: str):
    """The spec of a paper's table; ValueError naming the tables otherwise."""
    if (paper, str(table)) not in TABLES:
        raise ValueError(f"no table {paper} {table}; choose from "
                         f"{sorted(f'{p} {t}' for p, t in TABLES)}")
    return TABLES[(paper, str(table))]
