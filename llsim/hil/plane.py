"""The data plane of a simulation with real tensors: the real segments a plan's stages run.

A scenario with real nodes (``backend: local``; ``adb`` later) is simulated as usual, but each
stage of each step is also *executed*: on its real worker when its device is real, in this
process (:class:`~llsim.hil.local.LocalNode`) when it is simulated. So every stage gets the real
tensors its segment reads, and the tail's greedy token is the whole model's.

:class:`DataPlane` is called by the engine's nodes (:mod:`llsim.sim.hilnode`) one stage at a time,
in the order the simulation reaches them (``start_stage``, then ``finish_stage``). On the virtual
clock that is synchronous: the simulation stops at the point where a stage's result is needed,
waits for it, and goes on (measured-time injection), so real workers never run two stages at once
on this host and a run is reproducible given its measurements; on the real-time clock the result
is delivered to the simulation when it arrives.

* **Segments per plan.** A plan in force (an epoch of the simulation) is cut into real ONNX
  segment files at its boundaries (:func:`llsim.model.segment.split_model`, under
  ``workdir/segments/<boundaries>``, reused when a later plan has the same cut) and loaded on its
  stages' executors under the key ``e<epoch>/<segment>`` when the epoch's first stage runs; the
  previous epoch's sessions are unloaded then. The seconds each load took are kept per epoch
  (:attr:`load_s`), next to the balancer's predicted session cost in ``rebalances.csv``.
* **Routes.** A tensor from a real worker to a real worker that reaches it goes straight between
  them (the worker's ``forward``, to the address :func:`route` gives); every other route goes
  through this process (the producer replies it, the consumer is sent it).
* **Steps.** ``recompute`` mode: each step runs a request's whole context with empty past
  tensors. ``kv_cache``: the first step (or a re-prefill after a lost KV cache) runs the whole
  context with empty past tensors and keeps the state; a decode step sends one token. When a
  plan changed while a request was in flight, its KV state on the new segments is rebuilt first
  by an untimed prefill of its context (the simulator has already priced moving the cache).
* **Tokens.** The tail returns its greedy token id (``argmax_last``); it becomes part of the
  request's context when the engine records the token (:meth:`commit`), so a step that was
  abandoned and retried never adds a token twice.
"""
from __future__ import annotations

import json
import time
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from llsim.errors import LLSimError
from llsim.hil.client import Forward, StageResult, plan_segment_specs
from llsim.hil.errors import DeadlineExceeded, WorkerDied, WorkerError
from llsim.model.kv import has_kv_cache
from llsim.model.segment import empty_state


def graph_feeds(plan: dict, ids: list[int], total: int, past: int) -> dict[str, np.ndarray]:
    """The graph inputs of one step (``plan.json``'s ``graph_inputs``): ``ids`` fed after ``past``
    cached tokens, ``total`` tokens of context."""
    feeds = {}
    for name in plan["graph_inputs"]:
        if name == "input_ids":
            feeds[name] = np.asarray([ids], dtype=np.int64)
        elif name == "attention_mask":
            feeds[name] = np.ones((1, total), dtype=np.int64)
        elif name == "position_ids":
            feeds[name] = np.arange(past, past + len(ids), dtype=np.int64)[None]
        else:
            raise LLSimError(f"graph input {name} of {plan.get('model')}: real nodes are fed input_ids, "
                             "attention_mask and position_ids only")
    return feeds


def stage_outputs(plan: dict, nodes: list, s: int, key) -> tuple[list[Forward], list[str]]:
    """Where segment ``s``'s outputs go (``plan.json``'s routes, segment i on ``nodes[i]``, loaded under
    ``key(i)``): the forwards its worker sends straight to the next workers (:func:`route`), and the
    outputs it replies to this process (a consumer that is not reached directly; the tail's logits)."""
    segs = plan["segments"]
    node, tail = nodes[s], len(segs) - 1
    forwards: dict[int, list[str]] = {}
    reply = []
    for o in segs[s]["outputs"]:
        via_here = False
        for d in o["to"]:
            if route(node, nodes[d]):
                forwards.setdefault(d, []).append(o["name"])
            else:
                via_here = True
        if via_here or (s == tail and o["name"] == "logits"):
            reply.append(o["name"])
    if s == tail and "logits" not in reply:
        raise LLSimError(f"the last segment of {plan.get('model')} has no 'logits' output")
    return [Forward(route(node, nodes[d]), key(d), tuple(names)) for d, names in sorted(forwards.items())], reply


