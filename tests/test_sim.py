"""The simulator against independent expectations.

Bad scenarios tried (each exits 2 naming file, field and fix):
| input                                          | message contains                          |
|------------------------------------------------|-------------------------------------------|
| unknown profile name                           | devices[0].profile: unknown profile       |
| typo in a field (workload.new_token)           | workload.new_token: unknown field         |
| negative count                                 | devices[0].count                          |
| model that does not fit                        | does not fit ... needs ... budget         |
| explicit allocation that skips a module        | allocation.stages[1].start_module ... skips |
| explicit allocation that stops early           | the last stage must end at                |
| both concurrency and arrival_rate              | either concurrency                        |
| unknown network kind                           | network.kind                              |
| not YAML                                       | not valid YAML                            |
| missing file                                   | no such scenario file                     |
"""
import csv
import json
import math

import pytest
import simpy
import yaml

from llsim.device.costmodel import CostModel
from llsim.device.profile import load_profile
from llsim.model.analytic import analytic_graph
from llsim.model.zoo import get_config
from llsim.scenario import load_scenario
from llsim.cluster import expand_devices
from llsim.sim.engine import Simulation
from llsim.judge.run import make_plan, run_to_dir, simulate

from conftest import run_cli

CLASSES = {c: {"overhead_us": 2.0, "gflops": 5.0, "gbps": 5.0} for c in
           ("matmul", "attention", "elementwise", "norm", "softmax", "reduce", "gather", "shape", "quant", "other")}
CLASSES["matmul"] = {"overhead_us": 5.0, "gflops": 20.0, "gbps": 10.0, "weight_gbps": 8.0}
TOY = {
    "name": "toy", "kind": "phone", "device": "Toy", "soc": "ToySoC",
    "cpu": [{"name": "big", "cores": 4, "freq_ghz": 2.0}],
    "memory": {"ram_total_gb": 8, "ram_available_gb": 6, "source": "assumed"},
    "compute": {"default_threads": 1, "source": "synthetic",
                "threads": {1: {"classes": CLASSES, "run_overhead_us": 50.0}}},
    "thermal": {"sustained_speed": 0.6, "time_to_throttle_s": 120, "source": "assumed"},
    "network": {"wifi_standard": "ac", "spatial_streams": 2, "source": "spec"},
    "provenance": {"kind": "calibrated", "sources": ["synthetic"], "method": "by hand"},
}


@pytest.fixture
def toy(tmp_path):
    p = tmp_path / "toy.yaml"
    p.write_text(yaml.safe_dump(TOY))
    return p


def scenario(tmp_path, toy, **kw):
    data = {"name": "t", "model": "gpt2-small", "seed": 3,
            "devices": [{"profile": str(toy), "count": kw.pop("n", 1)}],
            "network": kw.pop("network", {"kind": "fixed", "goodput_mbps": 100.0, "rtt_ms": 4.0}),
            "allocation": kw.pop("allocation", {"strategy": "uniform"}),
            "workload": {"prompt_tokens": 16, "new_tokens": 6, "requests": 1, "concurrency": 1,
                         **kw.pop("workload", {})}}
    data.update(kw)
    p = tmp_path / "sc.yaml"
    p.write_text(yaml.safe_dump(data))
    return load_scenario(p)


def _segment_ms(prof, S, P, lo=0, hi=None):
    g = analytic_graph(get_config("gpt2-small"), S, 1, P)
    return CostModel(prof).segment_seconds(g.modules[lo:hi], 1) * 1e3


def test_one_phone_token_latency_is_sum_of_segment_predictions(tmp_path, toy):
    sc = scenario(tmp_path, toy)
    res, devices, plan = simulate(sc)
    prof = load_profile(toy)
    assert res.metrics["requests_completed"] == 1
    lat = [t["latency_ms"] for t in res.tokens]
    assert lat[0] == pytest.approx(_segment_ms(prof, 16, 0), rel=1e-9)  # prefill
    for k in range(1, 6):  # decode step k: one new token over 16 + k - 1 cached ones
        assert lat[k] == pytest.approx(_segment_ms(prof, 1, 16 + k - 1), rel=1e-9)


