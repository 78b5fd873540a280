"""The allocator against hand-computable optima, the DP oracle and brute force; its CLI and errors.

Bad inputs tried (each exits 2 with one line, no traceback):

| input                                         | message contains                                |
|-----------------------------------------------|-------------------------------------------------|
| model larger than every budget together       | does not fit, GB missing, it would fit with     |
| unknown strategy                              | unknown strategy                                |
"""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import yaml

from llsim.alloc import baselines, milp, oracle
from llsim.alloc.plan import Plan, StagePlan
from llsim.alloc.problem import build_problem
from llsim.alloc.strategies import allocate
from llsim.scenario import load_scenario
from llsim.sim.cluster import expand_devices
from llsim.sim.run import simulate

from conftest import run_cli
from test_sim import TOY

FREE = {"kind": "fixed", "goodput_mbps": 1e9, "rtt_ms": 1e-9}  # effectively free network


def _profile(tmp_path, name, speed=1.0, ram=6.0):
    d = yaml.safe_load(yaml.safe_dump(TOY))
    d["name"] = name
    d["memory"]["ram_available_gb"] = ram
    for c in d["compute"]["threads"][1]["classes"].values():
        c["gflops"] = c["gflops"] * speed
        c["gbps"] = c["gbps"] * speed
        c["overhead_us"] = c["overhead_us"] / speed
        if "weight_gbps" in c:
            c["weight_gbps"] = c["weight_gbps"] * speed
    d["compute"]["threads"][1]["run_overhead_us"] = 0.0
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(d))
    return str(p)


def _scenario(tmp_path, devices, network=FREE, objective="latency", model="small-gpt2", conc=1, **wl):
    data = {"name": "a", "model": model, "seed": 1, "devices": devices, "network": network,
            "allocation": {"strategy": "milp", "objective": objective},
            "workload": {"prompt_tokens": 16, "new_tokens": 8, "requests": max(2, 2 * conc), "concurrency": conc,
                         **wl}}
    p = tmp_path / "a.yaml"
    p.write_text(yaml.safe_dump(data))
    return load_scenario(p)


def _problem(sc, objective=None):
    devs = expand_devices(sc)
    return build_problem(sc, devs, objective), devs


def test_two_phones_one_twice_as_fast_free_network_gives_a_2_to_1_split(tmp_path):
    fast, slow = _profile(tmp_path, "fast", 2.0), _profile(tmp_path, "slow", 1.0)
    sc = _scenario(tmp_path, [{"profile": fast}, {"profile": slow}], objective="throughput", conc=8,
                   model="gpt2-small")
    pb, _ = _problem(sc)
    # equal blocks: compute on the fast phone is half: the bottleneck is minimal at a 2:1 split
    # of the block time (embedding and head are not blocks, so compare times, not counts)
    r = milp.solve(pb, "throughput", tie_eps=0.0)
    st = r.plan.stages
    assert len(st) == 2
    # the work each phone gets, measured in the slow phone's seconds, is split 2:1 up to one module
    work = {s.device: float(pb.thr.compute[1, s.start_module:s.end_module + 1].sum()) for s in st}
    grain = float(pb.thr.compute[1].max())
    assert abs(work[0] - 2 * work[1]) <= 2 * grain
    # and it is the brute-force optimum over every 2-stage split and order, and 1-stage plans
    n = pb.n_modules
    best = min([pb.evaluate(Plan((StagePlan(d, 0, n - 1),))).cycle_s for d in (0, 1)] +
               [pb.evaluate(Plan((StagePlan(a, 0, k - 1), StagePlan(b, k, n - 1)))).cycle_s
                for a, b in ((0, 1), (1, 0)) for k in range(1, n)])
    assert pb.evaluate(r.plan).cycle_s == pytest.approx(best, rel=1e-9)


def test_a_phone_too_small_for_any_block_is_left_out(tmp_path):
    big, tiny = _profile(tmp_path, "big", 1.0, ram=6.0), _profile(tmp_path, "tiny", 50.0, ram=0.01)
    sc = _scenario(tmp_path, [{"profile": big}, {"profile": tiny}], objective="throughput", conc=4,
                   model="gpt2-small")
    pb, _ = _problem(sc)
    assert min(pb.weight_bytes) > pb.budget[1]  # no module fits the tiny phone
    r = allocate(sc, expand_devices(sc), "milp", problem=pb)
    assert r.plan.devices == [0]
    assert r.feasible


