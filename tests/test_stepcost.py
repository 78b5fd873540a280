"""The step-cost provider (llsim.cost.steps): KV interpolation is exact against graphs built at
each cache length, and the allocator's problem and the simulator's step model read the same costs."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from llsim.alloc.plan import uniform_plan
from llsim.alloc.problem import build_problem
from llsim.cluster import expand_devices
from llsim.cost import steps
from llsim.scenario import load_scenario
from llsim.sim.engine import StepModel

from test_sim import TOY


def _sc(tmp_path, mode="kv_cache", n=3, prompt=12, new=6, batch=1):
    prof = tmp_path / "toy.yaml"
    prof.write_text(yaml.safe_dump(TOY))
    data = {"name": "s", "model": "gpt2-small", "seed": 1, "devices": [{"profile": str(prof), "count": n}],
            "network": {"kind": "fixed", "goodput_mbps": 100.0, "rtt_ms": 4.0},
            "workload": {"prompt_tokens": prompt, "new_tokens": new, "requests": 1, "mode": mode, "batch": batch}}
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(data))
    return load_scenario(p)


def test_step_shapes_cover_the_sequence():
    for mode in ("kv_cache", "recompute"):
        for prompt in (1, 7):
            for k in range(5):
                S, P = steps.step_shape(mode, prompt, k)
                assert S + P == prompt + k  # the step sees the prompt and the k tokens before it
                assert (P == 0) == (mode == "recompute" or k == 0)


@pytest.mark.parametrize("seed", range(3))
def test_kv_interpolation_is_exact_against_graphs_at_each_cache_length(tmp_path, seed):
    rng = np.random.default_rng(seed)
    prompt, new = int(rng.integers(4, 40)), int(rng.integers(3, 9))
    sc = _sc(tmp_path, prompt=prompt, new=new)
    devs = expand_devices(sc)
    g = steps.StepGraphs(sc)
    plan = uniform_plan(g(prompt, 0).n_modules, [d.index for d in devs])
    lo, hi = steps.kv_anchors(prompt)
    for P in range(prompt + 2, prompt + new):
        k = P - lo
        direct = g(1, P)
        for st in plan.stages:
            d = devs[st.device]
            want = steps.stage_seconds(d, direct, st.start_module, st.end_module)
            got = steps.affine(steps.stage_seconds(d, g(1, lo), st.start_module, st.end_module),
                               steps.stage_seconds(d, g(1, hi), st.start_module, st.end_module), k)
            assert got == pytest.approx(want, rel=1e-9)
        want_routes = steps.stage_routes(direct, plan.boundaries)
        a, b = steps.stage_routes(g(1, lo), plan.boundaries), steps.stage_routes(g(1, hi), plan.boundaries)
        assert [[(dd, steps.affine(x, y, k)) for (dd, x), (_, y) in zip(ra, rb)] for ra, rb in zip(a, b)] == want_routes


def test_problem_and_simulator_share_graphs_costs_and_memory(tmp_path):
    sc = _sc(tmp_path, batch=2)
    devs = expand_devices(sc)
    pb = build_problem(sc, devs)
    w = sc.workload
    g = steps.StepGraphs(sc)
    pre, last = g(*w.step_shape(0)), g(*w.step_shape(w.new_tokens - 1))
    # the problem's memory per module is the provider's
    assert list(pb.act_bytes) == steps.module_activation_bytes(pre, last)
    assert list(pb.weight_bytes) == [m.param_bytes for m in pre.modules]
    ctx = w.prompt_tokens + w.new_tokens
    assert list(pb.kv_bytes) == [t * ctx * w.in_flight for t in steps.kv_bytes_per_token(pre.modules, w.mode)]
    # the simulator's step model: prefill stage seconds are the provider's (one session.run per stage)
    plan = uniform_plan(pb.n_modules, [d.index for d in devs])
    sm = StepModel(sc, devs, plan)
    c = sm.get(*sm.step_shape(0))
    assert c.stage_seconds == [steps.stage_seconds(devs[s.device], pre, s.start_module, s.end_module) for s in plan.stages]
    assert c.routes == steps.stage_routes(pre, plan.boundaries)
    # and the linear model's per-module seconds add up to the same stage times (up to the run overhead)
    for s in plan.stages:
        d = devs[s.device]
        lin = steps.module_seconds(pre, [d])[0, s.start_module:s.end_module + 1].sum() \
            + d.cost.coefs(d.threads).run_overhead_us * 1e-6
        assert lin == pytest.approx(c.stage_seconds[plan.stages.index(s)], rel=1e-9)
    assert steps.token_bytes(w.batch) == 4 * 2
