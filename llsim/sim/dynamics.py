"""Cluster dynamics in the simulator, and the coordinator that runs the balancer against them.

The scenario's ``events`` (each kind's schema and action: :mod:`llsim.events`) change the ground
truth (a phone's speed, its cores taken by another app, its Wi-Fi signal, whether it is there at
all). The coordinator sees none of it directly: it
feeds a :class:`~llsim.balance.monitor.Monitor` with what phones report (stage times, heartbeats
carrying their link rate) and, every ``balancer.interval_s``, asks the pure
:class:`~llsim.balance.policy.Balancer` for a decision, which it then carries out:

* ``shift`` / ``replan``: the header stops admitting steps, in-flight steps finish (drain), the
  weights and KV-cache entries that must move are sent over the simulated Wi-Fi, each phone opens
  sessions for its new modules, the new plan takes over; replicas for the new plan are then
  staged in the background;
* ``failover``: a phone stopped answering heartbeats; steps that involved it are abandoned, the
  remaining phones take over, and each in-flight request is retried from its last completed token
  (in kv_cache mode with its context recomputed, since part of its KV cache is gone);
* ``terminal``: the model no longer fits the phones left; the run ends with that reason.
"""
from __future__ import annotations

import math

import numpy as np
import simpy


def setup_dynamics(sim) -> None:
    sc = sim.sc
    for i, spec_ev in enumerate(sc.events):  # each kind's handler: llsim.events
        spec_ev.start(sim, f"{sc.path or 'scenario'}: events[{i}]")
    for dev in sim.devices:
        if dev.absent:
            sim.nodes[dev.index].leave()
    if sc.balancer.enabled:
        from llsim.alloc.problem import build_problem
        from llsim.balance.monitor import Monitor
        from llsim.balance.policy import Balancer

        b = sc.balancer
        monitor = Monitor(len(sim.devices), b.smoothing_s, b.heartbeat_s, b.heartbeat_misses, b.min_samples)
        problem = build_problem(sc, sim.devices)
        nominal = {d.index: sim.net.phy_rate_mbps(d.index) for d in sim.devices}
        sim.attach_balancer(monitor, Balancer(b, problem, {k: v for k, v in nominal.items() if v},
                                              [d.name for d in sim.devices]), problem)
        if b.overlap_replicas:
            from llsim.balance.replicas import overlap_replicas

            sim.hold_replicas(overlap_replicas(sim.problem, sim.plan))
        sim.env.process(_coordinator(sim))


# ---- the coordinator --------------------------------------------------------------------------------
PROBE_S = 5.0  # idle phones run a one-module probe this often, so a recovered phone is noticed


def _coordinator(sim):
    from llsim.balance.policy import ClusterState

    env, cfg, mon, pol = sim.env, sim.sc.balancer, sim.monitor, sim.balancer
    tick = min(cfg.interval_s, cfg.heartbeat_s)
    next_decide, next_probe = 0.0, PROBE_S
    w = sim.sc.workload
    total = w.requests * w.new_tokens
    while not sim.done.triggered:
        yield env.timeout(tick)
        now = env.now
        for d, node in sim.nodes.items():
            if not node.dead:
                beat = math.floor(now / cfg.heartbeat_s + 1e-9) * cfg.heartbeat_s
                mon.heartbeat(d, beat, sim.net.phy_rate_mbps(d))
        if now >= next_probe:
            next_probe = now + PROBE_S
            running = set(sim.epoch.devs)
            for d, node in sim.nodes.items():
                if d not in running and not node.dead:
                    mon.stage_time(d, now, node.probe_seconds(1.0), 1.0)  # the probe's time as the phone reports it
        if sim.switching or now < next_decide - 1e-9:
            continue
        next_decide = now + cfg.interval_s
        snap = mon.snapshot(now)
        cs = ClusterState(now, sim.epoch.plan, dict(sim.present), total - len(sim.tokens),
                          sim.inflight_cached_tokens())
        dec = pol.decide(snap, cs)
        if dec is not None:
            yield from _apply(sim, dec)