@pytest.mark.parametrize("relay", [False, True])
def test_two_phones_fixed_link_transfer_is_bytes_over_goodput_plus_half_rtt(tmp_path, toy, relay):
    sc = scenario(tmp_path, toy, n=2, network={"kind": "fixed", "goodput_mbps": 50.0, "rtt_ms": 8.0, "ap_relay": relay})
    res, devices, plan = simulate(sc)
    prof = load_profile(toy)
    b = plan.boundaries
    g = analytic_graph(get_config("gpt2-small"), 1, 1, 16)  # first decode step
    maps = g.dependency_maps(b)
    nbytes = sum(r.nbytes for r in maps.sequential + maps.residual if r.src_segment == 0 and r.dst_segment == 1)
    hops = 2 if relay else 1

    def xfer(n):
        return (hops * n * 8 / 50e6 + 0.004) * 1e3

    expect = (_segment_ms(prof, 1, 16, b[0], b[1]) + xfer(nbytes) + _segment_ms(prof, 1, 16, b[1], b[2]) + xfer(4))
    assert res.tokens[1]["latency_ms"] == pytest.approx(expect, rel=1e-9)


def test_recompute_grows_with_sequence_kv_cache_does_not(tmp_path, toy):
    kv = simulate(scenario(tmp_path, toy, workload={"new_tokens": 24, "mode": "kv_cache"}))[0]
    rc = simulate(scenario(tmp_path, toy, workload={"new_tokens": 24, "mode": "recompute"}))[0]
    kv_lat = [t["latency_ms"] for t in kv.tokens[1:]]
    rc_lat = [t["latency_ms"] for t in rc.tokens[1:]]
    assert kv_lat[-1] / kv_lat[0] < 1.05
    assert rc_lat[-1] / rc_lat[0] > 1.5
    assert all(b > a for a, b in zip(rc_lat, rc_lat[1:]))


def test_pipelining_raises_throughput_and_serves_everyone(tmp_path, toy):
    one = simulate(scenario(tmp_path, toy, n=3, workload={"requests": 6, "concurrency": 1}))[0]
    six = simulate(scenario(tmp_path, toy, n=3, workload={"requests": 6, "concurrency": 6}))[0]
    assert one.metrics["requests_completed"] == six.metrics["requests_completed"] == 6
    assert len(six.tokens) == 6 * 6
    assert six.metrics["tokens_per_s"] > 1.5 * one.metrics["tokens_per_s"]


def test_open_loop_poisson_completes_all(tmp_path, toy):
    res = simulate(scenario(tmp_path, toy, n=2, workload={"requests": 5, "concurrency": None, "arrival_rate": 2.0}))[0]
    assert res.metrics["requests_submitted"] == res.metrics["requests_completed"] == 5


def test_static_memory_overflow_is_an_error(tmp_path, toy):
    from llsim.errors import LLSimError

    with pytest.raises(LLSimError, match=r"does not fit.*needs .* GB .*budget"):
        simulate(scenario(tmp_path, toy, model="bloom-3b"))


def test_dynamic_kv_overflow_is_reported_and_results_kept(tmp_path, toy, capsys):
    data = {"name": "kv", "model": "gpt2-small", "seed": 1,
            "devices": [{"profile": str(toy), "count": 1, "ram_available_gb": 1.2}],
            "network": {"kind": "fixed", "goodput_mbps": 100.0},
            "workload": {"prompt_tokens": 512, "new_tokens": 8, "requests": 64, "arrival_rate": 1000.0}}
    p = tmp_path / "kv.yaml"
    p.write_text(yaml.safe_dump(data))
    code, out, err = run_cli(["run", p, "--out", tmp_path / "out"], capsys)
    assert code == 2 and "memory overflow" in err and "partial results kept" in err
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["stop_reason"] == "memory_overflow" and "memory overflow" in m["error"]


def _run(tmp_path, toy, seed, name):
    sc = scenario(tmp_path, toy, n=3, seed=seed, network={"kind": "infrastructure"},
                  workload={"requests": 4, "concurrency": 2})
    out = tmp_path / name
    run_to_dir(sc, out)
    return out


def test_same_seed_identical_files_different_seed_differs(tmp_path, toy):
    a, b, c = _run(tmp_path, toy, 7, "a"), _run(tmp_path, toy, 7, "b"), _run(tmp_path, toy, 8, "c")
    # every file but timing.json (the wall clock) is byte-identical
    for f in ("tokens.csv", "devices.csv", "links.csv", "timeline.json", "manifest.json", "metrics.json"):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert set(json.loads((a / "timing.json").read_text())) == {"wall_time_s", "events_per_wall_s"}
    assert (a / "tokens.csv").read_bytes() != (c / "tokens.csv").read_bytes()


