"""Issue 20, second round: the KV-cache pre-copy before a staged switch, and recoveries answered within
``min_interval_s`` by changes that move no weights. The pure policy on recorded sequences first (no
simulator), then end to end."""
from __future__ import annotations

import pytest
from test_balance_standby import _arrived, _balancer, _feed, _setup

from llsim.balance.policy import ClusterState, moves_time, per_token_s, switch_cost
from llsim.judge.run import simulate
from llsim.scenario import load_scenario
from llsim.sim.dynamics import taken


def _join_setup():
    from llsim.alloc.adjust import adjusted_problem
    from llsim.alloc.strategies import allocate_problem

    sc, devs, pb, _ = _setup("balance-join")
    joiner = next(d.index for d in devs if d.absent)
    plan = allocate_problem(adjusted_problem(pb, {}, {}, {d.index for d in devs if not d.absent}), "milp").plan
    present = {d.index: frozenset() for d in devs} | {
        s.device: frozenset(range(s.start_module, s.end_module + 1)) for s in plan.stages}
    return devs, pb, joiner, plan, present


def test_staged_switch_precopies_the_kv_cache_and_the_stall_moves_only_the_rest():
    devs, pb, joiner, plan, present = _join_setup()
    bal, mon = _balancer(pb, min_interval_s=5.0)
    cached, copied = 400, 300
    state = {"copy": None}
    seen = []

    def cs_at(t, p, pr):
        return ClusterState(t, p, pr, 2000, cached, state["copy"])

    p, pr, t = plan, present, 0.0
    while t <= 40 and len(seen) < 3:
        for d in range(len(devs)):
            if d != joiner or t >= 10:
                mon.heartbeat(d, t, bal.nominal_link.get(d))
                mon.stage_time(d, t, 0.05, 0.05)
        if abs(t * 2 - round(t * 2)) < 1e-9:
            dec = bal.decide(mon.snapshot(t), cs_at(t, p, pr))
            if dec is not None:
                seen.append((t, dec))
                if dec.kind == "stage":  # the weights arrive at once
                    pr = _arrived(pr, dec.moves)
                elif dec.kind == "precopy":
                    assert bal.decide(mon.snapshot(t + 0.5), cs_at(t + 0.5, p, pr)) is None  # waits for it
                    state["copy"] = copied
                else:
                    p = dec.plan
        t = round(t + 0.05, 6)
    kinds = [d.kind for _, d in seen]
    assert kinds == ["stage", "precopy", "replan"]
    st, pc, sw = (d for _, d in seen)
    # the pre-copy moves exactly the KV cache the switch would move now, phone to phone
    full = switch_cost(pb, plan, st.plan, pr, set(range(len(devs))), cached, 0.0, 0.03)
    kv_full = sorted((m.module, m.src, m.dst, m.nbytes) for m in full.moves if m.what == "kv")
    assert kv_full and sorted((m.module, m.src, m.dst, m.nbytes) for m in pc.moves) == kv_full
    assert all(m.what == "kv" and m.src is not None for m in pc.moves)
    # the switch moves no weights and a quarter of the KV bytes (100 of 400 tokens were not copied)
    assert not any(m.what == "weights" for m in sw.moves)
    kv_sw = sum(m.nbytes for m in sw.moves if m.what == "kv")
    assert kv_sw == pytest.approx(sum(x[3] for x in kv_full) * (cached - copied) / cached)
    assert sw.plan.stages == st.plan.stages and sw.cost_s < st.cost_s + 1e-9


