"""What a run with real nodes adds to the usual result files (called by :mod:`llsim.judge.hil`):

* ``links.csv`` gets ``tensor_path``: how the real tensors of each directed link travelled:
  ``phone-to-phone`` (one phone's worker sent them straight to the other's, over their Wi-Fi),
  ``worker-to-worker`` (two workers on this host, over loopback), ``via-host`` (this process relayed
  them: an end is simulated, the workers cannot reach each other, or the link carried token ids only,
  which the coordinator feeds to the header), ``in-process`` (both ends simulated: this process
  computed both). The route of a pair is fixed when the workers start (:func:`llsim.hil.plane.route`).
* ``devices.csv`` gets the real devices' telemetry from their workers' heartbeats, where readable:
  ``temp_c_max`` and ``temp_c_last`` (the hottest thermal zone), ``battery_pct_first`` and
  ``battery_pct_last`` (for a phone whose worker cannot read its battery, ``dumpsys battery`` over
  adb before and after the run), ``telemetry_samples``. Empty for simulated devices.
* ``timeline.json`` gets one counter track per real device and quantity (``temp C <device>``,
  ``battery % <device>``) at the simulated time each heartbeat arrived.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from llsim.hil.plane import is_real, route

TELEMETRY_COLUMNS = ("temp_c_max", "temp_c_last", "battery_pct_first", "battery_pct_last", "telemetry_samples")


def attach_clock(rt, executors: dict) -> None:
    """The real executors' heartbeats are stamped with the simulation's time (WorkerClient.telemetry):
    ``rt.nodes.sim``'s once the simulation exists, its start (0) before."""
    def sim_now():  # before the simulation exists: its start
        sim = rt.nodes.sim if getattr(rt, "nodes", None) is not None else None
        return float(sim.env.now) if sim is not None else 0.0

    for c in executors.values():
        if is_real(c) and hasattr(c, "sim_clock"):
            c.sim_clock = sim_now
            c.telemetry[:] = [(0.0, temp, bat) for _, temp, bat in c.telemetry]  # before the run: its start


def tensor_path(executors: dict, src: int, dst: int, payload: str = "tensors") -> str:
    a, b = executors.get(src), executors.get(dst)
    if a is None or b is None:
        return ""
    if not is_real(a) and not is_real(b):
        return "in-process"
    if payload == "token ids" or route(a, b) is None:
        return "via-host"
    if not getattr(a, "on_this_host", True) and not getattr(b, "on_this_host", True):
        return "phone-to-phone"
    return "worker-to-worker"


def telemetry(client) -> dict:
    rows = list(getattr(client, "telemetry", []) or [])
    temps = [t for _, t, _ in rows if t is not None]
    bats = [b for _, _, b in rows if b is not None]
    adb = (getattr(client, "info", {}) or {}).get("adb", {})
    first = bats[0] if bats else adb.get("battery_start_pct")
    last = bats[-1] if bats else adb.get("battery_end_pct", first if not bats else None)
    return {"temp_c_max": max(temps) if temps else None, "temp_c_last": temps[-1] if temps else None,
            "battery_pct_first": first, "battery_pct_last": last, "telemetry_samples": len(rows)}


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        return list(r.fieldnames or []), list(r)


def annotate_run_dir(out: Path, rt, res) -> None:
    """Add the columns and counter tracks of the module docstring to a written run directory."""
    from llsim.results.writer import write_csv, write_json

    out = Path(out)
    ex = rt.executors
    links = out / "links.csv"
    if links.exists():
        cols, rows = _read_csv(links)
        for r in rows:
            try:
                r["tensor_path"] = tensor_path(ex, int(r["src"]), int(r["dst"]), r.get("payload", "tensors"))
            except (KeyError, ValueError):
                r["tensor_path"] = ""
        write_csv(links, rows, cols + ["tensor_path"] if rows or cols else cols)
    devs = out / "devices.csv"
    if devs.exists():
        cols, rows = _read_csv(devs)
        for r in rows:
            c = ex.get(int(r["index"]))
            tel = telemetry(c) if is_real(c) else {}
            r.update({k: tel.get(k) for k in TELEMETRY_COLUMNS})
        write_csv(devs, rows, cols + list(TELEMETRY_COLUMNS))
    tl = out / "timeline.json"
    if tl.exists():
        trace = json.loads(tl.read_text())
        names = {d.index: d.name + " (real)" for d in rt.devices if d.backend != "sim"}
        for d, name in names.items():
            last = {}
            for t, temp, bat in getattr(ex.get(d), "telemetry", []) or []:
                for key, v in ((f"temp C {name}", temp), (f"battery % {name}", bat)):
                    if v is None or last.get(key) == v:
                        continue
                    last[key] = v
                    trace["traceEvents"].append({"ph": "C", "pid": 1, "name": key, "ts": int(round(t * 1e6)),
                                                 "args": {key.split(" ")[0]: v}})
        write_json(tl, trace)
