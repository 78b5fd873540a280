"""The balancer policy: observations in, a rebalancing decision (or none) out. Pure code.

:class:`Balancer` is the object a coordinator calls every ``interval_s`` with the
:class:`~llsim.balance.monitor.Snapshot` of its monitor and a :class:`ClusterState` (the plan in
force, which weights each phone holds, how much work is left). It keeps only its own memory
(what the current plan assumed, since when a deviation lasts, how long past deviations lasted,
when it last acted, a plan being staged). The simulator and a real coordinator call the same
methods; nothing here reads simulator state. docs/balancer.md describes the policy in full.

Policy:

1. **Failover.** A phone of the plan that stopped answering heartbeats forces a re-plan on the
   phones still alive. The candidates are the allocator's plan, the broken plan's neighbours and
   plans built around the weights already present (the gone phone's stage given to a phone that
   holds a standby copy of it, then the best boundary shift); the one that finishes the horizon's
   tokens soonest (switch cost + tokens x seconds per token) is taken. If the model no longer
   fits, the decision is ``terminal``.
2. **Triggers, with hysteresis.** A phone's smoothed slowdown (observed / expected stage time)
   or reported link rate deviating from what the current plan assumed by more than
   ``threshold`` for ``sustain_s`` arms a trigger; a deviation back under ``threshold / 2``
   disarms it. A phone that (re)joined and kept answering for ``join_after_s`` is a trigger too,
   and so is the first evaluation ``min_interval_s`` after a failover (a better plan may now be
   staged in the background). Nothing happens within ``min_interval_s`` of the last action or
   evaluation, except a recovery (a phone faster again than the plan assumed) or a new condition (a
   trigger no action of the last ``min_interval_s`` answered), each answered by changes that move
   no weights.
3. **Candidates.** The allocation problem is re-priced with the observed slowdowns (the recent
   ratios: :meth:`Balancer.priced`) and link rates (:func:`llsim.alloc.adjust.adjusted_problem`):
   the best **boundary shift** within the replicas (same phones and order; each phone only takes
   modules whose weights it holds); the allocator's **re-plan**, the current plan's neighbours and
   the plans built around standby copies; and, for each re-plan that moves weights, the same plan
   **staged**: its weights streamed in the background while the current plan keeps running, the
   switch made once they are all there (its cost is the stall only; its gain starts after the
   streaming); and, for each shift or re-plan whose weights are present but that moves KV cache,
   the same switch **pre-copied**: the cache copied in the background first, only what was
   generated meanwhile moved in the stall.
4. **Gain vs cost over the work that remains.** A candidate is taken only if it promises
   ``min_gain`` relative speed-up and its time saved over the horizon exceeds
   ``gain_cost_margin`` x its cost (pipeline drain, weights and KV cache moved, sessions opened).
   The horizon is the work left (closed workload: the tokens still to generate; open workload:
   as long again as the run so far), cut short by the expected remaining time of the condition
   that triggered (:mod:`llsim.balance.horizon`, learned from how long past deviations of the
   kind lasted) and by ``horizon_s`` if set. A change for a condition expected to end before the
   work also pays for switching back (a drain and sessions). A shift within ``min_gain`` of the
   best re-plan is preferred (no weights move); otherwise the best net gain.
5. **No repeated rejections.** After an evaluation that took nothing, the policy does not
   evaluate again while nothing it depends on has changed: the same plan, the same phones alive,
   the same weights held, and every observed slowdown and link rate within ``threshold`` of what
   that evaluation saw (the deviation that would arm a trigger). Each evaluation solves the
   allocation problem; repeating one gives the same answer.

Every evaluation is in :attr:`Balancer.log` with every candidate priced and its verdict (why it
was chosen or rejected): the coordinator writes them to ``rebalances.csv``.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace

import numpy as np

from llsim.alloc.adjust import adjusted_problem  # noqa: F401 - the balancer re-prices the problem it observes
from llsim.alloc.plan import Plan, StagePlan
from llsim.alloc.problem import AllocProblem
from llsim.alloc.search import best_neighbours, order_neighbours
from llsim.balance.horizon import Episodes, ends_within, expected_useful
from llsim.balance.monitor import Snapshot


@dataclass
class ClusterState:
    t: float
    plan: Plan
    present: dict[int, frozenset[int]]  # device -> modules whose weights it holds now
    remaining_tokens: int | None  # tokens still to generate (None: an open workload, not known)
    cached_tokens: int = 0  # KV-cache tokens held per stage (all in-flight requests)
    # a staged plan's KV-cache pre-copy (live migration): of ``cached_tokens``, those already copied to
    # its phones in the background (None: no pre-copy has completed); only the rest moves in the stall
    kv_copied: int | None = None


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
    kind: str  # shift | replan | stage | precopy | failover | terminal
    plan: Plan | None
    old_value_s: float | None = None  # predicted seconds per token of the current plan (observed state)
    new_value_s: float | None = None
    gain: float = 0.0  # relative
    gain_s: float = 0.0  # predicted time saved over the horizon
    cost_s: float = 0.0  # the stall: drain + transfer (not the background one) + sessions
    drain_s: float = 0.0
    transfer_s: float = 0.0
    session_s: float = 0.0
    moves: list[Move] = field(default_factory=list)  # kind stage: the weights streamed in the background
    sessions: dict[int, int] = field(default_factory=dict)  # device -> modules newly opened
    reason: str = ""
    verdict: str = ""  # "chosen", or why not
    return_s: float = 0.0  # switching back when the condition ends (counted in the payback test)
    background_s: float = 0.0  # kind stage: predicted time to stream its weights
    horizon_tokens: float = 0.0
    horizon_s: float = 0.0  # the payback window, seconds at the current plan's speed
    horizon_basis: str = ""  # what bounds it: remaining work | condition estimate | horizon_s | ...
    evaluation: int = 0  # which evaluation priced it (Balancer.evaluations at the time)
    then: str = ""  # kind precopy: the switch that follows the copy (shift | replan)

    @property
    def net_s(self) -> float:
        return self.gain_s - self.cost_s - self.return_s


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
def weight_source(pb: AllocProblem, m: int, d: int, present: dict[int, frozenset[int]], alive: set[int]) -> int | None:
    """Where phone ``d`` gets module ``m``'s weights from: the phone holding them with the cheapest
    path to ``d``, or the coordinator's model store (behind the access point: ``d``'s downlink
    alone) when that is cheaper or nobody alive holds them. Ties go to the store."""
    links = pb.lat.links
    best, cost = None, links.inb[d]
    for x in sorted(present):
        if x != d and x in alive and m in present[x]:
            c = links.per_byte(x, d)
            if c < cost - 1e-15:
                best, cost = x, c
    return best


def moves_time(pb: AllocProblem, moves: list[Move]) -> float:
    """Seconds to carry ``moves`` out as the coordinator does: phone-to-phone transfers at once on the
    shared medium (their airtimes add up), the model store's transfers one after another per
    receiver (its downlink), receivers in parallel; both kinds side by side."""
    if not moves:
        return 0.0
    links = pb.lat.links
    peer, store = 0.0, {}
    for mv in moves:
        if mv.src is None:
            store[mv.dst] = store.get(mv.dst, 0.0) + mv.nbytes * (links.inb[mv.dst] + links.loss_per_byte_s)
        else:
            peer += mv.nbytes * (links.per_byte(mv.src, mv.dst) + links.loss_per_byte_s)
    return max(peer, max(store.values(), default=0.0)) + links.one_way_s


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
                moves.append(Move(m, weight_source(pb, m, d, present, alive), d, float(pb.weight_bytes[m])))
            u = owner.get(m)
            if kv_tok is not None and cached_tokens and u is not None and u != d and u in alive and kv_tok[m] > 0:
                moves.append(Move(m, u, d, float(kv_tok[m] * cached_tokens), "kv"))
        if opened:
            sessions[d] = opened
    total = moves_time(pb, moves)
    sess = session_s_per_module * max(sessions.values(), default=0)
    return Decision(0.0, "", "", new, cost_s=drain_s + total + sess, drain_s=drain_s, transfer_s=total,
                    session_s=sess, moves=moves, sessions=sessions)


def precopied(pb: AllocProblem, c: Decision, v_old: float, cached_tokens: int) -> Decision | None:
    """``c`` (its weights all present) with the KV cache of the requests in flight copied in the
    background first (live migration): the stall keeps the drain, the sessions and only the cache
    generated during the copy (about ``background_s / v_old`` tokens of the ``cached_tokens``); the
    gain starts after the copy. None: ``c`` moves weights (that is :func:`staged`) or no cache."""
    if c.kind not in ("shift", "replan") or any(mv.what == "weights" for mv in c.moves):
        return None
    kv = [mv for mv in c.moves if mv.what == "kv"]
    if not kv or cached_tokens <= 0:
        return None
    t_kv = moves_time(pb, kv)
    grown = min(t_kv / v_old, cached_tokens) if np.isfinite(v_old) and v_old > 0 else cached_tokens
    delta = [replace(mv, nbytes=mv.nbytes * grown / cached_tokens) for mv in kv]
    t_delta = moves_time(pb, delta)
    return replace(c, kind="precopy", then=c.kind, transfer_s=t_delta, cost_s=c.drain_s + t_delta + c.session_s,
                   background_s=t_kv, reason=f"the KV cache copied in the background, then the {c.kind}")


def staged(pb: AllocProblem, c: Decision) -> Decision | None:
    """``c`` with its weights streamed in the background first: the stall keeps the drain, the KV
    cache and the sessions; the weights' time becomes ``background_s``. None: nothing to stream."""
    w = [mv for mv in c.moves if mv.what == "weights"]
    if not w:
        return None
    kv = [mv for mv in c.moves if mv.what == "kv"]
    t_kv = moves_time(pb, kv)
    return replace(c, kind="stage", moves=w + kv, transfer_s=t_kv, cost_s=c.drain_s + t_kv + c.session_s,
                   background_s=moves_time(pb, w))


