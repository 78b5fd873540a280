"""The allocation problem: what every strategy optimises and how a plan is priced.

An :class:`AllocProblem` is built once from a scenario (:func:`build_problem`) and is pure data:

* the modules: per device, the cost model's seconds for each module, averaged over the steps the
  objective is about (``lat``: the decode steps, what ``token_latency_ms`` measures; ``thr``: all
  steps including prefill, what ``tokens_per_s`` measures). kv_cache decode costs are affine in
  the cache length, so the mean over steps is exactly the cost at the mean length; recompute
  steps are evaluated one by one. A stage also pays its device's ``run_overhead`` once per step;
* the tensors crossing module boundaries (the sequential hidden state and the residual/mask
  tensors of LinguaLinked's residual map), with their mean bytes per step, grouped by
  (producer, consumers);
* per-device memory: weights, activation buffer (largest module in the stage), and in kv_cache
  mode the KV cache of the maximum context for every request in flight, within
  ``budget_fraction x available RAM``;
* the network as separable per-byte costs (:mod:`llsim.network.planning`).

The two objectives (:meth:`AllocProblem.evaluate`) are about the scenario's workload: N requests
in flight in a closed loop (``workload.concurrency``; an open loop is planned as N = 1).

``latency``
    The mean time per decode token a request sees. With one request in flight it is the ring
    latency: every stage's compute, every tensor's transmission (residual ones included; a
    tensor reaches each later stage that uses it), half a mean RTT per sequential hop and for the
    token's return to the header, expected retransmission delay, the tail's sampling time, and
    power-save wake-ups. Residual messages travel in parallel with the stages they skip, so
    their latency is off the critical path; their bytes are not (they share the medium with the
    sequential transfer sent at the same moment). With N > 1 requests sharing the ring, a
    request's token also waits for the other N - 1 at the busiest phone and on the shared medium,
    so the token time is bounded below by ``max(ring latency, N x busiest stage, N x airtime
    per token)`` (links priced at the contention of ``min(N, devices)`` flows); queueing near the
    knee makes it larger, which only a finer evaluation of the closed ring sees
    (:mod:`llsim.alloc.evaluate`).
``throughput``
    The steady-state time per token with N requests in flight (closed loop): the largest of the
    busiest phone's compute per token, the shared medium's airtime per token (all transfers, at
    the contention of ``min(N, devices)`` flows), and one request's latency / N (a request cannot
    go faster than its own ring). Sends run beside compute in the simulator (as in LinguaLinked,
    where tensors are sent by separate threads), so a stage's transfers do not block its phone.

Both are linear bounds (exact for one request in flight); :meth:`AllocProblem.evaluate` returns
them, and the allocator chooses among its best candidates by a finer evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from llsim.alloc.plan import Plan
from llsim.cost.steps import (TOKEN_BYTES, StepGraphs, affine, kv_anchors, kv_bytes_per_token, module_activation_bytes,
                              module_seconds, tensor_groups)
from llsim.network.planning import LinkCosts, link_costs, make_network
from llsim.network.links import StationSpec
from llsim.scenario import Scenario

INF = float("inf")


@dataclass(frozen=True)
class TensorGroup:
    producer: int  # module index (-1: a graph input, held by module 0's device)
    consumers: tuple[int, ...]  # module indices > producer (graph outputs dropped)
    nbytes: float  # mean bytes per step, for this view's steps
    names: tuple[str, ...] = ()

    @property
    def source(self) -> int:
        return max(self.producer, 0)

    def intervals(self) -> list[tuple[int, int]]:
        """(a, b]: a transfer reaches consumer b's stage iff some stage starts in a+1..b."""
        out, lo = [], self.source
        for c in self.consumers:
            if c > lo:
                out.append((lo, c))
                lo = c
        return out


@dataclass
class View:
    """Costs averaged over the steps one objective is about."""

    compute: np.ndarray  # (devices, modules) seconds
    tensors: list[TensorGroup]
    links: LinkCosts
    steps: int


