"""Issue 20's rules of the balancer: the payback horizon learned from past conditions, staged
(background) re-plans for a joining phone, standby copies on idle phones and the failover plans
built around them. First the pure policy on recorded sequences (no simulator), then end to end."""
from __future__ import annotations

import math

import numpy as np
import pytest

from llsim.alloc.plan import Plan, StagePlan
from llsim.alloc.problem import build_problem
from llsim.balance.horizon import Episodes
from llsim.balance.monitor import Monitor
from llsim.balance.policy import Balancer, ClusterState, moves_time, per_token_s
from llsim.balance.replicas import standby_replicas
from llsim.cluster import expand_devices
from llsim.judge.run import simulate
from llsim.scenario import Balancer as BalancerCfg
from llsim.scenario import load_scenario
from llsim.sim.dynamics import taken


# ---- the episode history (the payback horizon's estimate) -----------------------------------------
def _replay(ep: Episodes, durations_off, durations_on, dev=0, t0=0.0, level=2.0):
    """Alternate nominal / slowed episodes of the given lengths, one snapshot per 0.25 s."""
    t = t0
    for on, off in zip(durations_on, durations_off):
        for length, r in ((on, 1.0), (off, level)):
            end = t + length
            while t < end - 1e-9:
                ep.observe(t, {dev: r}, {}, {dev: True})
                t = round(t + 0.25, 6)
    return t


def test_episode_estimate_is_the_exponential_fit_of_what_was_seen():
    rng = np.random.default_rng(3)
    off = [float(x) for x in np.round(rng.exponential(12.0, 40) / 0.25 + 1) * 0.25]  # on the 0.25 s grid
    on = [float(x) for x in np.round(rng.exponential(30.0, 40) / 0.25 + 1) * 0.25]
    ep = Episodes(0.2)
    t = _replay(ep, off, on)
    # the last slow episode is still going (no nominal snapshot after it), its age is censored
    done = off[:-1]
    age_now = t - 0.25 - (t - off[-1])  # it began when the last nominal snapshot ended
    expected = (sum(done) + age_now) / len(done)
    assert ep.mean_duration("speed", True, t - 0.25) == pytest.approx(expected, rel=1e-9)
    assert ep.remaining("speed", 0, t - 0.25) == pytest.approx(expected, rel=1e-9)
    # the nominal episodes: all completed (the first one began at t=0)
    assert ep.mean_duration("speed", False, t - 0.25) == pytest.approx(sum(on) / len(on), rel=1e-9)
    # many episodes: the fit approaches the true mean
    ep2 = Episodes(0.2)
    off2 = [float(x) for x in np.round(rng.exponential(12.0, 1500) / 0.25 + 1) * 0.25]
    t2 = _replay(ep2, off2, [5.0] * 1500)
    assert ep2.mean_duration("speed", True, t2) == pytest.approx(12.0 + 0.25, rel=0.08)
    # two ongoing conditions end at the first of them: 1 / (1/a + 1/b)
    ep.observe(t, {0: 2.0, 1: 2.0}, {}, {0: True, 1: True})
    a, b = ep.remaining("speed", 0, t), ep.remaining("speed", 1, t)
    assert ep.condition_remaining([("speed", 0), ("speed", 1)], t) == pytest.approx(1 / (1 / a + 1 / b))


def test_no_history_is_unknown_and_noise_within_threshold_makes_no_episode():
    ep = Episodes(0.2)
    rng = np.random.default_rng(1)
    for k in range(4000):  # jitter of the smoothed ratio within threshold / 2
        ep.observe(k * 0.25, {0: 1.0 + float(rng.uniform(-0.09, 0.09))}, {}, {0: True})
    assert ep.completed == {} and ep.risk(0) == 1.0
    assert math.isinf(ep.remaining("speed", 0, 1000.0))
    # hysteresis: between threshold/2 and threshold the state does not change
    ep.observe(1000.0, {0: 1.25}, {}, {0: True})
    ep.observe(1001.0, {0: 1.15}, {}, {0: True})
    assert ep.is_off("speed", 0)
    ep.observe(1002.0, {0: 1.05}, {}, {0: True})
    assert not ep.is_off("speed", 0) and ep.completed[("speed", True)] == [2.0] and ep.risk(0) == 2.0


# ---- the policy on recorded sequences ---------------------------------------------------------------
def _setup(name="balance-throttle", sets=()):
    from llsim.judge.evaluate import allocate

    sc = load_scenario(name, sets=list(sets))
    devs = expand_devices(sc)
    pb = build_problem(sc, devs)
    return sc, devs, pb, allocate(sc, devs, "milp", problem=pb).plan


