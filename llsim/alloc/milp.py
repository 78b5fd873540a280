"""The exact allocator: a mixed-integer linear program over (device, module) assignments.

Decision variables (``d`` device, ``m`` module):

* ``x[d,m]`` binary: device d runs module m. Each module runs on exactly one device; a device's
  modules are contiguous. The ring order is the order of the devices' ranges, so which devices
  take part and their order come out of ``x`` with no ordering variables.
* ``s[d,m]`` / ``f[d,m]`` (continuous, exact for binary x): d's range starts / ends at m,
  linearised as ``s = x[m] (1 - x[m-1])`` by three inequalities each; at most one start per
  device gives contiguity.
* A tensor of the residual map produced at p and used at c1 < c2 < ... reaches the stage that
  holds c_i iff some stage starts in (c_{i-1}, c_i]; the receiving device is the one holding c_i.
  For consecutive consumers (the mask tensors of every block) that is exactly ``s[d, c_i]``; for
  longer intervals a product ``z >= sum s + x - 1`` is added, and the producer's per-byte sending
  cost times the number of receiving stages is linearised with a big-M product only when the
  phones' sending costs differ.
* Memory: weights + KV (max context x requests in flight) + the stage's largest activation
  buffer (``a[d] >= act[m] x[d,m]``) within each budget.

Objectives (milliseconds): ``latency`` minimises the ring latency of
:meth:`llsim.alloc.problem.AllocProblem.ring_latency` exactly; ``throughput`` minimises T with
``T >= compute[d]`` for every device, ``T >= airtime`` of the shared medium and
``N T >= ring latency``. No product of decision variables is left.

Identical phones (same profile, threads, speed, budget and link costs) are interchangeable:
symmetry-breaking constraints make the lower-indexed one be used first and earlier in the ring,
which shrinks the search without excluding any distinct plan.

Power save (one request in flight) charges a wake delay on a phone's input hop when it dozes,
which depends on the cycle time (a threshold). The MILP takes those charges as data; the
strategy re-solves with the charges the evaluated plan actually incurs until they repeat
(:func:`solve`). The result records whether the final plan's charges were the ones it was solved
with (then its objective is exact for the full model).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pulp

from llsim.alloc.plan import Plan, StagePlan
from llsim.alloc.problem import TOKEN_BYTES, AllocProblem, View
from llsim.errors import LLSimError

MS = 1e3


@dataclass
class MilpResult:
    plan: Plan | None
    status: str
    solver: str
    objective_ms: float | None
    bound_ms: float | None
    gap: float | None
    solve_time_s: float
    build_time_s: float
    n_vars: int
    n_constraints: int
    iterations: int = 1
    wake_consistent: bool = True
    info: dict = field(default_factory=dict)


def _lin(terms) -> pulp.LpAffineExpression:
    return pulp.lpSum(c * v for c, v in terms)


class _Model:
    def __init__(self, pb: AllocProblem, objective: str, wake: dict[int, float] | None):
        self.pb, self.objective = pb, objective
        self.wake = wake or {}
        n, D = pb.n_modules, pb.n_devices
        self.prob = pulp.LpProblem("llsim_alloc", pulp.LpMinimize)
        P = self.prob
        single = np.array([[pb.weight_bytes[m] + pb.kv_bytes[m] + pb.act_bytes[m] <= pb.budget[d]
                            for m in range(n)] for d in range(D)])
        self.x = [[pulp.LpVariable(f"x_{d}_{m}", cat="Binary") if single[d, m] else None for m in range(n)]
                  for d in range(D)]
        for m in range(n):
            if not any(self.x[d][m] is not None for d in range(D)):
                raise LLSimError(f"module {m} ({pb.module_names[m]}) needs "
                                 f"{(pb.weight_bytes[m] + pb.kv_bytes[m] + pb.act_bytes[m]) / 1e9:.2f} GB; no device's "
                                 f"budget holds it (largest: {pb.budget.max() / 1e9:.2f} GB)")
        X = self.X
        # start / end indicators
        self.s = [[None] * n for _ in range(D)]
        self.f = [[None] * n for _ in range(D)]
        for d in range(D):
            for m in range(n):
                if X(d, m) is None:
                    continue
                prev = X(d, m - 1) if m else None
                if prev is None:
                    self.s[d][m] = X(d, m)
                else:
                    v = self.s[d][m] = pulp.LpVariable(f"s_{d}_{m}", 0, 1)
                    P += v >= X(d, m) - prev
                    P += v <= X(d, m)
                    P += v <= 1 - prev
                nxt = X(d, m + 1) if m + 1 < n else None
                if nxt is None:
                    self.f[d][m] = X(d, m)
                else:
                    v = self.f[d][m] = pulp.LpVariable(f"f_{d}_{m}", 0, 1)
                    P += v >= X(d, m) - nxt
                    P += v <= X(d, m)
                    P += v <= 1 - nxt
            starts = [v for v in self.s[d] if v is not None]
            if len(starts) > 1:
                P += pulp.lpSum(starts) <= 1
        for m in range(n):
            P += pulp.lpSum(X(d, m) for d in range(D) if X(d, m) is not None) == 1
        self.used = [pulp.lpSum(v for v in self.s[d] if v is not None) for d in range(D)]
        if pb.header is not None:
            if not 0 <= pb.header < D:
                raise LLSimError(f"allocation.header: {pb.header} is not a device index (0..{D - 1})")
            if X(pb.header, 0) is None:
                raise LLSimError(f"allocation.header: device {pb.device_names[pb.header]} cannot hold module 0")
            P += X(pb.header, 0) == 1
        # memory
        for d in range(D):
            ms = [m for m in range(n) if X(d, m) is not None]
            if not ms:
                continue
            stat = pb.weight_bytes + pb.kv_bytes
            if sum(stat[m] for m in ms) + max(pb.act_bytes[m] for m in ms) <= pb.budget[d]:
                continue  # everything fits: no constraint needed
            a = pulp.LpVariable(f"act_{d}", 0)
            for m in ms:
                if pb.act_bytes[m] > 0:
                    P += a >= pb.act_bytes[m] / 1e9 * X(d, m)
            P += pulp.lpSum(stat[m] / 1e9 * X(d, m) for m in ms) + a <= pb.budget[d] / 1e9
        # single-device plan indicator for the token's return
        self.g = []
        for d in range(D):
            if X(d, 0) is not None and X(d, n - 1) is not None:
                v = pulp.LpVariable(f"g_{d}", 0, 1)
                P += v <= X(d, 0)
                P += v <= X(d, n - 1)
                self.g.append((d, v))
        self._tensor_vars()
        self._symmetry()

    def X(self, d: int, m: int):
        return self.x[d][m]

    # ---- residual-map tensors ----------------------------------------------------------------
    def _tensor_vars(self):
        pb, P, D = self.pb, self.prob, self.pb.n_devices
        self.recv: dict[tuple, list[list]] = {}  # group key -> per interval: per device receive expr
        self.ycount: dict[tuple, list] = {}  # group key -> per device (count if d is the producer)
        self.simple: dict[tuple, tuple[int, int]] = {}
        for gi, g in enumerate(self.pb.lat.tensors):
            key = (g.producer, g.consumers)
            iv = g.intervals()
            if len(iv) == 1 and iv[0][1] == iv[0][0] + 1:
                self.simple[key] = iv[0]
                continue
            per_iv = []
            for ii, (a, b) in enumerate(iv):
                if b == a + 1:
                    per_iv.append([self.s[d][b] for d in range(D)])
                    continue
                row = []
                for d in range(D):
                    if self.X(d, b) is None:
                        row.append(None)
                        continue
                    z = pulp.LpVariable(f"z_{gi}_{ii}_{d}", 0, 1)
                    P += z >= pulp.lpSum(self.s[d][m] for m in range(a + 1, b + 1) if self.s[d][m] is not None) \
                        + self.X(d, b) - 1
                    row.append(z)
                per_iv.append(row)
            self.recv[key] = per_iv
            count = pulp.lpSum(v for row in per_iv for v in row if v is not None)
            ys = []
            for d in range(D):
                xs = self.X(d, g.source)
                if xs is None:
                    ys.append(None)
                    continue
                y = pulp.LpVariable(f"y_{gi}_{d}", 0)
                P += y >= count - len(iv) * (1 - xs)
                ys.append(y)
            self.ycount[key] = ys

    def _symmetry(self):
        pb, P = self.pb, self.prob
        groups: dict[tuple, list[int]] = {}
        for d, k in enumerate(pb.device_keys):
            if d != pb.header:
                groups.setdefault(k, []).append(d)
        n = pb.n_modules
        for devs in groups.values():
            for d1, d2 in zip(devs, devs[1:]):
                if any((self.X(d1, m) is None) != (self.X(d2, m) is None) for m in range(n)):
                    continue
                P += self.used[d1] >= self.used[d2]
                st1 = pulp.lpSum(m * self.s[d1][m] for m in range(n) if self.s[d1][m] is not None)
                st2 = pulp.lpSum(m * self.s[d2][m] for m in range(n) if self.s[d2][m] is not None)
                P += st1 + 1 <= st2 + n * (1 - self.used[d2])

    # ---- cost expressions (milliseconds) --------------------------------------------------------
    def compute(self, view: View, d: int):
        n = self.pb.n_modules
        return pulp.lpSum(view.compute[d, m] * MS * self.X(d, m) for m in range(n) if self.X(d, m) is not None) \
            + self.pb.overhead[d] * MS * self.used[d]

    def transfers(self, view: View, links, with_latency: bool):
        """Per-step transmission (+ latency terms) of every tensor and the token, in ms."""
        pb, D, n = self.pb, self.pb.n_devices, self.pb.n_modules
        out, inb = links.out, links.inb
        loss = links.loss_per_byte_s if with_latency else 0.0
        terms = []
        bytes_of = {(g.producer, g.consumers): g.nbytes for g in view.tensors}
        for key, nb in bytes_of.items():
            c = nb * MS
            if key in self.simple:
                a, b = self.simple[key]
                for d in range(D):
                    if self.f[d][a] is not None and out[d]:
                        terms.append((c * out[d], self.f[d][a]))
                    if self.s[d][b] is not None and (inb[d] + loss):
                        terms.append((c * (inb[d] + loss), self.s[d][b]))
                continue
            for row in self.recv[key]:
                for d, v in enumerate(row):
                    if v is not None and (inb[d] + loss):
                        terms.append((c * (inb[d] + loss), v))
            for d, y in enumerate(self.ycount[key]):
                if y is not None and out[d]:
                    terms.append((c * out[d], y))
        e = _lin(terms)
        tb = TOKEN_BYTES * pb.batch * MS
        for d in range(D):  # token back to the header (not when one device holds everything)
            if self.f[d][n - 1] is not None:
                e += tb * (out[d] + loss) * self.X(d, n - 1)
            if self.X(d, 0) is not None:
                e += tb * inb[d] * self.X(d, 0)
        for d, g in self.g:
            e -= tb * (out[d] + inb[d] + loss) * g
        if with_latency:
            hops = pulp.lpSum(self.s[d][m] for d in range(D) for m in range(1, n) if self.s[d][m] is not None)
            e += links.one_way_s * MS * hops
            e += links.one_way_s * MS * (1 - pulp.lpSum(g for _, g in self.g))
            for d, w in self.wake.items():
                if w:
                    e += w * MS * pulp.lpSum(self.s[d][m] for m in range(1, n) if self.s[d][m] is not None)
                    if self.X(d, 0) is not None:
                        e += w * MS * self.X(d, 0)
                        e -= w * MS * pulp.lpSum(g for dd, g in self.g if dd == d)
        return e

    def ring(self, view: View, links):
        D = self.pb.n_devices
        return pulp.lpSum(self.compute(view, d) for d in range(D)) + self.transfers(view, links, True) \
            + self.pb.sample_s * MS

    def build_objective(self):
        pb, P = self.pb, self.prob
        if self.objective == "latency":
            P += self.ring(pb.lat, pb.lat.links)
            return
        T = self.T = pulp.LpVariable("T", 0)
        P += T
        for d in range(pb.n_devices):
            P += T >= self.compute(pb.thr, d)
        if pb.thr.links.shared:
            P += T >= self.transfers(pb.thr, pb.thr.links, False)
        P += pb.in_flight * T >= self.ring(pb.thr, pb.thr.links)

    def plan(self) -> Plan:
        pb = self.pb
        stages = []
        for d in range(pb.n_devices):
            ms = [m for m in range(pb.n_modules) if self.X(d, m) is not None and (self.X(d, m).value() or 0) > 0.5]
            if ms:
                stages.append(StagePlan(d, ms[0], ms[-1]))
        stages.sort(key=lambda s: s.start_module)
        return Plan(tuple(stages), "milp")


def _solver(name: str, time_limit: float, gap: float):
    if name == "highs":
        return pulp.HiGHS(msg=False, timeLimit=time_limit, gapRel=gap, threads=1)
    return pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit, gapRel=gap)


def solve_once(pb: AllocProblem, objective: str, time_limit: float = 30.0, mip_gap: float = 1e-6,
               wake: dict[int, float] | None = None, solver: str = "highs") -> MilpResult:
    t0 = time.perf_counter()
    mdl = _Model(pb, objective, wake)
    mdl.build_objective()
    t1 = time.perf_counter()
    used = solver
    try:
        mdl.prob.solve(_solver(solver, time_limit, mip_gap))
    except (pulp.PulpSolverError, OSError):
        if solver != "highs":
            raise
        used = "cbc"
        mdl.prob.solve(_solver("cbc", time_limit, mip_gap))
    t2 = time.perf_counter()
    status = pulp.LpStatus[mdl.prob.status]
    obj = pulp.value(mdl.prob.objective)
    bound = gap = None
    sm = getattr(mdl.prob, "solverModel", None)
    if used == "highs" and sm is not None:
        info = sm.getInfo()
        bound = info.mip_dual_bound + (mdl.prob.objective.constant or 0.0)  # HiGHS sees no constant term
        gap = info.mip_gap
        ms = sm.getModelStatus()
        status = sm.modelStatusToString(ms)
    plan = None
    if obj is not None and status not in ("Infeasible", "Not Solved", "Undefined"):
        try:
            plan = mdl.plan()
        except Exception:
            plan = None
    return MilpResult(plan, status, used, obj, bound, gap, t2 - t1, t1 - t0, len(mdl.prob.variables()),
                      len(mdl.prob.constraints))


def solve(pb: AllocProblem, objective: str | None = None, time_limit: float = 30.0, mip_gap: float = 1e-6,
          solver: str = "highs") -> MilpResult:
    """Solve; with power save, re-solve under the wake charges the plan incurs until they repeat."""
    objective = objective or pb.objective
    results: list[MilpResult] = []

    def once(wake):
        r = solve_once(pb, objective, time_limit, mip_gap, wake, solver)
        results.append(r)
        return r.plan

    plan, rounds, consistent = pb.power_save_fixed_point(once, objective)
    best = next((r for r in results if r.plan == plan), results[-1])
    best.iterations = rounds
    best.wake_consistent = consistent
    best.info["total_time_s"] = sum(r.solve_time_s + r.build_time_s for r in results)
    return best