@dataclass
class AllocProblem:
    name: str
    n_modules: int
    module_names: list[str]
    device_names: list[str]
    device_keys: list[tuple]  # devices with equal keys are interchangeable
    overhead: np.ndarray  # (devices,) seconds per stage execution (session.run overhead)
    lat: View
    thr: View
    weight_bytes: np.ndarray  # (modules,)
    act_bytes: np.ndarray  # (modules,)
    kv_bytes: np.ndarray  # (modules,) KV bytes for the max context of all requests in flight
    budget: np.ndarray  # (devices,) bytes
    ram_available: np.ndarray  # (devices,) bytes (baselines that split by memory use it)
    in_flight: int
    objective: str = "latency"
    header: int | None = None
    sample_s: float = 0.0
    batch: int = 1
    tokenize_s: float = 0.0
    step_costs: list[tuple[np.ndarray, list[TensorGroup]]] | None = None  # per step (power-save replay)
    meta: dict = field(default_factory=dict)
    _stage_bytes: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)
    _routes_cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _step_pre: list | None = field(default=None, init=False, repr=False, compare=False)
    _prefix: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _doze_cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def n_devices(self) -> int:
        return len(self.device_names)

    # ---- memory -----------------------------------------------------------------------------
    def stage_bytes(self, a: int, b: int) -> float:
        """Memory a stage of modules a..b needs (weights + KV + activation buffer)."""
        return float(self.stage_bytes_table()[a, b])

    def stage_bytes_table(self) -> np.ndarray:
        """``[a, b]``: :meth:`stage_bytes` of modules a..b (b >= a), computed once."""
        t = self._stage_bytes
        if t is None:
            n = self.n_modules
            pre = np.concatenate([[0.0], np.cumsum(self.weight_bytes + self.kv_bytes)])
            act = np.full((n, n), -np.inf)
            for a in range(n):
                act[a, a:] = np.maximum.accumulate(self.act_bytes[a:])
            t = pre[None, 1:] - pre[:-1, None] + act
            self._stage_bytes = t
        return t

    def fits(self, d: int, a: int, b: int) -> bool:
        return self.stage_bytes(a, b) <= self.budget[d]

    def memory_need(self) -> float:
        return float(self.weight_bytes.sum() + self.kv_bytes.sum() + self.act_bytes.max())

    # ---- pricing -----------------------------------------------------------------------------
    def stage_compute(self, view: View, d: int, a: int, b: int) -> float:
        pre = self._prefix.get(id(view))
        if pre is None or pre[0] is not view.compute:
            pre = self._prefix[id(view)] = (view.compute, np.concatenate(
                [np.zeros((view.compute.shape[0], 1)), np.cumsum(view.compute, axis=1)], axis=1).tolist())
        row = pre[1][d]
        return float(self.overhead[d]) + (row[b + 1] - row[a])

    def _transfers(self, view: View, plan: Plan, links: LinkCosts) -> tuple[float, float]:
        """(transmission seconds, expected retransmission seconds) of one step's tensors."""
        dev = plan.devices
        per = loss = 0.0
        for (src, dst), nb in self.routes(view, plan).items():
            per += nb * links.per_byte(dev[src], dev[dst])
            loss += nb * links.loss_per_byte_s
        return per, loss

    def ring_latency(self, view: View, plan: Plan, links: LinkCosts | None = None,
                     wake: dict[int, float] | None = None) -> float:
        """One request's time per token; ``wake``: power-save delay charged on the hop into a device."""
        links = links or view.links
        K = len(plan.stages)
        comp = sum(self.stage_compute(view, s.device, s.start_module, s.end_module) for s in plan.stages)
        per, loss = self._transfers(view, plan, links)
        hops = links.one_way_s * (K - 1)
        tok = 0.0
        if K > 1:
            tok = links.one_way_s + TOKEN_BYTES * self.batch * (links.per_byte(plan.devices[-1], plan.devices[0])
                                                                 + links.loss_per_byte_s)
            if wake:
                tok += sum(wake.get(d, 0.0) for d in plan.devices)
        return comp + per + loss + hops + tok + self.sample_s

    def routes(self, view: View | list[TensorGroup], plan: Plan) -> dict[tuple[int, int], float]:
        """Bytes per step from stage to stage (sequential and residual), as the simulator sends them.
        They depend on the boundaries only (cached: a search prices many plans with the same cuts)."""
        tensors = view.tensors if isinstance(view, View) else view
        key = (id(tensors), tuple(plan.boundaries))
        cache = self._routes_cache
        out = cache.get(key)
        if out is None:
            seg_of = np.empty(self.n_modules, dtype=int)
            for k, st in enumerate(plan.stages):
                seg_of[st.start_module:st.end_module + 1] = k
            out = {}
            for g in tensors:
                src = int(seg_of[g.source])
                for dst in sorted({int(seg_of[c]) for c in g.consumers} - {src}):
                    out[(src, dst)] = out.get((src, dst), 0.0) + g.nbytes
            if len(cache) > 20000:
                cache.clear()
            cache[key] = out
        return out

    def doze(self, plan: Plan, steps: str = "decode") -> dict[int, float]:
        """Power save with one request in flight: mean wake delay on each device's input hop.

        Replays two requests' steps (prefill and every decode step, each at its own cost) with the
        simulator's rule: a phone with no transfer for longer than the idle timeout dozes, and the
        next transfer to it first waits the wake delay. Returns, per device, the mean over the
        second request's decode steps of the delay its sequential input (the header: the token's
        return) pays. Empty when power save is off, with several requests in flight (phones stay
        busy), or for a single-phone ring. Whether a phone dozes is a threshold on the cycle time,
        so this is evaluated per step, not on mean costs. ``steps="all"``: the mean over all the
        second request's steps, prefill included (the throughput view's charges: a long prefill
        lets the later phones doze).
        """
        key = (tuple(plan.stages), steps)
        hit = self._doze_cache.get(key)
        if hit is None:
            dec, every = self._replay_doze(plan)
            if len(self._doze_cache) > 20000:
                self._doze_cache.clear()
            self._doze_cache[(key[0], "decode")], self._doze_cache[(key[0], "all")] = dec, every
            hit = dec if steps == "decode" else every
        return hit

    def _replay_doze(self, plan: Plan) -> tuple[dict[int, float], dict[int, float]]:
        links = self.lat.links
        K = len(plan.stages)
        if links.wake_s <= 0 or K < 2 or self.in_flight > 1 or not self.step_costs:
            return {}, {}
        dev = plan.devices
        acts: dict[int, list[tuple[float, float]]] = {d: [(0.0, 0.0)] for d in dev}
        awake_at = {d: 0.0 for d in dev}
        never = links.never_dozes
        idle_to, wake_s, loss, one_way = links.idle_timeout_s, links.wake_s, links.loss_per_byte_s, links.one_way_s

        def send(s: int, d: int, t: float, nbytes: float) -> tuple[float, float]:
            """A transfer s -> d at t: (its end, the wake delay it paid)."""
            w = 0.0
            if not (never and never[d]):
                recent = acts[d][-8:]
                busy = False
                last = -INF
                for a, b in recent:
                    if a <= t < b:
                        busy = True
                    if t >= b > last:
                        last = b
                if not busy and t >= awake_at[d] and t - last > idle_to:
                    awake_at[d] = t + wake_s
                w = max(0.0, awake_at[d] - t)
            end = t + w + nbytes * (links.per_byte(s, d) + loss) + one_way
            acts[s].append((t, end))
            acts[d].append((t, end))
            return end, w

        pre = self._step_prefix()
        ov = [float(self.overhead[d]) for d in dev]
        t = 0.0
        total: dict[int, float] = {}
        every: dict[int, float] = {}  # every step of the second request, prefill included
        n_dec = len(self.step_costs) - 1
        tok = TOKEN_BYTES * self.batch
        for req in range(2):
            t += self.tokenize_s
            for step, (_, tensors) in enumerate(self.step_costs):
                p = pre[step]
                comp = [ov[k] + float(p[st.device, st.end_module + 1] - p[st.device, st.start_module])
                        for k, st in enumerate(plan.stages)]
                out: list[list[tuple[int, float]]] = [[] for _ in range(K)]
                for (src, dst), nb in sorted(self.routes(tensors, plan).items()):
                    out[src].append((dst, nb))
                arrive: list[float] = [-INF] * K
                for k in range(K):
                    end_k = (arrive[k] if k else t) + comp[k]
                    for dst, nb in out[k]:
                        e, w = send(dev[k], dev[dst], end_k, nb)
                        if e > arrive[dst]:
                            arrive[dst] = e
                        if dst == k + 1 and req:
                            every[dev[dst]] = every.get(dev[dst], 0.0) + w
                            if step:
                                total[dev[dst]] = total.get(dev[dst], 0.0) + w
                    if k == K - 1:
                        t, w = send(dev[k], dev[0], end_k + self.sample_s, tok)
                        if req:  # the token that ends a decode step (the prefill's is TTFT)
                            every[dev[0]] = every.get(dev[0], 0.0) + w
                            if step:
                                total[dev[0]] = total.get(dev[0], 0.0) + w
        n_all = len(self.step_costs)
        return ({d: w / max(n_dec, 1) for d, w in total.items() if w > 0},
                {d: w / n_all for d, w in every.items() if w > 0})

    def _step_prefix(self) -> list[np.ndarray]:
        """Per step: the compute matrix's running sums along modules (a stage's seconds in O(1))."""
        if self._step_pre is None:
            self._step_pre = [np.concatenate([np.zeros((c.shape[0], 1)), np.cumsum(c, axis=1)], axis=1)
                              for c, _ in self.step_costs]
        return self._step_pre

    def power_save_fixed_point(self, solve_once, objective: str | None = None, max_rounds: int = 4):
        """Run ``solve_once(wake) -> plan | None`` until the plan's power-save charges are the assumed ones.

        Returns (best plan by :meth:`evaluate`, rounds, whether its charges were consistent). Devices
        outside the last plan are assumed to doze like the worst device in it.
        """
        wake: dict[int, float] = {}
        best, best_val, consistent, seen = None, float("inf"), False, []
        rounds = 0
        for rounds in range(1, max_rounds + 1):
            plan = solve_once(wake)
            if plan is None:
                break
            pred = self.evaluate(plan)
            actual = pred.wake if (objective or self.objective) == "latency" else pred.wake_all
            ok = all(abs(actual.get(d, 0.0) - wake.get(d, 0.0)) < 1e-9 for d in plan.devices)
            val = pred.latency_s if (objective or self.objective) == "latency" else pred.cycle_s
            if val < best_val - 1e-12 or (ok and abs(val - best_val) <= 1e-12):
                best, best_val, consistent = plan, val, ok
            key = tuple(sorted((d, round(w, 9)) for d, w in actual.items()))
            if ok or key in seen:
                break
            seen.append(key)
            fill = max(actual.values(), default=0.0)
            wake = {d: actual.get(d, fill) for d in range(self.n_devices)}
        return best, rounds, consistent

    def airtime(self, view: View, plan: Plan) -> float:
        """Seconds of the shared medium per token (0 when links are not shared)."""
        links = view.links
        if not links.shared:
            return 0.0
        per, _ = self._transfers(view, plan, links)
        if len(plan.stages) > 1:
            per += TOKEN_BYTES * self.batch * links.per_byte(plan.devices[-1], plan.devices[0])
        return per

    def cycle(self, view: View, plan: Plan, wake: dict[int, float] | None = None) -> float:
        """``max(busiest stage, airtime, ring latency / N)`` of ``view``: the time per token of the
        whole ring with N requests in flight, as a linear bound."""
        comp = max(self.stage_compute(view, s.device, s.start_module, s.end_module) for s in plan.stages)
        return max(comp, self.airtime(view, plan), self.ring_latency(view, plan, wake=wake) / self.in_flight)

    def evaluate(self, plan: Plan) -> "Prediction":
        wake_lat = self.doze(plan)
        ring_lat = self.ring_latency(self.lat, plan, wake=wake_lat)
        lat = ring_lat if self.in_flight == 1 else self.in_flight * self.cycle(self.lat, plan, wake_lat)
        comps = [self.stage_compute(self.thr, s.device, s.start_module, s.end_module) for s in plan.stages]
        air = self.airtime(self.thr, plan)
        wake_all = self.doze(plan, "all")
        ring = self.ring_latency(self.thr, plan, wake=wake_all)
        cycle = max(max(comps), air, ring / self.in_flight)
        mem = [self.stage_bytes(s.start_module, s.end_module) for s in plan.stages]
        over = [(self.device_names[s.device], m - self.budget[s.device]) for s, m in zip(plan.stages, mem)
                if m > self.budget[s.device]]
        return Prediction(lat, cycle, max(comps), air, ring, mem, over,
                          lat if self.objective == "latency" else cycle, wake_lat, ring_lat, wake_all=wake_all)

    def value(self, plan: Plan, objective: str | None = None) -> float:
        """The linear model's value of ``plan`` for the objective (seconds per token): what
        :meth:`evaluate` returns as ``latency_s`` or ``cycle_s``, computed alone (searches call it
        for every plan they price)."""
        latency = (objective or self.objective) == "latency"
        wake = self.doze(plan, "decode" if latency else "all")
        if self.in_flight == 1:
            return self.ring_latency(self.lat if latency else self.thr, plan, wake=wake)
        return self.in_flight * self.cycle(self.lat, plan, wake) if latency else self.cycle(self.thr, plan, wake)


