"""Read results back as pandas DataFrames.

``load(RUN_DIR)`` returns a :class:`Run`: the run's tables (``tokens``, ``devices``, ``links``,
``rebalances``, ``fidelity`` when present, and, from ``timeline.json``, ``timeline`` and
``memory``) with fixed dtypes, plus its ``metrics`` and ``manifest`` (dicts). ``load_sweep(DIR)``
returns one tidy frame for a sweep directory (:mod:`llsim.sweep`): one row per point and seed, the
swept parameters as columns named by their scenario path, the point's status and error, and its
scalar metrics (nested ones flattened with dots: ``token_latency_ms.p50``).

Columns a table's schema does not know (a newer writer's) are kept: numbers as float64/Int64,
anything else as ``string``. Empty CSV fields are missing values (``<NA>``/NaN).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from llsim.errors import LLSimError

STRING = "string"
TOKENS = {"request": "int64", "token": "int64", "kind": pd.CategoricalDtype(["prefill", "decode"]),
          "time_s": "float64", "latency_ms": "float64", "since_submit_ms": "float64"}
DEVICES = {"index": "int64", "name": STRING, "profile": STRING, "threads": "int64", "modules": STRING,
           "busy_s": "float64", "utilisation": "float64", "peak_memory_bytes": "int64",
           "memory_budget_bytes": "int64", "bytes_sent": "int64", "bytes_received": "int64"}
LINKS = {"src": "int64", "dst": "int64", "src_name": STRING, "dst_name": STRING, "transfers": "int64",
         "bytes": "int64", "total_time_s": "float64", "airtime_s": "float64", "mean_time_s": "float64",
         "goodput_mbps": "float64", "wake_s": "float64", "retransmits": "int64"}
REBALANCES = {"evaluation": "int64", "time_s": "float64", "trigger": STRING, "kind": STRING, "chosen": "int64",
              "verdict": STRING, "predicted_cost_s": "float64", "actual_stall_s": "float64",
              "predicted_gain": "float64", "predicted_gain_s": "float64", "predicted_return_s": "float64",
              "horizon_s": "float64", "horizon_basis": STRING, "predicted_background_s": "float64",
              "old_ms_per_token": "float64", "new_ms_per_token": "float64", "moved_bytes": "Int64",
              "predicted_drain_s": "float64", "actual_drain_s": "float64", "predicted_transfer_s": "float64",
              "actual_transfer_s": "float64", "predicted_session_s": "float64", "old_plan": STRING,
              "new_plan": STRING}
TIMELINE = {"kind": pd.CategoricalDtype(["compute", "transfer", "instant", "span"]), "device": "Int64",
            "src": "Int64", "dst": "Int64", "start_s": "float64", "end_s": "float64", "request": "Int64",
            "step": "Int64", "stage": "Int64", "bytes": "Int64", "memory_bytes": "Int64", "name": STRING}
MEMORY = {"device": "int64", "name": STRING, "time_s": "float64", "memory_bytes": "int64",
          "budget_bytes": "int64"}
# a point of a sweep: what load_sweep puts before the swept parameters and the metrics
POINT = {"point": STRING, "seed": "int64", "status": STRING, "error": STRING, "wall_s": "float64",
         "run_dir": STRING}


def _empty(schema: dict) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=t) for c, t in schema.items()})


def _blank_to_none(col: pd.Series) -> pd.Series:
    return col.astype(object).where(col != "", None)


def _typed(col: pd.Series, dtype) -> pd.Series:
    """A column of strings (as read) converted to ``dtype``; '' is a missing value."""
    s = _blank_to_none(col)
    if dtype == STRING:
        return s.astype(STRING)
    if isinstance(dtype, pd.CategoricalDtype):
        return s.astype(STRING).astype(dtype)
    num = pd.to_numeric(s, errors="raise")
    if dtype == "int64" and num.isna().any():
        dtype = "Int64"  # a value is missing: keep the integers, nullable
    if dtype in ("int64", "Int64"):
        if num.dtype.kind == "f" and (num.dropna() % 1 != 0).any():
            raise ValueError("a value is not an integer")
        return num.astype(dtype)
    return num.astype(dtype)


def _guess(col: pd.Series) -> pd.Series:
    """A column no schema names: integers (Int64), other numbers (float64) or strings."""
    s = _blank_to_none(col)
    try:
        num = pd.to_numeric(s, errors="raise")
    except (ValueError, TypeError):
        return s.astype(STRING)
    if s.dropna().astype(str).str.fullmatch(r"[+-]?\d+").all():
        return num.astype("Int64")
    return num.astype("float64")


def read_table(path: Path, schema: dict) -> pd.DataFrame:
    """A CSV of a run directory with the dtypes of ``schema`` (unknown columns guessed)."""
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError:  # no row and no header (e.g. links.csv of a run on one phone)
        return _empty(schema)
    except pd.errors.ParserError as e:
        raise LLSimError(f"{path}: not a readable CSV table ({str(e).strip()}); the run directory is damaged") from None
    if raw.columns.empty:
        return _empty(schema)
    out = {}
    for c in raw.columns:
        try:
            out[c] = _typed(raw[c], schema[c]) if c in schema else _guess(raw[c])
        except (ValueError, TypeError) as e:
            raise LLSimError(f"{path}: column '{c}' does not hold {schema.get(c)} values ({e})") from None
    return pd.DataFrame(out, index=pd.RangeIndex(len(raw)))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise LLSimError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); the run directory is damaged") from None


@dataclass
class Run:
    """A run directory as DataFrames (see the module doc). ``timeline`` and ``memory`` are read from
    ``timeline.json`` on first use (None when the run has no timeline)."""

    path: Path
    manifest: dict
    metrics: dict
    tokens: pd.DataFrame
    devices: pd.DataFrame
    links: pd.DataFrame
    rebalances: pd.DataFrame
    fidelity: pd.DataFrame | None = None
    extra: dict = field(default_factory=dict)  # any other CSV of the directory, by file stem

    @property
    def name(self) -> str:
        return (self.manifest.get("scenario") or {}).get("name") or self.path.name

    @property
    def scenario(self) -> dict:
        return self.manifest.get("scenario") or {}

    @property
    def seed(self) -> int | None:
        return self.manifest.get("seed")

    @cached_property
    def timeline(self) -> pd.DataFrame | None:
        p = self.path / "timeline.json"
        if not p.exists():
            return None
        return timeline_frame(_read_json(p), self.devices)

    @cached_property
    def memory(self) -> pd.DataFrame | None:
        """Memory in use per device over time: one sample at the end of each segment execution
        (``memory_bytes``), with the device's budget. None without a timeline."""
        tl = self.timeline
        if tl is None:
            return None
        c = tl[(tl["kind"] == "compute") & tl["memory_bytes"].notna()]
        if c.empty:
            return _empty(MEMORY)
        names = dict(zip(self.devices["index"], self.devices["name"]))
        budget = dict(zip(self.devices["index"], self.devices["memory_budget_bytes"]))
        dev = c["device"].astype("int64")
        out = pd.DataFrame({"device": dev.to_numpy(), "name": dev.map(names).astype(STRING).to_numpy(),
                            "time_s": c["end_s"].to_numpy(), "memory_bytes": c["memory_bytes"].astype("int64").to_numpy(),
                            "budget_bytes": dev.map(budget).astype("int64").to_numpy()})
        return out.sort_values(["device", "time_s"], kind="stable").reset_index(drop=True)