def test_outputs_are_complete_and_timeline_is_chrome_trace(tmp_path, toy):
    out = _run(tmp_path, toy, 1, "o")
    m = json.loads((out / "metrics.json").read_text())
    for k in ("ttft_ms", "token_latency_ms", "tokens_per_s", "requests_submitted", "requests_completed",
              "sim_time_s", "events", "stop_reason", "plans"):
        assert k in m
    assert set(m["token_latency_ms"]) == {"mean", "p50", "p90", "p99"}
    rows = list(csv.DictReader(open(out / "tokens.csv")))
    assert len(rows) == 4 * 6
    man = json.loads((out / "manifest.json").read_text())
    assert man["seed"] == 1 and man["versions"]["simpy"] and man["scenario"]["model"] == "gpt2-small"
    tr = json.loads((out / "timeline.json").read_text())
    xs = [e for e in tr["traceEvents"] if e["ph"] == "X"]
    assert {e["pid"] for e in xs} == {1, 2}  # device tracks and link tracks
    assert len({e["tid"] for e in xs if e["pid"] == 1}) == 3
    dev = list(csv.DictReader(open(out / "devices.csv")))
    assert all(float(r["utilisation"]) > 0 for r in dev)
    assert sum(int(r["bytes_sent"]) for r in dev) > 0


def test_wifi_run_completes_regression_zeno(tmp_path, toy):
    """Regression: an infrastructure-Wi-Fi run once stalled the clock (float residue in the fluid
    medium) and burned its whole wall budget without a token."""
    data = {"name": "smoke", "model": "bloom-560m", "seed": 1,
            "devices": [{"profile": str(toy), "count": 3, "ram_available_gb": 4}],
            "network": {"kind": "infrastructure"}, "duration": {"max_wall_s": 30},
            "workload": {"prompt_tokens": 32, "new_tokens": 16, "requests": 8, "concurrency": 4}}
    p = tmp_path / "smoke.yaml"
    p.write_text(yaml.safe_dump(data))
    res = simulate(load_scenario(p))[0]
    assert res.metrics["stop_reason"] == "completed" and len(res.tokens) == 128


def _bad(tmp_path, toy):
    good = {"name": "b", "model": "gpt2-small", "devices": [{"profile": str(toy), "count": 2}],
            "network": {"kind": "fixed", "goodput_mbps": 10}}
    def mk(name, mut):
        d = yaml.safe_load(yaml.safe_dump(good))
        mut(d)
        p = tmp_path / f"{name}.yaml"
        p.write_text(yaml.safe_dump(d))
        return p
    notyaml = tmp_path / "notyaml.yaml"
    notyaml.write_text("model: [x\n")
    return [
        (mk("prof", lambda d: d["devices"][0].update(profile="pixel-99")), ["prof.yaml", "devices[0].profile", "unknown profile"]),
        (mk("typo", lambda d: d.update(workload={"new_token": 3})), ["typo.yaml", "workload.new_token", "unknown field"]),
        (mk("neg", lambda d: d["devices"][0].update(count=-1)), ["neg.yaml", "devices[0].count"]),
        (mk("fit", lambda d: d.update(model="bloom-7b1")), ["does not fit", "needs", "budget"]),
        (mk("skip", lambda d: d.update(allocation={"strategy": "explicit", "stages": [
            {"device": 0, "start_module": 0, "end_module": 5}, {"device": 1, "start_module": 7, "end_module": 13}]})),
         ["allocation.stages[1].start_module", "skips module 6"]),
        (mk("short", lambda d: d.update(allocation={"strategy": "explicit", "stages": [
            {"device": 0, "start_module": 0, "end_module": 5}, {"device": 1, "start_module": 6, "end_module": 10}]})),
         ["the last stage must end at 13"]),
        (mk("loops", lambda d: d.update(workload={"concurrency": 2, "arrival_rate": 1.0})), ["either concurrency"]),
        (mk("kind", lambda d: d.update(network={"kind": "carrier-pigeon"})), ["network.kind"]),
        (notyaml, ["notyaml.yaml", "not valid YAML"]),
        (tmp_path / "missing.yaml", ["no such scenario file"]),
    ]


def test_bad_scenarios_exit_2_with_file_field_and_fix(tmp_path, toy, capsys):
    for path, words in _bad(tmp_path, toy):
        code, out, err = run_cli(["run", path, "--out", tmp_path / "o"], capsys)
        assert code == 2, (path, err)
        assert "Traceback" not in err
        line = err.strip().splitlines()[-1]
        for w in words:
            assert w in line, (path, w, line)


def test_set_overrides_and_seed_flag(tmp_path, toy, capsys):
    sc = scenario(tmp_path, toy)
    p = sc.path
    code, out, err = run_cli(["run", p, "--out", tmp_path / "o", "--seed", "11", "--set", "workload.new_tokens=3"], capsys)
    assert code == 0, err
    man = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert man["seed"] == 11 and man["scenario"]["workload"]["new_tokens"] == 3