def connect_peers(plan: dict, nodes: list) -> None:
    """Have each real worker open its links to the workers it forwards to (segment i on ``nodes[i]``)."""
    for s, n in enumerate(nodes):
        if not is_real(n):
            continue
        dsts = {route(n, nodes[d]) for o in plan["segments"][s]["outputs"] for d in o["to"]} - {None}
        dsts.discard(route(n, n))
        if dsts:
            n.connect_peers(sorted(dsts))


def is_real(node) -> bool:
    return getattr(node, "address", None) is not None


def route(src, dst) -> str | None:
    """The address ``src``'s worker forwards tensors for ``dst``'s worker to, or None: they go through
    this process (an end is simulated, or the workers cannot reach each other, e.g. two phones on
    different networks)."""
    if not (is_real(src) and is_real(dst)):
        return None
    f = getattr(src, "peer_address", None)
    return dst.address if f is None else f(dst)


@dataclass
class StageRun:
    """One executed stage (a row of ``fidelity.csv``'s raw material)."""

    epoch: int
    request: int
    step: int
    stage: int
    device: int
    kind: str  # prefill | decode | recompute
    seq_len: int
    past_len: int
    real: bool
    compute_s: float  # the worker's session.run time
    elapsed_s: float  # submit -> result, on this process's clock (includes the protocol and queueing)
    bytes_in: int
    bytes_out: int
    send_s: float  # the worker forwarding its outputs to the next real worker(s)
    predicted_s: float | None = None  # the cost model's time for this stage on this device (filled by the node)
    forwarded_bytes: int = 0  # of bytes_out, those the worker forwarded to other workers (the rest: replies)


@dataclass
class PendingStage:
    """A submitted stage: collect it with :meth:`DataPlane.finish_stage` once ``future`` is done."""

    dep: "_Dep"
    rid: int
    step: int
    s: int
    att: dict
    predicted_s: float | None
    future: object
    t0: float
    deadline: float
    done_at: float | None = None  # perf_counter when the result arrived (set by whoever waits for it)
    work: object = None  # the engine's StepWork (for messages)


@dataclass
class _Dep:
    epoch: int
    tag: str
    plan: dict  # plan.json of the cut
    nodes: list  # per segment: the executor
    devs: list[int]  # per segment: the device index

    def key(self, s: int) -> str:
        return f"{self.tag}/{s}"


@dataclass
class _Req:
    prompt: list[int]
    tokens: list[int] = field(default_factory=list)  # committed (recorded by the engine)
    pending: tuple[int, int] | None = None  # (step, token) computed by the tail, not yet recorded
    kv: tuple[str, int] | None = None  # (deployment tag, tokens) of the KV state the workers keep
    attempt: dict | None = None  # the step being executed: kind, ids, past, tensors held here


