"""The strategy registry (llsim.registry): a strategy added there is usable everywhere a strategy is
named (the scenario schema, the initial plan of `llsim run`, `llsim allocate`), and unknown names
are one-line schema errors listing the known ones."""
from __future__ import annotations

import json

import pytest
import yaml

from llsim import registry
from llsim.alloc.plan import Plan, StagePlan
from llsim.cluster import expand_devices
from llsim.judge.run import make_plan, simulate
from llsim.scenario import load_scenario

from conftest import run_cli
from test_sim import TOY


def _toy_plan(pb) -> Plan:
    """A plan no shipped strategy makes: the last device runs all but the last module, device 0 the rest."""
    n, d = pb.n_modules, pb.n_devices
    return Plan((StagePlan(d - 1, 0, n - 2), StagePlan(0, n - 1, n - 1)), "toy")


@pytest.fixture
def toy_strategy():
    registry.register("toy", _toy_plan, "plan", "test: all but the last module on the last device")
    try:
        yield
    finally:
        registry.unregister("toy")


def _scenario(tmp_path, strategy, n=3, **extra):
    prof = tmp_path / "toy.yaml"
    prof.write_text(yaml.safe_dump(TOY))
    data = {"name": "r", "model": "gpt2-small", "seed": 1, "devices": [{"profile": str(prof), "count": n}],
            "network": {"kind": "fixed", "goodput_mbps": 100.0, "rtt_ms": 4.0},
            "allocation": {"strategy": strategy}, "workload": {"prompt_tokens": 8, "new_tokens": 3, "requests": 2},
            **extra}
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_a_registered_strategy_plans_llsim_run(tmp_path, toy_strategy):
    sc = load_scenario(_scenario(tmp_path, "toy"))
    devs = expand_devices(sc)
    plan = make_plan(sc, devs)
    n = plan.stages[-1].end_module + 1
    assert [(s.device, s.start_module, s.end_module) for s in plan.stages] == [(2, 0, n - 2), (0, n - 1, n - 1)]
    res, _, used = simulate(sc)
    assert used == plan and res.metrics["requests_completed"] == 2


def test_a_registered_strategy_is_judged_by_llsim_allocate(tmp_path, capsys, toy_strategy):
    p = _scenario(tmp_path, "milp")
    code, out, err = run_cli(["allocate", p, "--strategy", "toy,uniform", "--json"], capsys)
    assert code == 0, err
    d = json.loads(out)
    assert set(d) == {"toy", "uniform"}
    st = [(s["device"], s["start_module"]) for s in d["toy"]["stages"]]
    assert st[0] == (2, 0) and st[1][0] == 0 and len(st) == 2
    assert d["toy"]["feasible"] and d["toy"]["simulated_token_latency_ms"] > 0


def test_a_registered_strategy_is_offered_by_the_schema_and_cli_help(tmp_path, capsys, toy_strategy):
    load_scenario(_scenario(tmp_path, "milp", balancer={"enabled": True, "strategy": "toy"}))
    code, out, _ = run_cli(["allocate", "--help"], capsys)
    assert "toy" in out


@pytest.mark.parametrize("field", ["allocation", "balancer"])
def test_an_unknown_strategy_is_a_one_line_schema_error_listing_the_known_ones(tmp_path, capsys, field):
    extra = {"balancer": {"enabled": True, "strategy": "nope"}} if field == "balancer" else {}
    p = _scenario(tmp_path, "nope" if field == "allocation" else "milp", **extra)
    code, out, err = run_cli(["run", p, "--out", tmp_path / "out"], capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert str(p) in lines[0] and f"{field}.strategy" in lines[0] and "'nope'" in lines[0]
    for name in registry.names(judged_only=True):
        assert name in lines[0]
    assert ("explicit" in lines[0]) == (field == "allocation")  # the balancer cannot re-plan to fixed stages


def test_explicit_is_not_a_re_plan_strategy(tmp_path, capsys):
    p = _scenario(tmp_path, "milp", balancer={"enabled": True, "strategy": "explicit"})
    code, _, err = run_cli(["run", p, "--out", tmp_path / "out"], capsys)
    assert code == 2 and "balancer.strategy" in err and "unknown strategy 'explicit'" in err


def test_each_shipped_strategy_resolves_and_says_what_it_needs():
    for name in registry.names():
        s = registry.get(name)
        assert callable(s.fn) and s.description and s.needs
    assert [s.name for s in registry.peers()] == ["uniform", "memory", "lingualinked", "halda", "pipeedge", "greedy"]
    assert {n for n in registry.names() if registry.get(n).exact} == {"milp", "oracle"}
    with pytest.raises(ValueError):
        registry.register("milp", _toy_plan, "plan", "twice")