@dataclass
class Prediction:
    """The linear model's figures for a plan (lower bounds with several requests in flight), and,
    once :mod:`llsim.alloc.evaluate` has judged the plan, the finer evaluation's figures
    (``evaluated_*``, which is what ``llsim allocate`` predicts)."""

    latency_s: float  # mean decode time per token of a request under the workload (latency objective)
    cycle_s: float  # steady-state time per token with in_flight requests (throughput objective)
    bottleneck_compute_s: float
    airtime_s: float
    ring_s: float  # one request's time per token averaged over all steps
    stage_bytes: list[float]
    overflow: list[tuple[str, float]]  # (device, bytes over budget)
    objective_s: float
    wake: dict[int, float] = field(default_factory=dict)  # power-save delay on each device's input hop
    ring_latency_s: float = 0.0  # one request alone: its mean decode time per token
    wake_all: dict[int, float] = field(default_factory=dict)  # the same charges averaged over all steps
    evaluated_latency_s: float | None = None  # finer evaluation: mean decode time per token
    evaluated_tokens_per_s: float | None = None  # finer evaluation: tokens/s of the workload
    evaluated_by: str = ""  # "model" (exact: one request in flight) or "simulation"

    @property
    def feasible(self) -> bool:
        return not self.overflow

    @property
    def tokens_per_s(self) -> float:
        return 1.0 / self.cycle_s if self.cycle_s > 0 else float("inf")


