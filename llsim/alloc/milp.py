"""The exact allocator: a mixed-integer linear program over stages, solved by HiGHS through pulp.

Formulation (a path-flow / set-partitioning model):

* Identical phones (same profile, threads, speed, budget and link costs; the pinned header is
  always its own type) are merged into a *type* t with a count c_t. This removes the symmetry
  that makes device-indexed models slow, without excluding any distinct plan.
* ``u[t,a,b]`` binary: a phone of type t runs modules a..b as one stage. Only stages that fit the
  type's memory budget exist (weights + KV for the max context of every request in flight + the
  stage's largest activation buffer), so memory needs no constraint.
* Stages form a path 0 -> n over the module boundaries: flow conservation at every boundary
  (one stage leaves node 0, one enters node n); a type runs at most c_t stages. The ring order
  is the order of the stages' ranges, so which phones take part and their order come out of u.
* Every cost of a stage is known from (t, a, b) alone, so the objective is linear in u with no
  product of decisions: its compute; the bytes it receives (the sequential tensor at a, and every
  residual/mask tensor with a consumer in a..b produced before a); the sequential tensor it sends
  when it ends at b; half an RTT and the power-save charge of its input hop; the token's return
  (tail sends, header receives). The one exception is a residual tensor whose *sender* depends on
  the plan and whose phones' sending costs differ: then ``sum_t y[t] = count`` (receiving
  stages) with ``y[t] <= M S[t]`` (S[t]: a stage of type t holds the source) prices the sender's
  per-byte cost times the number of receiving stages exactly. (This disaggregated form has a
  tighter LP relaxation than ``y[t] >= count - M (1 - S[t])``: the LP cannot charge nobody.)

Objectives (milliseconds): ``latency`` minimises the ring latency of
:meth:`llsim.alloc.problem.AllocProblem.ring_latency` (one MILP); ``throughput`` minimises
``max(slowest stage's compute, airtime of the shared medium, ring latency / N)`` exactly by a
search over the bottleneck stage time (:func:`solve_once`): LP relaxations bracket it, then
feasibility MILPs and at most one capped optimisation settle it (:func:`_throughput_highs`).
With HiGHS the model is handed over once as arrays and only bounds and costs change between
solves; with CBC (fallback) every step is an optimising MILP through pulp. Stages whose compute alone exceeds a known feasible plan's value are dropped before
solving (they cannot be in a better plan), which keeps large instances small.

Power save (one request in flight) charges a wake delay on a phone's input hop when it dozes,
which depends on the cycle time (a threshold). The MILP takes those charges as data; :func:`solve`
re-solves with the charges the evaluated plan actually incurs until they repeat
(:meth:`AllocProblem.power_save_fixed_point`); the result says whether the final plan's charges
were the ones it was solved with (then its objective is exact for the full model).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pulp

from llsim.alloc.highs import new_highs
from llsim.alloc.plan import Plan, StagePlan
from llsim.alloc.problem import TOKEN_BYTES, AllocProblem, View
from llsim.errors import LLSimError

MS = 1e3


def _var(prob: pulp.LpProblem, name: str, low=None, up=None, cat: str = "Continuous") -> pulp.LpVariable:
    """A variable of ``prob`` (PuLP >= 3.3 attaches variables to their model; older PuLP does not)."""
    if hasattr(prob, "add_variable"):
        return prob.add_variable(name, low, up, cat=cat)
    return pulp.LpVariable(name, low, up, cat=cat)


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


def _types(pb: AllocProblem, wake: dict[int, float]) -> list[list[int]]:
    groups: dict[tuple, list[int]] = {}
    for d, k in enumerate(pb.device_keys):
        groups.setdefault((k, d == pb.header), []).append(d)
    return list(groups.values())


class _Model:
    def __init__(self, pb: AllocProblem, objective: str, wake: dict[int, float] | None, upper: float | None):
        self.pb, self.objective = pb, objective
        wake = wake or {}
        n = pb.n_modules
        self.types = _types(pb, wake)
        self._recv_cache: dict[tuple, np.ndarray] = {}
        self.prob = pulp.LpProblem("llsim_alloc", pulp.LpMinimize)
        tri = np.triu(np.ones((n, n), dtype=bool))  # a <= b
        A, B = np.nonzero(tri)
        stat = np.concatenate([[0.0], np.cumsum(pb.weight_bytes + pb.kv_bytes)])
        act = np.array([pb.act_bytes[a:b + 1].max() for a, b in zip(A, B)])
        need = stat[B + 1] - stat[A] + act
        self.A, self.B = A, B
        self.arcs: list[tuple[int, int, int, pulp.LpVariable]] = []  # (type, a, b, var)
        lat_cost, thr_comp, air_cost, ring_cost = [], [], [], []
        comp_l = self._compute(pb.lat)
        comp_t = self._compute(pb.thr)
        lat_tr = self._transfer_costs(pb.lat, pb.lat.links, True, wake)
        ring_tr = self._transfer_costs(pb.thr, pb.thr.links, True, wake)
        air_tr = self._transfer_costs(pb.thr, pb.thr.links, False, {})
        for ti, members in enumerate(self.types):
            d = members[0]
            ok = need <= pb.budget[d]
            if pb.header is not None:
                ok &= (A == 0) == (d == pb.header)  # the header's type runs module 0, nobody else does
            if upper is not None:
                bound = comp_l[ti] if objective == "latency" else comp_t[ti]
                ok &= bound <= upper * MS * (1 + 1e-9)
            for k in np.nonzero(ok)[0]:
                a, b = int(A[k]), int(B[k])
                v = _var(self.prob, f"u_{ti}_{a}_{b}", cat="Binary")
                self.arcs.append((ti, a, b, v))
                lat_cost.append(comp_l[ti][k] + lat_tr[ti][k])
                thr_comp.append(comp_t[ti][k])
                ring_cost.append(comp_t[ti][k] + ring_tr[ti][k])
                air_cost.append(air_tr[ti][k])
        if not self.arcs:
            raise LLSimError("no stage fits any device's memory budget")
        self.lat_cost, self.thr_comp, self.air_cost, self.ring_cost = lat_cost, thr_comp, air_cost, ring_cost
        P = self.prob
        into: list[list] = [[] for _ in range(n + 1)]
        out: list[list] = [[] for _ in range(n + 1)]
        for _, a, b, v in self.arcs:
            out[a].append(v)
            into[b + 1].append(v)
        for m in range(n + 1):
            rhs = -1 if m == 0 else (1 if m == n else 0)
            P += pulp.lpSum(into[m]) - pulp.lpSum(out[m]) == rhs, f"flow_{m}"
        for ti, members in enumerate(self.types):
            vs = [v for t, _, _, v in self.arcs if t == ti]
            if len(vs) > len(members):
                P += pulp.lpSum(vs) <= len(members), f"count_{ti}"
        self._senders(wake)

    # ---- per-stage costs (ms), vectorised over all (a, b) ------------------------------------
    def _compute(self, view: View) -> list[np.ndarray]:
        pb, A, B = self.pb, self.A, self.B
        out = []
        for members in self.types:
            d = members[0]
            pre = np.concatenate([[0.0], np.cumsum(view.compute[d])])
            out.append((pb.overhead[d] + pre[B + 1] - pre[A]) * MS)
        return out

    def _received(self, g) -> np.ndarray:
        """Stages (a, b) that receive tensor group g: after its source, holding one of its consumers."""
        key = (g.producer, g.consumers)  # the same for every view and type: computed once
        if key not in self._recv_cache:
            self._recv_cache[key] = self._receivers(g)
        return self._recv_cache[key]

    def _receivers(self, g) -> np.ndarray:
        n = self.pb.n_modules
        nxt = np.full(n + 1, n + 1)
        for c in sorted(g.consumers, reverse=True):
            nxt[:c + 1] = np.minimum(nxt[:c + 1], c)
        return (self.A > g.source) & (nxt[self.A] <= self.B)

    def _uniform_sender(self, g, links) -> float | None:
        """The sender's per-byte cost when it does not depend on the plan, else None."""
        if g.consumers == (g.source + 1,):
            return None  # sequential: priced on the stage that ends at the source
        if self.pb.header is not None and g.source == 0:
            return links.out[self.pb.header]
        outs = {links.out[m[0]] for m in self.types}
        return outs.pop() if len(outs) == 1 else None

    def _transfer_costs(self, view: View, links, with_latency: bool, wake: dict[int, float]) -> list[np.ndarray]:
        pb, A, B, n = self.pb, self.A, self.B, self.pb.n_modules
        loss = links.loss_per_byte_s if with_latency else 0.0
        tb = TOKEN_BYTES * pb.batch
        out = []
        for members in self.types:
            d = members[0]
            c = np.zeros(len(A))
            for g in view.tensors:
                recv = self._received(g)
                c += recv * g.nbytes * (links.inb[d] + loss)
                if g.consumers == (g.source + 1,):
                    c += (B == g.source) * g.nbytes * links.out[d]
                else:
                    u = self._uniform_sender(g, links)
                    if u is not None:
                        c += recv * g.nbytes * u
            c += ((A == 0) & (B < n - 1)) * tb * links.inb[d]  # the token comes back to the header
            c += ((A > 0) & (B == n - 1)) * tb * (links.out[d] + loss)  # ... from the tail
            if with_latency:
                w = max(wake.get(m, 0.0) for m in members)
                c += (A > 0) * (links.one_way_s + w)  # the hop into this stage
                c += ((A == 0) & (B < n - 1)) * (links.one_way_s + w)  # the token's hop into the header
            out.append(c * MS)
        return out

    def _senders(self, wake):
        """Residual tensors whose sender (and its per-byte cost) depends on the plan: y[t] products."""
        pb, P = self.pb, self.prob
        self.sender_terms: dict[str, list] = {"lat": [], "ring": [], "air": []}
        for gi, g in enumerate(pb.lat.tensors):
            if g.consumers == (g.source + 1,) or self._uniform_sender(g, pb.lat.links) is not None:
                continue
            recv = self._received(g)
            idx = {(a, b): k for k, (a, b) in enumerate(zip(self.A, self.B))}
            count = pulp.lpSum(v for t, a, b, v in self.arcs if recv[idx[(a, b)]])
            M = len(g.consumers)
            ys = []
            for ti, members in enumerate(self.types):
                holds = [v for t, a, b, v in self.arcs if t == ti and a <= g.source <= b]
                if not holds:
                    continue
                y = _var(P, f"y_{gi}_{ti}", 0)
                ys.append(y)
                P += y <= M * pulp.lpSum(holds)  # only the type holding the source sends ...
                d = members[0]
                for key, view, links in (("lat", pb.lat, pb.lat.links), ("ring", pb.thr, pb.thr.links),
                                         ("air", pb.thr, pb.thr.links)):
                    nb = next(x.nbytes for x in view.tensors if (x.producer, x.consumers) == (g.producer, g.consumers))
                    self.sender_terms[key].append((nb * links.out[d] * MS, y))
            P += pulp.lpSum(ys) == count  # ... once per receiving stage

    def build_objective(self):
        pb, P = self.pb, self.prob
        us = [v for *_, v in self.arcs]
        const = pb.sample_s * MS

        def expr(costs, key):
            return pulp.lpSum(c * v for c, v in zip(costs, us)) + pulp.lpSum(c * y for c, y in self.sender_terms[key])

        if self.objective == "latency":
            P += expr(self.lat_cost, "lat") + const
            return
        T = _var(P, "T", 0)
        P += T
        for c, v in zip(self.thr_comp, us):
            P += T >= c * v
        if pb.thr.links.shared:
            P += T >= expr(self.air_cost, "air")
        P += pb.in_flight * T >= expr(self.ring_cost, "ring") + const

    def build_inner(self):
        """Throughput inner problem: min Z >= airtime, N Z >= ring (stage compute handled by thresholds)."""
        pb, P = self.pb, self.prob
        us = [v for *_, v in self.arcs]
        Z = _var(P, "Z", 0)
        P += Z
        if pb.thr.links.shared:
            P += Z >= pulp.lpSum(c * v for c, v in zip(self.air_cost, us)) \
                + pulp.lpSum(c * y for c, y in self.sender_terms["air"])
        P += pb.in_flight * Z >= pulp.lpSum(c * v for c, v in zip(self.ring_cost, us)) \
            + pulp.lpSum(c * y for c, y in self.sender_terms["ring"]) + pb.sample_s * MS

    def plan(self) -> Plan:
        used = sorted((a, b, t) for t, a, b, v in self.arcs if (v.value() or 0) > 0.5)
        free = [list(m) for m in self.types]
        stages = [StagePlan(free[t].pop(0), a, b) for a, b, t in used]
        from llsim.alloc.plan import validate_plan

        return validate_plan(Plan(tuple(stages), "milp"), self.pb.n_modules, self.pb.n_devices, "milp solution")