def _balancer(pb, **kw):
    cfg = BalancerCfg(**kw)
    bal = Balancer(cfg, pb, {d: 960.0 for d in range(pb.n_devices)})
    return bal, Monitor(pb.n_devices, cfg.smoothing_s, cfg.heartbeat_s, cfg.heartbeat_misses, cfg.min_samples)


def _arrived(present, moves):
    """``present`` with the weights ``moves`` carry on their receivers (a staging that has ended)."""
    out = dict(present)
    for mv in moves:
        if mv.what == "weights":
            out[mv.dst] = out.get(mv.dst, frozenset()) | {mv.module}
    return out


def _feed(bal, mon, plan, present, speed, T, remaining=5000, alive=lambda d, t: True, t0=0.0, on_decision=None):
    """speed(t) -> {device: observed/expected}; 20 reports a second per phone, a decision a second."""
    out, t = [], t0
    while t <= T:
        for d in range(mon.devices):
            if alive(d, t):
                mon.heartbeat(d, t, bal.nominal_link.get(d))
                r = speed(t).get(d)
                if r is not None:
                    mon.stage_time(d, t, r * 0.05, 0.05)
        if abs(t - round(t)) < 1e-9:
            dec = bal.decide(mon.snapshot(t), ClusterState(t, plan, present, remaining))
            if dec is not None:
                out.append(dec)
                if on_decision is not None:
                    plan, present = on_decision(dec, plan, present)
                elif dec.plan is not None and dec.kind != "stage":
                    plan = dec.plan
        t = round(t + 0.05, 6)
    return out, plan, present


def test_short_bursts_seen_before_bound_the_payback_and_only_cheap_changes_pass():
    """A phone of the plan had six 8 s slowdowns: the seventh is answered (if at all) by a change
    whose payback within the learned estimate covers its stall and the switch back; weights never
    move during a stall. The first slowdown (no history) is paid back over the work left."""
    sc, devs, pb, plan = _setup()
    slow = plan.stages[0].device
    present = {s.device: frozenset(range(s.start_module, s.end_module + 1)) for s in plan.stages}

    def bursts(t):  # 8 s at x2.5 every 40 s (the first at 10 s), then a long one from 290 s
        k = t % 40.0
        r = 2.5 if (t < 250 and 10.0 <= k < 18.0) or t >= 290 else 1.0
        return {d: (r if d == slow else 1.0) for d in plan.devices}

    bal, mon = _balancer(pb, min_interval_s=1.0)
    decs, _, _ = _feed(bal, mon, plan, present, bursts, 310, on_decision=lambda d, p, pr: (p, pr))  # never switches
    evals = [e for e in bal.log if e["candidates"]]
    late = [e for e in evals if e["t"] >= 290]
    assert late, "the long slowdown was never evaluated"
    for e in late:
        for c in e["candidates"]:
            assert c.horizon_basis.startswith("condition estimate")
            # what was seen: six completed slowdowns of about 8 s (+ the smoothing's lag)
            m = float(c.horizon_basis.split()[2])
            assert 4.0 <= m <= 20.0
            w = 5000 * c.old_value_s  # the work left, in seconds of the plan in force
            assert c.horizon_s == pytest.approx(m * (1 - math.exp(-w / m)), rel=0.01)
            # switching back (a drain, the sessions, and the new plan running after the end until it is
            # seen) weighted by the chance that the condition ends within the work left
            p_end = 1 - math.exp(-w / m)
            lag = bal.cfg.smoothing_s + bal.cfg.sustain_s
            assert p_end * (c.drain_s + c.session_s) - 1e-9 <= c.return_s <= p_end * (c.drain_s + c.session_s + lag)
            if c.verdict == "chosen":  # pays back its stall and the switch back within the estimate
                assert c.gain_s >= 1.5 * (c.cost_s + c.return_s)
                # no weights move during the stall: a shift, or weights streamed in the background
                assert c.kind == "stage" or not any(m.what == "weights" for m in c.moves)
            elif c.kind == "replan" and c.gain >= 0.05:  # the same plans switched at once do not pay
                assert c.gain_s < 1.5 * (c.cost_s + c.return_s)
    # the first slowdown (no history): the work left bounds the payback
    first = evals[0]
    assert first["t"] < 20 and all(c.horizon_basis == "remaining work" for c in first["candidates"])
    assert all(c.horizon_tokens == 5000 for c in first["candidates"])