# ---- building from a scenario ------------------------------------------------------------------
def _mean_over(samples: list[tuple[float, object]], devices):
    """Weighted mean of (compute matrix, tensor bytes) over (weight, graph) samples."""
    comp = None
    tb: dict = {}
    for w, g in samples:
        c = module_seconds(g, devices) * w
        comp = c if comp is None else comp + c
        for k, (b, names) in tensor_groups(g).items():
            ob, _ = tb.get(k, (0.0, names))
            tb[k] = (ob + w * b, names)
    tensors = [TensorGroup(p, cons, b, names) for (p, cons), (b, names) in sorted(tb.items())]
    return comp, tensors


def _decode_samples(sc: Scenario, graph) -> list[tuple[float, object]]:
    """Weights and graphs whose weighted sum is the mean over decode steps 1..new-1."""
    w = sc.workload
    steps = list(range(1, w.new_tokens)) or [0]
    if w.mode == "kv_cache" and steps != [0]:
        # exact: costs and bytes are affine in the cache length P
        lo, hi = kv_anchors(w.prompt_tokens)
        k = (len(steps) - 1) / 2.0
        return [(1.0 - k, graph(1, lo)), (k, graph(1, hi))]
    return [(1.0 / len(steps), graph(*w.step_shape(s))) for s in steps]


