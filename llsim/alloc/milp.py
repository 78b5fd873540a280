"""The exact allocator: a mixed-integer linear program over stages, solved by HiGHS.

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

Two objective kinds, on one *view* of the costs (:class:`llsim.alloc.problem.View`):

``ring``
    The additive ring latency (one request in flight, latency objective): one MILP.
``cycle``
    ``max(slowest stage's compute, airtime of the shared medium, ring latency / N)``: the time per
    token of the whole ring with N requests in flight (the throughput objective on the all-steps
    view; N times it bounds a request's decode token time from below for the latency objective on
    the decode view). Solved exactly by a search over the bottleneck stage time
    (:func:`_cycle_search`): LP relaxations bracket it, then feasibility MILPs and at most one
    capped optimisation settle it.

The model is handed to HiGHS once as arrays (no modelling layer); only bounds, costs and an extra
row change between solves. Stages whose compute alone exceeds a known feasible plan's value are
dropped before solving (they cannot be in a better plan), which keeps large instances small.

:func:`solve_once` is one exact solve of the linear model. The ``milp`` *strategy* around it
(candidates, power save, the finer evaluation that picks among them) is
:func:`llsim.alloc.search.solve`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from llsim.alloc.highs import new_highs
from llsim.alloc.plan import Plan, StagePlan, validate_plan
from llsim.alloc.problem import AllocProblem, View
from llsim.cost.steps import TOKEN_BYTES
from llsim.errors import LLSimError

MS = 1e3
PRESOLVE = "off"  # HiGHS's presolve costs more than it saves on these models (re-run after every bound change)


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


def model_kind(pb: AllocProblem, objective: str) -> tuple[str, View, float]:
    """(kind, view, scale): what :func:`solve_once` minimises for ``objective``, and the factor from
    its value to the objective's seconds per token."""
    if pb.in_flight == 1:  # one request: its ring latency bounds every stage and the airtime
        return "ring", (pb.thr if objective == "throughput" else pb.lat), 1.0
    if objective == "throughput":
        return "cycle", pb.thr, 1.0
    return "cycle", pb.lat, float(pb.in_flight)


def _types(pb: AllocProblem) -> list[list[int]]:
    groups: dict[tuple, list[int]] = {}
    for d, k in enumerate(pb.device_keys):
        groups.setdefault((k, d == pb.header), []).append(d)
    return list(groups.values())