def _solver(name: str, time_limit: float, gap: float):
    if name == "highs":
        return pulp.HiGHS(msg=False, timeLimit=time_limit, gapRel=gap, threads=1)
    return pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit, gapRel=gap)


def _run(prob: pulp.LpProblem, solver: str, time_limit: float, mip_gap: float) -> dict:
    """Solve once; HiGHS first, CBC if HiGHS is unavailable."""
    used = solver
    try:
        prob.solve(_solver(solver, time_limit, mip_gap))
    except (pulp.PulpSolverError, OSError):
        if solver != "highs":
            raise
        used = "cbc"
        prob.solve(_solver("cbc", time_limit, mip_gap))
    out = {"solver": used, "status": pulp.LpStatus[prob.status], "objective": pulp.value(prob.objective),
           "bound": None, "gap": None}
    sm = getattr(prob, "solverModel", None)
    if used == "highs" and sm is not None:
        info = sm.getInfo()
        out["bound"] = info.mip_dual_bound + (prob.objective.constant or 0.0)  # HiGHS sees no constant term
        out["gap"] = info.mip_gap
        out["status"] = sm.modelStatusToString(sm.getModelStatus())
        if info.primal_solution_status != 2:  # no feasible solution: pulp's values would be stale
            out["objective"] = None
    if out["status"] in ("Infeasible", "Not Solved", "Undefined"):
        out["objective"] = None
    return out


