"""Output files tell the truth: Perfetto-valid timelines, per-epoch plans, reproducible runs from
their manifest, empty-or---force results directories, no goodput for token returns, strict JSON;
terminal output that fits 80 and 120 columns."""
from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import pytest

from conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]


def strict_json(path: Path):
    def bad(x):
        raise AssertionError(f"{path}: non-strict JSON constant {x}")
    return json.loads(path.read_text(), parse_constant=bad)


def nesting_violations(trace: dict) -> list[str]:
    """Slices ('X') of one track (pid, tid) must nest: each one either ends before the next starts or
    contains it. Timestamps and durations must be integers (microseconds), durations >= 0."""
    tracks = defaultdict(list)
    bad = []
    for e in trace["traceEvents"]:
        if e["ph"] != "X":
            continue
        if not (isinstance(e["ts"], int) and isinstance(e["dur"], int) and e["dur"] >= 0):
            bad.append(f"non-integer or negative time: {e}")
        tracks[(e["pid"], e["tid"])].append((e["ts"], e["ts"] + e["dur"], e["name"]))
    for key, sl in tracks.items():
        sl.sort(key=lambda x: (x[0], -(x[1] - x[0])))
        stack = []
        for ts, te, name in sl:
            while stack and stack[-1][1] <= ts:
                stack.pop()
            if stack and te > stack[-1][1]:
                bad.append(f"track {key}: {name} [{ts}, {te}] overlaps {stack[-1][2]} [{stack[-1][0]}, {stack[-1][1]}]")
            stack.append((ts, te, name))
    return bad


def _run(tmp_path, capsys, scenario, *sets, name="r", extra=()):
    argv = ["run", scenario, "--out", tmp_path / name, *extra]
    for s in sets:
        argv += ["--set", s]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    return tmp_path / name