def timeline_frame(trace: dict, devices: pd.DataFrame | None = None) -> pd.DataFrame:
    """The Chrome trace of ``timeline.json`` as one row per event (compute, transfer, instant, span)."""
    names = list(devices["name"]) if devices is not None else []
    index_of = {n: i for i, n in enumerate(names)}
    link_names: dict[int, tuple[int | None, int | None]] = {}
    rows = []
    for e in trace.get("traceEvents", []):
        ph, pid = e.get("ph"), e.get("pid")
        if ph == "M":
            if pid == 2 and e.get("name") == "thread_name":  # "A -> B" (older files carry no src/dst args)
                a, _, b = e["args"]["name"].partition(" -> ")
                link_names[e["tid"]] = (index_of.get(a, -1 if a == "AP" else None),
                                        index_of.get(b, -1 if b == "AP" else None))
            continue
        ts = e.get("ts", 0.0) / 1e6
        end = ts + e.get("dur", 0.0) / 1e6
        args = e.get("args") or {}
        r = {"start_s": ts, "end_s": end, "name": e.get("name")}
        if ph == "X" and pid == 1:
            r.update(kind="compute", device=e["tid"], request=args.get("request"), step=args.get("step"),
                     stage=int(e["name"].split()[-1]) if e.get("name", "").startswith("stage ") else None,
                     memory_bytes=args.get("memory_bytes"))
        elif ph == "X" and pid == 2:
            src, dst = link_names.get(e["tid"], (None, None))
            tag = e.get("name") or ""
            req = int(tag[1:tag.index("s")]) if tag.startswith("r") and "s" in tag[1:] and tag[1:tag.index("s")].isdigit() else None
            r.update(kind="transfer", src=args.get("src", src), dst=args.get("dst", dst), bytes=args.get("bytes"),
                     request=req)
        elif ph == "i":
            r.update(kind="instant", device=e["tid"] if pid == 1 else None)
        elif ph == "X" and pid == 3:
            r.update(kind="span")
        else:
            continue  # counters ("C") repeat the compute events' memory
        rows.append(r)
    if not rows:
        return _empty(TIMELINE)
    df = pd.DataFrame(rows)
    out = {}
    for c, t in TIMELINE.items():
        col = df[c] if c in df else pd.Series([None] * len(df))
        if t == STRING or isinstance(t, pd.CategoricalDtype):
            out[c] = col.astype(STRING).astype(t)
        elif t == "Int64":
            out[c] = pd.array(col.where(col.notna(), None).tolist(), dtype="Int64")
        else:
            out[c] = col.astype(t)
    return pd.DataFrame(out)