def test_a_link_so_slow_that_one_phone_alone_wins(tmp_path):
    a, b = _profile(tmp_path, "pa", 1.0), _profile(tmp_path, "pb", 1.0)
    slow = {"kind": "fixed", "goodput_mbps": 0.01, "rtt_ms": 500.0}
    sc = _scenario(tmp_path, [{"profile": a}, {"profile": b}], network=slow, model="gpt2-small")
    pb, _ = _problem(sc)
    r = milp.solve(pb)
    assert len(r.plan.stages) == 1
    # while with a free network two identical phones cannot beat one on latency either, but do on throughput
    sc2 = _scenario(tmp_path, [{"profile": a}, {"profile": b}], objective="throughput", conc=8, model="gpt2-small")
    pb2, _ = _problem(sc2)
    assert len(milp.solve(pb2, tie_eps=0.0).plan.stages) == 2


def _brute_force(pb, objective):
    n, D = pb.n_modules, pb.n_devices
    best = float("inf")
    for k in range(1, D + 1):
        for order in itertools.permutations(range(D), k):
            if pb.header is not None and order[0] != pb.header:
                continue
            for cuts in itertools.combinations(range(1, n), k - 1):
                b = [0, *cuts, n]
                plan = Plan(tuple(StagePlan(order[i], b[i], b[i + 1] - 1) for i in range(k)))
                e = pb.evaluate(plan)
                if e.feasible:
                    best = min(best, e.latency_s if objective == "latency" else e.cycle_s)
    return best


@pytest.mark.parametrize("objective", ["latency", "throughput"])
@pytest.mark.parametrize("header", [None, 2])
def test_milp_and_oracle_match_brute_force_on_a_heterogeneous_wifi_cluster(tmp_path, objective, header):
    sc = _scenario(tmp_path, [{"profile": "snapdragon-8gen2", "threads": 4, "rssi_dbm": -70},
                              {"profile": "kirin-810", "threads": 4},
                              {"profile": "helio-g85", "threads": 4, "rssi_dbm": -50}],
                   network={"kind": "infrastructure", "power_save": {"enabled": False}},
                   objective=objective, conc=1 if objective == "latency" else 4, model="tiny-bloom")
    sc.allocation.header = header
    pb, _ = _problem(sc)
    assert pb.n_modules <= 8
    bf = _brute_force(pb, objective)
    m = milp.solve(pb, tie_eps=0.0)
    o = oracle.solve(pb)
    val = {"latency": lambda p: pb.evaluate(p).latency_s, "throughput": lambda p: pb.evaluate(p).cycle_s}[objective]
    assert val(m.plan) == pytest.approx(bf, rel=1e-9)
    once = milp.solve_once(pb, objective)
    assert once.objective_ms / 1e3 == pytest.approx(bf, rel=1e-9)  # the MILP's own objective is the model's value
    assert o.objective_s == pytest.approx(bf, rel=1e-9)
    if header is not None:
        assert m.plan.stages[0].device == header


@pytest.mark.parametrize("seed,poor_wifi,bound_by", [(1, False, "threshold"), (2, False, "threshold"),
                                                      (1, True, "network"), (3, True, "network")])
def test_throughput_search_matches_the_oracle_on_six_distinct_phones(seed, poor_wifi, bound_by):
    """The LP-guided HiGHS search (feasibility MILPs, one capped optimisation) against the DP
    oracle on a free-header Llama-shaped instance: the header's residual sends depend on the plan.
    On good 802.11ax the optimum is a stage-compute threshold; on weak 802.11n with 4 requests in
    flight it is the network term below the next threshold (the search's last step)."""
    from llsim.bench.solve_time import instance

    kw = {"rssi": (-70.0, -75.0), "wifi": ("n", 20), "concurrency": 4} if poor_wifi else {}
    pb = instance(6, 16, seed, "throughput", **kw)
    fast = milp.solve_once(pb, "throughput")
    assert fast.info["bound_by"] == bound_by
    o = oracle.solve(pb)
    assert fast.status == "Optimal" and fast.info["lp_solves"] > 0
    assert fast.objective_ms / 1e3 == pytest.approx(o.objective_s, rel=1e-6)
    assert pb.evaluate(fast.plan).cycle_s == pytest.approx(o.objective_s, rel=1e-6)