# ---- plans built around the weights already present -------------------------------------------------
def standby_plans(pb: AllocProblem, plan: Plan, present: dict[int, frozenset[int]], alive: set[int],
                  gone: set[int] = frozenset()) -> list[Plan]:
    """Plans that give a stage of ``plan`` to a phone outside it that holds (most of) its modules: a
    standby copy. Every stage on a ``gone`` phone is so given (to the alive phone outside the plan
    holding most of its modules); then, for each other stage, each outside phone holding all of it.
    Each plan also with its best boundary shift within the weights present."""
    free = [d for d in sorted(alive) if d not in plan.devices and pb.budget[d] > 0]
    speed = pb.thr.compute.sum(axis=1)

    def held(e, s):
        return sum(1 for m in range(s.start_module, s.end_module + 1) if m in present.get(e, ()))

    stages = list(plan.stages)
    used: set[int] = set()
    for i, s in enumerate(stages):
        if s.device in gone:
            opts = [e for e in free if e not in used and pb.fits(e, s.start_module, s.end_module)]
            if not opts:
                return []
            e = max(opts, key=lambda x: (held(x, s), -speed[x], -x))
            used.add(e)
            stages[i] = StagePlan(e, s.start_module, s.end_module)
    base = Plan(tuple(stages), "standby")
    out = [base] if gone else []
    for i, s in enumerate(base.stages):
        n = s.end_module - s.start_module + 1
        for e in free:
            if e not in used and held(e, s) == n and pb.fits(e, s.start_module, s.end_module):
                st = list(base.stages)
                st[i] = StagePlan(e, s.start_module, s.end_module)
                out.append(Plan(tuple(st), "standby"))
    more = []
    for p in out:
        sh = best_shift(pb, p, present)
        if sh is not None:
            more.append(Plan(sh[0].stages, "standby"))
    return out + more


