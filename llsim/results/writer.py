"""Write a run directory.

* ``manifest.json``: resolved scenario, seed, plan, llsim and dependency versions (no timestamps:
  same scenario + seed -> identical file)
* ``metrics.json``: TTFT, token latency percentiles, tokens/s, request counts, simulated time,
  simpy events; ``wall_time_s`` and ``events_per_wall_s`` are the only wall-clock fields
* ``tokens.csv`` (one row per generated token), ``devices.csv``, ``links.csv``
* ``rebalances.csv`` when the balancer is on: one row per action (time, trigger, kind, predicted
  cost and gain, the actual stall, old and new plan)
* ``timeline.json``: Chrome trace format; open it in https://ui.perfetto.dev (one track per device
  and per link, a memory counter per device); left out when the run was made without a timeline

:func:`llsim.results.load` (:mod:`llsim.results.reader`) reads a run directory back as pandas DataFrames.
"""
from __future__ import annotations

import csv
import json
import platform
from importlib import metadata
from pathlib import Path

from llsim import __version__

DEPS = ("simpy", "numpy", "pandas", "pulp", "highspy", "onnx", "onnxruntime", "pydantic", "pyyaml")


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
        return f"{v:.9g}"
    return v


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> None:
    cols = columns or (list(rows[0]) if rows else [])
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(cols)
        for r in rows:
            w.writerow([_fmt(r.get(c, "")) for c in cols])


def chrome_trace(timeline: list[dict], device_names: list[str]) -> dict:
    ev = [{"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "devices"}},
          {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "links"}}]
    for i, n in enumerate(device_names):
        ev.append({"ph": "M", "pid": 1, "tid": i, "name": "thread_name", "args": {"name": n}})
    link_tid: dict[tuple, int] = {}
    coord: list[int] = []
    last_mem: dict[int, int] = {}
    for e in timeline:
        if e["kind"] == "compute":
            args = {"request": e["request"], "step": e["step"]}
            if "memory" in e:  # the phone's memory in use at the end of the execution: also a counter track
                args["memory_bytes"] = e["memory"]
            ev.append({"ph": "X", "pid": 1, "tid": e["device"], "name": f"stage {e['stage']}",
                       "ts": round(e["start"] * 1e6, 3), "dur": round((e["end"] - e["start"]) * 1e6, 3),
                       "args": args})
            if "memory" in e and last_mem.get(e["device"]) != e["memory"]:
                last_mem[e["device"]] = e["memory"]
                ev.append({"ph": "C", "pid": 1, "name": f"memory MB {device_names[e['device']]}",
                           "ts": round(e["end"] * 1e6, 3), "args": {"MB": round(e["memory"] / 1e6, 6)}})
        elif e["kind"] == "link":
            key = (e["src"], e["dst"])
            if key not in link_tid:
                link_tid[key] = len(link_tid)
                s = device_names[e["src"]] if e["src"] >= 0 else "AP"
                d = device_names[e["dst"]] if e["dst"] >= 0 else "AP"
                ev.append({"ph": "M", "pid": 2, "tid": link_tid[key], "name": "thread_name",
                           "args": {"name": f"{s} -> {d}"}})
            ev.append({"ph": "X", "pid": 2, "tid": link_tid[key], "name": e.get("tag", "transfer"),
                       "ts": round(e["start"] * 1e6, 3), "dur": round((e["end"] - e["start"]) * 1e6, 3),
                       "args": {"bytes": e["bytes"], "src": e["src"], "dst": e["dst"]}})
        elif e["kind"] == "instant":
            dev = e.get("device", -1)
            if dev is None or dev < 0:  # the coordinator's own track: detections, rebalances
                if not coord:
                    coord.append(1)
                    ev.append({"ph": "M", "pid": 3, "name": "process_name", "args": {"name": "coordinator"}})
                    ev.append({"ph": "M", "pid": 3, "tid": 0, "name": "thread_name", "args": {"name": "balancer"}})
                ev.append({"ph": "i", "pid": 3, "tid": 0, "name": e["name"], "s": "p",
                           "ts": round(e["start"] * 1e6, 3), "args": e.get("args", {})})
            else:
                ev.append({"ph": "i", "pid": 1, "tid": dev, "name": e["name"], "s": "t",
                           "ts": round(e["start"] * 1e6, 3), "args": e.get("args", {})})
        elif e["kind"] == "span":
            ev.append({"ph": "X", "pid": 3, "tid": 0, "name": e["name"], "ts": round(e["start"] * 1e6, 3),
                       "dur": round((e["end"] - e["start"]) * 1e6, 3), "args": e.get("args", {})})
    return {"traceEvents": ev, "displayTimeUnit": "ms"}


def write_run(out: Path, manifest: dict, res, device_names: list[str], timeline: bool = True) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    (out / "metrics.json").write_text(json.dumps(res.metrics, indent=2, sort_keys=True) + "\n")
    write_csv(out / "tokens.csv", res.tokens, ["request", "token", "kind", "time_s", "latency_ms", "since_submit_ms"])
    write_csv(out / "devices.csv", res.device_rows)
    write_csv(out / "links.csv", res.link_rows)
    if getattr(res, "rebalances", None) is not None and (res.rebalances or res.metrics.get("balancer_enabled")):
        write_csv(out / "rebalances.csv", res.rebalances,
                  ["time_s", "trigger", "kind", "predicted_cost_s", "actual_stall_s", "predicted_gain",
                   "predicted_gain_s", "old_ms_per_token", "new_ms_per_token", "moved_bytes", "predicted_drain_s",
                   "actual_drain_s", "predicted_transfer_s", "actual_transfer_s", "predicted_session_s",
                   "old_plan", "new_plan"])
    if timeline:
        (out / "timeline.json").write_text(json.dumps(chrome_trace(res.timeline, device_names)) + "\n")
    return out
