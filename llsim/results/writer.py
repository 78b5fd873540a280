"""Write a run directory.

* ``manifest.json``: what reproduces the run (:mod:`llsim.results.manifest`): llsim version and git
  commit, command line, resolved scenario, profile contents and digests, input digests, seed, plan,
  dependency versions (no timestamps)
* ``metrics.json``: TTFT, token latency percentiles, tokens/s, request counts, simulated time,
  simpy events, ``stop_reason``, the plan of every epoch (``plans``)
* ``timing.json``: the wall-clock fields (``wall_time_s``, ``events_per_wall_s``); the only file
  that differs between two runs of the same scenario and seed
* ``tokens.csv`` (one row per generated token), ``devices.csv``, ``links.csv``
* ``rebalances.csv`` when the balancer is on: one row per candidate of each evaluation (time,
  trigger, kind, ``chosen``, the verdict saying why it was or was not taken, predicted cost, gain
  and payback window, the actual stall of the one taken, old and new plan): docs/balancer.md
* ``timeline.json``: Chrome trace format; open it in https://ui.perfetto.dev. One track per device,
  per link lane and for the coordinator; timestamps are integer microseconds, a slice's start and
  end rounded alike, and slices on one track never overlap (concurrent transfers on one link get
  lanes ``a -> b``, ``a -> b #2``, ...), so Perfetto shows every slice; a memory counter per device
  when the simulator recorded it; left out when the run was made without a timeline.

:func:`llsim.results.load` (:mod:`llsim.results.reader`) reads a run directory back as pandas DataFrames.

Every JSON file is strict JSON (no NaN or Infinity); every file is written to a temporary name and
renamed, so an interrupted run leaves complete files or none.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
from importlib import metadata
from pathlib import Path

from llsim import __version__
from llsim.cost.steps import TOKEN_BYTES

DEPS = ("simpy", "numpy", "pandas", "highspy", "onnx", "onnxruntime", "pydantic", "pyyaml")
WALL_CLOCK_KEYS = ("wall_time_s", "events_per_wall_s")
#: Every file a run directory may hold (``--force`` clears a directory made of these).
#: rebalances.csv, in order (docs/balancer.md says what each means)
REBALANCE_COLUMNS = ["evaluation", "time_s", "trigger", "kind", "chosen", "verdict", "predicted_cost_s", "actual_stall_s",
                     "predicted_gain", "predicted_gain_s", "predicted_return_s", "horizon_s", "horizon_basis",
                     "predicted_background_s", "old_ms_per_token", "new_ms_per_token", "moved_bytes",
                     "predicted_drain_s", "actual_drain_s", "predicted_transfer_s", "actual_transfer_s",
                     "predicted_session_s", "old_plan", "new_plan"]
RUN_FILES = ("manifest.json", "metrics.json", "timing.json", "tokens.csv", "devices.csv", "links.csv",
             "rebalances.csv", "timeline.json", "fidelity.csv", "hil.json")


def versions() -> dict:
    out = {"llsim": __version__, "python": platform.python_version()}
    for d in DEPS:
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            out[d] = None
    return out


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.9g}" if math.isfinite(v) else ""  # an empty cell: no finite value (never "nan" / "inf")
    if v is None:
        return ""
    return v


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file renamed over it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def dumps(obj, **kw) -> str:
    """Strict JSON (NaN or Infinity is a bug, not an output)."""
    return json.dumps(obj, allow_nan=False, **kw)


def write_json(path: Path, obj, **kw) -> None:
    write_text(path, dumps(obj, **kw) + "\n")


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> None:
    cols = columns or (list(rows[0]) if rows else [])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow([_fmt(r.get(c, "")) for c in cols])
    write_text(path, buf.getvalue())


# ---- timeline -----------------------------------------------------------------------------------
def _us(t: float) -> int:
    """Seconds -> integer microseconds; a slice's start and end both go through this, so two slices
    that touch in simulated time touch in the file (no 1-us overlap from rounding start and length
    separately)."""
    return int(round(t * 1e6))


class _Lanes:
    """Slices of one logical track spread over lanes (Perfetto tracks) so that slices on a lane never
    overlap: each slice takes the first lane free at its start."""

    def __init__(self):
        self.ends: list[int] = []

    def place(self, ts: int, te: int) -> int:
        for i, end in enumerate(self.ends):
            if end <= ts:
                self.ends[i] = te
                return i
        self.ends.append(te)
        return len(self.ends) - 1


def chrome_trace(timeline: list[dict], device_names: list[str], truncated: bool = False) -> dict:
    names = {**dict(enumerate(device_names)), -1: "AP"}
    meta = [{"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "devices"}},
            {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "links"}}]
    slices: dict[tuple[int, str], list[tuple[int, int, int, dict]]] = {}  # (pid, track) -> (ts, te, order, event)
    instants: list[dict] = []
    counters: list[dict] = []  # per-device memory counter tracks (when the timeline records memory)
    last_mem: dict[int, int] = {}
    order = 0
    coord = False
    for e in timeline:
        order += 1
        k = e["kind"]
        if k == "compute":
            track = (1, names[e["device"]])
            args = {"request": e["request"], "step": e["step"]}
            if "memory" in e:  # the phone's memory in use at the end of the execution: also a counter track
                args["memory_bytes"] = e["memory"]
                if last_mem.get(e["device"]) != e["memory"]:
                    last_mem[e["device"]] = e["memory"]
                    counters.append({"ph": "C", "pid": 1, "name": f"memory MB {names[e['device']]}",
                                     "ts": _us(e["end"]), "args": {"MB": round(e["memory"] / 1e6, 6)}})
            ev = {"ph": "X", "pid": 1, "name": f"stage {e['stage']}", "args": args}
        elif k == "link":
            track = (2, f"{names.get(e['src'], e['src'])} -> {names.get(e['dst'], e['dst'])}")
            ev = {"ph": "X", "pid": 2, "name": e.get("tag") or "transfer",
                  "args": {"bytes": e["bytes"], "src": e["src"], "dst": e["dst"]}}
        elif k == "span":
            coord = True
            track = (3, "balancer")
            ev = {"ph": "X", "pid": 3, "name": e["name"], "args": e.get("args", {})}
        elif k == "instant":
            dev = e.get("device", -1)
            if dev is None or dev < 0:  # the coordinator's own track: detections, rebalances
                coord = True
                instants.append({"ph": "i", "pid": 3, "track": "balancer", "name": e["name"], "s": "p",
                                 "ts": _us(e["start"]), "args": e.get("args", {})})
            else:
                instants.append({"ph": "i", "pid": 1, "track": names[dev], "name": e["name"], "s": "t",
                                 "ts": _us(e["start"]), "args": e.get("args", {})})
            continue
        else:
            continue
        ts, te = _us(e["start"]), _us(e["end"])
        slices.setdefault(track, []).append((ts, max(te, ts), order, ev))
    # tracks: devices in index order (even idle ones), then links and the coordinator as they appear
    tids: dict[tuple[int, str], int] = {}

    def tid(pid: int, name: str) -> int:
        if (pid, name) not in tids:
            tids[(pid, name)] = t = sum(1 for p, _ in tids if p == pid)
            meta.append({"ph": "M", "pid": pid, "tid": t, "name": "thread_name", "args": {"name": name}})
            meta.append({"ph": "M", "pid": pid, "tid": t, "name": "thread_sort_index", "args": {"sort_index": t}})
        return tids[(pid, name)]

    for n in device_names:
        tid(1, n)
    if coord:
        meta.append({"ph": "M", "pid": 3, "name": "process_name", "args": {"name": "coordinator"}})
        tid(3, "balancer")
    out = []
    for (pid, track), items in slices.items():
        items.sort(key=lambda x: (x[0], x[1], x[2]))
        lanes = _Lanes()
        for ts, te, _, ev in items:
            lane = lanes.place(ts, te)
            ev.update(tid=tid(pid, track if lane == 0 else f"{track} #{lane + 1}"), ts=ts, dur=te - ts)
            out.append(ev)
    for ev in instants:
        ev["tid"] = tid(ev["pid"], ev.pop("track"))
        out.append(ev)
    out.sort(key=lambda ev: (ev["ts"], ev["pid"], ev["tid"]))
    out += counters
    trace = {"traceEvents": meta + out, "displayTimeUnit": "ms"}
    if truncated:
        trace["otherData"] = {"note": "timeline truncated: the simulator records at most 400,000 events"}
    return trace


# ---- tables -------------------------------------------------------------------------------------
def link_rows(rows: list[dict], token_bytes: int) -> list[dict]:
    """links.csv: ``payload`` says what a link carried; a link that carried only token ids (the
    tail's few bytes back to the header) has no goodput (its time is latency, not throughput)."""
    out = []
    for r in rows:
        r = dict(r)
        only_tokens = r.get("transfers") and r["bytes"] <= token_bytes * r["transfers"]
        r["payload"] = "token ids" if only_tokens else "tensors"
        if only_tokens:
            r["goodput_mbps"] = None
        out.append(r)
    return out


def write_run(out: Path, manifest: dict, res, device_names: list[str], token_bytes: int = TOKEN_BYTES,
              timeline: bool = True) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "manifest.json", manifest, indent=2, sort_keys=True)
    metrics = {k: v for k, v in res.metrics.items() if k not in WALL_CLOCK_KEYS}
    timeline_full = len(res.timeline) >= 400_000
    if timeline_full:
        metrics["timeline_truncated"] = True
    write_json(out / "metrics.json", metrics, indent=2, sort_keys=True)
    write_json(out / "timing.json", {k: res.metrics.get(k) for k in WALL_CLOCK_KEYS}, indent=2, sort_keys=True)
    cols = ["request", "token", "kind", "time_s", "latency_ms", "since_submit_ms"]
    if res.tokens and "token_id" in res.tokens[0]:
        cols.append("token_id")  # a run with real tensors: the generated token's id
    write_csv(out / "tokens.csv", res.tokens, cols)
    write_csv(out / "devices.csv", res.device_rows)
    write_csv(out / "links.csv", link_rows(res.link_rows, token_bytes))
    if getattr(res, "rebalances", None) is not None and (res.rebalances or res.metrics.get("balancer_enabled")):
        cols = list(REBALANCE_COLUMNS)
        if res.rebalances and any("measured_session_s" in r for r in res.rebalances):
            cols.insert(cols.index("predicted_session_s") + 1, "measured_session_s")  # real nodes loaded it
        write_csv(out / "rebalances.csv", res.rebalances, cols)
    if timeline:
        write_json(out / "timeline.json", chrome_trace(res.timeline, device_names, timeline_full))
    return out
