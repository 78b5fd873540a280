"""The balancer policy: observations in, a rebalancing decision (or none) out. Pure code.

:class:`Balancer` is the object a coordinator calls every ``interval_s`` with the
:class:`~llsim.balance.monitor.Snapshot` of its monitor and a :class:`ClusterState` (the plan in
force, which weights each phone holds, how much work is left). It keeps only its own memory
(what the current plan assumed, since when a deviation lasts, when it last acted). The simulator
and a real coordinator call the same methods; nothing here reads simulator state.

Policy:

1. **Failover.** A phone of the plan that stopped answering heartbeats forces a re-plan on the
   phones still alive (weights they lack come from a phone that holds them, else from the
   coordinator's model store). If the model no longer fits, the decision is ``terminal``.
2. **Triggers, with hysteresis.** A phone's smoothed slowdown (observed / expected stage time)
   or reported link rate deviating from what the current plan assumed by more than
   ``threshold`` for ``sustain_s`` arms a trigger; a deviation back under ``threshold / 2``
   disarms it. A phone that (re)joined and kept answering for ``join_after_s`` is a trigger too.
   Nothing happens within ``min_interval_s`` of the last action or evaluation.
3. **Candidates.** The allocation problem is re-priced with the observed slowdowns and link
   rates (:func:`llsim.alloc.adjust.adjusted_problem`). First the best **boundary shift** within the overlap
   replicas (same phones and order; each phone only takes modules whose weights it holds). Then
   a full **re-plan** with the allocator. The shift is taken if it is within ``min_gain`` of
   the re-plan (no weights to move); otherwise the better of the two by net gain.
4. **Gain vs cost.** A candidate is taken only if it promises ``min_gain`` relative speed-up and
   its time saved over the remaining horizon exceeds ``gain_cost_margin`` x its cost: pipeline
   drain (one ring pass), weight and KV-cache transfers over the modelled Wi-Fi (serialised on a
   shared medium), and opening a session per newly run module.
5. **No repeated rejections.** After an evaluation that took nothing, the policy does not
   evaluate again while nothing it depends on has changed: the same plan, the same phones alive,
   the same weights held, and every observed slowdown and link rate within ``threshold`` of what
   that evaluation saw (the deviation that would arm a trigger). Each evaluation solves the
   allocation problem; repeating one gives the same answer.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from llsim.alloc.adjust import adjusted_problem  # noqa: F401 - the balancer re-prices the problem it observes
from llsim.alloc.plan import Plan, StagePlan
from llsim.alloc.problem import AllocProblem
from llsim.alloc.search import best_neighbours, order_neighbours
from llsim.balance.monitor import Snapshot


@dataclass
class ClusterState:
    t: float
    plan: Plan
    present: dict[int, frozenset[int]]  # device -> modules whose weights it holds now
    remaining_tokens: int  # tokens still to generate for submitted + queued requests
    cached_tokens: int = 0  # KV-cache tokens held per stage (all in-flight requests)


@dataclass
class Move:
    module: int
    src: int | None  # None: the coordinator's model store
    dst: int
    nbytes: float
    what: str = "weights"  # weights | kv


@dataclass
class Decision:
    t: float
    trigger: str  # e.g. "slowdown kirin-990-0 x1.8", "left tensor-g3-0", "join ..."
    kind: str  # shift | replan | failover | terminal
    plan: Plan | None
    old_value_s: float | None = None  # predicted seconds per token of the current plan (observed state)
    new_value_s: float | None = None
    gain: float = 0.0  # relative
    gain_s: float = 0.0  # predicted time saved over the horizon
    cost_s: float = 0.0
    drain_s: float = 0.0
    transfer_s: float = 0.0
    session_s: float = 0.0
    moves: list[Move] = field(default_factory=list)
    sessions: dict[int, int] = field(default_factory=dict)  # device -> modules newly opened
    reason: str = ""


def per_token_s(pb: AllocProblem, plan: Plan) -> float:
    """Predicted seconds per generated token of the whole cluster (the objective's view)."""
    e = pb.evaluate(plan)
    if not e.feasible:
        return float("inf")
    return e.cycle_s if pb.objective == "throughput" else e.latency_s / max(pb.in_flight, 1)


# ---- boundary shifts within the replicas -------------------------------------------------------------
def _windows(plan: Plan, present: dict[int, frozenset[int]]) -> list[list[int]]:
    """For each boundary i (start of stage i >= 1): the starts it may move to, its phones holding the weights."""
    out = []
    st = plan.stages
    for i in range(1, len(st)):
        u, v, a = st[i - 1].device, st[i].device, st[i].start_module
        hu, hv = present.get(u, frozenset()), present.get(v, frozenset())
        w = [a]
        p = a
        while p - 1 > st[i - 1].start_module and (p - 1) in hv:  # v takes modules p-1.. from u
            p -= 1
            w.append(p)
        p = a
        while p + 1 <= st[i].end_module and p in hu:  # u takes modules a..p from v
            p += 1
            w.append(p)
        out.append(sorted(w))
    return out


def _with_bounds(plan: Plan, starts: tuple[int, ...], n: int) -> Plan | None:
    b = [0, *starts, n]
    if any(b[i] >= b[i + 1] for i in range(len(b) - 1)):
        return None
    return Plan(tuple(StagePlan(s.device, b[i], b[i + 1] - 1) for i, s in enumerate(plan.stages)), "shift")


def best_shift(pb: AllocProblem, plan: Plan, present: dict[int, frozenset[int]],
               exhaustive_limit: int = 4096) -> tuple[Plan, float] | None:
    """The best plan with the same phones in the same order whose boundaries moved only over modules
    the receiving phone already holds; exhaustive when the windows are small, else coordinate descent."""
    if len(plan.stages) < 2:
        return None
    n = pb.n_modules
    wins = _windows(plan, present)
    best, best_v = plan, per_token_s(pb, plan)
    if int(np.prod([len(w) for w in wins], dtype=float)) <= exhaustive_limit:
        for starts in itertools.product(*wins):
            p = _with_bounds(plan, starts, n)
            if p is not None:
                v = per_token_s(pb, p)
                if v < best_v - 1e-12:
                    best, best_v = p, v
    else:
        cur = [s.start_module for s in plan.stages[1:]]
        improved = True
        while improved:
            improved = False
            for i, w in enumerate(wins):
                for x in w:
                    trial = cur.copy()
                    trial[i] = x
                    p = _with_bounds(plan, tuple(trial), n)
                    if p is not None:
                        v = per_token_s(pb, p)
                        if v < best_v - 1e-12:
                            best, best_v, cur, improved = p, v, trial, True
    if best is plan:
        return None
    return best, best_v


# ---- what a switch costs ---------------------------------------------------------------------------
def switch_cost(pb: AllocProblem, old: Plan, new: Plan, present: dict[int, frozenset[int]], alive: set[int],
                cached_tokens: int, drain_s: float, session_s_per_module: float) -> Decision:
    """Moves (weights a phone lacks, KV cache of modules that change phone), sessions, and their time."""
    owner = {m: s.device for s in old.stages for m in range(s.start_module, s.end_module + 1)}
    old_range = {s.device: set(range(s.start_module, s.end_module + 1)) for s in old.stages}
    kv_tok = pb.meta.get("kv_bytes_per_token")
    moves: list[Move] = []
    sessions: dict[int, int] = {}
    for s in new.stages:
        d = s.device
        mine = present.get(d, frozenset())
        opened = 0
        for m in range(s.start_module, s.end_module + 1):
            if m not in old_range.get(d, ()):
                opened += 1
            if m not in mine:
                src = owner.get(m) if owner.get(m) in alive else None
                if src is None:
                    src = next((x for x in sorted(present) if x in alive and x != d and m in present[x]), None)
                moves.append(Move(m, src, d, float(pb.weight_bytes[m])))
            u = owner.get(m)
            if kv_tok is not None and cached_tokens and u is not None and u != d and u in alive and kv_tok[m] > 0:
                moves.append(Move(m, u, d, float(kv_tok[m] * cached_tokens), "kv"))
        if opened:
            sessions[d] = opened
    links = pb.lat.links
    total = 0.0
    for mv in moves:
        per = links.inb[mv.dst] if mv.src is None else links.per_byte(mv.src, mv.dst)
        total += mv.nbytes * (per + links.loss_per_byte_s)
    if moves:
        total += links.one_way_s
    sess = session_s_per_module * max(sessions.values(), default=0)
    return Decision(0.0, "", "", new, cost_s=drain_s + total + sess, drain_s=drain_s, transfer_s=total,
                    session_s=sess, moves=moves, sessions=sessions)


# ---- the policy --------------------------------------------------------------------------------------
REPLAN_NEIGHBOURS = 8  # neighbours of the plan in force priced as re-plans


class Balancer:
    def __init__(self, cfg, pb: AllocProblem, nominal_link_mbps: dict[int, float] | None = None,
                 names: list[str] | None = None):
        from llsim.alloc.strategies import allocate_problem

        self.cfg, self.pb = cfg, pb
        self._allocate = allocate_problem
        self.names = names or pb.device_names
        self.nominal_link = dict(nominal_link_mbps or {})
        self.assumed: dict[int, float] = {}  # slowdown the plan in force was made for
        self.assumed_link: dict[int, float] = dict(self.nominal_link)
        self.slowdown: dict[int, float] = {}  # last trusted observation per device (idle phones keep theirs)
        self.since: dict[str, float] = {}  # trigger key -> time the deviation began
        self.last_action = -float("inf")
        self.last_eval = -float("inf")
        self.known: set[int] | None = None  # devices alive when the plan in force was made
        self.evaluations = 0
        self.skipped = 0  # evaluations not repeated (same state as a rejected one)
        self._rejected = None  # the state a rejected evaluation saw (see _unchanged)
        self._skip_t = -float("inf")
        self.log: list[dict] = []  # every evaluation (taken or not), for the record

    # the state the current plan was made for
    def adopt(self, snap: Snapshot, plan: Plan) -> None:
        self.slowdown.update(snap.slowdown)
        self.assumed = dict(self.slowdown)
        self.assumed_link.update(snap.link_mbps)
        self.known = {d for d, a in snap.alive.items() if a}
        self.since.clear()
        self._rejected = None

    def _state(self, snap: Snapshot, cs: ClusterState) -> tuple:
        """What an evaluation depends on: plan, phones alive, weights held, observations."""
        alive = frozenset(d for d, a in snap.alive.items() if a)
        held = tuple(sorted((d, m) for d, m in cs.present.items()))
        return cs.plan.stages, alive, held, dict(self.slowdown), dict(snap.link_mbps)

    def _unchanged(self, state: tuple) -> bool:
        """``state`` is the rejected evaluation's, up to observations within ``threshold`` of it."""
        old = self._rejected
        if old is None or state[:3] != old[:3]:
            return False
        thr = self.cfg.threshold
        for new_obs, old_obs in ((state[3], old[3]), (state[4], old[4])):
            if set(new_obs) != set(old_obs):
                return False
            for d, v in new_obs.items():
                o = old_obs[d]
                if o <= 0 or v <= 0 or abs(v / o - 1.0) > thr:
                    return False
        return True

    def _link_scale(self, snap: Snapshot) -> dict[int, float]:
        out = {}
        for d, r in snap.link_mbps.items():
            nom = self.nominal_link.get(d)
            if nom and r > 0:
                out[d] = nom / r  # per-byte airtime is inversely proportional to the PHY rate
        return out

    def problem(self, snap: Snapshot) -> AllocProblem:
        alive = {d for d, a in snap.alive.items() if a}
        return adjusted_problem(self.pb, self.slowdown, self._link_scale(snap), alive)

    def _armed(self, key: str, dev: float, recent: float, t: float) -> bool:
        """Hysteresis: the timer starts when the smoothed and the recent deviation both exceed the
        threshold (same sign), is reset when either falls under half of it, and fires after
        ``sustain_s`` if both still exceed it (a spike shorter than that cannot fire through the
        smoothing's lag)."""
        thr = self.cfg.threshold
        both = abs(dev) > thr and abs(recent) > thr and dev * recent > 0
        if both:
            start = self.since.setdefault(key, t)
            return t - start >= self.cfg.sustain_s
        if abs(dev) < thr / 2 or abs(recent) < thr / 2 or dev * recent < 0:
            self.since.pop(key, None)
        return False

    def triggers(self, snap: Snapshot, cs: ClusterState) -> list[str]:
        t, out = snap.t, []
        self.slowdown.update(snap.slowdown)
        watch = set(cs.plan.devices) | {d for d in snap.slowdown if snap.alive.get(d)}  # idle phones: probes
        for d in sorted(watch):
            r = snap.slowdown.get(d)
            if r is not None:
                a = self.assumed.get(d, 1.0)
                if self._armed(f"speed{d}", r / a - 1.0, snap.recent.get(d, r) / a - 1.0, t):
                    out.append(f"{'slowdown' if r > a else 'speedup'} {self.names[d]} x{r / a:.2f}")
            rate = snap.link_mbps.get(d)
            ref = self.assumed_link.get(d)
            if rate is not None and ref and d in cs.plan.devices:
                if self._armed(f"link{d}", ref / rate - 1.0, ref / rate - 1.0, t):
                    out.append(f"link {self.names[d]} {ref:.0f}->{rate:.0f} Mb/s")
        if self.known is not None:
            for d, since in snap.alive_since.items():
                if d not in self.known and t - since >= self.cfg.join_after_s:
                    out.append(f"join {self.names[d]}")
        return out

    def decide(self, snap: Snapshot, cs: ClusterState) -> Decision | None:
        if self.known is None:
            self.adopt(snap, cs.plan)
        self.known = {d for d in self.known if snap.alive.get(d)}  # a phone that left and returns is a join
        t = snap.t
        gone = [d for d in cs.plan.devices if not snap.alive.get(d, False)]
        if gone:
            return self._failover(snap, cs, gone)
        trig = self.triggers(snap, cs)
        if not trig or t - max(self.last_action, self.last_eval) < self.cfg.min_interval_s:
            return None
        state = self._state(snap, cs)
        if self._unchanged(state):  # the same evaluation was made and rejected: its answer stands
            if t - max(self.last_eval, self._skip_t) >= self.cfg.min_interval_s:
                self.skipped += 1
                self._skip_t = t
            return None
        self.last_eval = t
        self.evaluations += 1
        pb = self.problem(snap)
        alive = {d for d, a in snap.alive.items() if a}
        v_old = per_token_s(pb, cs.plan)
        drain = pb.evaluate(cs.plan).ring_s
        cands = []
        sh = best_shift(pb, cs.plan, cs.present)
        if sh is not None:
            c = switch_cost(pb, cs.plan, sh[0], cs.present, alive, cs.cached_tokens, drain,
                            self.cfg.session_ms_per_module / 1e3)
            c.kind, c.new_value_s = "shift", sh[1]
            cands.append(c)
        res = self._allocate(pb, self.cfg.strategy)
        # re-plans: the allocator's plan, and the current plan's neighbours (drop, swap or replace a
        # phone, move a boundary; or a device-order move with re-balanced cuts), which keep most
        # weights where they are: the cheapest to switch to
        replans = [res.plan] if res.feasible else []
        replans += best_neighbours(pb, cs.plan, pb.objective, REPLAN_NEIGHBOURS)
        replans += order_neighbours(pb, cs.plan, pb.objective, REPLAN_NEIGHBOURS)
        seen = {cs.plan.stages}
        for p in replans:
            if p.stages in seen:
                continue
            seen.add(p.stages)
            c = switch_cost(pb, cs.plan, p, cs.present, alive, cs.cached_tokens, drain,
                            self.cfg.session_ms_per_module / 1e3)
            c.kind, c.new_value_s = "replan", per_token_s(pb, p)
            cands.append(c)
        horizon = cs.remaining_tokens  # tokens the change would speed up
        if self.cfg.horizon_s and np.isfinite(v_old) and v_old > 0:
            horizon = min(horizon, self.cfg.horizon_s / v_old)
        for c in cands:
            c.t, c.trigger, c.old_value_s = t, "; ".join(trig), v_old
            c.gain = (v_old - c.new_value_s) / v_old if v_old > 0 and np.isfinite(v_old) else 1.0
            c.gain_s = horizon * (v_old - c.new_value_s) if np.isfinite(v_old) else float("inf")
        ok = [c for c in cands if c.gain >= self.cfg.min_gain and c.gain_s >= self.cfg.gain_cost_margin * c.cost_s]
        pick = None
        shift = next((c for c in ok if c.kind == "shift"), None)
        replan = max((c for c in ok if c.kind == "replan"), key=lambda c: c.gain_s - c.cost_s, default=None)
        if shift and (replan is None or shift.new_value_s <= replan.new_value_s * (1 + self.cfg.min_gain)):
            pick = shift
        elif ok:
            pick = max(ok, key=lambda c: c.gain_s - c.cost_s)
        best = {}
        for c in cands:  # per kind, the candidate with the best net gain
            if c.kind not in best or c.gain_s - c.cost_s > best[c.kind].gain_s - best[c.kind].cost_s:
                best[c.kind] = c
        self.log.append({"t": t, "trigger": "; ".join(trig), "taken": pick.kind if pick else "none",
                         "candidates": {k: {"gain": c.gain, "gain_s": c.gain_s, "cost_s": c.cost_s}
                                        for k, c in best.items()}})
        if pick is None:
            self._rejected = state
            return None
        self.last_action = t
        self.adopt(snap, pick.plan)
        return pick

    def _failover(self, snap: Snapshot, cs: ClusterState, gone: list[int]) -> Decision:
        t = snap.t
        self.evaluations += 1
        alive = {d for d, a in snap.alive.items() if a}
        pb = self.problem(snap)
        trig = "left " + ", ".join(self.names[d] for d in gone)
        res = self._allocate(pb, self.cfg.strategy) if alive else None
        self.last_action = t
        if res is None or not res.feasible:
            need, have = pb.memory_need(), float(pb.budget.sum())
            why = (f"the model no longer fits the phones still present: it needs {need / 1e9:.2f} GB, their budgets "
                   f"total {have / 1e9:.2f} GB" + (f" ({(need - have) / 1e9:.2f} GB missing)" if need > have else
                                                   " but no contiguous split fits"))
            self.log.append({"t": t, "trigger": trig, "taken": "terminal"})
            return Decision(t, trig, "terminal", None, reason=why)
        c = switch_cost(pb, cs.plan, res.plan, cs.present, alive, 0, 0.0, self.cfg.session_ms_per_module / 1e3)
        c.t, c.trigger, c.kind = t, trig, "failover"
        c.new_value_s = per_token_s(pb, res.plan)
        self.log.append({"t": t, "trigger": trig, "taken": "failover"})
        self.adopt(snap, res.plan)
        return c