class _Model:
    """The MILP of one view as arrays: columns ``[u arcs | y sender counts | Z]``; rows: flow
    conservation, type counts, residual senders, and for ``cycle`` the airtime and ring rows."""

    def __init__(self, pb: AllocProblem, kind: str, view: View, wake: dict[int, float] | None,
                 upper: float | None):
        self.pb, self.kind, self.view = pb, kind, view
        wake = wake or {}
        n = pb.n_modules
        self.types = _types(pb)
        A, B = np.nonzero(np.triu(np.ones((n, n), dtype=bool)))  # every (a, b), a <= b
        self.A, self.B = A, B
        need = pb.stage_bytes_table()[A, B]
        links = view.links
        self._recv: dict[tuple, np.ndarray] = {}
        ts, ks, comp, ring, air = [], [], [], [], []
        for ti, members in enumerate(self.types):
            d = members[0]
            c = self._compute(d) * MS
            ok = need <= pb.budget[d]
            if pb.header is not None:
                ok &= (A == 0) == (d == pb.header)  # the header's type runs module 0, nobody else does
            if upper is not None:
                ok &= c <= upper * MS * (1 + 1e-9)
            k = np.nonzero(ok)[0]
            if not len(k):
                continue
            w = max(wake.get(m, 0.0) for m in members)
            ts.append(np.full(len(k), ti))
            ks.append(k)
            comp.append(c[k])
            ring.append(c[k] + self._transfers(d, links, True, w)[k] * MS)
            air.append(self._transfers(d, links, False, 0.0)[k] * MS)
        if not ks:
            raise LLSimError("no stage fits any device's memory budget")
        self.t = np.concatenate(ts)
        self.k = np.concatenate(ks)  # index into (A, B)
        self.a, self.b = A[self.k], B[self.k]
        self.comp, self.ring, self.air = np.concatenate(comp), np.concatenate(ring), np.concatenate(air)
        self.n_arcs = len(self.k)
        self.const = pb.sample_s * MS
        self._build_rows()

    # ---- per-stage costs (seconds), vectorised over all (a, b) --------------------------------
    def _compute(self, d: int) -> np.ndarray:
        pre = np.concatenate([[0.0], np.cumsum(self.view.compute[d])])
        return self.pb.overhead[d] + pre[self.B + 1] - pre[self.A]

    def received(self, g) -> np.ndarray:
        """Over all (a, b): does a stage a..b receive tensor group g (after its source, holding a consumer)."""
        key = (g.producer, g.consumers)
        if key not in self._recv:
            n = self.pb.n_modules
            nxt = np.full(n + 1, n + 1)
            for c in sorted(g.consumers, reverse=True):
                nxt[:c + 1] = np.minimum(nxt[:c + 1], c)
            self._recv[key] = (self.A > g.source) & (nxt[self.A] <= self.B)
        return self._recv[key]

    def _uniform_sender(self, g, links) -> float | None:
        """The sender's per-byte cost when it does not depend on the plan, else None."""
        if g.consumers == (g.source + 1,):
            return None  # sequential: priced on the stage that ends at the source
        if self.pb.header is not None and g.source == 0:
            return links.out[self.pb.header]
        outs = {links.out[m[0]] for m in self.types}
        return outs.pop() if len(outs) == 1 else None

    def _transfers(self, d: int, links, with_latency: bool, w: float) -> np.ndarray:
        pb, A, B, n = self.pb, self.A, self.B, self.pb.n_modules
        loss = links.loss_per_byte_s if with_latency else 0.0
        tb = TOKEN_BYTES * pb.batch
        c = np.zeros(len(A))
        for g in self.view.tensors:
            recv = self.received(g)
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
            c += (A > 0) * (links.one_way_s + w)  # the hop into this stage
            c += ((A == 0) & (B < n - 1)) * (links.one_way_s + w)  # the token's hop into the header
        return c

    # ---- rows ----------------------------------------------------------------------------------
    def _build_rows(self) -> None:
        pb, n, U = self.pb, self.pb.n_modules, self.n_arcs
        links = self.view.links
        rows: list[tuple[np.ndarray, np.ndarray, float, float]] = []  # (cols, values, lower, upper)
        arcs = np.arange(U)
        for m in range(n + 1):  # flow conservation: into m minus out of m
            cols = np.concatenate([arcs[self.b + 1 == m], arcs[self.a == m]])
            vals = np.concatenate([np.ones(int((self.b + 1 == m).sum())), -np.ones(int((self.a == m).sum()))])
            rhs = -1.0 if m == 0 else (1.0 if m == n else 0.0)
            rows.append((cols, vals, rhs, rhs))
        for ti, members in enumerate(self.types):
            cols = arcs[self.t == ti]
            if len(cols) > len(members):
                rows.append((cols, np.ones(len(cols)), -np.inf, float(len(members))))
        # residual tensors whose sender (and its per-byte cost) depends on the plan
        y_ring, y_air = [], []
        max_stages = min(pb.n_devices, n)
        for g in self.view.tensors:
            if g.consumers == (g.source + 1,) or self._uniform_sender(g, links) is not None:
                continue
            recv = self.received(g)[self.k]
            # at most this many stages receive g: after its source's stage, one per consumer at most
            M = float(min(len(g.consumers), max_stages - 1, n - 1 - g.source))
            ys = []
            for ti, members in enumerate(self.types):
                holds = arcs[(self.t == ti) & (self.a <= g.source) & (self.b >= g.source)]
                if not len(holds):
                    continue
                y = U + len(y_ring)
                ys.append(y)
                per = g.nbytes * links.out[members[0]] * MS
                y_ring.append(per)
                y_air.append(per)
                # only the type holding the source sends ...
                rows.append((np.concatenate([[y], holds]),
                             np.concatenate([[1.0], -M * np.ones(len(holds))]), -np.inf, 0.0))
            cnt = arcs[recv]  # ... once per receiving stage
            rows.append((np.concatenate([ys, cnt]).astype(int), np.concatenate([np.ones(len(ys)), -np.ones(len(cnt))]),
                         0.0, 0.0))
        self.n_y = len(y_ring)
        self.z = U + self.n_y
        self.n_cols = self.z + 1
        self.ring_y, self.air_y = np.array(y_ring), np.array(y_air)
        if self.kind == "cycle":
            N = float(pb.in_flight)
            ycols = np.arange(U, U + self.n_y)
            if links.shared:
                rows.append((np.concatenate([arcs, ycols, [self.z]]), np.concatenate([self.air, self.air_y, [-1.0]]),
                             -np.inf, 0.0))
            rows.append((np.concatenate([arcs, ycols, [self.z]]), np.concatenate([self.ring, self.ring_y, [-N]]),
                         -np.inf, -self.const))
        self.rows = rows

    def ring_costs(self) -> np.ndarray:
        """Column costs of the additive ring latency (ms, without the constant)."""
        c = np.zeros(self.n_cols)
        c[:self.n_arcs] = self.ring
        c[self.n_arcs:self.z] = self.ring_y
        return c

    def highs(self) -> "_Highs":
        return _Highs(self)

    def x_of(self, plan: Plan) -> np.ndarray | None:
        """A column vector whose arcs are ``plan``'s stages (None if a stage is not in the model)."""
        if not hasattr(self, "_arc_index"):
            type_of = {d: ti for ti, members in enumerate(self.types) for d in members}
            self._type_of = type_of
            self._arc_index = {(int(t), int(a), int(b)): i for i, (t, a, b) in enumerate(zip(self.t, self.a, self.b))}
        x = np.zeros(self.n_cols)
        for s in plan.stages:
            i = self._arc_index.get((self._type_of[s.device], s.start_module, s.end_module))
            if i is None:
                return None
            x[i] = 1.0
        return x

    def round(self, x: np.ndarray) -> Plan | None:
        """A plan from a fractional solution: from module 0, take the heaviest arc whose type has a
        phone left, until the last module (None if that walk gets stuck)."""
        u = x[:self.n_arcs]
        left = [len(m) for m in self.types]
        used: list[tuple[int, int, int]] = []
        m, n = 0, self.pb.n_modules
        if not hasattr(self, "_out_of"):
            order = np.lexsort((np.arange(self.n_arcs), self.a))
            self._out_of = np.split(order, np.searchsorted(self.a[order], np.arange(1, n)))
        while m < n:
            best = None
            for i in self._out_of[m]:
                if u[i] > 1e-6 and left[self.t[i]] > 0 and (best is None or u[i] > u[best] + 1e-12):
                    best = i
            if best is None:
                return None
            left[self.t[best]] -= 1
            used.append((int(self.a[best]), int(self.b[best]), int(self.t[best])))
            m = int(self.b[best]) + 1
        free = [list(mm) for mm in self.types]
        return Plan(tuple(StagePlan(free[t].pop(0), a, b) for a, b, t in used), "milp")

    def plan(self, x: np.ndarray) -> Plan:
        used = sorted((int(self.a[i]), int(self.b[i]), int(self.t[i])) for i in np.nonzero(x[:self.n_arcs] > 0.5)[0])
        free = [list(m) for m in self.types]
        stages = [StagePlan(free[t].pop(0), a, b) for a, b, t in used]
        return validate_plan(Plan(tuple(stages), "milp"), self.pb.n_modules, self.pb.n_devices, "milp solution")