def solve_once(pb: AllocProblem, objective: str, time_limit: float = 30.0, mip_gap: float = 1e-6,
               wake: dict[int, float] | None = None, solver: str = "highs", upper: float | None = None,
               tie_eps: float = 0.0) -> MilpResult:
    """One MILP solve (latency), or the exact bottleneck search (throughput).

    ``tie_eps``: then, among plans within that fraction of the optimum, take one with the fewest
    stages (a second, lexicographic MILP).

    Throughput: ``max(stage compute, airtime, ring/N)`` has a weak LP relaxation when written
    as ``T >= c u``. Instead, for a threshold theta on stage compute, stages slower than theta
    are removed and ``Z(theta) = min max(airtime, ring/N)`` is solved (two additive terms: a
    strong LP). The optimum is ``min over theta of max(theta, Z(theta))`` with theta ranging over
    the stages' compute times; Z is non-increasing in theta, so a binary search finds the first
    theta with ``Z(theta) <= theta`` and the answer is the better of it and its predecessor.
    ``info["bound_by"]`` says which: ``threshold`` (a stage's compute) or ``network`` (Z).
    """
    t0 = time.perf_counter()
    mdl = _Model(pb, objective, wake, upper)
    t1 = time.perf_counter()
    hs = None
    if solver == "highs":
        try:
            import highspy  # noqa: F401
            hs = True
        except ImportError:
            hs = None
    if objective == "latency" and hs:
        mdl.build_objective()
        return _latency_highs(mdl, _Highs(mdl.prob), time_limit, mip_gap, tie_eps, t0, t1)
    if objective == "latency":
        mdl.build_objective()
        r = _run(mdl.prob, solver, time_limit, mip_gap)
        plan = mdl.plan() if r["objective"] is not None else None
        if plan is not None and tie_eps > 0 and r["status"] == "Optimal":
            # among plans within tie_eps of the optimum, the fewest stages
            mdl.prob += mdl.prob.objective <= r["objective"] * (1 + tie_eps), "near_optimal"
            mdl.prob.setObjective(pulp.lpSum(v for *_, v in mdl.arcs))
            r2 = _run(mdl.prob, solver, time_limit, mip_gap)
            if r2["objective"] is not None and r2["status"] == "Optimal":
                plan = mdl.plan()
        t2 = time.perf_counter()
        return MilpResult(plan, r["status"], r["solver"], r["objective"], r["bound"], r["gap"], t2 - t1, t1 - t0,
                          len(mdl.prob.variables()), mdl.prob.numConstraints())
    mdl.build_inner()
    if hs:
        return _throughput_highs(mdl, _Highs(mdl.prob), time_limit, mip_gap, tie_eps, t0, t1)
    return _throughput_pulp(mdl, solver, time_limit, mip_gap, tie_eps, t0, t1)