def is_run_dir(path: Path) -> bool:
    p = Path(path)
    return (p / "manifest.json").is_file() and (p / "metrics.json").is_file()


def load(run_dir: str | Path) -> Run:
    """Read a run directory (``llsim run --out DIR``, or a sweep's point) as DataFrames.

    >>> run = load("runs/demo-seed1")                       # doctest: +SKIP
    >>> run.tokens.groupby("request")["latency_ms"].mean()  # doctest: +SKIP
    """
    p = Path(run_dir)
    if not p.is_dir():
        raise LLSimError(f"{p}: no such run directory (give the --out directory of llsim run)")
    if not is_run_dir(p):
        raise LLSimError(f"{p}: not a run directory (it has no manifest.json and metrics.json; "
                         "llsim run --out DIR writes one)")
    tables = {}
    for stem, schema in (("tokens", TOKENS), ("devices", DEVICES), ("links", LINKS), ("rebalances", REBALANCES)):
        f = p / f"{stem}.csv"
        tables[stem] = read_table(f, schema) if f.exists() else _empty(schema)
    fid = p / "fidelity.csv"
    known = {"tokens", "devices", "links", "rebalances", "fidelity"}
    extra = {f.stem: read_table(f, {}) for f in sorted(p.glob("*.csv")) if f.stem not in known}
    devs = tables["devices"]
    if "modules" in devs:
        # "3-9" -> start_module 3, end_module 9, from the first plan in force when the run rebalanced
        # ("3-9 > 0-12 > -"); missing when the device held nothing then
        first = devs["modules"].str.split(" > ", n=1).str[0].replace({"-": pd.NA, "": pd.NA})
        parts = first.str.split("-", n=1, expand=True).reindex(columns=[0, 1])
        devs["start_module"] = pd.to_numeric(parts[0]).astype("Int64")
        devs["end_module"] = pd.to_numeric(parts[1].fillna(parts[0])).astype("Int64")
    return Run(path=p, manifest=_read_json(p / "manifest.json"), metrics=_read_json(p / "metrics.json"),
               fidelity=read_table(fid, {}) if fid.exists() else None, extra=extra, **tables)