class _Highs:
    """A :class:`_Model` in one HiGHS instance; searches change only bounds, costs and added rows."""

    def __init__(self, mdl: _Model):
        import highspy

        self.hp = highspy
        inf = highspy.kHighsInf
        lp = highspy.HighsLp()
        nc = mdl.n_cols
        lp.num_col_ = nc
        lp.col_cost_ = np.zeros(nc)
        lp.col_lower_ = np.zeros(nc)
        up = np.full(nc, inf)
        up[:mdl.n_arcs] = 1.0
        if mdl.kind != "cycle":
            up[mdl.z] = 0.0
        lp.col_upper_ = up
        starts, idx, val, lo, hi = [], [], [], [], []
        for cols, vals, l, u in mdl.rows:
            starts.append(len(idx))
            idx.extend(int(c) for c in cols)
            val.extend(float(v) for v in vals)
            lo.append(-inf if l == -np.inf else l)
            hi.append(inf if u == np.inf else u)
        lp.num_row_ = len(mdl.rows)
        lp.row_lower_ = np.array(lo, dtype=float)
        lp.row_upper_ = np.array(hi, dtype=float)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
        lp.a_matrix_.start_ = np.array(starts + [len(idx)], dtype=np.int32)
        lp.a_matrix_.index_ = np.array(idx, dtype=np.int32)
        lp.a_matrix_.value_ = np.array(val, dtype=float)
        integ = [highspy.HighsVarType.kContinuous] * nc
        for i in range(mdl.n_arcs):
            integ[i] = highspy.HighsVarType.kInteger
        lp.integrality_ = integ
        self.h = new_highs()
        # sub-MIP heuristics (RINS, RENS) cost seconds on these models' infeasibility proofs for nothing
        self.h.setOptionValue("mip_heuristic_run_rins", False)
        self.h.setOptionValue("mip_heuristic_run_rens", False)
        self.h.passModel(lp)
        self.n = nc
        self.n_rows = len(mdl.rows)
        self.inf = inf

    def set_upper(self, cols: np.ndarray, upper: np.ndarray) -> None:
        self.h.changeColsBounds(len(cols), cols.astype(np.int32), np.zeros(len(cols)), upper.astype(float))

    def set_costs(self, costs: np.ndarray) -> None:
        self.h.changeColsCost(self.n, np.arange(self.n, dtype=np.int32), costs.astype(float))

    def add_row(self, lower: float, upper: float, cols: np.ndarray, vals: np.ndarray) -> int:
        self.h.addRow(lower, upper, len(cols), cols.astype(np.int32), vals.astype(float))
        self.n_rows += 1
        return self.n_rows - 1

    def drop_row(self, row: int) -> None:
        self.h.deleteRows(1, np.array([row], dtype=np.int32))
        self.n_rows -= 1

    def run(self, relax: bool, time_limit: float, gap: float) -> tuple[str, float | None, np.ndarray | None, dict]:
        h = self.h
        h.setOptionValue("solve_relaxation", relax)
        h.setOptionValue("time_limit", max(time_limit, 0.05))
        h.setOptionValue("mip_rel_gap", gap)
        h.setOptionValue("presolve", PRESOLVE)
        h.run()
        status = h.modelStatusToString(h.getModelStatus())
        info = h.getInfo()
        has = info.primal_solution_status == 2
        x = np.array(h.getSolution().col_value) if has else None
        extra = {} if relax else {"bound": info.mip_dual_bound, "gap": info.mip_gap}
        return status, (info.objective_function_value if has else None), x, extra