# ---- the policy --------------------------------------------------------------------------------------
REPLAN_NEIGHBOURS = 8  # neighbours of the plan in force priced as re-plans


@dataclass
class Pending:
    """A plan whose weights are being streamed in the background (a ``stage`` decision)."""

    plan: Plan
    trigger: str
    keys: list
    t: float
    background_s: float
    precopy: bool = False  # the KV-cache pre-copy was asked for (a ``precopy`` decision)
    kind: str = "replan"  # the switch made at the end (a pre-copied shift stays a shift)


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
        self._rejected_cond = math.inf  # ... and its condition estimate
        self._young_seen: set[int] = set()  # phones whose arrival (before join_after_s) was evaluated once
        self._skip_t = -float("inf")
        self.episodes = Episodes(cfg.threshold)  # how long past conditions lasted (the payback horizon)
        self.pending: Pending | None = None  # a plan being staged in the background
        self.revisit: float | None = None  # after a failover: evaluate again at this time
        self._answered: dict = {}  # (signal, device) condition -> when an action last answered it
        self.log: list[dict] = []  # every evaluation (taken or not) with its candidates, for the record

    # the state the current plan was made for
    def adopt(self, snap: Snapshot, plan: Plan) -> None:
        self.slowdown.update(snap.slowdown)
        self.assumed = dict(self.slowdown)
        self.assumed_link.update(snap.link_mbps)
        self.known = {d for d, a in snap.alive.items() if a}
        self.since.clear()
        self._rejected = None

    def risk(self) -> dict[int, float]:
        """Per device, how likely it is to slow down or leave (for the standby replicas)."""
        return {d: self.episodes.risk(d) for d in range(self.pb.n_devices)}

    def _state(self, snap: Snapshot, cs: ClusterState) -> tuple:
        """What an evaluation depends on: plan, phones alive, weights held, observations."""
        alive = frozenset(d for d, a in snap.alive.items() if a)
        held = tuple(sorted((d, m) for d, m in cs.present.items()))
        return cs.plan.stages, alive, held, dict(self.slowdown), dict(snap.link_mbps)

    def _nominal_problem(self, snap: Snapshot, keys: list) -> AllocProblem:
        """The problem as it will be when the condition that triggered ends: each triggering phone's
        slowdown back to what the plan in force was made for."""
        slow = self.priced(snap)
        for k in keys:
            if k is not None and k[0] == "speed":
                slow[k[1]] = self.assumed.get(k[1], 1.0)
        alive = {d for d, a in snap.alive.items() if a}
        return adjusted_problem(self.pb, slow, self._link_scale(snap), alive)

    def _recovery(self, trig: list) -> bool:
        """Every trigger is a phone of the plan's assumptions getting faster again (its slowdown back
        below what the plan in force was made for), after an action: the plan in force is answering a
        condition that is ending, and switching back to weights already present is cheap, so it may
        be evaluated within ``min_interval_s``."""
        if not math.isfinite(self.last_action):
            return False
        for _, k in trig:
            if k is None or k[0] != "speed" or self.slowdown.get(k[1], 1.0) >= self.assumed.get(k[1], 1.0):
                return False
        return True

    def _new_condition(self, keys: list, t: float) -> bool:
        """A trigger is a phone's speed or link that no action of the last ``min_interval_s`` answered
        (another phone slowing down, say): it may be evaluated within ``min_interval_s``, which keeps
        the policy from answering only the same condition again before its answer has been seen to work."""
        def answered(k):
            return t - self._answered.get(k, -math.inf) < self.cfg.min_interval_s
        return any(k is not None and k[0] != "presence" and not answered(k) for k in keys)

    def _answer(self, keys, t: float) -> None:
        self._answered.update({k: t for k in keys if k is not None})

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

    def priced(self, snap: Snapshot) -> dict[int, float]:
        """The slowdowns candidates are priced with: the recent ratio (time constant smoothing_s / 6)
        of each trusted phone, the last one seen of the others. The smoothed ratio decides *when* to
        act (with the hysteresis of the triggers); the recent one is the condition the new plan will
        meet, where the smoothed one still lags a burst's start or end by ~smoothing_s."""
        return {**self.slowdown, **snap.recent}

    def problem(self, snap: Snapshot) -> AllocProblem:
        alive = {d for d, a in snap.alive.items() if a}
        return adjusted_problem(self.pb, self.priced(snap), self._link_scale(snap), alive)

    def observe(self, snap: Snapshot) -> None:
        """Feed the episode history (what the payback horizon is learned from)."""
        self.episodes.observe(snap.t, snap.slowdown, {d: s - 1.0 for d, s in self._link_scale(snap).items()},
                              snap.alive)

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

    def triggers(self, snap: Snapshot, cs: ClusterState) -> list[tuple[str, tuple | None]]:
        """(text, the (signal, device) episode it is about) for every armed trigger."""
        t, out = snap.t, []
        self.slowdown.update(snap.slowdown)
        watch = set(cs.plan.devices) | {d for d in snap.slowdown if snap.alive.get(d)}  # idle phones: probes
        for d in sorted(watch):
            r = snap.slowdown.get(d)
            if r is not None:
                a = self.assumed.get(d, 1.0)
                if self._armed(f"speed{d}", r / a - 1.0, snap.recent.get(d, r) / a - 1.0, t):
                    out.append((f"{'slowdown' if r > a else 'speedup'} {self.names[d]} x{r / a:.2f}", ("speed", d)))
            rate = snap.link_mbps.get(d)
            ref = self.assumed_link.get(d)
            if rate is not None and ref and d in cs.plan.devices:
                if self._armed(f"link{d}", ref / rate - 1.0, ref / rate - 1.0, t):
                    out.append((f"link {self.names[d]} {ref:.0f}->{rate:.0f} Mb/s", ("link", d)))
        if self.known is not None:
            for d, since in snap.alive_since.items():
                if d not in self.known and t - since >= self.cfg.join_after_s:
                    out.append((f"join {self.names[d]}", ("presence", d)))
                elif d not in self.known and d not in self._young_seen:
                    # a phone just appeared: its weights may be streamed at once (no stall; the switch
                    # comes after the streaming, when it has long passed join_after_s)
                    self._young_seen.add(d)
                    out.append((f"joining {self.names[d]}", ("presence", d)))
        if self.revisit is not None and t >= self.revisit:
            out.append(("after the failover", None))
        return out

    # ---- the payback window ------------------------------------------------------------------------
    def horizon(self, t: float, cs: ClusterState, keys: list, v_old: float,
                expected: bool = False) -> tuple[float, float, str]:
        """(tokens a change would speed up, the same in seconds at ``v_old``, what bounds it).

        The window ``W`` is the work left (or ``horizon_s``). With ``expected`` and a finite condition
        estimate ``m`` (exponential durations), the change is useful while the condition lasts and the
        work goes on: ``E[min(T, W)] = m (1 - exp(-W / m))``; otherwise the smaller of the two. The
        window and the estimate are kept for :meth:`_choose` (staging delay, switching back)."""
        self._window = (math.inf, math.inf)
        if not (np.isfinite(v_old) and v_old > 0):
            n = cs.remaining_tokens if cs.remaining_tokens is not None else math.inf
            return n, math.inf, "remaining work"
        if cs.remaining_tokens is not None:
            opts = [(float(cs.remaining_tokens), "remaining work")]
        else:  # an open workload: it goes on as long again as it has run (nothing else is known)
            opts = [(t / v_old, "open workload: as long again as the run so far")]
        if self.cfg.horizon_s:
            opts.append((self.cfg.horizon_s / v_old, "horizon_s"))
        cond = self.episodes.condition_remaining([k for k in keys if k is not None], t)
        if expected:
            w_n, w_basis = min(opts, key=lambda x: x[0])
            w_s = w_n * v_old
            self._window = (w_s, cond)
            if not math.isfinite(cond):
                return w_n, w_s, w_basis
            h_s = expected_useful(cond, w_s)
            return h_s / v_old, h_s, f"condition estimate {cond:.1f} s, expected within {w_basis} ({w_s:.0f} s)"
        if math.isfinite(cond):
            opts.append((cond / v_old, f"condition estimate {cond:.1f} s"))
        n, basis = min(opts, key=lambda x: x[0])
        return n, n * v_old, basis

    # ---- decisions ---------------------------------------------------------------------------------
    def decide(self, snap: Snapshot, cs: ClusterState) -> Decision | None:
        if self.known is None:
            self.adopt(snap, cs.plan)
        self.known = {d for d in self.known if snap.alive.get(d)}  # a phone that left and returns is a join
        self._young_seen = {d for d in self._young_seen if snap.alive.get(d)}
        self.observe(snap)
        t = snap.t
        gone = [d for d in cs.plan.devices if not snap.alive.get(d, False)]
        if gone:
            self.pending = None
            return self._failover(snap, cs, gone)
        if self.pending is not None:
            return self._staged_switch(snap, cs)
        trig = self.triggers(snap, cs)
        if not trig:
            return None
        young = all(x.startswith("joining ") for x, _ in trig)  # only phones that just appeared: stage only
        keys = [k for _, k in trig]
        early = t - max(self.last_action, self.last_eval) < self.cfg.min_interval_s
        recovery = early and self._recovery(trig)
        fresh = early and not recovery and self._new_condition(keys, t)
        if early and not (young or recovery or fresh):
            return None
        self.revisit = None
        state = self._state(snap, cs)
        cond = self.episodes.condition_remaining([k for k in keys if k is not None], t)
        grown = math.isfinite(self._rejected_cond) and cond >= 2 * self._rejected_cond
        if self._unchanged(state) and not grown:
            # the same evaluation was made and rejected: its answer stands (unless the condition has
            # since proved to last twice as long as was expected then)
            if t - max(self.last_eval, self._skip_t) >= self.cfg.min_interval_s:
                self.skipped += 1
                self._skip_t = t
            return None
        if not young:  # a young join's evaluation (stage only) does not hold back the regular one
            self.last_eval = t
        self.evaluations += 1
        pb = self.problem(snap)
        alive = {d for d, a in snap.alive.items() if a}
        v_old = per_token_s(pb, cs.plan)
        self._plan_in_force = cs.plan
        drain = pb.evaluate(cs.plan).ring_s
        text = "; ".join(x for x, _ in trig)
        cands = self._candidates(pb, cs, alive, drain, v_old=v_old)
        if young:  # a phone that just appeared: only streaming weights to it in the background
            cands = [c for c in cands if c.kind == "stage"]
            text += " (stage only: joined under join_after_s ago)"
        elif early:  # a recovery (switching back) or a new condition within min_interval_s: no weights move
            cands = [c for c in cands if c.kind != "stage" and not any(m.what == "weights" for m in c.moves)]
            text += " (recovery: weights present only)" if recovery else \
                " (a new condition within min_interval_s: weights present only)"
        n, h_s, basis = self.horizon(t, cs, keys, v_old, expected=True)
        self._nominal = self._nominal_problem(snap, keys)
        pick = self._choose(cands, t, text, v_old, n, h_s, basis)
        self._record(t, text, pick, cands)
        if pick is None:
            if not young:
                self._rejected, self._rejected_cond = state, cond
            return None
        self.last_action = t
        self._answer(keys, t)
        if pick.kind == "stage":
            self.pending = Pending(pick.plan, text, keys, t, pick.background_s)
        elif pick.kind == "precopy":  # the switch follows when the copy is there (_staged_switch)
            self.pending = Pending(pick.plan, text, keys, t, pick.background_s, precopy=True, kind=pick.then)
        else:
            self.adopt(snap, pick.plan)
        return pick

    def _candidates(self, pb: AllocProblem, cs: ClusterState, alive: set[int], drain: float,
                    gone: set[int] = frozenset(), v_old: float = math.inf) -> list[Decision]:
        """Every candidate priced: the shift, the re-plans (allocator, neighbours, standby copies) and,
        unless the plan in force is broken, each re-plan that moves weights also staged."""
        sess = self.cfg.session_ms_per_module / 1e3
        cands = []

        def add(c: Decision) -> None:  # with its staged and pre-copied twins (v_old: the plan in force's speed)
            cands.append(c)
            for twin in (() if gone else (staged(pb, c), precopied(pb, c, v_old, cs.cached_tokens))):
                if twin is not None:
                    cands.append(twin)

        if not gone:
            sh = best_shift(pb, cs.plan, cs.present)
            if sh is not None:
                c = switch_cost(pb, cs.plan, sh[0], cs.present, alive, cs.cached_tokens, drain, sess)
                c.kind, c.new_value_s = "shift", sh[1]
                add(c)
        res = self._allocate(pb, self.cfg.strategy) if alive else None
        # re-plans: the allocator's plan; the current plan's neighbours (drop, swap or replace a phone,
        # move a boundary; or a device-order move with re-balanced cuts), which keep most weights where
        # they are; and the plans built around the standby copies
        replans = [res.plan] if res is not None and res.feasible else []
        replans += best_neighbours(pb, cs.plan, pb.objective, REPLAN_NEIGHBOURS)
        replans += order_neighbours(pb, cs.plan, pb.objective, REPLAN_NEIGHBOURS)
        replans += standby_plans(pb, cs.plan, cs.present, alive, gone)
        seen = {cs.plan.stages} | {c.plan.stages for c in cands}
        kind = "failover" if gone else "replan"
        for p in replans:
            if p.stages in seen or not pb.evaluate(p).feasible:
                continue
            seen.add(p.stages)
            c = switch_cost(pb, cs.plan, p, cs.present, alive, 0 if gone else cs.cached_tokens, drain, sess)
            c.kind, c.new_value_s = kind, per_token_s(pb, p)
            add(c)
        return cands

    def _choose(self, cands: list[Decision], t: float, text: str, v_old: float, n: float, h_s: float,
                basis: str) -> Decision | None:
        """Gain, payback and verdict of every candidate; the one taken (None: nothing pays)."""
        cfg = self.cfg
        w_s, m = getattr(self, "_window", (math.inf, math.inf))
        # the condition may end within the window: then the change is undone (a drain and sessions) after
        # running, until the end is seen (smoothing_s + sustain_s), where it may be worse than the old plan
        p_end = ends_within(m, w_s)
        lag = cfg.smoothing_s + cfg.sustain_s
        nom = getattr(self, "_nominal", None)
        for c in cands:
            c.t, c.trigger, c.old_value_s, c.evaluation = t, text, v_old, self.evaluations
            c.horizon_tokens, c.horizon_s, c.horizon_basis = n, h_s, basis
            c.gain = (v_old - c.new_value_s) / v_old if v_old > 0 and np.isfinite(v_old) else 1.0
            tokens = n
            if c.background_s and np.isfinite(v_old) and v_old > 0:  # the gain starts once weights/cache are there
                tokens = expected_useful(m, w_s, c.background_s) / v_old
            c.gain_s = tokens * (v_old - c.new_value_s) if np.isfinite(v_old) else float("inf")
            after = 0.0
            if p_end and nom is not None and c.plan is not None:
                vo, vn = per_token_s(nom, self._plan_in_force), per_token_s(nom, c.plan)
                if np.isfinite(vo) and np.isfinite(vn) and vn > vo:
                    after = lag * (1.0 - vo / vn)
            c.return_s = p_end * (c.drain_s + c.session_s + after)
            if c.gain < cfg.min_gain:
                c.verdict = f"gain {c.gain:.1%} < min_gain {cfg.min_gain:.0%}"
            elif c.gain_s < cfg.gain_cost_margin * (c.cost_s + c.return_s):
                c.verdict = (f"does not pay back: saves {c.gain_s:.1f} s over the horizon < {cfg.gain_cost_margin:g} x "
                             f"(cost {c.cost_s:.1f} s" + (f" + switching back {c.return_s:.1f} s)" if c.return_s else ")"))
        ok = [c for c in cands if not c.verdict]
        pick = None
        shift = max((c for c in ok if "shift" in (c.kind, c.then)), key=lambda c: c.net_s, default=None)
        others = [c for c in ok if "shift" not in (c.kind, c.then)]
        best_other = max(others, key=lambda c: c.net_s, default=None)
        if shift and (best_other is None or shift.new_value_s <= best_other.new_value_s * (1 + cfg.min_gain)):
            pick = shift
        elif ok:
            pick = max(ok, key=lambda c: c.net_s)
        for c in ok:
            if c is pick:
                c.verdict = "chosen"
            elif pick is shift and "shift" not in (c.kind, c.then):
                c.verdict = "pays back, but the shift is within min_gain of it and moves no weights"
            else:
                c.verdict = f"pays back, but nets {c.net_s:.1f} s < {pick.net_s:.1f} s ({pick.kind})"
        return pick

    def _record(self, t: float, trigger: str, pick: Decision | None, cands: list[Decision]) -> None:
        self.log.append({"t": t, "evaluation": self.evaluations, "trigger": trigger,
                         "taken": pick.kind if pick else "none", "candidates": cands})

    def _staged_switch(self, snap: Snapshot, cs: ClusterState) -> Decision | None:
        """While a plan is staged: nothing until its weights are all present, except that, if in-flight
        requests hold KV cache that the switch would move, a ``precopy`` of it in the background (live
        migration: the stall then moves only what was generated since) once the streaming's predicted
        remainder is no longer than the copy (so both end together); then the switch, if it still
        pays (re-priced with what is observed now)."""
        p, t = self.pending, snap.t
        if any(not snap.alive.get(s.device, False) for s in p.plan.stages):  # a phone of it left: drop it
            self.pending = None
            return None
        missing = sum(1 for s in p.plan.stages for m in range(s.start_module, s.end_module + 1)
                      if m not in cs.present.get(s.device, ()))
        late = t - p.t > 3 * p.background_s + 4 * self.cfg.min_interval_s
        if missing and p.precopy and not late:
            return None  # the weights still streaming, the KV pre-copy under way or done
        pb = self.problem(snap)
        alive = {d for d, a in snap.alive.items() if a}
        sess = self.cfg.session_ms_per_module / 1e3
        if not p.precopy and not late:
            full = switch_cost(pb, cs.plan, p.plan, cs.present, alive, cs.cached_tokens, 0.0, sess)
            kv = [mv for mv in full.moves if mv.what == "kv"]
            t_kv = moves_time(pb, kv)
            if missing and (not kv or p.t + p.background_s - t > t_kv):
                return None  # the weights are still streaming (and the copy would end first)
            if kv:
                p.precopy = True
                self.evaluations += 1
                text = f"staged ({p.trigger})"
                dec = Decision(t, text, "precopy", p.plan, moves=kv, background_s=t_kv,
                               verdict="chosen", evaluation=self.evaluations,
                               reason="the KV cache copied in the background before the switch")
                self._record(t, text, dec, [dec])
                return dec
        if not missing and p.precopy and cs.kv_copied is None and not late:
            return None  # the pre-copy is under way
        self.pending = None
        self.evaluations += 1
        self.last_eval = t
        v_old = per_token_s(pb, cs.plan)
        self._plan_in_force = cs.plan
        delta = max(cs.cached_tokens - (cs.kv_copied or 0), 0)
        c = switch_cost(pb, cs.plan, p.plan, cs.present, alive, delta, pb.evaluate(cs.plan).ring_s, sess)
        c.kind, c.new_value_s = p.kind, per_token_s(pb, p.plan)
        n, h_s, basis = self.horizon(t, cs, p.keys, v_old, expected=True)
        self._nominal = self._nominal_problem(snap, p.keys)
        text = f"staged ({p.trigger})"
        pick = self._choose([c], t, text, v_old, n, h_s, basis)
        if missing:
            c.verdict = f"staging took too long ({missing} modules still missing)"
            pick = None
        self._record(t, text, pick, [c])
        if pick is None:
            return None
        self.last_action = t
        self._answer(p.keys, t)
        self.adopt(snap, pick.plan)
        return pick

    def _failover(self, snap: Snapshot, cs: ClusterState, gone: list[int]) -> Decision:
        t = snap.t
        self.evaluations += 1
        alive = {d for d, a in snap.alive.items() if a}
        pb = self.problem(snap)
        trig = "left " + ", ".join(self.names[d] for d in gone)
        self.last_action = t
        self._answer([("presence", d) for d in gone], t)
        cands = self._candidates(pb, cs, alive, 0.0, set(gone)) if alive else []
        cands = [c for c in cands if np.isfinite(c.new_value_s)]
        if not cands:
            need, have = pb.memory_need(), float(pb.budget.sum())
            why = (f"the model no longer fits the phones still present: it needs {need / 1e9:.2f} GB, their budgets "
                   f"total {have / 1e9:.2f} GB" + (f" ({(need - have) / 1e9:.2f} GB missing)" if need > have else
                                                   " but no contiguous split fits"))
            dec = Decision(t, trig, "terminal", None, reason=why, verdict="chosen", evaluation=self.evaluations)
            self._record(t, trig, dec, [dec])
            return dec
        # the plan in force is broken: the candidate that finishes the horizon's tokens soonest
        best_v = min(c.new_value_s for c in cands)
        n, h_s, basis = self.horizon(t, cs, [("presence", d) for d in gone], best_v)
        for c in cands:
            c.t, c.trigger, c.evaluation, c.old_value_s = t, trig, self.evaluations, None
            c.horizon_tokens, c.horizon_s, c.horizon_basis = n, h_s, basis
            c.gain_s = 0.0  # the old plan makes no progress: only the time to finish counts (see the verdict)
        pick = min(cands, key=lambda c: (c.cost_s + n * c.new_value_s, c.cost_s))
        total = pick.cost_s + n * pick.new_value_s
        for c in cands:
            c.verdict = "chosen" if c is pick else (
                f"finishes the horizon later: cost + tokens x per token = {c.cost_s + n * c.new_value_s:.1f} s "
                f"> {total:.1f} s")
        self._record(t, trig, pick, cands)
        self.adopt(snap, pick.plan)
        self.revisit = t + self.cfg.min_interval_s
        return pick