def test_a_joining_phone_is_staged_in_the_background_then_switched_to():
    """A fast phone joins a cluster whose plan leaves room for it: the policy streams the weights
    (kind stage: its cost is the stall alone), and once they are present switches without moving
    weights."""
    sc, devs, pb, _ = _setup("balance-join", ["balancer.min_interval_s=5"])
    joiner = next(d.index for d in devs if d.absent)
    from llsim.alloc.adjust import adjusted_problem
    from llsim.alloc.strategies import allocate_problem

    plan = allocate_problem(adjusted_problem(pb, {}, {}, {d.index for d in devs if not d.absent}), "milp").plan
    present = {d.index: frozenset() for d in devs} | {
        s.device: frozenset(range(s.start_module, s.end_module + 1)) for s in plan.stages}
    bal, mon = _balancer(pb, min_interval_s=5.0)
    seen = []

    def apply(dec, p, pr):
        seen.append(dec)
        if dec.kind == "stage":  # the coordinator streams them: here they arrive at once
            return p, _arrived(pr, dec.moves)
        return dec.plan, pr

    _feed(bal, mon, plan, present, lambda t: {d: 1.0 for d in range(len(devs)) if d != joiner or t >= 10}, 40,
          remaining=2000, alive=lambda d, t: d != joiner or t >= 10, on_decision=apply)
    assert [d.kind for d in seen] == ["stage", "replan"]
    st, sw = seen
    assert joiner in st.plan.devices and st.trigger.startswith("joining")
    # streaming costs no stall: it starts at the first decision after the phone appears, before
    # join_after_s; the switch comes once the weights are there
    assert 10 <= st.t <= 10 + 1.0 < 10 + bal.cfg.join_after_s
    assert all(c.kind == "stage" for e in bal.log if e["t"] == st.t for c in e["candidates"])
    w = [m for m in st.moves if m.what == "weights"]
    assert w and st.background_s == pytest.approx(moves_time(pb, w))
    assert st.cost_s == pytest.approx(st.drain_s + st.transfer_s + st.session_s)
    assert st.transfer_s < st.background_s  # the stall has the KV cache, not the weights
    assert sw.plan.stages == st.plan.stages and sw.trigger.startswith("staged")
    assert not any(m.what == "weights" for m in sw.moves)


def test_failover_takes_the_plan_around_the_standby_copy_when_it_finishes_sooner():
    """The gone phone's stage is held by an idle phone: the failover moves (almost) no weights, and
    its choice is the candidate with the least cost + tokens x seconds per token (brute force over
    the logged candidates)."""
    sc, devs, pb, plan = _setup()
    idle = [d for d in range(pb.n_devices) if d not in plan.devices]
    assert idle
    gone = plan.stages[-1].device
    held = standby_replicas(pb, plan, idle)
    present = {s.device: frozenset(range(s.start_module, s.end_module + 1)) for s in plan.stages}
    present |= {d: frozenset(range(lo, hi + 1)) for d, (lo, hi) in held.items()}
    bal, mon = _balancer(pb)
    decs, _, _ = _feed(bal, mon, plan, present, lambda t: {}, 14, remaining=3000,
                       alive=lambda d, t: not (d == gone and t >= 10.0))
    f = decs[0]
    assert f.kind == "failover" and gone not in f.plan.devices
    cands = bal.log[-1]["candidates"]
    total = {id(c): c.cost_s + f.horizon_tokens * c.new_value_s for c in cands}
    assert total[id(f)] == pytest.approx(min(total.values()))
    alloc = min((c for c in cands if c.plan.strategy != "standby"), key=lambda c: total[id(c)])
    assert sum(m.nbytes for m in f.moves if m.what == "weights") <= sum(
        m.nbytes for m in alloc.moves if m.what == "weights")
    # without the standby copy the same failover moves more weights
    bal2, mon2 = _balancer(pb)
    bare = {s.device: present[s.device] for s in plan.stages}
    decs2, _, _ = _feed(bal2, mon2, plan, bare, lambda t: {}, 14, remaining=3000,
                        alive=lambda d, t: not (d == gone and t >= 10.0))
    assert sum(m.nbytes for m in decs2[0].moves if m.what == "weights") > sum(
        m.nbytes for m in f.moves if m.what == "weights")