# ---- the two objective kinds ------------------------------------------------------------------
def _ring_search(mdl: _Model, hs: _Highs, time_limit: float, mip_gap: float,
                 tie_eps: float) -> tuple[str, float | None, float | None, float | None, np.ndarray | None, dict]:
    """One MILP for the ring latency; then, among plans within ``tie_eps`` of it, the fewest stages."""
    costs = mdl.ring_costs()
    hs.set_costs(costs)
    deadline = time.perf_counter() + time_limit
    st, obj, x, extra = hs.run(False, time_limit, mip_gap)
    stats = {"milp_solves": 1}
    if x is None:
        return st, None, None, None, None, stats
    obj += mdl.const
    bound = extra["bound"] + mdl.const
    if tie_eps > 0 and st == "Optimal":
        nz = np.nonzero(costs)[0]
        r = hs.add_row(-hs.inf, obj * (1 + tie_eps) - mdl.const, nz, costs[nz])
        fewest = np.zeros(hs.n)
        fewest[:mdl.n_arcs] = 1.0
        hs.set_costs(fewest)
        st2, _, x2, _ = hs.run(False, deadline - time.perf_counter(), mip_gap)
        stats["milp_solves"] += 1
        hs.drop_row(r)
        if x2 is not None and st2 == "Optimal":
            stats["near_x"] = x2
    return st, obj, bound, extra.get("gap"), x, stats