@pytest.mark.slow
@pytest.mark.parametrize("scenario,sets", [
    ("demo", ()),
    ("cluster-32", ()),
    ("balance-throttle", ()),  # a rebalance: drain, moves, replicas staged beside the ring
    ("balance-leave-rejoin", ()),  # a failover and a rejoin
    ("poor-wifi", ()),
])
def test_timeline_slices_nest_on_every_track(tmp_path, capsys, scenario, sets):
    out = _run(tmp_path, capsys, scenario, *sets)
    trace = strict_json(out / "timeline.json")
    xs = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert xs
    assert nesting_violations(trace) == []
    # one named track per (pid, tid) that holds events
    named = {(e["pid"], e["tid"]) for e in trace["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {(e["pid"], e["tid"]) for e in trace["traceEvents"] if e["ph"] in ("X", "i")} <= named
    # the simulated transfers are all there: one slice per transfer of links.csv
    links = list(csv.DictReader(open(out / "links.csv")))
    assert sum(1 for e in xs if e["pid"] == 2) == sum(int(r["transfers"]) for r in links)


def test_nesting_checker_sees_an_overlap():
    tr = {"traceEvents": [{"ph": "X", "pid": 1, "tid": 0, "name": "a", "ts": 0, "dur": 10},
                          {"ph": "X", "pid": 1, "tid": 0, "name": "b", "ts": 9, "dur": 5}]}
    assert len(nesting_violations(tr)) == 1
    tr["traceEvents"][1]["ts"] = 10
    assert nesting_violations(tr) == []


def test_concurrent_transfers_on_one_link_get_lanes_and_rounding_never_overlaps():
    from llsim.results.writer import chrome_trace

    # three transfers a -> b overlapping in time, and compute slices that touch at a float boundary
    t = 0.1 + 0.2  # 0.30000000000000004
    tl = [{"kind": "link", "src": 0, "dst": 1, "start": 0.0, "end": 0.5, "bytes": 10, "tag": "x"},
          {"kind": "link", "src": 0, "dst": 1, "start": 0.1, "end": 0.3, "bytes": 10, "tag": "y"},
          {"kind": "link", "src": 0, "dst": 1, "start": 0.2, "end": 0.6, "bytes": 10, "tag": "z"},
          {"kind": "compute", "device": 0, "start": 0.0000004, "end": t, "request": 0, "step": 0, "stage": 0},
          {"kind": "compute", "device": 0, "start": t, "end": 0.4000006, "request": 1, "step": 0, "stage": 0}]
    tr = chrome_trace(tl, ["a", "b"])
    assert nesting_violations(tr) == []
    lanes = {e["args"]["name"] for e in tr["traceEvents"] if e["ph"] == "M" and e.get("pid") == 2 and e["name"] ==
             "thread_name"}
    assert lanes == {"a -> b", "a -> b #2", "a -> b #3"}


@pytest.mark.slow
def test_per_epoch_plans_in_metrics_and_devices_csv(tmp_path, capsys):
    out = _run(tmp_path, capsys, "balance-throttle")
    m = strict_json(out / "metrics.json")
    plans = m["plans"]
    assert m["rebalances"] >= 1 and len(plans) == m["rebalances"] + 1
    assert plans[0]["change"] == "initial" and plans[0]["stages"] == m["plan"]
    assert [p["from_s"] for p in plans] == sorted(p["from_s"] for p in plans)
    assert plans[-1]["until_s"] == pytest.approx(m["sim_time_s"])
    reb = [r for r in csv.DictReader(open(out / "rebalances.csv")) if r["chosen"] == "1" and r["kind"] != "stage"]
    names = [r["name"] for r in csv.DictReader(open(out / "devices.csv"))]
    for p, r in zip(plans[1:], reb):  # each later plan is the new plan of a rebalance
        assert " ".join(f"{names[s['device']]}:{s['start_module']}-{s['end_module']}" for s in p["stages"]) == r["new_plan"]
    rows = list(csv.DictReader(open(out / "devices.csv")))
    for r in rows:  # the modules column: the device's range in each epoch
        parts = r["modules"].split(" > ") if r["modules"] else ["-"] * len(plans)
        assert len(parts) == len(plans)
        for p, part in zip(plans, parts):
            st = next((s for s in p["stages"] if s["device"] == int(r["index"])), None)
            assert part == (f"{st['start_module']}-{st['end_module']}" if st else "-")


@pytest.mark.slow
@pytest.mark.parametrize("scenario,sets", [
    ("demo", ()),
    ("balance-bursts", ("workload.requests=16",)),  # random bursts (seeded) and re-plans by the balancer
    ("poor-wifi", ("network.loss_rate=0.01",)),
])
def test_from_manifest_reproduces_the_run_byte_for_byte(tmp_path, capsys, scenario, sets):
    a = _run(tmp_path, capsys, scenario, *sets, name="a")
    code, _, err = run_cli(["run", "--from-manifest", a / "manifest.json", "--out", tmp_path / "b"], capsys)
    assert code == 0, err
    b = tmp_path / "b"
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir())
    for f in files:
        if f not in ("timing.json", "manifest.json"):
            assert (a / f).read_bytes() == (b / f).read_bytes(), f
    ma, mb = strict_json(a / "manifest.json"), strict_json(b / "manifest.json")
    assert ma.pop("invocation")["argv"][:2] == ["llsim", "run"]
    assert mb.pop("invocation")["from_manifest"] == str(a / "manifest.json")
    assert ma == mb
    assert ma["llsim"]["version"] and "commit" in ma["llsim"]
    assert all(p["content"]["name"] and p["sha256"] for p in ma["profiles"].values())


def test_from_manifest_uses_the_recorded_profile_not_the_file(tmp_path, capsys):
    """A profile file edited after the run: the re-run still uses the contents the manifest recorded."""
    import yaml

    from test_sim import TOY

    prof = tmp_path / "toy.yaml"
    prof.write_text(yaml.safe_dump(TOY))
    sc = tmp_path / "sc.yaml"
    sc.write_text(yaml.safe_dump({"name": "t", "model": "gpt2-small", "devices": [{"profile": "toy.yaml", "count": 2}],
                                  "network": {"kind": "fixed", "goodput_mbps": 50}, "allocation": {"strategy": "uniform"},
                                  "workload": {"prompt_tokens": 8, "new_tokens": 4, "requests": 2}}))
    a = _run(tmp_path, capsys, sc, name="a")
    slow = dict(TOY, compute={**TOY["compute"], "threads": {1: {**TOY["compute"]["threads"][1], "run_overhead_us": 9e5}}})
    prof.write_text(yaml.safe_dump(slow))
    from llsim.device import profile as P
    P._CACHE.clear()
    code, _, err = run_cli(["run", "--from-manifest", a / "manifest.json", "--out", tmp_path / "b"], capsys)
    assert code == 0, err
    assert (a / "tokens.csv").read_bytes() == (tmp_path / "b" / "tokens.csv").read_bytes()


def test_out_must_be_empty_or_forced_and_force_clears_a_previous_run(tmp_path, capsys):
    a = _run(tmp_path, capsys, "demo", "workload.requests=2", name="a")
    (a / "rebalances.csv").write_text("stale\n")  # e.g. left by an earlier run with the balancer on
    code, _, err = run_cli(["run", "demo", "--out", a], capsys)
    assert code == 2 and "not empty" in err
    code, _, err = run_cli(["run", "demo", "--out", a, "--force", "--set", "workload.requests=2"], capsys)
    assert code == 0, err
    assert not (a / "rebalances.csv").exists()


def test_token_return_links_report_no_goodput(tmp_path, capsys):
    # a ring of three phones (uniform: a plan fixed by the test), so the tail returns token ids
    out = _run(tmp_path, capsys, "demo", "workload.requests=2", "allocation.strategy=uniform")
    rows = list(csv.DictReader(open(out / "links.csv")))
    tok = [r for r in rows if r["payload"] == "token ids"]
    ten = [r for r in rows if r["payload"] == "tensors"]
    assert tok and ten
    assert all(r["goodput_mbps"] == "" and int(r["bytes"]) == 4 * int(r["transfers"]) for r in tok)
    assert all(float(r["goodput_mbps"]) > 0 for r in ten)


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("argv", [
    ["run", "demo", "--set", "workload.requests=2"],
    ["run", "cluster-32", "--set", "workload.requests=2"],
    ["allocate", "demo", "--strategy", "milp,uniform,lingualinked", "--no-simulate"],
    ["profile", "list"],
    ["profile", "show", "kirin-990"],
    ["model", "inspect", "gpt2-small", "--dtype", "int8"],
    ["model", "list"],
])
def test_terminal_output_fits_the_width_and_cuts_no_name(tmp_path, capsys, monkeypatch, width, argv):
    monkeypatch.setenv("COLUMNS", str(width))
    if argv[0] == "run":
        argv = [*argv, "--out", tmp_path / "o"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert max(len(ln) for ln in lines) <= width
    assert "…" not in out and "~" not in out  # nothing ellipsised, no name shortened at these widths
    if argv[0] == "run":
        from llsim.scenario import load_scenario
        from llsim.cluster import expand_devices

        names = [d.name for d in expand_devices(load_scenario(argv[1]))]
        for n in names:  # every device appears whole, in the devices table
            assert any(ln.split() and ln.split()[0] == n for ln in lines), n
        assert "stop reason" in out and "completed" in out
    if argv[:2] == ["profile", "list"]:
        from llsim.device.profile import list_profiles

        for n in list_profiles():
            assert any(ln.split() and ln.split()[0] == n for ln in lines), n
    if argv[:2] == ["profile", "show"]:
        assert "1000000" not in out and " 0.0 " not in out and "off" in out and "free" in out
    if argv[:2] == ["model", "inspect"]:
        assert "int8" in out
    if argv[:2] == ["model", "list"]:
        from llsim.model.analytic import analytic_graph
        from llsim.model.zoo import ZOO

        for n, cfg in ZOO.items():  # every name whole, every parameter count whole
            row = next(ln for ln in lines if ln.split() and ln.split()[0] == n)
            assert row.split()[-1] == f"{analytic_graph(cfg, 1).total_params / 1e6:,.1f}M"


def test_short_unique_names_stay_unique():
    from llsim.cli.tables import short_unique

    names = [f"snapdragon-8gen2-{k}" for k in range(12)] + ["kirin-990-0", "kirin-990-1"]
    for w in (6, 8, 10, 14, 30):
        s = short_unique(names, w)
        assert len(set(s)) == len(names)
        assert all(len(x) <= max(w, 5) for x in s) or w < 8
    assert short_unique(["a", "b"], 10) == ["a", "b"]


def test_a_run_that_does_not_complete_exits_3_with_its_reason(tmp_path, capsys):
    code, out, err = run_cli(["run", "demo", "--out", tmp_path / "o", "--set", "duration.max_sim_s=0.5"], capsys)
    assert code == 3
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "run incomplete" in lines[0] and "max_sim_s" in lines[0]
    assert "max_sim_s" in out  # the summary shows the stop reason
    assert strict_json(tmp_path / "o" / "metrics.json")["stop_reason"] == "max_sim_s"


def test_a_bug_is_one_line_with_a_traceback_file(tmp_path, capsys, monkeypatch):
    import llsim.cli.main as cli

    def boom(args):
        raise ZeroDivisionError("simulated bug")
    monkeypatch.setattr(cli, "cmd_profile_list", boom)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    code, out, err = run_cli(["profile", "list"], capsys)
    lines = err.strip().splitlines()
    assert code == 70 and len(lines) == 1 and "a bug in llsim" in lines[0]
    path = Path(lines[0].rsplit(" ", 1)[-1])
    assert path.parent == tmp_path and "ZeroDivisionError: simulated bug" in path.read_text()


def test_closed_stdout_exits_quietly(tmp_path):
    import subprocess
    import sys

    r = subprocess.run(f"{sys.executable} -m llsim model inspect llama-2-7b | head -c 10 > /dev/null",
                       shell=True, capture_output=True, text=True, cwd=ROOT, env={"PATH": "/usr/bin:/bin",
                                                                                 "COLUMNS": "80"})
    assert r.stderr == ""


def test_ctrl_c_during_the_simulation_keeps_what_was_simulated(tmp_path, capsys, monkeypatch):
    """A KeyboardInterrupt inside the event loop stops the run there; its results are written."""
    from llsim.sim import engine

    orig = engine.Simulation._advance
    calls = [0]

    def advance(self, limit):
        calls[0] += 1
        if calls[0] == 2:
            raise KeyboardInterrupt
        return orig(self, 200)
    monkeypatch.setattr(engine.Simulation, "_advance", advance)
    # a fixed plan: the milp strategy judges its candidates by short simulations of its own
    code, out, err = run_cli(["run", "demo", "--out", tmp_path / "o", "--set", "allocation.strategy=uniform"], capsys)
    assert code == 130 and "interrupted" in err and len(err.strip().splitlines()) == 1
    m = strict_json(tmp_path / "o" / "metrics.json")
    assert m["stop_reason"] == "interrupted" and m["tokens_generated"] > 0
    rows = list(csv.DictReader(open(tmp_path / "o" / "tokens.csv")))
    assert len(rows) == m["tokens_generated"]
