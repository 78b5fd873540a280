"""Cluster dynamics in the simulator, and the coordinator that runs the balancer against them.

The scenario's ``events`` change the ground truth (a phone's speed, its cores taken by another
app, its Wi-Fi signal, whether it is there at all). The coordinator sees none of it directly: it
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

from llsim.errors import LLSimError
from llsim.scenario import BurstsEvent, NoiseEvent, ThermalEvent


def _device(sim, ref, where: str) -> int:
    names = {d.name: d.index for d in sim.devices}
    if isinstance(ref, int) and 0 <= ref < len(sim.devices):
        return ref
    if isinstance(ref, str) and ref in names:
        return names[ref]
    raise LLSimError(f"{where}: no device {ref!r}; use an index 0..{len(sim.devices) - 1} or one of "
                     f"{', '.join(names)}")


def _devices(sim, refs, where: str) -> list[int]:
    return list(range(len(sim.devices))) if refs is None else [_device(sim, r, where) for r in refs]


def setup_dynamics(sim) -> None:
    sc = sim.sc
    for i, spec_ev in enumerate(sc.events):
        where = f"{sc.path or 'scenario'}: events[{i}]"
        if isinstance(spec_ev, ThermalEvent):
            for d in _devices(sim, spec_ev.devices, where):
                th = sim.devices[d].profile.thermal
                sim.nodes[d].thermal = (th.time_to_throttle_s, th.sustained_speed / th.peak_speed)
        elif isinstance(spec_ev, NoiseEvent):
            for d in _devices(sim, spec_ev.devices, where):
                sim.nodes[d].noise = spec_ev.sigma
        elif isinstance(spec_ev, BurstsEvent):
            for d in _devices(sim, spec_ev.devices, where):
                sim.env.process(_bursts(sim, d, spec_ev))
        else:
            d = _device(sim, spec_ev.device, where)
            sim.env.process(_event(sim, d, spec_ev))
    for dev in sim.devices:
        if dev.absent:
            sim.nodes[dev.index].dead = True
    if sc.balancer.enabled:
        from llsim.alloc.problem import build_problem
        from llsim.balance.monitor import Monitor
        from llsim.balance.policy import Balancer

        b = sc.balancer
        sim.monitor = Monitor(len(sim.devices), b.smoothing_s, b.heartbeat_s, b.heartbeat_misses, b.min_samples)
        sim.problem = build_problem(sc, sim.devices)
        nominal = {d.index: sim.net.phy_rate_mbps(d.index) for d in sim.devices}
        sim.balancer = Balancer(b, sim.problem, {k: v for k, v in nominal.items() if v},
                                [d.name for d in sim.devices])
        if b.overlap_replicas:
            from llsim.balance.replicas import overlap_replicas

            held = overlap_replicas(sim.problem, sim.plan)
            sim.present = {d: frozenset(range(lo, hi + 1)) for d, (lo, hi) in held.items()} | {
                d: frozenset() for d in sim.nodes if d not in held}
            sim.epoch = sim._make_epoch(sim.plan, 0, replicas=held)
        sim.env.process(_coordinator(sim))


def _event(sim, d: int, ev):
    env, node = sim.env, sim.nodes[d]
    yield env.timeout(ev.at)
    if ev.kind == "throttle":
        node.throttle = ev.factor
        node.update_speed()
        sim.mark(f"throttle x{ev.factor:g}", d)
        if ev.duration_s:
            yield env.timeout(ev.duration_s)
            node.throttle = 1.0
            node.update_speed()
            sim.mark("throttle ends", d)
    elif ev.kind == "background":
        node.background.append(ev.share)
        node.update_speed()
        sim.mark(f"background load {ev.share:.0%}", d)
        yield env.timeout(ev.duration_s)
        node.background.remove(ev.share)
        node.update_speed()
        sim.mark("background load ends", d)
    elif ev.kind == "rssi":
        try:
            sim.net.set_rssi(d, ev.rssi_dbm)
            sim.mark(f"RSSI {ev.rssi_dbm:g} dBm", d)
        except LLSimError:
            _leave(sim, d, f"out of range at {ev.rssi_dbm:g} dBm")
    elif ev.kind == "leave":
        _leave(sim, d, ev.reason)
    elif ev.kind == "join":
        if node.dead:
            node.dead = False
            node.kv_tokens = 0
            sim.mark("join", d)


def _leave(sim, d: int, reason: str) -> None:
    node = sim.nodes[d]
    if node.dead:
        return
    node.dead = True
    sim.mark(f"leave ({reason})", d)
    if sim.balancer is None and d in sim.epoch.devs:
        sim.stop_note = f"{sim.devices[d].name} left ({reason}) and the balancer is off"


def _bursts(sim, d: int, ev):
    env, node, rng = sim.env, sim.nodes[d], sim.dyn_rng
    t = ev.start_s
    while True:
        t += float(rng.exponential(1.0 / ev.rate_per_s))
        if ev.end_s is not None and t > ev.end_s:
            return
        length = float(rng.exponential(ev.mean_duration_s))
        if t > env.now:
            yield env.timeout(t - env.now)
        if sim.done.triggered:
            return
        node.background.append(ev.share)
        node.update_speed()
        sim.mark(f"background burst {ev.share:.0%} for {length:.1f}s", d)
        env.process(_burst_end(sim, d, ev.share, length))


def _burst_end(sim, d, share, length):
    yield sim.env.timeout(length)
    node = sim.nodes[d]
    node.background.remove(share)
    node.update_speed()


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
                    mon.stage_time(d, now, 1.0 / node.speed, 1.0)  # the probe's time as the phone reports it
        if sim.switching or now < next_decide - 1e-9:
            continue
        next_decide = now + cfg.interval_s
        snap = mon.snapshot(now)
        cs = ClusterState(now, sim.epoch.plan, dict(sim.present), total - len(sim.tokens),
                          sum(sim.req_cached.values()))
        dec = pol.decide(snap, cs)
        if dec is not None:
            yield from _apply(sim, dec)


def _apply(sim, dec):
    env = sim.env
    t0 = env.now
    sim.switching = True
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
        sim.error = f"terminal at t={t0:.2f}s after {dec.trigger}: {dec.reason}"
        old.broken = True
        old.ended.succeed()
        if not sim.done.triggered:
            sim.done.succeed()
        sim.switching = False
        return
    sim.gate = env.event()
    if dec.kind == "failover":
        old.broken = True
        old.ended.succeed()
        sim.lost_kv.update(sim.req_cached)
    elif sim.active:
        sim._drained = env.event()
        yield sim._drained
    t_drained = env.now
    evs = []
    for mv in dec.moves:
        if mv.src is None:  # from the coordinator's model store, behind the AP: the receiver's downlink
            evs.append(env.timeout(mv.nbytes * sim.problem.lat.links.inb[mv.dst]))
        elif not sim.nodes[mv.src].dead:
            evs.append(sim.net.transfer(mv.src, mv.dst, int(mv.nbytes), f"{mv.what} m{mv.module}"))
    if evs:
        yield simpy.AllOf(env, evs)
    t_moved = env.now
    if dec.session_s:
        yield env.timeout(dec.session_s)
    replicas = None
    if sim.sc.balancer.overlap_replicas:
        from llsim.balance.replicas import overlap_replicas

        replicas = overlap_replicas(sim.problem, dec.plan)
    for mv in dec.moves:
        if mv.what == "weights":
            sim.present[mv.dst] = sim.present[mv.dst] | {mv.module}
    new = sim._make_epoch(dec.plan, old.index + 1, replicas=replicas)
    cached = sum(sim.req_cached.values()) if dec.kind != "failover" else 0
    for node in sim.nodes.values():
        node.kv_tokens = cached if node in new.nodes else 0
    sim.epoch = new
    sim.plan_history.append((env.now, dec.kind, dec.plan))
    if not old.ended.triggered:
        old.ended.succeed()
    gate, sim.gate = sim.gate, None
    gate.succeed()
    sim.switching = False
    row.update(actual_stall_s=env.now - t0, actual_drain_s=t_drained - t0, actual_transfer_s=t_moved - t_drained)
    sim.timeline.append({"kind": "span", "name": f"{dec.kind} (stall)", "start": t0, "end": env.now,
                         "args": {"trigger": dec.trigger, "new_plan": row["new_plan"]}})
    sim.mark(f"plan {new.index} in force", None, plan=row["new_plan"])
    if replicas:
        for d, (lo, hi) in replicas.items():
            want = [m for m in range(lo, hi + 1) if m not in sim.present[d]]
            for m in want:
                src = next((s for s in new.devs if m in sim.present[s] and s != d and not sim.nodes[s].dead), None)
                if src is not None:
                    env.process(_stage_replica(sim, src, d, m))


def _stage_replica(sim, src, dst, m):
    nb = int(sim.problem.weight_bytes[m])
    yield sim.net.transfer(src, dst, nb, f"replica m{m}")
    if not sim.nodes[dst].dead and m not in sim.present[dst]:
        sim.present[dst] = sim.present[dst] | {m}
        lo, hi = sim.replica_target.get(dst, (0, -1))
        if lo <= m <= hi:
            sim.nodes[dst].static_bytes += nb


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