class _Highs:
    """The pulp model handed to HiGHS once (as arrays); the throughput search then only changes
    column bounds and costs between solves (pulp would rebuild the model column by column each time)."""

    def __init__(self, prob: pulp.LpProblem):
        import highspy

        self.hp = highspy
        vs = prob.variables()
        self.vars = vs
        self.index = {v.name: i for i, v in enumerate(vs)}
        inf = highspy.kHighsInf
        lp = highspy.HighsLp()
        lp.num_col_ = len(vs)
        lp.col_cost_ = np.array([prob.objective.get(v, 0.0) for v in vs], dtype=float)
        lp.col_lower_ = np.array([-inf if v.lowBound is None else v.lowBound for v in vs], dtype=float)
        lp.col_upper_ = np.array([inf if v.upBound is None else v.upBound for v in vs], dtype=float)
        rows = list(prob.constraints.values())
        lo, up, starts, idx, val = [], [], [], [], []
        for c in rows:
            starts.append(len(idx))
            for v, a in c.items():
                if a != 0:
                    idx.append(self.index[v.name])
                    val.append(a)
            lb, ub = c.getLb(), c.getUb()
            lo.append(-inf if lb is None else lb)
            up.append(inf if ub is None else ub)
        starts.append(len(idx))
        lp.num_row_ = len(rows)
        lp.row_lower_ = np.array(lo, dtype=float)
        lp.row_upper_ = np.array(up, dtype=float)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
        lp.a_matrix_.start_ = np.array(starts, dtype=np.int32)
        lp.a_matrix_.index_ = np.array(idx, dtype=np.int32)
        lp.a_matrix_.value_ = np.array(val, dtype=float)
        lp.integrality_ = [highspy.HighsVarType.kInteger if v.cat == pulp.LpInteger
                           else highspy.HighsVarType.kContinuous for v in vs]
        self.h = new_highs()
        self.h.passModel(lp)
        self.n = len(vs)
        self.n_rows = len(rows)

    def set_upper(self, cols: np.ndarray, upper: np.ndarray) -> None:
        self.h.changeColsBounds(len(cols), cols, np.zeros(len(cols)), upper.astype(float))

    def set_costs(self, costs: np.ndarray) -> None:
        self.h.changeColsCost(self.n, np.arange(self.n, dtype=np.int32), costs.astype(float))

    def run(self, relax: bool, time_limit: float, gap: float) -> tuple[str, float | None, np.ndarray | None, dict]:
        h = self.h
        h.setOptionValue("solve_relaxation", relax)
        h.setOptionValue("time_limit", max(time_limit, 0.05))
        h.setOptionValue("mip_rel_gap", gap)
        h.run()
        status = h.modelStatusToString(h.getModelStatus())
        info = h.getInfo()
        has = info.primal_solution_status == 2
        x = np.array(h.getSolution().col_value) if has else None
        extra = {} if relax else {"bound": info.mip_dual_bound, "gap": info.mip_gap}
        return status, (info.objective_function_value if has else None), x, extra