# ---- sweeps --------------------------------------------------------------------------------------
def flat_metrics(m: dict, prefix: str = "") -> dict:
    """Scalar metrics with nested dicts flattened by dots; the plan as 'device:start-end ...'; lists dropped."""
    out = {}
    for k, v in m.items():
        key = f"{prefix}{k}"
        if k == "plan" and isinstance(v, list):
            out[key] = " ".join(f"{s['device']}:{s['start_module']}-{s['end_module']}" for s in v)
        elif isinstance(v, dict):
            out.update(flat_metrics(v, key + "."))
        elif isinstance(v, (list, tuple)):
            continue
        else:
            out[key] = v
    return out


def _column(values: list) -> pd.Series:
    """A column from Python values (YAML-parsed parameters, JSON metrics): bool, Int64, float64 or string."""
    present = [v for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))]
    if present and all(isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="boolean")
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="Int64")
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pd.Series([np.nan if v is None else float(v) for v in values], dtype="float64")
    return pd.Series([None if v is None else (v if isinstance(v, str) else json.dumps(v)) for v in values],
                     dtype=STRING)


def load_sweep(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per point and seed of a sweep directory (``llsim sweep --out DIR``), in the sweep's order.

    Columns: ``point``, ``seed``, the swept parameters (by scenario path, e.g. ``workload.concurrency``,
    with the values' types), ``status`` (``ok`` | ``failed``), ``error``, ``wall_s`` (the point's wall
    time), ``run_dir`` (relative to DIR; ``llsim.results.load`` reads it) and the run's scalar metrics.
    Points still running or interrupted (no complete directory) are not in it, nor points of an earlier
    grid run on the same directory (the table is the last command's).
    """
    d = Path(sweep_dir)
    spec_p = d / "sweep.json"
    if not spec_p.is_file():
        raise LLSimError(f"{d}: not a sweep directory (no sweep.json; llsim sweep --out DIR writes one)")
    spec = _read_json(spec_p)
    order = {n: i for i, n in enumerate(spec.get("points", []))}
    points = []
    pdir = d / "points"
    for f in sorted(pdir.glob("*/point.json")) if pdir.is_dir() else []:
        if f.parent.name.startswith("."):
            continue
        points.append((_read_json(f), f.parent))
    if order:  # the points of the last command run on DIR (others, of an earlier grid, stay on disk)
        points = [p for p in points if p[0]["name"] in order]
    points.sort(key=lambda x: (order.get(x[0]["name"], len(order)), x[0]["name"]))
    params: list[str] = list(spec.get("parameters", []))  # the sweep's order, then any from older points
    for pt, _ in points:
        params += [k for k, _ in pt.get("assign", []) if k not in params]
    metrics, cols = [], []
    for pt, where in points:
        m = {}
        if (where / "metrics.json").is_file():
            m = flat_metrics(_read_json(where / "metrics.json"))
        metrics.append(m)
        cols += [k for k in m if k not in cols]
    data = {"point": pd.Series([pt["name"] for pt, _ in points], dtype=STRING),
            "seed": pd.Series([pt["seed"] for pt, _ in points], dtype="int64")}
    for k in params:
        data[k] = _column([pt["values"].get(k) for pt, _ in points])
    data["status"] = pd.Series([pt["status"] for pt, _ in points], dtype=STRING)
    data["error"] = pd.Series([pt.get("error") for pt, _ in points], dtype=STRING)
    data["wall_s"] = pd.Series([pt.get("wall_s") for pt, _ in points], dtype="float64")
    data["run_dir"] = pd.Series([str(w.relative_to(d)) for _, w in points], dtype=STRING)
    for k in cols:
        if k in data:
            continue
        data[k] = _column([m.get(k) for m in metrics])
    return pd.DataFrame(data, index=pd.RangeIndex(len(points)))
