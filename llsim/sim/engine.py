"""The ring pipeline in simpy.

Each request is a simpy process. Per generation step (prefill, then one decode step per new token;
or, in LinguaLinked's ``recompute`` mode, a full pass over the growing sequence each step), the
request visits the stages in ring order: a stage waits until every tensor routed to it has arrived
(sequential ones from the previous stage, residual/mask ones directly from their producer), queues
for its phone (one segment execution at a time), computes for the cost model's time, then sends
each of its outgoing routes over the network as one message per destination. The tail samples the
token and sends its 4-byte id back to the header. Several requests in flight pipeline across phones
(closed loop with N concurrent, or open loop with Poisson arrivals).

A stage runs on its device's node (:mod:`llsim.sim.node`: the interface, and the simulated phone
that implements it from the cost model); events are scheduled through simpy's public API or the
clock kernel's fast paths (:mod:`llsim.kernel`, the only code that knows simpy's internals); the
coordinator (:mod:`llsim.sim.dynamics`) drives a run through the coordinator API below. See
docs/engine.md.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import simpy
from simpy.events import Event

from llsim.alloc.plan import Plan
from llsim.cost.steps import (TOKEN_BYTES, StepGraphs, affine, kv_anchors, kv_bytes_per_token, module_activation_bytes,
                              reprefill_shape, stage_routes, stage_seconds, step_shape)
from llsim.errors import LLSimError
from llsim.kernel import Clock, VirtualClock
from llsim.model.graph import ModelGraph
from llsim.network import Network, StationSpec
from llsim.scenario import Scenario
from llsim.cluster import DeviceInstance
from llsim.sim.node import MemoryOverflow, Node, StepWork, make_node

CHUNK = 20000  # events between two checks of the wall-clock budget


@dataclass
class StepCost:
    stage_seconds: list[float]
    routes: list[list[tuple[int, int]]]  # per src stage: (dst stage, bytes)


class StepModel:
    """Costs of one generation step of shape (new tokens S, cached tokens P), cached per shape."""

    def __init__(self, sc: Scenario, devices: list[DeviceInstance], plan: Plan,
                 graphs: dict[tuple[int, int], ModelGraph] | None = None):
        self.sc, self.devices, self.plan = sc, devices, plan
        self._cache: dict[tuple[int, int], StepCost] = {}
        self._graphs: dict[tuple[int, int], ModelGraph] = {} if graphs is None else graphs  # shared across plans

    def graph(self, S: int, P: int) -> ModelGraph:
        return StepGraphs(self.sc, self._graphs)(S, P)

    def get(self, S: int, P: int) -> StepCost:
        key = (S, P)
        c = self._cache.get(key)
        if c is None and S == 1 and self.sc.workload.mode == "kv_cache":
            # a decode step's ops have FLOPs and bytes affine in the cache length P and the cost model
            # is linear in them, so step costs are exactly affine in P: interpolate from two anchors
            p0, p1 = kv_anchors(self.sc.workload.prompt_tokens)
            if P not in (p0, p1):
                a, b = self.get(1, p0), self.get(1, p1)
                k = P - p0
                secs = [affine(x, y, k) for x, y in zip(a.stage_seconds, b.stage_seconds)]
                routes = [[(d, affine(na, nb, k)) for (d, na), (_, nb) in zip(ra, rb)]
                          for ra, rb in zip(a.routes, b.routes)]
                c = self._cache[key] = StepCost(secs, routes)
                return c
        if c is None:
            g = self.graph(S, P)
            secs = [stage_seconds(self.devices[st.device], g, st.start_module, st.end_module)
                    for st in self.plan.stages]
            c = self._cache[key] = StepCost(secs, stage_routes(g, self.plan.boundaries))
        return c

    def step_shape(self, step: int) -> tuple[int, int]:
        return step_shape(self.sc.workload.mode, self.sc.workload.prompt_tokens, step)


@dataclass
class SimResult:
    tokens: list[dict] = field(default_factory=list)
    device_rows: list[dict] = field(default_factory=list)
    link_rows: list[dict] = field(default_factory=list)
    timeline: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    error: str | None = None
    rebalances: list[dict] = field(default_factory=list)


@dataclass
class Epoch:
    """A plan in force: its stages' phones and step costs. A rebalance starts a new epoch."""

    index: int
    plan: Plan
    steps: StepModel
    devs: list[int]
    nodes: list[Node]
    ended: Event  # fires when the next epoch takes over (or the run ends on a terminal event)
    costs: list[tuple[int, StepCost]] = field(default_factory=list)  # per generation step, filled as reached
    broken: bool = False  # a phone of this plan left: in-flight steps are abandoned and retried

    def step_cost(self, step: int) -> tuple[int, StepCost]:
        costs = self.costs
        while len(costs) <= step:
            S, P = self.steps.step_shape(len(costs))
            costs.append((S, self.steps.get(S, P)))
        return costs[step]