def _latency_highs(mdl: _Model, hs: _Highs, time_limit: float, mip_gap: float, tie_eps: float,
                   t0: float, t1: float) -> MilpResult:
    """One MILP for the ring latency; then, among plans within ``tie_eps`` of it, the fewest stages."""
    const = mdl.prob.objective.constant or 0.0  # HiGHS sees no constant term
    costs = np.array(hs.h.getLp().col_cost_)
    deadline = time.perf_counter() + time_limit
    st, obj, x, extra = hs.run(False, time_limit, mip_gap)
    solves = 1
    obj = None if x is None else obj + const
    bound = extra["bound"] + const if x is not None else None
    plan = _plan_from(mdl, hs, x) if x is not None else None
    if plan is not None and tie_eps > 0 and st == "Optimal":
        nz = np.nonzero(costs)[0].astype(np.int32)
        hs.h.addRow(-hs.hp.kHighsInf, obj * (1 + tie_eps) - const, len(nz), nz, costs[nz])
        fewest = np.zeros(hs.n)
        fewest[[hs.index[v.name] for *_, v in mdl.arcs]] = 1.0
        hs.set_costs(fewest)
        st2, _, x2, _ = hs.run(False, deadline - time.perf_counter(), mip_gap)
        solves += 1
        if x2 is not None and st2 == "Optimal":
            plan = _plan_from(mdl, hs, x2)
    t2 = time.perf_counter()
    return MilpResult(plan, st, "highs", obj, bound, extra.get("gap") if x is not None else None, t2 - t1,
                      t1 - t0, hs.n, hs.n_rows, info={"milp_solves": solves})