def test_prediction_equals_simulation_for_one_request(tmp_path):
    sc = load_scenario("demo", sets=["workload.concurrency=1", "network.rtt_sampling=expected"])
    devs = expand_devices(sc)
    pb = build_problem(sc, devs)
    for name in ("milp", "uniform", "memory"):
        plan = allocate(sc, devs, name, problem=pb).plan
        res, _, _ = simulate(sc, plan, timeline=False)
        assert pb.evaluate(plan).latency_s * 1e3 == pytest.approx(res.metrics["token_latency_ms"]["mean"], rel=1e-6)


def test_power_save_replay_matches_simulated_wakeups():
    sc = load_scenario("lingualinked-bloom-1b1", sets=["network.rtt_sampling=expected"])
    devs = expand_devices(sc)
    pb = build_problem(sc, devs)
    plan = baselines.uniform(pb)
    e = pb.evaluate(plan)
    assert e.wake  # the recompute ring is slow enough for phones to doze
    res, _, _ = simulate(sc, plan, timeline=False)
    assert e.latency_s * 1e3 == pytest.approx(res.metrics["token_latency_ms"]["mean"], rel=0.01)
    off = build_problem(load_scenario("lingualinked-bloom-1b1", sets=["network.power_save.enabled=false"]), devs)
    assert off.evaluate(plan).latency_s < e.latency_s - 0.02


def test_baselines_follow_their_sources(tmp_path):
    sc = load_scenario("lingualinked-bloom-1b1")
    pb, devs = _problem(sc)
    # exo / llama.cpp RPC: shares proportional to memory, sorted by memory
    m = baselines.memory(pb)
    ram = [pb.ram_available[s.device] for s in m.stages]
    assert ram == sorted(ram, reverse=True)
    sizes = np.array([s.end_module - s.start_module + 1 for s in m.stages])
    assert np.allclose(sizes / sizes.sum(), np.array(ram) / sum(ram), atol=1.5 / pb.n_modules)
    # uniform: even split in device order
    u = baselines.uniform(pb)
    assert [s.device for s in u.stages] == [0, 1, 2]
    assert max(s.end_module - s.start_module for s in u.stages) - min(s.end_module - s.start_module
                                                                       for s in u.stages) <= 1
    # every baseline returns a plan covering the model contiguously
    for name, f in baselines.BASELINES.items():
        p = f(pb)
        assert p.boundaries[0] == 0 and p.boundaries[-1] == pb.n_modules, name


def test_model_that_does_not_fit_says_what_is_missing(tmp_path, capsys):
    sc = _scenario(tmp_path, [{"profile": "helio-g85", "count": 2}], model="llama-2-7b")
    code, out, err = run_cli(["allocate", sc.path, "--no-simulate"], capsys)
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert "Traceback" not in err
    for w in ("does not fit", "GB missing", "it would fit with", "helio-g85"):
        assert w in line, line


def test_unknown_strategy_is_a_clear_error(tmp_path, capsys):
    code, out, err = run_cli(["allocate", "demo", "--strategy", "best", "--no-simulate"], capsys)
    assert code == 2 and "unknown strategy 'best'" in err


def test_allocate_json_shape(capsys):
    code, out, err = run_cli(["allocate", "demo", "--strategy", "milp,uniform", "--json", "--expected-rtt",
                              "--set", "workload.requests=2", "--set", "workload.new_tokens=4"], capsys)
    assert code == 0, err
    d = json.loads(out)
    assert set(d) == {"milp", "uniform"}
    for v in d.values():
        assert {"feasible", "stages", "predicted_token_latency_ms", "simulated_token_latency_ms", "tokens_per_s",
                "solve_time_s"} <= set(v)
        assert v["stages"][0]["start_module"] == 0
    assert d["milp"]["simulated_token_latency_ms"] <= d["uniform"]["simulated_token_latency_ms"] * 1.005


def test_quality_check_flags_a_regression():
    from llsim.bench.allocator import check

    def row(inst, strat, ms):
        return {"instance": inst, "strategy": strat, "objective": "latency", "feasible": "1",
                "simulated_ms_per_token": str(ms), "tokens_per_s": "1", "note": ""}
    rows = [row("i", "milp", 10.0), row("i", "uniform", 9.0), row("i", "oracle", 9.5)]
    problems = check(rows, [row("i", "milp", 9.0)])
    assert any("worse than uniform" in p for p in problems)
    assert any("from the oracle" in p for p in problems)
    assert any("regressed" in p for p in problems)
    assert check([row("i", "milp", 9.0), row("i", "uniform", 9.04)], None) == []