class DataPlane:
    """Real execution of a simulation's stages (see the module docstring).

    ``executors[d]``: what runs device ``d``'s segments (a :class:`~llsim.hil.client.WorkerClient`
    for a real device, a shared :class:`~llsim.hil.local.LocalNode` for simulated ones);
    ``bundle``: the runnable model (:func:`llsim.model.load.onnx_bundle`); ``mode``: the workload's;
    ``prompts[r]``: request r's prompt token ids; ``threads[d]``: the intra-op threads of d's sessions."""

    def __init__(self, bundle, executors: dict, mode: str, prompts: list[list[int]], workdir: str | Path,
                 threads: dict[int, int] | None = None, deadline_slack: float = 5.0, deadline_floor_s: float = 5.0,
                 stage_file: dict | None = None):
        if mode == "kv_cache" and not has_kv_cache(bundle.proto):
            raise LLSimError(f"{bundle.om.name}: the model has no KV-cache inputs, so real nodes run it in recompute "
                             "mode only (workload.mode: recompute)")
        self.bundle, self.executors, self.mode = bundle, executors, mode
        self.kv = mode == "kv_cache"
        self.reqs = {r: _Req(list(p)) for r, p in enumerate(prompts)}
        self.workdir = Path(workdir)
        self.threads = threads or {}
        self.slack, self.floor_s = deadline_slack, deadline_floor_s
        # device -> fn(local segment file) -> the path its executor loads it from (a phone: pushed there first,
        # skipped when the phone has it with the same sha256); a device not listed reads this host's file
        self.stage_file = stage_file or {}
        self._deps: dict[int, _Dep] = {}
        self._current: _Dep | None = None
        self._cuts: dict[tuple, Path] = {}
        self.load_s: dict[int, float] = {}  # epoch -> wall seconds its segments took to load (all nodes)
        self.split_s: dict[int, float] = {}  # epoch -> wall seconds cutting its segment files took
        self.runs: list[StageRun] = []
        self.catchups = 0
        self.on_stage = None  # optional callback(StageRun) (tests: kill a worker at a chosen point)

    # ---- deployments ----------------------------------------------------------------------------------
    def _cut(self, bounds: tuple[int, ...]) -> Path:
        d = self._cuts.get(bounds)
        if d is None:
            from llsim.model.segment import split_model

            b = self.bundle
            if bounds[-1] != b.graph.n_modules:
                raise LLSimError(f"internal: the plan has {bounds[-1]} modules, the runnable model "
                                 f"{b.graph.n_modules}")
            d = self.workdir / "segments" / "-".join(map(str, bounds))
            split_model(b.om, b.cuts, b.graph, list(bounds), d, b.proto)
            self._cuts[bounds] = d
        return d

    def deployment(self, epoch: int, bounds: list[int], devs: list[int]) -> _Dep:
        """The segments of epoch ``epoch`` (boundaries ``bounds``, stage s on device ``devs[s]``), loaded."""
        dep = self._deps.get(epoch)
        if dep is not None:
            return dep
        t0 = time.perf_counter()
        seg_dir = self._cut(tuple(bounds))
        t1 = time.perf_counter()
        plan = json.loads((seg_dir / "plan.json").read_text())
        nodes = [self.executors[d] for d in devs]
        dep = _Dep(epoch, f"e{epoch}", plan, nodes, list(devs))
        if self._current is not None:  # the plan before is no longer in force: free its sessions
            self._unload(self._current)
        by_node: dict[int, tuple] = {}
        for s, spec in enumerate(plan_segment_specs(seg_dir, f"{dep.tag}/")):
            n = nodes[s]
            spec = replace(spec, threads=self.threads.get(devs[s]))
            if devs[s] in self.stage_file:
                spec = replace(spec, path=str(self.stage_file[devs[s]](Path(spec.path))))
            by_node.setdefault(id(n), (n, []))[1].append(spec)
        for n, specs in by_node.values():
            n.load(specs)
        connect_peers(plan, nodes)
        self.split_s[epoch] = t1 - t0
        self.load_s[epoch] = time.perf_counter() - t1
        self._deps[epoch] = dep
        self._current = dep
        return dep

    def _unload(self, dep: _Dep) -> None:
        seen = []
        for n in dep.nodes:
            if any(n is m for m in seen):
                continue
            seen.append(n)
            keys = [dep.key(s) for s, m in enumerate(dep.nodes) if m is n]
            try:
                if n.alive:
                    n.unload(keys)
            except WorkerError:
                pass
        self._deps.pop(dep.epoch, None)

    # ---- a stage ----------------------------------------------------------------------------------------
    def _feeds(self, plan: dict, ids: list[int], total: int, past: int) -> dict[str, np.ndarray]:
        return graph_feeds(plan, ids, total, past)

    def _begin(self, dep: _Dep, rid: int, step: int, reprefill: bool) -> dict:
        req = self.reqs[rid]
        if len(req.tokens) != step:
            raise LLSimError(f"internal: request {rid} step {step} with {len(req.tokens)} tokens recorded")
        req.pending = None
        ctx = req.prompt + req.tokens
        if not self.kv:
            kind, ids, past, fresh = ("prefill" if step == 0 else "recompute"), ctx, 0, True
        elif step == 0 or reprefill:
            kind, ids, past, fresh = "prefill", ctx, 0, True
        else:
            if req.kv != (dep.tag, len(ctx) - 1):  # the plan changed under this request (or a step was cut)
                self._catch_up(dep, rid, ctx[:-1])
            kind, ids, past, fresh = "decode", ctx[-1:], len(ctx) - 1, False
        att = {"kind": kind, "ids": ids, "past": past, "fresh": fresh, "ctx": len(ctx), "held": {},
               "feeds": self._feeds(dep.plan, ids, len(ctx), past), "dep": dep.tag}
        req.attempt = att
        if fresh and self.kv:
            req.kv = None
            for n in _unique(dep.nodes):
                _drop(n, rid)
        return att

    def _catch_up(self, dep: _Dep, rid: int, prefix: list[int]) -> None:
        """Rebuild request ``rid``'s KV state on ``dep``'s segments: a prefill of ``prefix`` (untimed)."""
        self.catchups += 1
        for n in _unique(dep.nodes):
            _drop(n, rid)
        att = {"kind": "prefill", "ids": prefix, "past": 0, "fresh": True, "ctx": len(prefix), "held": {},
               "feeds": self._feeds(dep.plan, prefix, len(prefix), 0), "dep": dep.tag}
        for s in range(len(dep.plan["segments"])):
            self._execute(dep, rid, -1, s, att, None)
        self.reqs[rid].kv = (dep.tag, len(prefix))

    def start_stage(self, epoch: int, bounds: list[int], devs: list[int], rid: int, step: int, s: int,
                    reprefill: bool, predicted_s: float | None) -> "PendingStage":
        """Submit stage ``s`` of step ``step`` of request ``rid`` under epoch ``epoch`` (boundaries ``bounds``,
        stage i on device ``devs[i]``) without waiting: :meth:`finish_stage` collects it once ``pending.future``
        is done (at once on the virtual clock; the real-time clock delivers it to the simulation)."""
        dep = self.deployment(epoch, bounds, devs)
        req = self.reqs[rid]
        att = req.attempt
        if s == 0 or att is None or att["dep"] != dep.tag:
            att = self._begin(dep, rid, step, reprefill)
        return self._submit(dep, rid, step, s, att, predicted_s)

    def finish_stage(self, p: "PendingStage") -> StageRun:
        """Wait for a submitted stage and take its outputs; raises the executor's
        :class:`~llsim.hil.errors.WorkerError` (a lost worker, a missed deadline)."""
        run = self._collect(p)
        if self.on_stage is not None and p.step >= 0:
            self.on_stage(run)
        return run

    def _execute(self, dep: _Dep, rid: int, step: int, s: int, att: dict, predicted_s: float | None) -> StageRun:
        return self._collect(self._submit(dep, rid, step, s, att, predicted_s))

    def _submit(self, dep: _Dep, rid: int, step: int, s: int, att: dict, predicted_s: float | None) -> "PendingStage":
        plan, nodes = dep.plan, dep.nodes
        segs = plan["segments"]
        seg, node, tail = segs[s], nodes[s], len(segs) - 1
        feeds, held = att["feeds"], att["held"]
        direct, expect = {}, []
        for i in seg["inputs"]:
            name, src = i["name"], i["from"]
            if src == "input" or (src == 0 and name in feeds):
                direct[name] = feeds[name]
            elif route(nodes[src], node):
                expect.append(name)
            else:
                direct[name] = held.pop((name, s))
        if att["fresh"]:
            for st in seg.get("state", []):
                direct[st["input"]] = empty_state(st, 1)
        fw, reply = stage_outputs(plan, nodes, s, dep.key)
        reduce = {"logits": "argmax_last"} if s == tail and node.has("reduce-argmax-last") else None
        deadline = self.floor_s + self.slack * (predicted_s or 0.0)
        t0 = time.perf_counter()
        fut = node.submit(rid, max(step, 0), dep.key(s), direct, expect=expect, forward=fw, reply=reply,
                          reduce=reduce, keep_state=self.kv, deadline_s=deadline)
        return PendingStage(dep, rid, step, s, att, predicted_s, fut, t0, deadline)

    def _collect(self, p: "PendingStage") -> StageRun:
        dep, rid, step, s, att, predicted_s = p.dep, p.rid, p.step, p.s, p.att, p.predicted_s
        plan, nodes = dep.plan, dep.nodes
        segs = plan["segments"]
        seg, node, tail = segs[s], nodes[s], len(segs) - 1
        held = att["held"]
        try:
            res: StageResult = p.future.result(timeout=p.deadline + 30.0)  # the client's own deadline fires first
        except FutureTimeout:
            raise DeadlineExceeded(f"no answer within {p.deadline + 30.0:.0f} s", getattr(node, "name", "?")) from None
        elapsed = (p.done_at or time.perf_counter()) - p.t0
        if res.forward_errors:  # the next worker is unreachable: it is the one lost, not this one
            fe = res.forward_errors[0]
            dst = next((n for n in nodes if route(node, n) == fe.get("to")), None)
            raise WorkerDied(f"unreachable from {res.worker} ({fe.get('code')}: {fe.get('message')})",
                             getattr(dst, "name", fe.get("to")))
        for o in seg["outputs"]:
            for d in o["to"]:
                if not route(node, nodes[d]):
                    held[(o["name"], d)] = res.outputs[o["name"]]
        if s == tail:
            out = res.outputs["logits"]
            token = int(out.reshape(-1)[0]) if out.dtype == np.int64 and out.size == 1 else int(np.argmax(out[0, -1]))
            req = self.reqs[rid]
            if step >= 0:
                req.pending = (step, token)
            if self.kv:
                req.kv = (dep.tag, att["ctx"])
        run = StageRun(dep.epoch, rid, step, s, dep.devs[s], att["kind"], len(att["ids"]), att["past"], is_real(node),
                       res.compute_s, elapsed, res.bytes_in, res.bytes_out, res.send_s, predicted_s)
        run.forwarded_bytes = max(0, res.bytes_out - sum(int(a.nbytes) for a in res.outputs.values()))
        if step >= 0:
            self.runs.append(run)
        return run

    # ---- the engine's hooks ---------------------------------------------------------------------------
    def commit(self, rid: int, step: int) -> int:
        """The engine recorded step ``step``'s token of request ``rid``: it joins the context; returns its id."""
        req = self.reqs[rid]
        if req.pending is None or req.pending[0] != step or len(req.tokens) != step:
            raise LLSimError(f"internal: request {rid} recorded token {step} that its tail did not compute")
        req.tokens.append(req.pending[1])
        req.pending = None
        req.attempt = None
        return req.tokens[-1]

    def end_request(self, rid: int) -> None:
        """Request ``rid`` is over: its KV state is dropped on the nodes of the plan in force."""
        req = self.reqs.get(rid)
        if req is None:
            return
        req.attempt = None
        if self.kv and self._current is not None:
            for n in _unique(self._current.nodes):
                _drop(n, rid)
        req.kv = None

    def tokens(self) -> dict[int, list[int]]:
        return {r: list(q.tokens) for r, q in self.reqs.items()}

    def close(self) -> None:
        if self._current is not None:
            self._unload(self._current)
            self._current = None


def _unique(nodes: list) -> list:
    out = []
    for n in nodes:
        if all(n is not m for m in out):
            out.append(n)
    return out


def _drop(node, rid) -> None:
    try:
        if node.alive:
            node.drop(rid, wait=True)
    except WorkerError:
        pass