def _plan_from(mdl: _Model, hs: _Highs, x: np.ndarray) -> Plan:
    for v in mdl.prob.variables():
        v.varValue = x[hs.index[v.name]]
    return mdl.plan()


def _throughput_highs(mdl: _Model, hs: _Highs, time_limit: float, mip_gap: float, tie_eps: float,
                      t0: float, t1: float) -> MilpResult:
    """The exact bottleneck search of :func:`solve_once`, with fewer and cheaper MILPs.

    With ``ok(i)``: "some plan has every stage's compute <= theta_i and Z <= theta_i", monotone
    in i, the optimum is ``min(theta_lo, Z(lo - 1))`` for the first ``lo`` with ``ok(lo)``
    (stages allowed at larger thresholds only cost more; below ``lo`` the value is Z, which only
    grows as thresholds fall). So:

    1. The LP relaxation (milliseconds) is a necessary condition for ``ok``: a binary search on
       it gives ``i_lp <= lo``.
    2. ``ok`` is a feasibility MILP (objective 0, Z bounded by theta): searched upward from
       ``i_lp`` by galloping, then bisection. It usually holds at ``i_lp`` or just above.
    3. ``Z(lo - 1)`` is needed only when its LP bound is below ``theta_lo``: one MILP with Z
       capped at ``theta_lo``.
    """
    us = np.array([hs.index[v.name] for *_, v in mdl.arcs], dtype=np.int32)
    zi = hs.index["Z"]
    comp = np.array(mdl.thr_comp)
    thetas = np.unique(comp)
    inf = hs.hp.kHighsInf
    deadline = time.perf_counter() + time_limit
    stats = {"lp_solves": 0, "milp_solves": 0}
    worst_gap, status = 0.0, "Optimal"
    z_cost = np.zeros(hs.n)
    z_cost[zi] = 1.0

    def restrict(th: float, z_cap: float) -> None:
        hs.set_upper(us, (comp <= th * (1 + 1e-12)).astype(float))
        hs.h.changeColBounds(zi, 0.0, z_cap)

    lp_cache: dict[int, float | None] = {}

    def z_lp(i: int) -> float | None:  # the LP bound on Z(theta_i); None: no plan at all
        if i not in lp_cache:
            restrict(thetas[i], inf)
            hs.set_costs(z_cost)
            st, obj, _, _ = hs.run(True, deadline - time.perf_counter(), mip_gap)
            stats["lp_solves"] += 1
            lp_cache[i] = obj if st == "Optimal" else None
        return lp_cache[i]

    def lp_ok(i: int) -> bool:
        z = z_lp(i)
        return z is not None and z <= thetas[i] * (1 + 1e-9)

    ok_cache: dict[int, np.ndarray | None] = {}

    def ok(i: int) -> np.ndarray | None:  # a plan with value <= theta_i, or None
        nonlocal status
        if i not in ok_cache:
            if time.perf_counter() > deadline:
                status = "Time limit reached"
                return None
            restrict(thetas[i], thetas[i] * (1 + 1e-9))
            hs.set_costs(np.zeros(hs.n))
            st, _, x, _ = hs.run(False, deadline - time.perf_counter(), mip_gap)
            stats["milp_solves"] += 1
            if st not in ("Optimal", "Infeasible"):
                status = f"{st} (inner)"
            ok_cache[i] = x
        return ok_cache[i]

    if z_lp(len(thetas) - 1) is None:
        t2 = time.perf_counter()
        return MilpResult(None, "Infeasible", "highs", None, None, None, t2 - t1, t1 - t0, len(us), hs.n_rows)
    lo, hi = 0, len(thetas)  # 1. first i with the LP condition (len: none)
    while lo < hi:
        mid = (lo + hi) // 2
        if lp_ok(mid):
            hi = mid
        else:
            lo = mid + 1
    i_lp = lo
    # 2. first i >= i_lp with ok(i): gallop, then bisect
    n = len(thetas)
    found, last_bad, step, i = None, i_lp - 1, 1, i_lp
    while i < n:
        if ok(i) is not None:
            found = i
            break
        if status.startswith("Time"):
            break
        last_bad = i
        if i == n - 1:
            break
        i, step = min(i + step, n - 1), step * 2
    if found is not None:
        a, b = last_bad + 1, found
        while a < b:
            mid = (a + b) // 2
            if ok(mid) is not None:
                b = mid
            else:
                a = mid + 1
        found = b
    cands = []
    if found is not None:
        cands.append((float(thetas[found]), ok_cache[found], "threshold"))
    # 3. Z(lo - 1): every stage allowed up to theta_{lo-1}, value Z
    j = (found if found is not None else len(thetas)) - 1
    cap = float(thetas[found]) if found is not None else inf
    if j >= 0 and z_lp(j) is not None and z_lp(j) < cap and time.perf_counter() < deadline:
        restrict(thetas[j], cap)
        hs.set_costs(z_cost)
        st, obj, x, extra = hs.run(False, deadline - time.perf_counter(), mip_gap)
        stats["milp_solves"] += 1
        if x is not None:
            cands.append((float(max(obj, thetas[j])), x, "network"))
            worst_gap = max(worst_gap, extra.get("gap") or 0.0)
        if st not in ("Optimal", "Infeasible"):
            status = f"{st} (inner)"
    if not cands:
        t2 = time.perf_counter()
        st = status if status != "Optimal" else "Infeasible"
        return MilpResult(None, st, "highs", None, None, None, t2 - t1, t1 - t0, len(us), hs.n_rows, info=stats)
    val, x, stats["bound_by"] = min(cands, key=lambda c: c[0])
    plan = _plan_from(mdl, hs, x)
    if tie_eps > 0 and status == "Optimal":
        # among plans within tie_eps of the optimum, the fewest stages
        lim = val * (1 + tie_eps)
        restrict(lim, lim)
        costs = np.zeros(hs.n)
        costs[us] = 1.0
        hs.set_costs(costs)
        st, _, x2, _ = hs.run(False, deadline - time.perf_counter(), mip_gap)
        stats["milp_solves"] += 1
        if x2 is not None and st == "Optimal":
            plan = _plan_from(mdl, hs, x2)
    t2 = time.perf_counter()
    return MilpResult(plan, status, "highs", val, val if status == "Optimal" else None, worst_gap,
                      t2 - t1, t1 - t0, len(us), hs.n_rows, info=stats)