def test_the_precopy_starts_while_the_weights_stream_so_both_end_together():
    """A joining phone's plan is staged (its weights streaming for ``background_s``): the KV-cache
    pre-copy is asked for once the streaming's predicted remainder is no longer than the copy's own
    time, not before and not only after the last module; the switch waits for both."""
    devs, pb, joiner, plan, present = _join_setup()
    bal, mon = _balancer(pb, min_interval_s=5.0)
    cached = 400
    state = {"copy": None, "weights": False}
    seen, stage = [], None
    t, pr = 0.0, present
    while t <= 80 and len(seen) < 3:
        for d in range(len(devs)):
            if d != joiner or t >= 10:
                mon.heartbeat(d, t, bal.nominal_link.get(d))
                mon.stage_time(d, t, 0.05, 0.05)
        if stage is not None and not state["weights"] and t >= stage.t + stage.background_s:
            state["weights"] = True  # the streaming ends as predicted
            pr = _arrived(pr, stage.moves)
        if abs(t * 2 - round(t * 2)) < 1e-9:
            dec = bal.decide(mon.snapshot(t), ClusterState(t, plan, pr, 2000, cached, state["copy"]))
            if dec is not None:
                seen.append(dec)
                if dec.kind == "stage":
                    stage = dec
                elif dec.kind == "precopy":
                    pc_t = t
                    state["copy"] = cached
        t = round(t + 0.05, 6)
    assert [d.kind for d in seen] == ["stage", "precopy", "replan"]
    stage, pc, sw = seen
    end = stage.t + stage.background_s
    # asked at the first half-second tick where the remainder fits in the copy's time
    assert end - pc.background_s - 1e-9 <= pc_t < end - pc.background_s + 0.5
    assert pc_t < end  # before the last module arrived
    assert sw.t >= end and sw.plan.stages == stage.plan.stages


def test_a_switch_whose_weights_are_present_precopies_its_kv_cache_first():
    """A phone of the plan slows down (x3) with 400 tokens of KV cache in flight; the overlap replicas
    hold every module the answer needs. The policy's pick copies the cache in the background first
    (kind precopy, then the shift or re-plan): priced as the same switch with only the cache
    generated during the copy moved in the stall (the copy's time / seconds per token), its gain
    starting after the copy. It waits for the copy, then switches moving (cached - copied) tokens."""
    from llsim.balance.replicas import overlap_replicas

    sc, devs, pb, plan = _setup()
    slow = plan.stages[0].device
    present = {d: frozenset(range(lo, hi + 1)) for d, (lo, hi) in overlap_replicas(pb, plan).items()}
    bal, mon = _balancer(pb)
    cached, copied = 400, 390
    state = {"copy": None}
    seen, t, p = [], 0.0, plan
    while t <= 40 and len(seen) < 2:
        for d in p.devices:
            mon.heartbeat(d, t, bal.nominal_link.get(d))
            mon.stage_time(d, t, (3.0 if d == slow and t >= 5 else 1.0) * 0.05, 0.05)
        if abs(t - round(t)) < 1e-9:
            dec = bal.decide(mon.snapshot(t), ClusterState(t, p, present, 5000, cached, state["copy"]))
            if dec is not None:
                seen.append(dec)
                if dec.kind == "precopy":
                    assert bal.decide(mon.snapshot(t), ClusterState(t, p, present, 5000, cached)) is None
                    state["copy"] = copied
                else:
                    p = dec.plan
        t = round(t + 0.05, 6)
    assert [d.kind for d in seen][:1] == ["precopy"] and len(seen) == 2
    pc, sw = seen
    assert pc.then in ("shift", "replan") and sw.kind == pc.then and sw.plan.stages == pc.plan.stages
    # the twin of the plain switch: the same plan and KV moves, nothing else
    ev = next(e for e in bal.log if e["t"] == pc.t)
    plain = next(c for c in ev["candidates"] if c.kind == pc.then and c.plan.stages == pc.plan.stages)
    kv = [m for m in plain.moves if m.what == "kv"]
    assert kv and not any(m.what == "weights" for m in plain.moves)
    assert sorted((m.module, m.src, m.dst, m.nbytes) for m in pc.moves) == sorted(
        (m.module, m.src, m.dst, m.nbytes) for m in kv)
    assert pc.background_s == pytest.approx(moves_time(pb, kv))
    v_old = pc.old_value_s
    grown = pc.background_s / v_old
    delta = moves_time(pb, [type(m)(m.module, m.src, m.dst, m.nbytes * grown / cached, "kv") for m in kv])
    assert pc.cost_s == pytest.approx(plain.drain_s + delta + plain.session_s)
    assert pc.cost_s < plain.cost_s and pc.gain_s < plain.gain_s  # cheaper stall, later gain
    # the switch: 10 of the 400 tokens were not copied
    assert sum(m.nbytes for m in sw.moves if m.what == "kv") == pytest.approx(
        sum(m.nbytes for m in kv) * (cached - copied) / cached)
    assert per_token_s(bal.problem(mon.snapshot(t)), sw.plan) < v_old