def test_phone_lock_grants_like_a_simpy_resource():
    """The engine's lock (no event when free, direct hand-over) grants in the order and at the times
    a simpy.Resource(capacity=1) does."""
    import random

    import simpy

    from llsim.sim.node import PhoneLock

    rnd = random.Random(4)
    jobs = [(round(rnd.uniform(0, 5), 1), round(rnd.uniform(0.1, 1.0), 1)) for _ in range(60)]  # ties included

    def with_resource():
        env, res, out = simpy.Environment(), None, []
        res = simpy.Resource(env, capacity=1)

        def job(i, t, hold):
            yield env.timeout(t)
            with res.request() as req:
                yield req
                out.append((i, env.now))
                yield env.timeout(hold)

        for i, (t, h) in enumerate(jobs):
            env.process(job(i, t, h))
        env.run()
        return out

    def with_lock():
        env, out = simpy.Environment(), []
        lock = PhoneLock(env)

        def job(i, t, hold):
            yield env.timeout(t)
            grant = lock.request()
            if grant is not None:
                yield grant
            out.append((i, env.now))
            yield env.timeout(hold)
            lock.release()

        for i, (t, h) in enumerate(jobs):
            env.process(job(i, t, h))
        env.run()
        return out

    assert with_lock() == with_resource()


def test_timeline_off_simulates_the_same_tokens(tmp_path, toy):
    """Without the timeline the engine sends without transfer records or tags: same simulation."""
    sc = scenario(tmp_path, toy, n=3, seed=5, network={"kind": "infrastructure", "loss_rate": 0.01},
                  workload={"requests": 6, "concurrency": 3})
    on = simulate(sc, timeline=True)[0]
    off = simulate(sc, timeline=False)[0]
    assert on.tokens == off.tokens and on.link_rows == off.link_rows and on.device_rows == off.device_rows
    assert on.timeline and not off.timeline


# ---------------------------------------------------------------- the event loop (speed work)
class _SteppedSimulation(Simulation):
    """The reference for Simulation._advance (which inlines simpy's Environment.step): simpy's own
    ``peek`` and ``step`` drive the run."""

    def _advance(self, limit):
        env, max_sim_s = self.env, self.sc.duration.max_sim_s
        for n in range(limit):
            if self.done.triggered:
                return n, "completed"
            nxt = env.peek()
            if nxt > max_sim_s:
                return n, "stalled" if nxt == math.inf else "max_sim_s"
            try:
                env.step()
            except simpy.core.EmptySchedule:
                return n, "deadlock"
        return limit, None


def _run_with(cls, sc):
    devices = expand_devices(sc)
    res = cls(sc, devices, make_plan(sc, devices)).run()
    wall = {"wall_time_s", "events_per_wall_s"}
    return ({k: v for k, v in res.metrics.items() if k not in wall}, res.tokens, res.device_rows, res.link_rows,
            res.timeline, res.rebalances)


@pytest.mark.parametrize("name, sets, stop", [
    ("demo", [], "completed"),  # Wi-Fi, 4 requests in flight
    ("demo", ["duration.max_sim_s=3"], "max_sim_s"),  # stopped by the simulated-time limit
    ("poor-wifi", ["workload.concurrency=3"], "completed"),  # losses, power save
    # a phone leaves and rejoins, another is throttled: stalls, a failover and a re-plan, retries
    ("balance-leave-rejoin", ["events=[{at: 15, kind: leave, device: 0}, {at: 45, kind: join, device: 0}, "
                              "{at: 70, kind: throttle, device: 1, factor: 0.3}]"], "completed"),
    ("memory-tight", ["workload.concurrency=8", "workload.requests=8"], "memory_overflow"),
])
def test_inlined_event_loop_matches_simpy_step(name, sets, stop):
    sc = load_scenario(name, sets)
    fast, ref = _run_with(Simulation, sc), _run_with(_SteppedSimulation, sc)
    assert fast[0]["stop_reason"] == stop and fast[0]["events"] > 100 and fast[1]
    if name.startswith("balance"):
        assert fast[0]["retried_steps"] > 0 and len(fast[5]) >= 2
    assert fast == ref


def test_an_exception_inside_the_simulation_fails_the_run_as_with_simpy_step(tmp_path, toy):
    # a bug in a process must surface, not be swallowed by the inlined loop
    sc = scenario(tmp_path, toy, n=2)
    for cls in (Simulation, _SteppedSimulation):
        devices = expand_devices(sc)
        sim = cls(sc, devices, make_plan(sc, devices))
        sim.send = sim.net.send = lambda *a, **k: 1 / 0  # the engine sends through sim.send
        with pytest.raises(ZeroDivisionError):
            sim.run()
