"""Event kinds are handlers in a registry (llsim.events): a toy kind added there alone is accepted
by the scenario schema (with the schema's usual messages) and acts in a simulation."""
from typing import Literal

import pytest
import yaml
from pydantic import Field

from llsim.errors import LLSimError
from llsim.events import EVENT_KINDS, EventKind, register_event_kind, unregister_event_kind
from llsim.scenario import load_scenario
from llsim.judge.run import simulate
from test_sim import TOY  # noqa: F401
from test_sim import toy  # noqa: F401 (fixture)


class SlowAll(EventKind):
    """Toy kind: from ``at`` every phone runs at ``factor`` x its speed."""

    kind: Literal["slow_all"]
    at: float = Field(ge=0)
    factor: float = Field(gt=0, le=1)

    def start(self, sim, where):
        sim.env.process(self._run(sim))

    def _run(self, sim):
        yield sim.env.timeout(self.at)
        for node in sim.nodes.values():
            node.set_throttle(self.factor)
        sim.mark(f"slow_all x{self.factor:g}")


@pytest.fixture
def slow_all():
    register_event_kind(SlowAll)
    try:
        yield SlowAll
    finally:
        unregister_event_kind("slow_all")


def _scenario(tmp_path, toy, events, n=1, new_tokens=12):
    data = {"name": "t", "model": "gpt2-small", "seed": 3, "devices": [{"profile": str(toy), "count": n}],
            "network": {"kind": "fixed", "goodput_mbps": 100.0, "rtt_ms": 4.0},
            "allocation": {"strategy": "uniform"},
            "workload": {"prompt_tokens": 16, "new_tokens": new_tokens, "requests": 1, "concurrency": 1},
            "events": events}
    p = tmp_path / "sc.yaml"
    p.write_text(yaml.safe_dump(data))
    return load_scenario(p)


def test_a_registered_kind_slows_every_step_that_starts_after_it(tmp_path, toy, slow_all):
    base = simulate(_scenario(tmp_path, toy, []), timeline=False)[0]
    lat = [t["latency_ms"] / 1e3 for t in base.tokens]  # one phone, no network: each step's compute time
    at, f = sum(lat[:5]) + 0.5 * lat[5], 0.25  # during step 5
    res = simulate(_scenario(tmp_path, toy, [{"kind": "slow_all", "at": at, "factor": f}]))[0]
    # expectation: steps that start at or after `at` take 1/f as long (the speed is read when a step starts)
    t, expect = 0.0, []
    for d in lat:
        t += d / f if t >= at else d
        expect.append(t)
    assert [x["time_s"] for x in res.tokens] == pytest.approx(expect, rel=1e-12)
    assert [e["start"] for e in res.timeline if e.get("name") == "slow_all x0.25"] == [pytest.approx(at)]


def test_a_registered_kind_gets_the_schemas_messages(tmp_path, toy, slow_all):
    with pytest.raises(LLSimError, match=r"field 'events\[0\]\.factor': .*less than or equal to 1"):
        _scenario(tmp_path, toy, [{"kind": "slow_all", "at": 1.0, "factor": 2.0}])
    with pytest.raises(LLSimError, match=r"field 'events\[0\]\.fator': unknown field"):
        _scenario(tmp_path, toy, [{"kind": "slow_all", "at": 1.0, "factor": 0.5, "fator": 1}])
    with pytest.raises(LLSimError) as e:
        _scenario(tmp_path, toy, [{"kind": "nope", "at": 1.0}])
    assert "'slow_all'" in str(e.value) and "'throttle'" in str(e.value)


def test_without_it_the_kind_is_unknown_again(tmp_path, toy):
    assert "slow_all" not in EVENT_KINDS
    with pytest.raises(LLSimError) as e:
        _scenario(tmp_path, toy, [{"kind": "slow_all", "at": 1.0, "factor": 0.5}])
    assert "'slow_all'" in str(e.value) and "'noise'" in str(e.value)


def test_built_in_kinds_are_the_registry_in_the_schemas_order():
    assert list(EVENT_KINDS) == ["throttle", "background", "rssi", "leave", "join", "background_bursts",
                                 "thermal", "noise"]