def test_recovery_within_min_interval_is_answered_with_weights_present_only():
    """A phone slows down (x3) and recovers 6 s after the action: with min_interval_s = 60 the policy
    still evaluates the recovery, and only candidates that move no weights are priced; so is a new
    slowdown of another phone within min_interval_s (a condition no action answered)."""
    sc, devs, pb, plan = _setup()
    slow = plan.stages[0].device
    other = plan.stages[-1].device
    present = {s.device: frozenset(range(s.start_module, s.end_module + 1)) for s in plan.stages}

    def seq(t):
        r = {d: 1.0 for d in plan.devices}
        if 10 <= t < 26:
            r[slow] = 3.0
        if t >= 50:
            r[other] = 3.0
        return r

    def apply(dec, p, pr):  # a staging's weights arrive at once
        if dec.kind == "stage":
            return p, _arrived(pr, dec.moves)
        return dec.plan, pr

    bal, mon = _balancer(pb, min_interval_s=60.0)
    _feed(bal, mon, plan, present, seq, 75, remaining=5000, on_decision=apply)
    evals = [e for e in bal.log if not e["trigger"].startswith("staged")]
    assert evals and evals[0]["t"] < 26 and evals[0]["taken"] != "none"
    first = max(e["t"] for e in bal.log if e["t"] < 26)  # the action (a switch, or a staged one)
    rec = [e for e in evals[1:] if e["t"] - first < 60]
    assert rec, "the recovery was not evaluated within min_interval_s"
    assert any("recovery" in e["trigger"] and "speedup" in e["trigger"] for e in rec)
    for e in rec:
        # the recovery once the phone is faster again; the other phone's slowdown (t >= 50) is a new condition
        assert ("recovery" in e["trigger"] and e["t"] >= 26) or ("new condition" in e["trigger"] and e["t"] >= 50)
        for c in e["candidates"]:
            assert c.kind != "stage" and not any(m.what == "weights" for m in c.moves)


@pytest.mark.slow
def test_join_end_to_end_precopy_cuts_the_stall_and_loses_nothing():
    sc = load_scenario("balance-join")
    res, _, _ = simulate(sc, timeline=False)
    rows = res.rebalances
    pre = [r for r in rows if r["kind"] == "precopy" and r["chosen"]]
    sw = [r for r in taken(rows) if r["trigger"].startswith("staged")]
    assert len(pre) == 1 and len(sw) == 1
    assert sw[0]["time_s"] > pre[0]["time_s"]
    # the stall's KV transfer is a fraction of what the pre-copy moved (only what was generated since)
    assert sw[0]["moved_bytes"] < 0.5 * pre[0]["moved_bytes"]
    assert sw[0]["actual_stall_s"] == pytest.approx(sw[0]["predicted_cost_s"], rel=0.25)
    keys = [(t["request"], t["token"]) for t in res.tokens]
    assert len(keys) == len(set(keys)) == sc.workload.requests * sc.workload.new_tokens


