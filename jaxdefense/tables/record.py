"""The record: every measured column of a table, and the models behind it, as files that a
repository commits (`results/`), so a measurement outlives the machine that made it.

Layout of a record root (`results/` in this repository, `ROOT/record` by default):

    models/<paper>-<dataset>/<run>/        compact models (`checkpoint.export_model`)
    <paper>-<table>-<dataset>/<system>.json   one finished column each (`column_record`)
    <paper>-<table>-<dataset>/progress/<system>-<stamp>/   finished batches of a column
                                                           being measured (`robustness.report`'s cache)
    <paper>-<table>-<dataset>/superseded/  columns replaced by a measurement of other
                                           settings (nothing is deleted)

A column is identified by its stamp (`identity`): paper, table, system, protocol,
preprocessing, every attack setting, key, batch, draws, checks, the examples and the
digests of the models it loads. The code that measured it is provenance: a column measured
by other code is reused only after its replay slice (`replay`: the first batch, clean and
up to two of its attacks, under each protocol, measured again from the same models) gives
the same per-example outcomes; the record then notes the commit that replayed it.
Otherwise it is stale: kept, marked, shown marked, and measured again when asked.
"""
from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
import warnings

import jax
import numpy as np

from jaxdefense import files

FORMAT = 1
REPLAY_ATTACKS = ("fgsm", "pgd")    # preferred replay attacks: the cheapest gradient ones


def name(paper: str, table: str, dataset: str) -> str:
    """A table's record folder: 'grfd-table3-mnist', 'grfd-fig4a-mnist'."""
    return f"{paper}-{'table' if str(table)[0].isdigit() else ''}{table}-{dataset}"


def stamp(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()
                          ).hexdigest()


def key_data(key) -> list:
    return np.asarray(jax.random.key_data(key)).tolist()


def key_from(data: list):
    return jax.random.wrap_key_data(np.asarray(data, np.uint32))


@functools.lru_cache(maxsize=None)
def commit() -> str:
    """The checkout's commit, with '+changes' when the package or the commands differ from
    it. Read once per process, like `files.code_digest` (the commands call both before they
    train), so later edits do not change what a long run reports."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    def git(*args):
        try:
            return subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    out = git("rev-parse", "--short=12", "HEAD") or "unknown"
    if git("status", "--porcelain", "--", "jaxdefense", "eval"):
        out += "+changes"
    return out


def provenance() -> dict:
    """Where and by what a measurement was made: commit (`commit`), date (UTC), machine,
    library versions and the code digest."""
    import flax
    import optax
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    dev = jax.devices()[0]
    return {"commit": commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{cpu}, {os.cpu_count()} cores, {dev.platform}"
                       f"{'' if dev.platform == 'cpu' else ' ' + dev.device_kind}"
                       f" x{jax.device_count()}",
            "versions": {"jax": jax.__version__, "flax": flax.__version__,
                         "optax": optax.__version__, "numpy": np.__version__},
            "code": files.code_digest()}


class Record:
    """One table's record under a record root: its column files, their progress, its
    models' folder."""

    def __init__(self, root: str, paper: str, table: str, dataset: str):
        self.root = root
        self.paper, self.table, self.dataset = paper, str(table), dataset
        self.dir = os.path.join(root, name(paper, table, dataset))

    def models_dir(self) -> str:
        return os.path.join(self.root, "models", f"{self.paper}-{self.dataset}")

    def model(self, run: str) -> str:
        return os.path.join(self.models_dir(), run)

    def path(self, system: str) -> str:
        return os.path.join(self.dir, f"{system}.json")

    def progress(self, system: str, column_stamp: str) -> str:
        return os.path.join(self.dir, "progress", f"{system}-{column_stamp[:16]}")

    def read(self, system: str):
        """The column record of `system`, or None; a damaged file is moved aside (to
        <system>.json.corrupt-<time>) with a warning."""
        return read_column(self.path(system))

    def write(self, system: str, rec: dict) -> None:
        """Write `system`'s column; an earlier column of other settings goes to
        superseded/<system>-<its stamp>.json first."""
        old = self.read(system)
        if old is not None and old.get("stamp") != rec.get("stamp"):
            aside = os.path.join(self.dir, "superseded",
                                 f"{system}-{str(old.get('stamp'))[:16]}.json")
            os.makedirs(os.path.dirname(aside), exist_ok=True)
            shutil.move(self.path(system), aside)
        files.write_json(self.path(system), rec, sort_keys=True)

    def columns(self) -> dict:
        """system -> column record, for every column file here."""
        out = {}
        if os.path.isdir(self.dir):
            for f in sorted(os.listdir(self.dir)):
                if f.endswith(".json"):
                    rec = read_column(os.path.join(self.dir, f))
                    if rec is not None:
                        out[f[:-5]] = rec
        return out