def _step_costs(sc: Scenario, graph, devices) -> list[tuple[np.ndarray, list[TensorGroup]]]:
    """Compute matrix and tensors of every step (kv_cache decode: interpolated, exact)."""
    w = sc.workload
    out = [_mean_over([(1.0, graph(*w.step_shape(0)))], devices)]
    if w.mode == "kv_cache" and w.new_tokens > 1:
        (c0, t0), (c1, t1) = (_mean_over([(1.0, graph(1, p))], devices) for p in kv_anchors(w.prompt_tokens))
        for k in range(w.new_tokens - 1):
            out.append((affine(c0, c1, k), [TensorGroup(a.producer, a.consumers, affine(a.nbytes, b.nbytes, k), a.names)
                                            for a, b in zip(t0, t1)]))
    else:
        out += [_mean_over([(1.0, graph(*w.step_shape(s)))], devices) for s in range(1, w.new_tokens)]
    return out


def build_problem(sc: Scenario, devices, objective: str | None = None) -> AllocProblem:
    w = sc.workload
    graph = StepGraphs(sc)
    dec = _decode_samples(sc, graph)
    pre = graph(*w.step_shape(0))
    lat_comp, lat_t = _mean_over(dec, devices)
    n_dec = max(w.new_tokens - 1, 0)
    thr_samples = [(1.0 / w.new_tokens, pre)] + [(x * n_dec / w.new_tokens, g) for x, g in dec if n_dec]
    thr_comp, thr_t = _mean_over(thr_samples, devices)

    last = graph(*w.step_shape(w.new_tokens - 1))
    mods = pre.modules
    n = len(mods)
    weight = np.array([m.param_bytes for m in mods], dtype=float)
    act = np.array(module_activation_bytes(pre, last), dtype=float)
    ctx = w.prompt_tokens + w.new_tokens
    kv_tok = kv_bytes_per_token(mods, w.mode)
    kv = np.array([t * ctx * w.in_flight for t in kv_tok], dtype=float)

    net = make_network(sc.network, [StationSpec(d.name, d.rssi_dbm, d.streams) for d in devices],
                       base_dir=sc.path.parent if sc.path else None)
    flows = max(1, min(w.in_flight, len(devices)))
    one_flow = link_costs(net, 1)  # what a pairwise bandwidth/ping measurement sees (the peers' input)
    thr_links = link_costs(net, flows)
    lat_links = thr_links if flows > 1 else one_flow  # several requests in flight contend

    steps = None
    if lat_links.wake_s > 0 and w.in_flight == 1 and len(devices) > 1:
        steps = _step_costs(sc, graph, devices)

    def key(d):
        return (d.profile.name, d.threads, d.cost.speed, d.budget_bytes, lat_links.out[d.index],
                lat_links.inb[d.index], thr_links.out[d.index], thr_links.inb[d.index])

    return AllocProblem(
        name=sc.name, n_modules=n, module_names=[m.name for m in mods],
        device_names=[d.name for d in devices], device_keys=[key(d) for d in devices],
        overhead=np.array([d.cost.coefs(d.threads).run_overhead_us * 1e-6 for d in devices]),
        lat=View(lat_comp, lat_t, lat_links, len(dec)), thr=View(thr_comp, thr_t, thr_links, w.new_tokens),
        weight_bytes=weight, act_bytes=act, kv_bytes=kv,
        budget=np.array([d.budget_bytes for d in devices], dtype=float),
        ram_available=np.array([d.budget_bytes / d.profile.memory.budget_fraction for d in devices]),
        in_flight=w.in_flight, objective=objective or sc.allocation.objective, header=sc.allocation.header,
        sample_s=w.sample_ms / 1e3, batch=w.batch, tokenize_s=w.tokenize_ms / 1e3, step_costs=steps,
        meta={"model": sc.model, "mode": w.mode,
              "kv_bytes_per_token": np.array(kv_tok, dtype=float),
              "separable_error": max(lat_links.separable_error, thr_links.separable_error),
              "one_flow_links": one_flow,
              **_baseline_inputs(sc, graph, devices, pre, lat_comp, weight, kv, act)},
    )


def _baseline_inputs(sc, graph, devices, pre, lat_comp, weight, kv, act) -> dict:
    """What the peers' strategies measure (see :mod:`llsim.alloc.baselines`)."""
    n = pre.n_modules
    blocks = [m.index for m in pre.modules if m.kind == "block"] or list(range(n))
    out_b = np.zeros(n)
    head_b = 0.0
    lens = [8, 16, 32, 64, 128]
    for L in lens:  # LinguaLinked averages module output bytes over 8-128 token inputs
        g = graph(L, 0)
        for t in g.tensors:
            cons = [c for c in t.consumers if c < n]
            if cons == [t.producer + 1]:
                out_b[t.producer] += t.nbytes / len(lens)
            elif cons:
                head_b += t.nbytes / len(lens)
    return {
        "prefill_flops": np.array([m.flops for m in pre.modules]),
        "prefill_seconds": module_seconds(pre, devices),
        "mean_output_bytes": out_b,
        "mean_head_bytes": head_b,
        "layer_seconds": {d.index: float(lat_comp[d.index, blocks].mean()) for d in devices},
        "layer_bytes": float(max(weight[m] + kv[m] for m in blocks) + act.max() / max(len(blocks), 1)),
    }