def test_expected_useful_time_and_end_probability_match_monte_carlo():
    import math

    import numpy as np

    from llsim.balance.horizon import ends_within, expected_useful

    rng = np.random.default_rng(7)
    for m, w, b in [(10.0, 30.0, 0.0), (10.0, 5.0, 0.0), (20.0, 60.0, 12.0), (5.0, 100.0, 30.0), (8.0, 4.0, 6.0)]:
        tt = rng.exponential(m, 400_000)
        mc = np.maximum(0.0, np.minimum(tt, w) - b).mean()
        assert expected_useful(m, w, b) == pytest.approx(mc, rel=0.01, abs=1e-3)
        assert ends_within(m, w) == pytest.approx((tt < w).mean(), abs=0.005)
    assert expected_useful(math.inf, 30.0, 10.0) == 20.0 and ends_within(math.inf, 30.0) == 0.0
    assert expected_useful(10.0, math.inf) == pytest.approx(10.0)


def test_a_phone_that_just_appeared_is_only_staged_and_a_rejected_staging_does_not_hold_back_the_join():
    """Before join_after_s only stage candidates are priced; if none pays (here: three tokens left),
    the regular join evaluation still follows at join_after_s, with every kind of candidate."""
    devs, pb, joiner, plan, present = _join_setup()
    bal, mon = _balancer(pb, min_interval_s=5.0)
    _feed(bal, mon, plan, present, lambda t: {d: 1.0 for d in range(len(devs)) if d != joiner or t >= 10}, 20,
          remaining=3, alive=lambda d, t: d != joiner or t >= 10)
    young = [e for e in bal.log if e["trigger"].startswith("joining")]
    late = [e for e in bal.log if e["trigger"].startswith("join ")]
    assert len(young) == 1 and young[0]["t"] < 10 + bal.cfg.join_after_s and young[0]["taken"] == "none"
    assert young[0]["candidates"] and all(c.kind == "stage" for c in young[0]["candidates"])
    assert late and late[0]["t"] >= 10 + bal.cfg.join_after_s
    assert {c.kind for c in late[0]["candidates"]} > {"stage"}  # re-plans switched at once are priced too


@pytest.mark.slow
def test_the_coordinator_acts_when_the_staging_ends_not_at_the_next_tick():
    """The staging's streams (here all from the model store: each receiver's downlink, deterministic)
    end at the stage decision + its predicted streaming time. The pre-copy is asked for at the first
    tick where that remainder fits in the copy's time; the switch follows the end of both (the later
    one: the coordinator is told when a transfer completes), not the next heartbeat tick."""
    sc = load_scenario("balance-join", sets=["balancer.heartbeat_s=1.0", "balancer.interval_s=1.0"])
    res, _, _ = simulate(sc, timeline=False)
    rows = res.rebalances
    st = [r for r in rows if r["kind"] == "stage" and r["chosen"]]
    pre = [r for r in rows if r["kind"] == "precopy" and r["chosen"]]
    sw = [r for r in taken(rows) if r["trigger"].startswith("staged")]
    assert len(st) == len(pre) == len(sw) == 1
    stream_end = st[0]["time_s"] + st[0]["predicted_background_s"]
    copy = pre[0]["predicted_background_s"]
    assert stream_end - copy - 1e-6 <= pre[0]["time_s"] < stream_end - copy + 1.0 + 1e-6
    assert pre[0]["time_s"] < stream_end
    # the pre-copy shares the medium with the pipeline (at least its predicted time); the switch comes
    # when the later of the two ends, within a fraction of the tick, off the 1 s grid
    done = max(stream_end, pre[0]["time_s"] + copy)
    assert done - 0.02 <= sw[0]["time_s"] < done + 0.5
    assert abs(sw[0]["time_s"] - round(sw[0]["time_s"])) > 0.02
    keys = [(t["request"], t["token"]) for t in res.tokens]
    assert len(keys) == len(set(keys)) == sc.workload.requests * sc.workload.new_tokens
