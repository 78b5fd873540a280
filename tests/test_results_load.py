"""llsim.results.load: a run directory read back as typed DataFrames, checked against the
simulation's own result objects (not against the files)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from llsim.errors import LLSimError

TINY = """
name: tiny
model: tiny-bloom
seed: 3
devices:
  - {profile: snapdragon-8gen2, threads: 4}
  - {profile: kirin-990, threads: 4}
  - {profile: kirin-810, threads: 4}
network: {kind: infrastructure, standard: ac, width_mhz: 80}
allocation: {strategy: uniform}
workload: {prompt_tokens: 8, new_tokens: 5, requests: 4, concurrency: 2, mode: kv_cache}
"""


def _scenario(tmp_path, text=TINY, sets=None, seed=None):
    from llsim.scenario import load_scenario

    p = tmp_path / "tiny.yaml"
    p.write_text(text)
    return load_scenario(p, sets or [], seed)


def _run(tmp_path, sets=None, text=TINY, name="run"):
    from llsim.judge.run import run_to_dir

    sc = _scenario(tmp_path, text, sets)
    res, devices, plan = run_to_dir(sc, tmp_path / name)
    return sc, res, devices, plan, tmp_path / name


EXPECTED_TOKENS = {"request": "int64", "token": "int64", "kind": "category", "time_s": "float64",
                   "latency_ms": "float64", "since_submit_ms": "float64"}


@pytest.mark.parametrize("sets", [[], ["workload.concurrency=1"], ["workload.mode=recompute", "workload.requests=3"],
                                  ["allocation.strategy=milp", "workload.arrival_rate=20", "workload.concurrency=null"]])
def test_load_round_trips_a_run(tmp_path, sets):
    from llsim.results import load

    sc, res, devices, plan, d = _run(tmp_path, sets)
    run = load(d)
    w = sc.workload
    tk = run.tokens
    # every token of every request, each once
    assert len(tk) == len(res.tokens) == w.requests * w.new_tokens
    assert set(zip(tk["request"], tk["token"])) == {(r, t) for r in range(w.requests) for t in range(w.new_tokens)}
    assert not tk.duplicated(["request", "token"]).any()
    assert {c: str(t) for c, t in tk.dtypes.items()} == EXPECTED_TOKENS
    assert list(tk["kind"].cat.categories) == ["prefill", "decode"]
    assert ((tk["token"] == 0) == (tk["kind"] == "prefill")).all()
    want = pd.DataFrame(res.tokens)
    for c in ("time_s", "latency_ms", "since_submit_ms"):  # the files keep 9 significant digits
        np.testing.assert_allclose(tk[c].to_numpy(), want[c].to_numpy(), rtol=1e-8, atol=1e-12)
    assert (tk["request"].to_numpy() == want["request"].to_numpy()).all()
    # devices: one row per device, integers stay integers
    dv = run.devices
    assert len(dv) == len(devices)
    assert str(dv["peak_memory_bytes"].dtype) == "int64" and str(dv["name"].dtype) == "string"
    assert list(dv["peak_memory_bytes"]) == [r["peak_memory_bytes"] for r in res.device_rows]
    assert list(dv["memory_budget_bytes"]) == [d_.budget_bytes for d_ in devices]
    held = {s.device: (s.start_module, s.end_module) for s in plan.stages}
    for _, r in dv.iterrows():
        if r["index"] in held:
            assert (r["start_module"], r["end_module"]) == held[r["index"]]
        else:
            assert pd.isna(r["start_module"]) and pd.isna(r["modules"])
    # links
    lk = run.links
    assert len(lk) == len(res.link_rows)
    if len(lk):
        assert list(lk["bytes"]) == [r["bytes"] for r in res.link_rows]
        assert str(lk["transfers"].dtype) == "int64"
    # metrics and manifest as written
    assert run.metrics["tokens_generated"] == len(res.tokens)
    assert run.manifest["seed"] == sc.seed and run.seed == sc.seed and run.name == "tiny"
    assert run.rebalances.empty and "moved_bytes" in run.rebalances
    # the timeline: one compute row per stage execution of every token
    tl = run.timeline
    comp = tl[tl["kind"] == "compute"]
    assert len(comp) == sum(1 for e in res.timeline if e["kind"] == "compute") == len(res.tokens) * len(plan.stages)
    assert len(tl[tl["kind"] == "transfer"]) == sum(1 for e in res.timeline if e["kind"] == "link")
    assert (comp["end_s"] >= comp["start_s"]).all()
    assert str(tl["device"].dtype) == "Int64" and str(tl["kind"].dtype) == "category"


def test_memory_over_time_grows_with_the_kv_cache(tmp_path):
    """One request at a time: on each phone, memory rises by the same KV bytes at every decode step
    (linear in the context), falls back between requests, and its maximum is the reported peak."""
    from llsim.results import load

    sc, res, devices, plan, d = _run(tmp_path, ["workload.concurrency=1", "workload.new_tokens=6"])
    run = load(d)
    mem = run.memory
    assert set(mem["device"]) == {s.device for s in plan.stages}
    assert str(mem["memory_bytes"].dtype) == "int64"
    for dev, g in mem.groupby("device"):
        peak = int(run.devices.loc[run.devices["index"] == dev, "peak_memory_bytes"].iloc[0])
        assert int(g["memory_bytes"].max()) == peak
        assert (g["memory_bytes"] <= g["budget_bytes"]).all()
        steps = np.diff(g["memory_bytes"].to_numpy())
        # per request: a prefill sample, then new_tokens - 1 decode samples, each one token of KV
        # more; when a request ends its cache is released (one drop before the next prefill)
        kv = steps[0]
        assert kv > 0
        n = sc.workload.new_tokens
        expect = ([kv] * (n - 1) + [-(n - 1) * kv]) * sc.workload.requests
        assert list(steps) == expect[:-1]


@pytest.mark.slow
def test_rebalances_and_unknown_columns_round_trip(tmp_path):
    """A run with a rebalance: its table's dtypes; a column a newer writer adds is kept and typed."""
    from llsim.results import load
    from llsim.judge.run import run_to_dir
    from llsim.scenario import load_scenario

    sc = load_scenario("balance-throttle", ["workload.requests=24"])
    res, _, _ = run_to_dir(sc, tmp_path / "bt", timeline=False)
    assert res.rebalances, "the scenario's throttle should trigger a rebalance"
    run = load(tmp_path / "bt")
    rb = run.rebalances
    assert len(rb) == len(res.rebalances)
    assert str(rb["moved_bytes"].dtype) == "Int64" and str(rb["time_s"].dtype) == "float64"
    assert str(rb["kind"].dtype) == "string"
    assert list(rb["moved_bytes"]) == [r["moved_bytes"] for r in res.rebalances]
    assert run.timeline is None and run.memory is None  # made without a timeline
    # a newer writer's extra columns
    p = tmp_path / "bt" / "devices.csv"
    df = pd.read_csv(p)
    df["battery_pct"] = range(len(df))
    df["note"] = ["x"] * len(df)
    df["ratio"] = 0.5
    df.to_csv(p, index=False)
    dv = load(tmp_path / "bt").devices
    assert str(dv["battery_pct"].dtype) == "Int64" and str(dv["note"].dtype) == "string"
    assert str(dv["ratio"].dtype) == "float64"


