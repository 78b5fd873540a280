"""The engine runs stages through the Node interface alone (llsim/sim/node.py): a backend written
from the Node base (no cost model) drives a whole simulation."""
import pytest

import llsim.sim.engine as engine
from llsim.kernel import timeout_now
from llsim.sim.node import Node
from llsim.judge.run import simulate
from test_events import _scenario
from test_sim import TOY  # noqa: F401
from test_sim import toy  # noqa: F401 (fixture)


class FixedNode(Node):
    """Every stage takes ``C`` seconds, whatever its segment; reports half of it as compute time."""

    C = 0.125
    __slots__ = ("t0", "calls")

    def __init__(self, dev, env, rng, mark):
        super().__init__(dev, env)
        self.calls = []

    def run(self, s, work):
        self.cache_tokens(work.kv_new)
        self.t0 = self.env.now
        self.calls.append((work.request, work.step, work.shape, s))
        return timeout_now(self.env, self.C)

    def finish(self):
        self.busy_s += self.C
        self.release()
        return self.t0, self.env.now, self.C / 2

    def probe_seconds(self, nominal_s):
        return nominal_s


def test_a_node_backend_written_from_the_interface_runs_the_pipeline(tmp_path, toy, monkeypatch):
    made = []

    def make(dev, env, rng, mark, hil=None):
        made.append(FixedNode(dev, env, rng, mark))
        return made[-1]
    monkeypatch.setattr(engine, "make_node", make)
    sc = _scenario(tmp_path, toy, [], new_tokens=5)
    sc = sc.model_copy(update={"workload": sc.workload.model_copy(update={"requests": 3, "concurrency": 3})})
    res = simulate(sc)[0]
    # one phone, three requests in flight: the node runs one stage at a time, in request order, C each
    assert sorted(t["time_s"] for t in res.tokens) == pytest.approx([FixedNode.C * k for k in range(1, 16)])
    assert [(r, st) for r, st, _, _ in made[0].calls] == [(r, st) for st in range(5) for r in range(3)]
    p = sc.workload.prompt_tokens  # kv_cache: prefill (p, 0), then decode step k (1, p + k - 1)
    assert {c[2] for c in made[0].calls if c[1] == 0} == {(p, 0)}
    assert {c[2] for c in made[0].calls if c[1] == 3} == {(1, p + 2)}
    assert res.device_rows[0]["busy_s"] == pytest.approx(15 * FixedNode.C)
    comp = [e for e in res.timeline if e["kind"] == "compute"]
    assert len(comp) == 15 and all(e["end"] - e["start"] == pytest.approx(FixedNode.C) for e in comp)