def _throughput_pulp(mdl: _Model, solver: str, time_limit: float, mip_gap: float, tie_eps: float,
                     t0: float, t1: float) -> MilpResult:
    """The bottleneck search through pulp (any solver; used for CBC): a binary search with one
    optimising MILP per step."""
    us = [v for *_, v in mdl.arcs]
    comp = np.array(mdl.thr_comp)
    thetas = np.unique(comp)
    cache: dict[int, tuple] = {}
    deadline = time.perf_counter() + time_limit
    worst_gap, solves, status, used = 0.0, 0, "Optimal", solver

    def Z(i: int):
        nonlocal worst_gap, solves, status, used
        if i not in cache and time.perf_counter() > deadline:
            status = "Time limit reached"  # unexplored thresholds count as infeasible: the result is feasible
            return (None, None)            # but not proven optimal
        if i not in cache:
            th = thetas[i]
            for v, c in zip(us, comp):
                v.upBound = 1 if c <= th else 0
            r = _run(mdl.prob, solver, max(deadline - time.perf_counter(), 0.1), mip_gap)
            solves += 1
            used = r["solver"]
            if r["objective"] is not None:  # an infeasible threshold is expected (no stage fast enough)
                if r["status"] != "Optimal":
                    status = f"{r['status']} (inner)"
                worst_gap = max(worst_gap, r["gap"] or 0.0)
            elif r["status"] not in ("Infeasible",):
                status = f"{r['status']} (inner)"
            cache[i] = (r["objective"], mdl.plan() if r["objective"] is not None else None)
        return cache[i]

    lo, hi = 0, len(thetas) - 1
    if Z(hi)[0] is None:
        t2 = time.perf_counter()
        return MilpResult(None, "Infeasible", used, None, None, None, t2 - t1, t1 - t0, len(us), 0)
    while lo < hi:  # first i with Z(i) <= theta_i (Z infeasible counts as +inf)
        mid = (lo + hi) // 2
        z = Z(mid)[0]
        if z is not None and z <= thetas[mid]:
            hi = mid
        else:
            lo = mid + 1
    cands = [(max(thetas[lo], Z(lo)[0]), Z(lo)[1])]
    if lo > 0 and Z(lo - 1)[0] is not None:
        cands.append((max(thetas[lo - 1], Z(lo - 1)[0]), Z(lo - 1)[1]))
    val, plan = min(cands, key=lambda c: c[0])
    if tie_eps > 0 and status == "Optimal":
        # among plans within tie_eps of the optimum, the fewest stages
        lim = val * (1 + tie_eps)
        for v, c in zip(us, comp):
            v.upBound = 1 if c <= lim else 0
        zvar = next(v for v in mdl.prob.variables() if v.name == "Z")
        zvar.upBound = lim
        mdl.prob.setObjective(pulp.lpSum(us))
        r2 = _run(mdl.prob, solver, max(deadline - time.perf_counter(), 0.1), mip_gap)
        if r2["objective"] is not None and r2["status"] == "Optimal":
            plan = mdl.plan()
    t2 = time.perf_counter()
    return MilpResult(plan, status, used, float(val), float(val) if status == "Optimal" else None, worst_gap,
                      t2 - t1, t1 - t0, len(us), mdl.prob.numConstraints(), info={"inner_solves": solves})


