"""Cluster dynamics in the simulator, and the coordinator that runs the balancer against them.

The scenario's ``events`` (each kind's schema and action: :mod:`llsim.events`) change the ground
truth (a phone's speed, its cores taken by another app, its Wi-Fi signal, whether it is there at
all). The coordinator sees none of it directly: it
feeds a :class:`~llsim.balance.monitor.Monitor` with what phones report (stage times, heartbeats
carrying their link rate) and, every ``balancer.interval_s``, asks the pure
:class:`~llsim.balance.policy.Balancer` for a decision, which it then carries out:

* ``shift`` / ``replan``: the header stops admitting steps, in-flight steps finish (drain), the
  weights and KV-cache entries that must move are sent over the simulated Wi-Fi, each phone opens
  sessions for its new modules, the new plan takes over; replicas for the new plan (overlap
  replicas on its phones, standby copies on the idle ones) are then staged in the background;
* ``stage``: the weights of the plan the policy wants are streamed in the background, module by
  module, while the current plan keeps running; once they are all there the policy decides the
  switch (a ``replan`` that moves only KV cache);
* ``failover``: a phone stopped answering heartbeats; steps that involved it are abandoned, the
  remaining phones take over, and each in-flight request is retried from its last completed token
  (in kv_cache mode with its context recomputed, since part of its KV cache is gone);
* ``terminal``: the model no longer fits the phones left; the run ends with that reason.

Weights come from the phone the policy named (over the simulated medium) or from the coordinator's
model store, behind the access point: the receiver's downlink, one module after another per
receiver (:func:`llsim.balance.policy.moves_time` predicts exactly this schedule).

Every evaluation's candidates, with the policy's verdict on each, become rows of ``rebalances.csv``
(:data:`REBALANCE_COLUMNS`, docs/balancer.md); the chosen one also gets the actual stall.
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
        held = _replicas(sim, sim.plan, {d.index for d in sim.devices if not d.absent})
        if held:
            sim.hold_replicas(held)  # deployed with the initial plan
        sim.env.process(_coordinator(sim))


def _replicas(sim, plan, alive: set[int]) -> dict[int, tuple[int, int]]:
    """The replicas to hold for ``plan``: overlap replicas on its phones, standby copies on the idle
    phones alive (chosen by the balancer's risk estimates)."""
    from llsim.balance.replicas import overlap_replicas, standby_replicas

    b = sim.sc.balancer
    held = overlap_replicas(sim.problem, plan) if b.overlap_replicas else {}
    if b.standby_replicas:
        idle = [d for d in sorted(alive) if d not in plan.devices]
        held.update(standby_replicas(sim.problem, plan, idle, sim.balancer.risk()))
    return held


# ---- the coordinator --------------------------------------------------------------------------------
PROBE_S = 5.0  # idle phones run a one-module probe this often, so a recovered phone is noticed
DRAIN_SLACK = 4.0  # a drain is cut at max(balancer.drain_limit_s, this x its predicted time)


def _coordinator(sim):
    from llsim.balance.policy import ClusterState

    env, cfg, mon, pol = sim.env, sim.sc.balancer, sim.monitor, sim.balancer
    tick = min(cfg.interval_s, cfg.heartbeat_s)
    next_decide, next_probe = 0.0, PROBE_S
    w = sim.sc.workload
    total = w.requests * w.new_tokens
    names = [d.name for d in sim.devices]
    logged = 0
    stream = None  # the background staging of a ``stage`` decision
    precopy = None  # its KV-cache pre-copy: [the in-flight requests' cached tokens when it began, done]
    ends = []  # the staging's background work (its streams, its pre-copy): the coordinator wakes when it ends
    while not sim.done.triggered:
        ends = [e for e in ends if not e.triggered]
        if ends:  # a real coordinator is told when a transfer completes; it need not wait for the next tick
            yield env.any_of([env.timeout(tick), simpy.AllOf(env, ends)])
        else:
            yield env.timeout(tick)
        now = env.now
        next_probe = _observe(sim, now, next_probe)
        # while a plan is staged the policy is asked every tick: the switch follows its weights' arrival
        if sim.switching or (now < next_decide - 1e-9 and pol.pending is None):
            continue
        next_decide = now + cfg.interval_s
        snap = mon.snapshot(now)
        copied = None
        if precopy is not None and precopy[1]:  # what of each request's KV cache was copied and is still needed
            copied = sum(min(n, precopy[0].get(r, 0)) for r, n in sim.req_cached.items())
        cs = ClusterState(now, sim.epoch.plan, dict(sim.present), None if w.arrival_rate else total - len(sim.tokens),
                          sim.inflight_cached_tokens(), copied)
        dec = pol.decide(snap, cs)
        chosen = None
        for entry in pol.log[logged:]:
            rows = _rows(entry, cs.plan, names)
            sim.rebalances.extend(rows)
            chosen = next((r for r in rows if r["chosen"]), chosen)
        logged = len(pol.log)
        if stream is not None and pol.pending is None:
            stream[0] = False  # the staging ended (switched, abandoned or a failover): stop streaming
            stream, precopy = None, None
        if dec is None:
            continue
        if dec.kind == "precopy":
            precopy = [dict(sim.req_cached), False]
            stream = stream or [True]  # a switch whose weights are present: only its KV cache is copied first
            sim.mark(f"KV pre-copy: {dec.trigger}", None, background_s=dec.background_s)
            ends = [env.process(_precopy(sim, dec.moves, precopy, stream))]
            continue
        if dec.kind == "stage":
            stream = [True]
            sim.mark(f"stage: {dec.trigger}", None, background_s=dec.background_s, plan=_plan_str(dec.plan, names))
            ends = [env.process(_stream(sim, dst, mods, stream)) for dst, mods in _by_receiver(dec.moves).items()]
            continue
        yield from _apply(sim, dec, chosen if chosen is not None else {})


def _observe(sim, now: float, next_probe: float) -> float:
    """Feed the monitor the phones' heartbeats (with their link rate) and, every ``PROBE_S``, the idle
    phones' probe times; returns the next probe's time."""
    cfg, mon = sim.sc.balancer, sim.monitor
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
    return next_probe


def _rows(entry: dict, old_plan, names) -> list[dict]:
    """rebalances.csv rows of one evaluation: each candidate, its predictions and the verdict."""
    out = []
    for c in entry["candidates"]:
        out.append({"evaluation": entry["evaluation"], "time_s": entry["t"], "trigger": entry["trigger"],
                    "kind": c.kind, "chosen": int(c.verdict == "chosen"), "verdict": c.verdict or c.reason,
                    "predicted_cost_s": c.cost_s, "actual_stall_s": None,
                    "predicted_gain": c.gain, "predicted_gain_s": c.gain_s, "predicted_return_s": c.return_s,
                    "horizon_s": c.horizon_s, "horizon_basis": c.horizon_basis,
                    "predicted_background_s": c.background_s,
                    "old_ms_per_token": (c.old_value_s or 0.0) * 1e3, "new_ms_per_token": (c.new_value_s or 0.0) * 1e3,
                    "moved_bytes": int(sum(m.nbytes for m in c.moves if m.what == "weights" or c.kind != "stage")),
                    "predicted_drain_s": c.drain_s, "actual_drain_s": None, "predicted_transfer_s": c.transfer_s,
                    "actual_transfer_s": None, "predicted_session_s": c.session_s,
                    "old_plan": _plan_str(old_plan, names), "new_plan": _plan_str(c.plan, names) if c.plan else ""})
        if c.kind == "stage":  # the weights streamed; the KV cache moves at the switch
            out[-1]["moved_bytes"] = int(sum(m.nbytes for m in c.moves if m.what == "weights"))
    return out


def _by_receiver(moves) -> dict[int, list]:
    out: dict[int, list] = {}
    for mv in moves:
        if mv.what == "weights":
            out.setdefault(mv.dst, []).append(mv)
    return out


def _fetch(sim, mv):
    """One module's weights to ``mv.dst``: from the store (its downlink) or from ``mv.src`` (the medium)."""
    if mv.src is None:
        yield sim.env.timeout(mv.nbytes * sim.problem.lat.links.inb[mv.dst])
    elif not sim.nodes[mv.src].dead:
        yield sim.net.transfer(mv.src, mv.dst, int(mv.nbytes), f"{mv.what} m{mv.module}")


def _stream(sim, dst: int, moves, alive: list):
    """Stage ``moves`` (all to ``dst``) in the background, module by module, while ``alive[0]``."""
    for mv in moves:
        if not alive[0] or sim.nodes[dst].dead:
            return
        yield from _fetch(sim, mv)
        if not sim.nodes[dst].dead:
            sim.add_weights(dst, mv.module)  # on the phone's storage; opened as a session at the switch


def _precopy(sim, moves, state: list, alive: list):
    """Copy the KV cache of the in-flight requests to the staged plan's phones (phone to phone, over the
    medium, all at once); ``state[1]`` is set when it is there, unless the staging ended meanwhile."""
    evs = [sim.net.transfer(mv.src, mv.dst, int(mv.nbytes), f"kv precopy m{mv.module}") for mv in moves
           if mv.src is not None and not sim.nodes[mv.src].dead]
    if evs:
        yield simpy.AllOf(sim.env, evs)
    if alive is not None and alive[0]:
        state[1] = True


def _apply(sim, dec, row: dict):
    """Carry out the balancer's decision ``dec`` (see the module docstring); ``row``: its rebalances.csv row."""
    env = sim.env
    t0 = env.now
    sim.begin_switch()
    names = [d.name for d in sim.devices]
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
            # a drain waits for the steps in the pipeline, however slow the phone they are on (one in a
            # burst may take tens of seconds); past the limit they are given up instead and retried
            # under the new plan from their last completed token (their KV cache up to it is kept)
            limit = max(sim.sc.balancer.drain_limit_s, DRAIN_SLACK * dec.drain_s)
            yield env.any_of([drained, env.timeout(limit)])
            if not drained.triggered:
                n = sim.abandon_in_flight()
                sim.mark(f"drain cut at {limit:.2f} s: {n} steps retried under the new plan", None)
    t_drained = env.now
    yield from _move(sim, dec)
    t_moved = env.now
    if dec.session_s:
        yield env.timeout(dec.session_s)
    alive = {d for d, a in sim.monitor.snapshot(env.now).alive.items() if a}
    replicas = _replicas(sim, dec.plan, alive)
    for mv in dec.moves:
        if mv.what == "weights":
            sim.add_weights(mv.dst, mv.module)
    new = sim.switch_plan(dec.plan, dec.kind, replicas, keep_kv=dec.kind != "failover")
    row.update(actual_stall_s=env.now - t0, actual_drain_s=t_drained - t0, actual_transfer_s=t_moved - t_drained)
    sim.span(f"{dec.kind} (stall)", t0, {"trigger": dec.trigger, "new_plan": _plan_str(dec.plan, names)})
    sim.mark(f"plan {new.index} in force", None, plan=_plan_str(dec.plan, names))
    if replicas:
        _stage_replicas(sim, replicas)


def _stage_replicas(sim, replicas: dict[int, tuple[int, int]]) -> None:
    """Copy the replicas the new plan's phones and idle phones lack, in the background: from a phone of
    the plan in force over the medium when that is the cheaper path, else from the store."""
    from llsim.balance.policy import weight_source

    pb = sim.problem
    alive = {d for d, n in sim.nodes.items() if not n.dead}
    holders = {d: sim.present[d] for d in sim.epoch.devs}
    store: dict[int, list[int]] = {}
    for d, (lo, hi) in replicas.items():
        for m in range(lo, hi + 1):
            if m in sim.present[d]:
                continue
            src = weight_source(pb, m, d, holders, alive)
            if src is None:
                store.setdefault(d, []).append(m)
            else:
                sim.stage_replica(src, d, m, int(pb.weight_bytes[m]))
    for d, mods in store.items():
        sim.env.process(_store_stream(sim, d, mods))


def _store_stream(sim, d: int, mods: list[int]):
    nb = sim.problem.weight_bytes
    inb = sim.problem.lat.links.inb[d]
    for m in mods:
        yield sim.env.timeout(float(nb[m]) * inb)
        if sim.nodes[d].dead:
            return
        sim.replica_arrived(d, m, int(nb[m]))


def _move(sim, dec):
    """The weights and KV-cache entries the decision moves: phone-to-phone ones at once on the medium,
    the store's one after another per receiver; waits for them all."""
    env = sim.env
    evs = []
    for dst, mvs in _by_receiver([m for m in dec.moves if m.src is None]).items():
        evs.append(env.process(_serial(sim, mvs)))
    for mv in dec.moves:
        if mv.src is not None and not sim.nodes[mv.src].dead:
            evs.append(sim.net.transfer(mv.src, mv.dst, int(mv.nbytes), f"{mv.what} m{mv.module}"))
    if evs:
        yield simpy.AllOf(env, evs)


def _serial(sim, moves):
    for mv in moves:
        yield from _fetch(sim, mv)


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
           "rebalances": len(taken(sim.rebalances)), "retried_steps": sim.retried_steps,
           "balancer_enabled": sim.sc.balancer.enabled}
    if sim.balancer is not None:
        out["balancer_staged"] = sum(1 for r in sim.rebalances if r["chosen"] and r["kind"] == "stage")
        out["balancer_evaluations"] = sim.balancer.evaluations
        out["balancer_evaluations_not_repeated"] = sim.balancer.skipped
    return out


def taken(rows: list[dict]) -> list[dict]:
    """The rebalances.csv rows of the actions taken (plan switches and terminal decisions)."""
    return [r for r in rows if r["chosen"] and r["kind"] not in ("stage", "precopy")]