class Simulation:
    def __init__(self, sc: Scenario, devices: list[DeviceInstance], plan: Plan, progress=None,
                 timeline: bool = True, graphs: dict | None = None, clock: Clock | None = None, hil=None):
        self.sc, self.devices, self.plan = sc, devices, plan
        self.hil = hil  # real tensors (llsim.sim.hilnode.HilNodes): real workers, token ids; None: simulated only
        if hil is not None:
            hil.bind(self)
        self.progress = progress
        self.clock = VirtualClock() if clock is None else clock  # simulated time unless given another clock
        self.env = self.clock.env
        ss = np.random.SeedSequence(sc.seed)
        net_seed, wl_seed = ss.spawn(2)
        dyn_seed, = ss.spawn(1)  # a third child: the first two draw what they drew before dynamics existed
        self.rng = np.random.default_rng(wl_seed)
        self.dyn_rng = np.random.default_rng(dyn_seed)
        self.want_timeline = timeline
        self.timeline: list[dict] = []
        self.net = Network(self.env, sc.network,
                           [StationSpec(d.name, d.rssi_dbm, d.streams) for d in devices],
                           rng=np.random.default_rng(net_seed),
                           base_dir=sc.path.parent if sc.path else None,
                           on_transfer=self._on_transfer if timeline else None)
        # a stage's outgoing tensors: the network model's send, or (HIL, hil.shape: none) the real transfer's time
        self.send = self.net.send if hil is None else hil.wrap_send(self.net.send)
        self._graphs: dict = {} if graphs is None else graphs  # model graphs per step shape (shareable across runs)
        self.nodes = {d.index: make_node(d, self.env, self.dyn_rng, self.mark, hil) for d in devices}
        self.present: dict[int, frozenset[int]] = {d.index: frozenset() for d in devices}
        self.replica_target: dict[int, tuple[int, int]] = {}  # modules (lo, hi) each phone holds as replicas
        self.epoch = self._make_epoch(plan, 0, check=True)
        self.plan_history: list[tuple[float, str, Plan]] = [(0.0, "initial", plan)]  # (from, change, plan)
        self.tokens: list[dict] = []
        self.submitted = 0
        self.completed = 0
        self.done = self.env.event()
        self.error: str | None = None
        self.stop_note: str | None = None
        # run-time dynamics and the balancer (inactive unless the scenario has them)
        self.dynamic = bool(sc.events) or sc.balancer.enabled or any(d.absent for d in sc.devices)
        self.gate: Event | None = None  # closed while a rebalance switches plans
        self.active = 0  # steps in progress (the drain waits for 0)
        self._drained: Event | None = None
        self.req_cached: dict[int, int] = {}
        self.lost_kv: set[int] = set()
        self.retried_steps = 0
        self.rebalances: list[dict] = []
        self.monitor = None
        self.balancer = None
        self.problem = None
        self.switching = False
        if self.dynamic:
            from llsim.sim.dynamics import setup_dynamics

            setup_dynamics(self)
        for n in self.nodes.values():
            n.reset_peak()

    # ---- set-up ------------------------------------------------------------------------------
    def _make_epoch(self, plan: Plan, index: int, check: bool = False, replicas: dict | None = None) -> Epoch:
        """Nodes' memory for ``plan`` (weights + activation buffer + held replicas, KV per token), its step model."""
        w = self.sc.workload
        max_ctx = w.prompt_tokens + w.new_tokens
        steps = StepModel(self.sc, self.devices, plan, self._graphs)
        g_prefill = steps.graph(*steps.step_shape(0))
        g_last = steps.graph(*steps.step_shape(w.new_tokens - 1))
        mods_all = g_prefill.modules
        problems = []
        running = {st.device: st for st in plan.stages}
        if replicas is not None:
            self.replica_target = replicas
        target = self.replica_target
        for d, node in self.nodes.items():
            st = running.get(d)
            run = set(range(st.start_module, st.end_module + 1)) if st is not None else set()
            # present: weight files on the phone (they stay on flash storage; a phone that returns after
            # a crash only reopens sessions); in memory: what it runs and its replicas for this plan
            self.present[d] = self.present.get(d, frozenset()) | run
            lo, hi = target.get(d, (0, -1))
            held = run | {m for m in self.present[d] if lo <= m <= hi}
            weights = sum(mods_all[m].param_bytes for m in held)
            if st is None:
                node.set_memory(weights, 0)
                continue
            mods = mods_all[st.start_module:st.end_module + 1]
            act = max(module_activation_bytes(g_prefill, g_last)[st.start_module:st.end_module + 1])
            kv_tok = sum(kv_bytes_per_token(mods, w.mode))
            node.set_memory(weights + act, kv_tok)
            need = node.static_bytes + kv_tok * max_ctx
            d_ = node.dev
            if check and need > d_.budget_bytes:
                problems.append(f"{d_.name} needs {need / 1e9:.2f} GB for modules {st.start_module}-{st.end_module} "
                                f"(weights {weights / 1e9:.2f} + activations {act / 1e9:.2f} + KV "
                                f"{kv_tok * max_ctx / 1e9:.2f}) but its budget is {d_.budget_bytes / 1e9:.2f} GB")
        if problems:
            raise LLSimError("the model does not fit this allocation: " + "; ".join(problems) +
                             " (add devices, choose an allocation strategy that respects memory, or lower the context)")
        devs = [st.device for st in plan.stages]
        return Epoch(index, plan, steps, devs, [self.nodes[d] for d in devs], self.env.event())

    # ---- the coordinator's API (llsim.sim.dynamics drives the engine through these alone) -----------
    def attach_balancer(self, monitor, balancer, problem) -> None:
        """The coordinator's monitor, its balancer policy and the allocation problem it plans with."""
        self.monitor, self.balancer, self.problem = monitor, balancer, problem

    def hold_replicas(self, held: dict[int, tuple[int, int]]) -> None:
        """Before the run: each phone ``d`` also holds the weights of modules ``held[d] = (lo, hi)``
        (replicas for a quick switch); the initial plan's memory is recomputed with them."""
        self.present = {d: frozenset(range(lo, hi + 1)) for d, (lo, hi) in held.items()} | {
            d: frozenset() for d in self.nodes if d not in held}
        self.epoch = self._make_epoch(self.plan, 0, replicas=held)

    def begin_switch(self) -> None:
        """A decision is being carried out: the coordinator takes no other until it is done."""
        self.switching = True

    def close_gate(self) -> None:
        """The header stops admitting steps (until :meth:`switch_plan`)."""
        self.gate = self.env.event()

    def drain(self) -> Event | None:
        """An event that fires when no step is in the pipeline any more (``None``: none is)."""
        if not self.active:
            return None
        self._drained = self.env.event()
        return self._drained

    def abandon_plan(self, lose_kv: bool) -> None:
        """The plan in force is broken (a phone of it is gone): its in-flight steps are abandoned,
        each retried under the next plan from its request's last completed token; with ``lose_kv``
        every in-flight request's KV cache is recomputed first."""
        old = self.epoch
        old.broken = True
        old.ended.succeed()
        if lose_kv:
            self.lost_kv.update(self.req_cached)

    def abandon_in_flight(self) -> int:
        """A drain took too long: the steps still in the pipeline are given up (each retried under the
        next plan from its request's last completed token, the KV cache up to it kept); returns how
        many. The plan's phones are all alive: unlike :meth:`abandon_plan` no cache is lost."""
        n = self.active
        self._drained = None
        self.abandon_plan(lose_kv=False)
        return n

    def end_run(self, error: str) -> None:
        """A terminal decision: the run ends with ``error``."""
        self.error = error
        old = self.epoch
        old.broken = True
        old.ended.succeed()
        if not self.done.triggered:
            self.done.succeed()
        self.switching = False

    def add_weights(self, d: int, module: int) -> None:
        """Module ``module``'s weights are now stored on phone ``d``."""
        self.present[d] = self.present[d] | {module}

    def switch_plan(self, plan: Plan, change: str, replicas: dict | None, keep_kv: bool) -> Epoch:
        """``plan`` takes over now (a new epoch; ``change`` names why in the plan history), the gate
        opens. With ``keep_kv`` the in-flight requests' KV caches moved to the new plan's phones."""
        old = self.epoch
        new = self._make_epoch(plan, old.index + 1, replicas=replicas)
        cached = self.inflight_cached_tokens() if keep_kv else 0
        for node in self.nodes.values():
            node.set_kv_tokens(cached if node in new.nodes else 0)
        self.epoch = new
        self.plan_history.append((self.env.now, change, plan))
        if not old.ended.triggered:
            old.ended.succeed()
        gate, self.gate = self.gate, None
        gate.succeed()
        self.switching = False
        return new

    def stage_replicas(self, replicas: dict[int, tuple[int, int]], weight_bytes) -> None:
        """In the background, copy to each phone ``d`` the modules of ``replicas[d] = (lo, hi)`` it
        does not have, each from a phone of the plan in force that has it (``weight_bytes[m]``)."""
        ep = self.epoch
        for d, (lo, hi) in replicas.items():
            want = [m for m in range(lo, hi + 1) if m not in self.present[d]]
            for m in want:
                src = next((s for s in ep.devs if m in self.present[s] and s != d and not self.nodes[s].dead), None)
                if src is not None:
                    self.env.process(self._stage_replica(src, d, m, int(weight_bytes[m])))

    def stage_replica(self, src: int, dst: int, m: int, nb: int) -> None:
        """In the background, copy module ``m``'s weights (``nb`` bytes) from phone ``src`` to ``dst``."""
        self.env.process(self._stage_replica(src, dst, m, nb))

    def _stage_replica(self, src: int, dst: int, m: int, nb: int):
        yield self.net.transfer(src, dst, nb, f"replica m{m}")
        self.replica_arrived(dst, m, nb)

    def replica_arrived(self, dst: int, m: int, nb: int) -> None:
        """Module ``m``'s weights (``nb`` bytes) reached phone ``dst`` (held in memory if it is one of
        its replicas for the plan in force)."""
        if not self.nodes[dst].dead and m not in self.present[dst]:
            self.present[dst] = self.present[dst] | {m}
            lo, hi = self.replica_target.get(dst, (0, -1))
            if lo <= m <= hi:
                self.nodes[dst].add_static(nb)

    def leave(self, d: int, reason: str) -> None:
        """Phone ``d`` disappears without notice (the ground truth; the coordinator notices late)."""
        if not self.nodes[d].leave():
            return
        self.mark(f"leave ({reason})", d)
        if self.balancer is None and d in self.epoch.devs:
            self.stop_note = f"{self.devices[d].name} left ({reason}) and the balancer is off"

    def inflight_cached_tokens(self) -> int:
        """Tokens cached by the requests in flight (their KV caches' length, summed)."""
        return sum(self.req_cached.values())

    def span(self, name: str, start: float, args: dict) -> None:
        """A span on the timeline from ``start`` to now (a rebalance's stall)."""
        self.timeline.append({"kind": "span", "name": name, "start": start, "end": self.env.now, "args": args})

    # ---- timeline ----------------------------------------------------------------------------
    def _on_transfer(self, rec) -> None:
        if len(self.timeline) < 400_000:
            self.timeline.append({"kind": "link", "src": rec.src, "dst": rec.dst, "start": rec.start, "end": rec.end,
                                  "bytes": rec.nbytes, "tag": rec.tag})

    def mark(self, name: str, device: int | None = None, **args) -> None:
        """An instant event on the timeline (dynamics, detections, rebalances)."""
        self.timeline.append({"kind": "instant", "name": name, "start": self.env.now,
                              "device": -1 if device is None else device, "args": args})

    # ---- processes -----------------------------------------------------------------------------
    def _finished(self) -> None:
        self.completed += 1
        if self.completed == self.sc.workload.requests and not self.done.triggered:
            self.done.succeed()

    # ---- a request: its steps under the plan in force (epochs), drains and retries -------------
    def _park(self):
        """This step waits outside the pipeline (not counted by a drain)."""
        self.active -= 1
        if self.active == 0 and self._drained is not None:
            ev, self._drained = self._drained, None
            ev.succeed()

    def request(self, rid: int):
        """One request's steps, each under the plan in force when it starts (:meth:`_work`), through
        the stages in ring order (inline: each event of the request resumes this one generator).
        A step that meets a phone that is gone waits (:meth:`_stall`) and is retried (:meth:`_left`)."""
        env, w = self.env, self.sc.workload
        transfer, tags, report = self.send, self.want_timeline, self.want_timeline or self.monitor is not None
        submit = last = env.now
        self.submitted += 1
        if w.tokenize_ms:
            yield env.timeout(w.tokenize_ms / 1e3)
        step, reprefill, self.req_cached[rid] = 0, False, 0
        try:
            while step < w.new_tokens:
                while self.gate is not None:
                    yield self.gate
                if self.done.triggered:
                    return  # a terminal event ended the run
                work = self._work(rid, step, reprefill)
                ep, cost, devs, nodes = work.epoch, work.cost, work.epoch.devs, work.epoch.nodes
                ok = True
                pending: list[list] = [[] for _ in devs]
                for s in range(len(devs)):
                    for ev in pending[s]:  # every tensor routed to this stage has arrived
                        if ev.callbacks is not None:
                            yield ev
                    node = nodes[s]
                    if ep.broken or node.dead:
                        ok = yield from self._abandon(ep)
                        break
                    grant = node.acquire()
                    if grant is not None:
                        yield grant
                    if ep.broken or node.dead:
                        node.release()
                        ok = yield from self._abandon(ep)
                        break
                    yield node.run(s, work)
                    t0, t1, measured = node.finish()
                    if report:
                        self._report(work, s, node, t0, t1, measured)
                    if node.dead:  # died mid-step: its outputs never leave
                        ok = yield from self._stall(ep)
                        break
                    for dst, nb in cost.routes[s]:
                        pending[dst].append(transfer(devs[s], devs[dst], nb, f"r{rid}s{step}:{s}->{dst}" if tags else ""))
                else:
                    if w.sample_ms:
                        yield env.timeout(w.sample_ms / 1e3)
                    if devs[-1] != devs[0]:
                        yield transfer(devs[-1], devs[0], TOKEN_BYTES * w.batch, f"r{rid}s{step}:token" if tags else "")
                    if ep.broken or nodes[0].dead:
                        ok = yield from self._abandon(ep)
                step, reprefill, last = self._left(work, ok, submit, last)
        except MemoryOverflow as e:
            self._overflowed(e.args[0])
            return
        finally:
            self._end_request(rid)
        self._finished()

    def _left(self, work: StepWork, ok: bool, submit: float, last: float) -> tuple[int, bool, float]:
        """``work`` left the pipeline, its token produced (``ok``: now) or to be retried; returns the
        request's next step, whether it recomputes the KV cache, and the time of its last token."""
        self._park()
        if not ok:
            self.retried_steps += 1
            return work.step, work.recompute, last
        rid, step, now = work.request, work.step, self.env.now
        self.req_cached[rid] += work.S
        row = {"request": rid, "token": step, "kind": "prefill" if step == 0 else "decode",
               "time_s": now, "latency_ms": (now - last) * 1e3, "since_submit_ms": (now - submit) * 1e3}
        if self.hil is not None:
            row["token_id"] = self.hil.plane.commit(rid, step)  # the whole model's greedy token
        self.tokens.append(row)
        if self.progress:
            self.progress(1)
        return step + 1, False, now

    def _work(self, rid: int, step: int, reprefill: bool) -> StepWork:
        """Step ``step`` of request ``rid`` enters the pipeline under the plan in force; ``reprefill``:
        its KV cache is being recomputed (set here too when a phone left with part of it)."""
        w, ep = self.sc.workload, self.epoch
        kv_mode = w.mode == "kv_cache"
        if rid in self.lost_kv:  # a phone left with part of this request's KV cache: recompute it
            self.lost_kv.discard(rid)
            self.req_cached[rid] = 0
            reprefill = kv_mode and step > 0
        if reprefill:
            S, _ = reprefill_shape(w.prompt_tokens, step)
            cost = ep.steps.get(S, 0)
        else:
            S, cost = ep.step_cost(step)
        self.active += 1
        return StepWork(ep, rid, step, S, reprefill, cost, S if kv_mode else 0)

    def _report(self, work: StepWork, s: int, node: Node, t0: float, t1: float, measured: float) -> None:
        """Stage ``s`` of ``work`` ran on ``node`` from ``t0`` to ``t1``: the monitor gets what the phone
        reports, the timeline the execution (with the phone's memory in use at ``t1``). :meth:`request`
        calls it only when there is a monitor or a timeline (attached before the run); it sends with
        ``net.send`` (no TransferRecord values) and without tags unless the timeline shows them."""
        d = work.epoch.devs[s]
        if self.monitor is not None and not node.dead:
            self.monitor.stage_time(d, t1, measured, work.cost.stage_seconds[s])
        if self.want_timeline and len(self.timeline) < 400_000:
            self.timeline.append({"kind": "compute", "device": d, "start": t0, "end": t1, "request": work.request,
                                  "step": work.step, "stage": s, "memory": node.used_bytes})

    def _abandon(self, ep: Epoch):
        """A step gives up: ``False`` (retry) at once if its plan is broken, else after :meth:`_stall`."""
        if ep.broken:
            return False
        return (yield from self._stall(ep))

    def _overflowed(self, error: str) -> None:
        """A node's memory overflowed: the run's terminal error."""
        self.error = error
        if not self.done.triggered:
            self.done.succeed()

    def _end_request(self, rid: int) -> None:
        """Request ``rid`` is over (done or not): its KV cache is freed on the plan's phones."""
        cached = self.req_cached.pop(rid, 0)
        if self.sc.workload.mode == "kv_cache":
            for nd in self.epoch.nodes:
                nd.free_kv(cached)
        if self.hil is not None:
            self.hil.plane.end_request(rid)

    def _stall(self, ep: Epoch):
        """A phone of this plan is gone (not yet detected): wait, outside the pipeline, for the next plan."""
        self._park()
        if not ep.ended.triggered:
            yield ep.ended
        self.active += 1
        return False

    def _closed_loop(self, counter):
        w = self.sc.workload
        while counter[0] < w.requests:
            rid = counter[0]
            counter[0] += 1
            yield self.clock.process(self.request(rid))

    def _open_loop(self):
        w = self.sc.workload
        for rid in range(w.requests):
            if rid:
                yield self.env.timeout(float(self.rng.exponential(1.0 / w.arrival_rate)))
            self.clock.process(self.request(rid))

    # ---- run -----------------------------------------------------------------------------------
    def run(self) -> SimResult:
        w, dur = self.sc.workload, self.sc.duration
        if w.arrival_rate:
            self.clock.process(self._open_loop())
        else:
            counter = [0]
            for _ in range(min(w.concurrency or 1, w.requests)):
                self.clock.process(self._closed_loop(counter))
        wall0 = time.perf_counter()
        events = 0
        stop_reason = None
        while stop_reason is None:
            # a chunk of events, then the wall-clock check
            try:
                n, stop_reason = self._advance(CHUNK)
            except KeyboardInterrupt:  # Ctrl-C: stop here and keep what was simulated
                n, stop_reason = 0, "interrupted"
            events += n
            if stop_reason is None and time.perf_counter() - wall0 > dur.max_wall_s:
                stop_reason = "max_wall_s"
        if self.error:
            stop_reason = "memory_overflow" if self.error.startswith("memory overflow") else "terminal"
        elif stop_reason != "completed" and self.stop_note:
            stop_reason = f"{stop_reason}: {self.stop_note}"
        wall = time.perf_counter() - wall0
        return self._result(events, wall, stop_reason)

    def _advance(self, limit: int) -> tuple[int, str | None]:
        """Process up to ``limit`` events (:meth:`llsim.kernel.Clock.run_until`); returns how many were
        processed and why it stopped early (``None``: it did not)."""
        return self.clock.run_until(self.done, limit, self.sc.duration.max_sim_s)

    def _result(self, events: int, wall: float, stop_reason: str) -> SimResult:
        env, w = self.env, self.sc.workload
        sim_t = env.now
        toks = self.tokens
        first = [t["since_submit_ms"] for t in toks if t["token"] == 0]
        inter = [t["latency_ms"] for t in toks if t["token"] > 0]
        makespan = max((t["time_s"] for t in toks), default=0.0)

        def stats(v):
            if not v:
                return {"mean": None, "p50": None, "p90": None, "p99": None}
            a = np.asarray(v)
            return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
                    "p99": float(np.percentile(a, 99))}

        metrics = {
            "ttft_ms": float(np.mean(first)) if first else None,
            "ttft_p90_ms": float(np.percentile(first, 90)) if first else None,
            "token_latency_ms": stats(inter),
            "tokens_per_s": len(toks) * w.batch / makespan if makespan > 0 else 0.0,
            "tokens_generated": len(toks),
            "requests_submitted": self.submitted,
            "requests_completed": self.completed,
            "sim_time_s": sim_t,
            "wall_time_s": wall,
            "events": events,
            "events_per_wall_s": events / wall if wall > 0 else None,
            "stop_reason": stop_reason,
            "plan": self.plan.to_json(),  # the initial plan (the allocator's); ``plans``: every plan in force
            "plan_strategy": self.plan.strategy,
            "plans": [{"epoch": i, "from_s": t, "until_s": (self.plan_history[i + 1][0]
                                                            if i + 1 < len(self.plan_history) else sim_t),
                       "change": change, "strategy": p.strategy, "stages": p.to_json()}
                      for i, (t, change, p) in enumerate(self.plan_history)],
        }
        if self.dynamic:
            from llsim.sim.dynamics import dynamic_metrics

            metrics.update(dynamic_metrics(self, makespan))
        if self.error:
            metrics["error"] = self.error
        return SimResult(toks, self._device_rows(sim_t), self.net.link_stats(), self.timeline, metrics, self.error,
                         self.rebalances)

    def _device_rows(self, sim_t: float) -> list[dict]:
        """devices.csv: per device, its modules in each plan, busy time, peak memory, bytes sent."""
        sent = {r["index"]: r for r in self.net.station_stats()}
        dev_rows = []
        stage_of = [{st.device: st for st in p.stages} for _, _, p in self.plan_history]
        for d in self.devices:
            node = self.nodes.get(d.index)
            s = sent.get(d.index, {})
            ranges = [f"{st.start_module}-{st.end_module}" if st else "-" for st in (e.get(d.index) for e in stage_of)]
            dev_rows.append({
                "index": d.index, "name": d.name, "profile": d.profile.name, "threads": d.threads,
                # the device's modules in each plan in force, in order ("0-12 > 0-10 > -"; metrics' plans: when)
                "modules": "" if all(r == "-" for r in ranges) else " > ".join(ranges),
                "busy_s": node.busy_s if node else 0.0,
                "utilisation": (node.busy_s / sim_t) if node and sim_t > 0 else 0.0,
                "peak_memory_bytes": node.peak_bytes if node else 0,
                "memory_budget_bytes": d.budget_bytes,
                "bytes_sent": s.get("bytes_sent", 0), "bytes_received": s.get("bytes_received", 0),
            })
        return dev_rows