def test_standby_copies_fit_their_budgets_and_cover_the_riskiest_stage_first():
    """Random clusters and plans: each standby range is contiguous and fits its phone as a stage;
    the fastest idle phone copies (part of) the stage of highest risk x bytes."""
    rng = np.random.default_rng(11)
    profiles = ["snapdragon-8gen2", "tensor-g3", "kirin-990", "exynos-1380", "helio-g85"]
    for trial in range(6):
        k = int(rng.integers(3, 6))
        devices = ", ".join(f"{{profile: {profiles[int(rng.integers(0, 5))]}, threads: 4}}" for _ in range(k))
        sc = load_scenario("balance-throttle", sets=[f"devices=[{devices}]", "model=bloom-560m"])
        devs = expand_devices(sc)
        pb = build_problem(sc, devs)
        n = pb.n_modules
        used = sorted(rng.choice(k, size=int(rng.integers(1, k)), replace=False).tolist())
        cuts = sorted(rng.choice(np.arange(1, n), size=len(used) - 1, replace=False).tolist())
        b = [0, *cuts, n]
        plan = Plan(tuple(StagePlan(d, b[i], b[i + 1] - 1) for i, d in enumerate(used)))
        idle = [d for d in range(k) if d not in used]
        risk = {d: float(rng.uniform(1, 4)) for d in range(k)}
        held = standby_replicas(pb, plan, idle, risk)
        for d, (lo, hi) in held.items():
            assert d in idle and 0 <= lo <= hi < n
            assert pb.stage_bytes(lo, hi) <= pb.budget[d]
        if held:
            speed = pb.thr.compute.sum(axis=1) + pb.overhead
            first = min(held, key=lambda d: (speed[d], d))
            ben = [risk[s.device] * pb.weight_bytes[s.start_module:s.end_module + 1].sum() for s in plan.stages]
            top = plan.stages[int(np.argmax(ben))]
            lo, hi = held[first]
            assert lo <= top.start_module <= hi  # it holds (the start of) that stage


# ---- end to end ------------------------------------------------------------------------------------
def _once(res, requests, new_tokens):
    keys = [(t["request"], t["token"]) for t in res.tokens]
    assert len(keys) == len(set(keys)) == requests * new_tokens


def test_header_failover_around_standby_copies_stalls_less_than_moving_weights():
    sets = ["workload.requests=16"]
    on = simulate(load_scenario("balance-leave-rejoin", sets=sets), timeline=False)[0]
    bare = simulate(load_scenario("balance-leave-rejoin", sets=sets + ["balancer.standby_replicas=false"]),
                    timeline=False)[0]
    for r in (on, bare):
        assert r.metrics["requests_completed"] == 16
        _once(r, 16, 64)
    f_on = next(r for r in taken(on.rebalances) if r["kind"] == "failover")
    f_bare = next(r for r in taken(bare.rebalances) if r["kind"] == "failover")
    assert f_on["actual_stall_s"] <= 10.0 < f_bare["actual_stall_s"]
    assert f_on["moved_bytes"] < f_bare["moved_bytes"]


def test_joining_phone_end_to_end_is_staged_then_used():
    sc = load_scenario("balance-join", sets=["workload.requests=20"])
    on = simulate(sc, timeline=False)[0]
    off = simulate(load_scenario("balance-join", sets=["workload.requests=20", "balancer.enabled=false"]),
                   timeline=False)[0]
    _once(on, 20, 64)
    rows = on.rebalances
    stage = [r for r in rows if r["chosen"] and r["kind"] == "stage"]
    assert stage and stage[0]["time_s"] >= 20.0 and "snapdragon-8gen2-0" in stage[0]["new_plan"]
    switch = [r for r in taken(rows) if r["trigger"].startswith("staged")]
    assert switch and switch[0]["time_s"] > stage[0]["time_s"]
    # the stall is not the background transfer
    assert switch[0]["actual_stall_s"] < stage[0]["predicted_background_s"]
    assert on.metrics["tokens_per_s"] > 1.1 * off.metrics["tokens_per_s"]


def test_lone_phone_throttle_moves_to_the_standby_copy_without_moving_weights():
    on = simulate(load_scenario("balance-lone-throttle"), timeline=False)[0]
    _once(on, 30, 64)
    acts = taken(on.rebalances)
    # the KV cache of the request in flight moves, not the 2.2 GB of weights
    assert acts and acts[0]["time_s"] > 40.0 and acts[0]["moved_bytes"] < 0.05 * 2.2e9
    assert acts[0]["actual_stall_s"] < 3.0
