"""The ring pipeline in simpy.

Each request is a simpy process. Per generation step (prefill, then one decode step per new token;
or, in LinguaLinked's ``recompute`` mode, a full pass over the growing sequence each step), the
request visits the stages in ring order: a stage waits until every tensor routed to it has arrived
(sequential ones from the previous stage, residual/mask ones directly from their producer), queues
for its phone (one segment execution at a time), computes for the cost model's time, then sends
each of its outgoing routes over the network as one message per destination. The tail samples the
token and sends its 4-byte id back to the header. Several requests in flight pipeline across phones
(closed loop with N concurrent, or open loop with Poisson arrivals).
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import simpy
from simpy.events import Event

from llsim.alloc.plan import Plan
from llsim.errors import LLSimError
from llsim.kernel import VirtualClock, succeed_now, timeout_now
from llsim.kernel import now as _clock_now
from llsim.model.graph import ModelGraph
from llsim.network import Network, StationSpec
from llsim.scenario import Scenario
from llsim.sim.cluster import DeviceInstance

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
        key = (S, P)
        if key not in self._graphs:
            from llsim.model.load import is_onnx_path, model_graph
            from llsim.model.analytic import analytic_graph
            from llsim.model.zoo import get_config

            B = self.sc.workload.batch
            if is_onnx_path(self.sc.model):
                if P:
                    raise LLSimError("workload.mode: kv_cache needs a zoo model (an ONNX file without KV-cache "
                                     "inputs is simulated in recompute mode); set workload.mode: recompute")
                self._graphs[key] = model_graph(self.sc.model, S, B)
            else:
                self._graphs[key] = analytic_graph(get_config(self.sc.model), S, B, P, self.sc.weight_dtype)
        return self._graphs[key]

    def get(self, S: int, P: int) -> StepCost:
        key = (S, P)
        c = self._cache.get(key)
        if c is None and S == 1 and self.sc.workload.mode == "kv_cache":
            # a decode step's ops have FLOPs and bytes affine in the cache length P and the cost model
            # is linear in them, so step costs are exactly affine in P: interpolate from two anchors
            p0 = self.sc.workload.prompt_tokens
            if P not in (p0, p0 + 1):
                a, b = self.get(1, p0), self.get(1, p0 + 1)
                k = P - p0
                secs = [x + k * (y - x) for x, y in zip(a.stage_seconds, b.stage_seconds)]
                routes = [[(d, na + k * (nb - na)) for (d, na), (_, nb) in zip(ra, rb)]
                          for ra, rb in zip(a.routes, b.routes)]
                c = self._cache[key] = StepCost(secs, routes)
                return c
        if c is None:
            g = self.graph(S, P)
            secs = []
            for st in self.plan.stages:
                d = self.devices[st.device]
                secs.append(d.cost.segment_seconds(g.modules[st.start_module:st.end_module + 1], d.threads))
            maps = g.dependency_maps(self.plan.boundaries)
            agg: dict[tuple[int, int], int] = {}
            for r in maps.sequential + maps.residual:
                agg[(r.src_segment, r.dst_segment)] = agg.get((r.src_segment, r.dst_segment), 0) + r.nbytes
            routes: list[list[tuple[int, int]]] = [[] for _ in self.plan.stages]
            for (s, dst), nb in sorted(agg.items()):
                routes[s].append((dst, nb))
            c = self._cache[key] = StepCost(secs, routes)
        return c

    def step_shape(self, step: int) -> tuple[int, int]:
        w = self.sc.workload
        if w.mode == "kv_cache":
            return (w.prompt_tokens, 0) if step == 0 else (1, w.prompt_tokens + step - 1)
        return (w.prompt_tokens + step, 0)


class PhoneLock:
    """One segment execution at a time, granted in request order (the semantics of a
    ``simpy.Resource(capacity=1)``): a free lock is taken without an event; a busy one queues the
    requester, and :meth:`release` hands it straight to the head of the queue."""

    __slots__ = ("env", "held", "queue")

    def __init__(self, env: simpy.Environment):
        self.env = env
        self.held = False
        self.queue: deque[Event] = deque()

    def request(self) -> Event | None:
        """``None`` if the lock was free and is now held, else an event to yield (fires when granted)."""
        if not self.held:
            self.held = True
            return None
        ev = Event(self.env)
        self.queue.append(ev)
        return ev

    def release(self) -> None:
        if self.queue:  # still held: now by the next requester (its event's succeed(), inlined)
            succeed_now(self.env, self.queue.popleft())
        else:
            self.held = False


@dataclass
class Node:
    """A simulated phone: one segment execution at a time; memory accounted."""

    dev: DeviceInstance
    lock: PhoneLock
    static_bytes: int  # weights + activation buffers
    kv_per_token: int  # KV-cache bytes per cached token of one request (0 in recompute mode)
    kv_tokens: int = 0
    busy_s: float = 0.0
    peak_bytes: int = 0
    speed: float = 1.0  # run-time multiplier: throttle x background x thermal (see update_speed)
    dead: bool = False  # left the cluster (crash, killed, out of range)
    throttle: float = 1.0
    background: list[float] = field(default_factory=list)  # shares of the cores taken by other apps
    thermal: tuple[float, float] | None = None  # (time to throttle s, sustained / peak) when modelled
    heat_s: float = 0.0  # busy seconds not yet cooled off
    hot: bool = False
    last_end: float = 0.0
    noise: float = 0.0  # lognormal sigma of each execution's time

    @property
    def used_bytes(self) -> int:
        return self.static_bytes + self.kv_tokens * self.kv_per_token

    def update_speed(self) -> None:
        f = self.throttle * (self.thermal[1] if (self.thermal and self.hot) else 1.0)
        for share in self.background:
            f *= 1.0 - share
        self.speed = f


class MemoryOverflow(Exception):
    pass


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
                 timeline: bool = True, graphs: dict | None = None):
        self.sc, self.devices, self.plan = sc, devices, plan
        self.progress = progress
        self.clock = VirtualClock()
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
        self._graphs: dict = {} if graphs is None else graphs  # model graphs per step shape (shareable across runs)
        self.nodes = {d.index: Node(d, PhoneLock(self.env), 0, 0) for d in devices}
        self.present: dict[int, frozenset[int]] = {d.index: frozenset() for d in devices}
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
            n.peak_bytes = n.used_bytes

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
        target = getattr(self, "replica_target", {})
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
                node.static_bytes, node.kv_per_token = weights, 0
                continue
            mods = mods_all[st.start_module:st.end_module + 1]
            act = max([m.activation_bytes for m in mods] +
                      [m.activation_bytes for m in g_last.modules[st.start_module:st.end_module + 1]])
            kv_tok = sum(m.kv_bytes_per_token for m in mods) if w.mode == "kv_cache" else 0
            node.static_bytes, node.kv_per_token = weights + act, kv_tok
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
    def _overflow(self, node: Node, used: int) -> None:
        """``node`` now holds ``used`` bytes, over its budget: the run's terminal error."""
        self.error = (f"memory overflow at t={self.env.now:.3f}s on {node.dev.name}: {used / 1e9:.2f} GB used "
                      f"> budget {node.dev.budget_bytes / 1e9:.2f} GB ({node.kv_tokens} cached tokens); "
                      "lower concurrency or context, or give that phone fewer modules")
        raise MemoryOverflow(self.error)

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
        """One request's steps, each under the plan in force when it starts (an epoch). A step that
        meets a phone that is gone waits outside the pipeline (:meth:`_stall`) and, like a step of a
        plan declared broken, is retried under the next plan. (The stage loop is inline: each event
        resumes this one generator, no delegation.)"""
        env, w = self.env, self.sc.workload
        kv_mode = w.mode == "kv_cache"
        transfer = self.net.send  # we only wait for arrivals: no TransferRecord values
        tags = self.want_timeline  # transfer tags only show in the timeline
        timeline = self.timeline
        mon = self.monitor
        submit = env.now
        self.submitted += 1
        if w.tokenize_ms:
            yield env.timeout(w.tokenize_ms / 1e3)
        last = submit
        self.req_cached[rid] = 0
        step, reprefill = 0, False
        try:
            while step < w.new_tokens:
                while self.gate is not None:
                    yield self.gate
                if self.done.triggered:
                    return  # a terminal event ended the run
                ep = self.epoch
                devs, nodes = ep.devs, ep.nodes
                if rid in self.lost_kv:  # a phone left with part of this request's KV cache: recompute it
                    self.lost_kv.discard(rid)
                    self.req_cached[rid] = 0
                    reprefill = kv_mode and step > 0
                if reprefill:
                    S = w.prompt_tokens + step
                    cost = ep.steps.get(S, 0)
                else:
                    S, cost = ep.step_cost(step)
                self.active += 1
                ok = True
                pending: list[list] = [[] for _ in devs]
                for s in range(len(devs)):
                    for ev in pending[s]:  # every tensor routed to this stage has arrived
                        if ev.callbacks is not None:
                            yield ev
                    node = nodes[s]
                    if ep.broken or node.dead:
                        ok = False if ep.broken else (yield from self._stall(ep))
                        break
                    lock = node.lock
                    grant = lock.request()
                    if grant is not None:
                        yield grant
                    if ep.broken or node.dead:
                        lock.release()
                        ok = False if ep.broken else (yield from self._stall(ep))
                        break
                    if kv_mode:  # this step's tokens join the phone's KV cache
                        node.kv_tokens += S
                        used = node.used_bytes
                        if used > node.peak_bytes:
                            node.peak_bytes = used
                        if used > node.dev.budget_bytes:
                            lock.release()
                            self._overflow(node, used)
                    t0 = _clock_now(env)
                    if node.thermal is not None:
                        node.heat_s = max(0.0, node.heat_s - (t0 - node.last_end))
                        hot = node.heat_s >= node.thermal[0] if not node.hot else node.heat_s > node.thermal[0] / 2
                        if hot != node.hot:
                            node.hot = hot
                            node.update_speed()
                            self.mark("thermal throttled" if hot else "thermal recovered", devs[s])
                    dur = cost.stage_seconds[s] / node.speed
                    if node.noise:
                        dur *= float(self.dyn_rng.lognormal(0.0, node.noise))
                    yield timeout_now(env, dur)  # compute: env.timeout(dur), inlined
                    t1 = _clock_now(env)
                    node.busy_s += t1 - t0
                    node.last_end = t1
                    if node.thermal is not None:
                        node.heat_s += t1 - t0
                    if mon is not None and not node.dead:
                        mon.stage_time(devs[s], t1, t1 - t0, cost.stage_seconds[s])  # what the phone reports
                    if tags and len(timeline) < 400_000:
                        timeline.append({"kind": "compute", "device": devs[s], "start": t0,
                                         "end": t1, "request": rid, "step": step, "stage": s,
                                         "memory": node.used_bytes})  # the phone's memory in use at t1
                    lock.release()
                    if node.dead:  # died mid-step: its outputs never leave
                        ok = yield from self._stall(ep)
                        break
                    src = devs[s]
                    for dst, nb in cost.routes[s]:
                        pending[dst].append(transfer(src, devs[dst], nb, f"r{rid}s{step}:{s}->{dst}" if tags else ""))
                else:
                    if w.sample_ms:
                        yield env.timeout(w.sample_ms / 1e3)
                    if devs[-1] != devs[0]:
                        yield transfer(devs[-1], devs[0], 4 * w.batch, f"r{rid}s{step}:token" if tags else "")
                    if ep.broken or nodes[0].dead:
                        ok = False if ep.broken else (yield from self._stall(ep))
                self._park()
                if not ok:
                    self.retried_steps += 1
                    continue
                self.req_cached[rid] += S
                now = env.now
                self.tokens.append({"request": rid, "token": step, "kind": "prefill" if step == 0 else "decode",
                                    "time_s": now, "latency_ms": (now - last) * 1e3,
                                    "since_submit_ms": (now - submit) * 1e3})
                last = now
                if self.progress:
                    self.progress(1)
                step += 1
                reprefill = False
        except MemoryOverflow:
            if not self.done.triggered:
                self.done.succeed()
            return
        finally:
            cached = self.req_cached.pop(rid, 0)
            if kv_mode:
                for nd in self.epoch.nodes:
                    nd.kv_tokens = max(0, nd.kv_tokens - cached)
        self._finished()

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
            yield self.env.process(self.request(rid))

    def _open_loop(self):
        w = self.sc.workload
        for rid in range(w.requests):
            if rid:
                yield self.env.timeout(float(self.rng.exponential(1.0 / w.arrival_rate)))
            self.env.process(self.request(rid))

    # ---- run -----------------------------------------------------------------------------------
    def run(self) -> SimResult:
        w, dur = self.sc.workload, self.sc.duration
        if w.arrival_rate:
            self.env.process(self._open_loop())
        else:
            counter = [0]
            for _ in range(min(w.concurrency or 1, w.requests)):
                self.env.process(self._closed_loop(counter))
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
        return SimResult(toks, dev_rows, self.net.link_stats(), self.timeline, metrics, self.error, self.rebalances)