def _apply(sim, dec):
    """Carry out the balancer's decision ``dec`` (see the module docstring)."""
    env = sim.env
    t0 = env.now
    sim.begin_switch()
    old = sim.epoch
    names = [d.name for d in sim.devices]
    row = {"time_s": t0, "trigger": dec.trigger, "kind": dec.kind, "predicted_cost_s": dec.cost_s,
           "predicted_drain_s": dec.drain_s, "predicted_transfer_s": dec.transfer_s,
           "predicted_session_s": dec.session_s, "predicted_gain": dec.gain, "predicted_gain_s": dec.gain_s,
           "old_ms_per_token": (dec.old_value_s or 0.0) * 1e3, "new_ms_per_token": (dec.new_value_s or 0.0) * 1e3,
           "old_plan": _plan_str(old.plan, names), "new_plan": _plan_str(dec.plan, names) if dec.plan else "",
           "moved_bytes": sum(m.nbytes for m in dec.moves), "actual_stall_s": None}
    sim.rebalances.append(row)
    sim.mark(f"{dec.kind}: {dec.trigger}", None, cost_s=dec.cost_s, gain=dec.gain)
    if dec.kind == "terminal":
        sim.end_run(f"terminal at t={t0:.2f}s after {dec.trigger}: {dec.reason}")
        return
    sim.close_gate()
    if dec.kind == "failover":
        sim.abandon_plan(lose_kv=True)
    else:
        drained = sim.drain()
        if drained is not None:
            yield drained
    t_drained = env.now
    yield from _move(sim, dec)
    t_moved = env.now
    if dec.session_s:
        yield env.timeout(dec.session_s)
    replicas = None
    if sim.sc.balancer.overlap_replicas:
        from llsim.balance.replicas import overlap_replicas

        replicas = overlap_replicas(sim.problem, dec.plan)
    for mv in dec.moves:
        if mv.what == "weights":
            sim.add_weights(mv.dst, mv.module)
    new = sim.switch_plan(dec.plan, dec.kind, replicas, keep_kv=dec.kind != "failover")
    row.update(actual_stall_s=env.now - t0, actual_drain_s=t_drained - t0, actual_transfer_s=t_moved - t_drained)
    sim.span(f"{dec.kind} (stall)", t0, {"trigger": dec.trigger, "new_plan": row["new_plan"]})
    sim.mark(f"plan {new.index} in force", None, plan=row["new_plan"])
    if replicas:
        sim.stage_replicas(replicas, sim.problem.weight_bytes)


def _move(sim, dec):
    """The weights and KV-cache entries the decision moves, sent at once; waits for them all."""
    env = sim.env
    evs = []
    for mv in dec.moves:
        if mv.src is None:  # from the coordinator's model store, behind the AP: the receiver's downlink
            evs.append(env.timeout(mv.nbytes * sim.problem.lat.links.inb[mv.dst]))
        elif not sim.nodes[mv.src].dead:
            evs.append(sim.net.transfer(mv.src, mv.dst, int(mv.nbytes), f"{mv.what} m{mv.module}"))
    if evs:
        yield simpy.AllOf(env, evs)


def _plan_str(plan, names) -> str:
    return " ".join(f"{names[s.device]}:{s.start_module}-{s.end_module}" for s in plan.stages)


def windowed_throughput(tokens: list[dict], end: float, window_s: float) -> list[dict]:
    n = max(1, int(math.ceil(end / window_s)))
    counts = np.zeros(n)
    for t in tokens:
        counts[min(int(t["time_s"] / window_s), n - 1)] += 1
    return [{"t_s": i * window_s, "tokens_per_s": float(c / window_s)} for i, c in enumerate(counts)]


def dynamic_metrics(sim, makespan: float) -> dict:
    window = 5.0
    out = {"throughput_windows": {"window_s": window,
                                  "series": windowed_throughput(sim.tokens, makespan, window) if makespan else []},
           "rebalances": len(sim.rebalances), "retried_steps": sim.retried_steps,
           "balancer_enabled": sim.sc.balancer.enabled}
    if sim.balancer is not None:
        out["balancer_evaluations"] = sim.balancer.evaluations
        out["balancer_evaluations_not_repeated"] = sim.balancer.skipped
    return out