def _cycle_search(mdl: _Model, hs: _Highs, time_limit: float, mip_gap: float, tie_eps: float,
                  tol: float = 0.0, incumbents: list[tuple[float, np.ndarray]] = (), max_milps: int | None = None,
                  value_of=None) -> tuple[str, float | None, float | None, float | None, np.ndarray | None, dict]:
    """The exact bottleneck search for ``max(stage compute, Z)``, Z >= airtime, N Z >= ring.

    With ``ok(i)``: "some plan has every stage's compute <= theta_i and Z <= theta_i", monotone
    in i, the optimum is ``min(theta_lo, Z(lo - 1))`` for the first ``lo`` with ``ok(lo)``
    (stages allowed at larger thresholds only cost more; below ``lo`` the value is Z, which only
    grows as thresholds fall). So:

    1. The LP relaxation (milliseconds) is a necessary condition for ``ok``: a binary search on
       it gives ``i_lp <= lo``.
    2. ``ok`` is a feasibility MILP (objective 0, Z bounded by theta): searched upward from
       ``i_lp`` by galloping, then bisection. It usually holds at ``i_lp`` or just above.
    3. ``Z(lo - 1)`` is needed only when its LP bound is below ``theta_lo`` (by more than the
       relative tolerance ``tol``): one MILP with Z capped at ``theta_lo``. When the LP bound is
       within ``tol`` the MILP (hard: its LP relaxation is nearly tight) is skipped, and the
       result is optimal within ``tol``, with that bound reported.

    ``incumbents``: known plans as (value ms, column vector): a threshold one of them meets needs
    no feasibility MILP, and step 3 only looks for plans better than the best of them.
    ``max_milps``: at most that many MILPs in steps 2 and 3 (an effort limit: the search then
    returns the best plan it has with the LP bound). ``value_of(plan) -> ms``: then every LP
    relaxation is also rounded to a plan (the heaviest arcs from module 0 on, within the types'
    counts), a new incumbent when it is better. With an incumbent, step 2 bisects between the LP
    threshold and the incumbent's (every MILP halves the interval); without, it gallops up from
    the LP threshold.
    """
    us = np.arange(mdl.n_arcs, dtype=np.int32)
    zi = mdl.z
    comp = mdl.comp
    thetas = np.unique(comp)
    inf = hs.inf
    deadline = time.perf_counter() + time_limit
    stats = {"lp_solves": 0, "milp_solves": 0}
    worst_gap, status = 0.0, "Optimal"
    z_cost = np.zeros(hs.n)
    z_cost[zi] = 1.0

    def restrict(th: float, z_cap: float) -> None:
        hs.set_upper(us, (comp <= th * (1 + 1e-12)).astype(float))
        hs.h.changeColBounds(zi, 0.0, z_cap)

    lp_cache: dict[int, float | None] = {}
    known = sorted(incumbents, key=lambda k: k[0])

    def z_lp(i: int) -> float | None:  # the LP bound on Z(theta_i); None: no plan at all
        if i not in lp_cache:
            restrict(thetas[i], inf)
            hs.set_costs(z_cost)
            st, obj, x, _ = hs.run(True, deadline - time.perf_counter(), mip_gap)
            stats["lp_solves"] += 1
            lp_cache[i] = obj if st == "Optimal" else None
            if value_of is not None and x is not None and st == "Optimal":
                p = mdl.round(x)
                if p is not None and (not known or value_of(p) < known[0][0]):
                    known.insert(0, (value_of(p), mdl.x_of(p)))
                    stats["lp_roundings"] = stats.get("lp_roundings", 0) + 1
        return lp_cache[i]

    def lp_ok(i: int) -> bool:
        z = z_lp(i)
        return z is not None and z <= thetas[i] * (1 + 1e-9)

    ok_cache: dict[int, np.ndarray | None] = {}

    def ok(i: int) -> np.ndarray | None:  # a plan with value <= theta_i, or None
        nonlocal status
        if i not in ok_cache:
            meets = [x for v, x in known if v <= thetas[i] * (1 + 1e-9)]
            if meets:
                ok_cache[i] = meets[0]
                return meets[0]
            if max_milps is not None and stats["milp_solves"] >= max_milps:
                status = "Effort limit reached"
                return None
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
        return "Infeasible", None, None, None, None, stats
    lo, hi = 0, len(thetas)  # 1. first i with the LP condition (len: none)
    while lo < hi:
        mid = (lo + hi) // 2
        if lp_ok(mid):
            hi = mid
        else:
            lo = mid + 1
    i_lp = lo
    n = len(thetas)
    # The LP bound on the optimum: a plan whose stages are all under theta_{i_lp} has Z >= the LP's
    # Z at theta_{i_lp - 1} (the LP only loosens as thresholds rise); any other is >= theta_{i_lp}.
    lp_bound = min(float(thetas[i_lp]) if i_lp < n else inf,
                   (z_lp(i_lp - 1) if i_lp > 0 and z_lp(i_lp - 1) is not None else inf))
    cut_short = False
    cands: list[tuple[float, np.ndarray, str]] = []
    if known and known[0][0] <= lp_bound * (1 + tol):
        found = None  # a known plan is within tol of the LP bound: nothing to search
        lower = lp_bound
    else:
        # 2. first i >= i_lp with ok(i)
        i_ub = int(np.searchsorted(thetas, known[0][0] * (1 - 1e-9))) if known else n
        found, last_bad = None, i_lp - 1
        if i_ub < n and ok(i_ub) is not None:  # bisect between the LP's threshold and a known plan's
            found = i_ub
        else:  # gallop up from the LP's threshold
            step, i = 1, i_lp
            while i < n:
                if ok(i) is not None:
                    found = i
                    break
                if status != "Optimal":
                    break
                last_bad = i
                if i == n - 1:
                    break
                i, step = min(i + step, n - 1), step * 2
        if found is not None:
            a, b = last_bad + 1, found
            while a < b and status == "Optimal":
                mid = (a + b) // 2
                if ok(mid) is not None:
                    b = mid
                elif status == "Optimal":
                    a = mid + 1
            found = b
        cut_short = status != "Optimal"
        if found is not None:
            cands.append((float(thetas[found]), ok_cache[found], "threshold"))
        # 3. Z(lo - 1): every stage allowed up to theta_{lo-1}, value Z
        j = (found if found is not None else len(thetas)) - 1
        cap = min([float(thetas[found])] + [v for v, _ in known[:1]]) if found is not None else inf
        lower = None if not cut_short else lp_bound
        if j >= 0 and z_lp(j) is not None and z_lp(j) < cap and z_lp(j) * (1 + tol) >= cap:
            lower = z_lp(j) if lower is None else min(lower, z_lp(j))  # plans under theta_j have Z >= it
        elif j >= 0 and z_lp(j) is not None and z_lp(j) < cap and (cut_short or (
                max_milps is not None and stats["milp_solves"] >= max_milps)):
            lower = lp_bound if lower is None else lower  # no effort left for step 3
            cut_short = True
            status = "Effort limit reached"
        elif j >= 0 and z_lp(j) is not None and z_lp(j) < cap and time.perf_counter() < deadline:
            restrict(thetas[j], cap)
            hs.set_costs(z_cost)
            st, obj, x, extra = hs.run(False, deadline - time.perf_counter(), mip_gap)
            stats["milp_solves"] += 1
            if x is not None:
                cands.append((float(max(obj, thetas[j])), x, "network"))
                worst_gap = max(worst_gap, extra.get("gap") or 0.0)
            if st not in ("Optimal", "Infeasible"):
                status = f"{st} (inner)"
                lower = lp_bound
    cands += [(v, x, "known plan") for v, x in known[:1]]
    if not cands:
        return (status if status != "Optimal" else "Infeasible"), None, None, None, None, stats
    val, x, stats["found_by"] = min(cands, key=lambda c: c[0])
    # what bounds the optimum: its slowest stage's compute, or the network/ring term below it
    stats["bound_by"] = "threshold" if comp[x[:mdl.n_arcs] > 0.5].max() >= val * (1 - 1e-9) else "network"
    if tie_eps > 0:
        # among plans within tie_eps of the best, the fewest stages
        lim = val * (1 + tie_eps)
        restrict(lim, lim)
        costs = np.zeros(hs.n)
        costs[us] = 1.0
        hs.set_costs(costs)
        st, _, x2, _ = hs.run(False, deadline - time.perf_counter(), mip_gap)
        stats["milp_solves"] += 1
        if x2 is not None and st in ("Optimal", "Solution limit reached"):
            stats["near_x"] = x2
    bound = val if lower is None else min(val, lower)
    worst_gap = max(worst_gap, (val - bound) / val if val > 0 else 0.0)
    if cut_short or bound < val * (1 - 1e-9):
        stats["proven_within"] = worst_gap
    return ("Optimal" if not cut_short else status), val, bound, worst_gap, x, stats