def read_column(path: str):
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            rec = json.load(f)
        if not isinstance(rec, dict) or rec.get("format") != FORMAT or "column" not in rec:
            raise ValueError("not a column record of this format")
        return rec
    except ValueError as e:
        aside = f"{path}.corrupt-{int(datetime.datetime.now().timestamp())}"
        os.replace(path, aside)
        warnings.warn(f"{path} is damaged or truncated ({e}); moved it to {aside}: the column "
                      f"is measured again", stacklevel=2)
        return None


def open_records(root: str) -> list:
    """Every table record under a record root (folders holding column files)."""
    out = []
    if not os.path.isdir(root):
        return out
    for d in sorted(os.listdir(root)):
        folder = os.path.join(root, d)
        if d == "models" or not os.path.isdir(folder):
            continue
        cols = [f for f in os.listdir(folder) if f.endswith(".json")]
        if cols:
            rec = read_column(os.path.join(folder, cols[0]))
            if rec is not None:
                out.append(Record(root, rec["paper"], rec["table"], rec["dataset"]))
    return out


def accepted_codes(rec: dict) -> set:
    """The code digests a column is known to hold under: its own and every replay's."""
    return {rec["provenance"]["code"], *(r["code"] for r in rec.get("replays", ()))}


def differences(old: dict, new: dict) -> str:
    """Which identity fields differ, for the message of a record not reused."""
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(keys) or "nothing"


def replay_attacks(attacks: dict) -> list:
    """The attacks a column's replay measures: FGSM and PGD where it has them, else its
    first two."""
    chosen = [a for a in REPLAY_ATTACKS if a in attacks]
    return chosen or list(attacks)[:2]


def replay(reports: list, x, y, key, attacks: dict, names, batch_size: int,
           expected: dict) -> list:
    """Measure the first batch again and compare it with recorded per-example outcomes.

    reports: [(protocol, Models, threat)], the column's reports; expected: {protocol:
    {'clean' | 'THREAT/ATTACK': bits}} (bits as recorded, every example or the first
    batch's); names: the attacks to replay (besides clean; those without an expected
    entry are skipped). Returns the differences, [{'protocol', 'attack', 'examples':
    [indices]}], [] when every outcome is the same."""
    from jaxdefense import robustness
    from jaxdefense.evaluation import padded_batch_size
    b = padded_batch_size(batch_size, len(x))
    xs, ys = x[:b], y[:b]
    out = []
    for protocol, m, threat in reports:
        want = expected.get(protocol, {})
        predict = robustness.make_predict(m.served, m.stochastic, m.eval_draws)
        for attack in ("clean", *names):
            entry = "clean" if attack == "clean" else f"{threat}/{attack}"
            if entry not in want:
                continue
            if attack == "clean":
                ok, _ = robustness.correct_under(m.served, m.stochastic, None,
                                                 lambda f, xb, yb, k: xb, xs, ys, key, b,
                                                 eval_draws=m.eval_draws, predict=predict)
            else:
                params = attacks[attack]
                ok, _ = robustness.correct_under(
                    m.served, m.stochastic, robustness._attacked(m, threat),
                    robustness.craft_fn(attack, params, m.stochastic and threat == "whitebox"),
                    xs, ys, robustness.attack_key(key, attack, params), b,
                    eval_draws=m.eval_draws, predict=predict, norm=params.get("norm", "Linf"))
            recorded = robustness.from_bits(want[entry])[:len(ok)]
            diff = np.nonzero(np.asarray(ok) != recorded)[0]
            if len(diff):
                out.append({"protocol": protocol, "attack": attack,
                            "examples": [int(i) for i in diff]})
    return out


def batch0(progress_dir: str, protocol_threats: dict) -> dict:
    """The finished first batches of a column in progress as `replay`'s expected
    outcomes: {protocol: {'clean' | 'THREAT/ATTACK': bits}}."""
    out = {}
    for protocol, threat in protocol_threats.items():
        base = os.path.join(progress_dir, protocol)
        if not os.path.isdir(base):
            continue
        for sub in os.listdir(base):
            f = os.path.join(base, sub, "0.json")
            if not os.path.isfile(f):
                continue
            with open(f) as fh:
                bits = json.load(fh)["correct"]
            if sub == "clean":
                out.setdefault(protocol, {})["clean"] = bits
            elif sub.startswith(threat + "-"):
                out.setdefault(protocol, {})[f"{threat}/{sub[len(threat) + 1:]}"] = bits
    return out