def test_load_errors_are_one_line(tmp_path):
    from llsim.results import load, load_sweep

    with pytest.raises(LLSimError, match="no such run directory"):
        load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LLSimError, match="not a run directory"):
        load(tmp_path / "empty")
    with pytest.raises(LLSimError, match="not a sweep directory"):
        load_sweep(tmp_path / "empty")
    _run(tmp_path)
    (tmp_path / "run" / "metrics.json").write_text("{broken")
    with pytest.raises(LLSimError, match="metrics.json: not valid JSON"):
        load(tmp_path / "run")
    _run(tmp_path, name="run2")
    (tmp_path / "run2" / "tokens.csv").write_text("request,token,kind,time_s,latency_ms,since_submit_ms\n0,zero,decode,1,1,1\n")
    with pytest.raises(LLSimError, match="column 'token'"):
        load(tmp_path / "run2")


def test_timeline_gains_memory_counters_and_link_ends(tmp_path):
    """timeline.json (Perfetto) carries a memory counter per phone and each transfer's ends."""
    sc, res, devices, plan, d = _run(tmp_path)
    ev = json.loads((d / "timeline.json").read_text())["traceEvents"]
    counters = [e for e in ev if e["ph"] == "C"]
    assert counters and all(e["name"].startswith("memory MB ") for e in counters)
    links = [e for e in ev if e["ph"] == "X" and e["pid"] == 2]
    assert links and all({"src", "dst", "bytes"} <= set(e["args"]) for e in links)