def solve_once(pb: AllocProblem, objective: str, time_limit: float = 30.0, mip_gap: float = 1e-6,
               wake: dict[int, float] | None = None, upper: float | None = None, tie_eps: float = 0.0,
               stages: tuple[int, int] | None = None, tol: float = 0.0, incumbents: list[Plan] = (),
               node_limit: int | None = None, max_milps: int | None = None,
               exact_up_to_arcs: int | None = None) -> MilpResult:
    """One exact solve of the linear model of ``objective`` (:func:`model_kind`).

    ``upper``: a known plan's value (seconds per token of the objective): stages whose compute
    alone exceeds it are dropped. ``tie_eps``: also find, among plans within that fraction of
    the optimum, one with the fewest stages (``info["near_plan"]``). ``stages``: (min, max) number of stages allowed. ``tol``:
    the cycle search may stop within that relative distance of the optimum, proven by an LP bound
    (``bound_ms`` and ``gap`` say how close). ``incumbents``: known plans that spare the cycle
    search the feasibility MILPs they answer. ``node_limit``: branch-and-bound nodes per MILP (a
    deterministic effort limit); ``max_milps``: MILPs per cycle search (the same);
    ``exact_up_to_arcs``: no effort limit for a model of at most that many stage columns (small
    models prove their optimum in milliseconds). A search cut short reports its status, its plan
    and the LP bound.
    ``objective_ms`` is the objective's value (for ``latency`` with N in flight, N x the cycle);
    ``info["bound_by"]`` (cycle kind) says whether a stage's compute (``threshold``) or the
    network/ring term (``network``) bounds it.
    """
    kind, view, scale = model_kind(pb, objective)
    t0 = time.perf_counter()
    mdl = _Model(pb, kind, view, wake, None if upper is None else upper / scale)
    if exact_up_to_arcs is not None and mdl.n_arcs <= exact_up_to_arcs:
        node_limit = max_milps = None
    hs = mdl.highs()
    if node_limit is not None:
        hs.h.setOptionValue("mip_max_nodes", int(node_limit))
    if stages is not None:
        lo, hi = stages
        hs.add_row(float(lo), float(hi), np.arange(mdl.n_arcs), np.ones(mdl.n_arcs))
    t1 = time.perf_counter()
    if kind == "ring":
        st, obj, bound, gap, x, stats = _ring_search(mdl, hs, time_limit, mip_gap, tie_eps)
    else:
        known = []
        for p in incumbents:
            x = mdl.x_of(p)
            if x is not None and (stages is None or stages[0] <= len(p.stages) <= stages[1]):
                known.append((pb.value(p, objective) * MS / scale, x))
        st, obj, bound, gap, x, stats = _cycle_search(mdl, hs, time_limit, mip_gap, tie_eps, tol,
                                                      sorted(known, key=lambda k: k[0]), max_milps,
                                                      lambda p: pb.value(p, objective) * MS / scale)
    plan = mdl.plan(x) if x is not None else None
    if "near_x" in stats:  # the fewest-stage plan within tie_eps of the optimum
        stats["near_plan"] = mdl.plan(stats.pop("near_x"))
    t2 = time.perf_counter()
    return MilpResult(plan, st if plan is not None or st != "Optimal" else "Infeasible", "highs",
                      None if obj is None else obj * scale, None if bound is None else bound * scale, gap,
                      t2 - t1, t1 - t0, hs.n, hs.n_rows, info=stats)


def solve(pb: AllocProblem, objective: str | None = None, **kw) -> MilpResult:
    """The ``milp`` strategy (:func:`llsim.alloc.search.solve`)."""
    from llsim.alloc.search import solve as strategy

    return strategy(pb, objective, **kw)