TIE_EPS = 0.005


def solve(pb: AllocProblem, objective: str | None = None, time_limit: float = 30.0, mip_gap: float = 1e-6,
          solver: str = "highs", tie_eps: float = TIE_EPS) -> MilpResult:
    """The ``milp`` strategy.

    1. MILP optimum of the model; among plans within ``tie_eps`` of it (the bench's resolution),
       the fewest stages: a shallower ring has fewer hops, wake-ups and less queueing behind
       other requests' prefills, which the linear model does not price.
    2. With power save and one request in flight, re-solve under the wake charges the plan
       actually incurs until they repeat.
    3. Whether a phone dozes depends on the timeline (a residual mask arriving less than the
       idle timeout before its input keeps it awake), which the per-device charges of step 2
       cannot express. The final plan is the best under the full model
       (:meth:`AllocProblem.evaluate`, which replays that timeline) among the MILP's rounds and
       the baselines' plans; ``info["selected"]`` says which, and ``wake_consistent`` whether
       the MILP's own objective was exact for it.
    """
    from llsim.alloc.baselines import BASELINES

    objective = objective or pb.objective
    results: list[MilpResult] = []
    # an upper bound from the baselines' feasible plans lets stages slower than it be dropped
    ub = None
    base_plans = {}
    for name, f in BASELINES.items():
        p = f(pb)
        e = pb.evaluate(p)
        if e.feasible:
            base_plans[name] = p
            v = e.latency_s if objective == "latency" else e.cycle_s
            ub = v if ub is None else min(ub, v)

    def once(wake):
        upper = None if ub is None else ub + sum(wake.values())  # a plan's model value <= its value + charges
        r = solve_once(pb, objective, time_limit, mip_gap, wake, solver, upper, tie_eps)
        results.append(r)
        return r.plan

    plan, rounds, consistent = pb.power_save_fixed_point(once, objective)
    best = next((r for r in results if r.plan == plan), results[-1])
    best.iterations = rounds
    best.wake_consistent = consistent
    best.info["total_time_s"] = sum(r.solve_time_s + r.build_time_s for r in results)
    best.info["selected"] = "milp"
    if plan is not None and pb.doze(plan):
        def val(p):
            e = pb.evaluate(p)
            return (e.latency_s if objective == "latency" else e.cycle_s), len(p.stages)
        v0 = val(plan)
        for name, p in base_plans.items():
            v = val(p)
            if v[0] < v0[0] * (1 - 1e-9):
                best.plan, v0 = Plan(p.stages, "milp"), v
                best.info["selected"] = f"{name} plan (full power-save model)"
    return best
