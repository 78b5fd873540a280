"""Greedy generation over a chain of nodes (real workers and/or segments run in-process), with failover.

This is the coordinator's data flow for one plan (``plan.json`` of :func:`llsim.model.segment.split_model`),
the same one the simulator's engine will drive through its node interface:

* every step submits one stage per segment, at once. Each stage is sent the graph inputs it reads
  (segment 0: ``input_ids``, ``attention_mask``) and *expects* the tensors other segments produce.
* a tensor from a real worker to a real worker goes straight between them (``forward``: the ring's
  sequential route and the residual routes, never relayed); any route with an in-process end goes
  through the coordinator (the producer replies it, the coordinator ``feed`` s it to the consumer).
* the tail replies greedy token ids (``reduce: argmax_last``, 8 bytes instead of the logits).
* ``kv_cache`` mode: a request's first step (or its first after a failover) is a prefill of its whole
  context with empty past tensors; later steps send one token and each segment uses the KV state it
  keeps. ``recompute`` mode: every step re-runs the whole sequence (LinguaLinked's mode).

Failover: when a stage fails because its worker is lost (died, hung) or missed its deadline, the
runner stops starting steps, drops the failed steps' requests on the surviving nodes (their waiting
stages answer at once), waits for the steps in flight to resolve, asks ``replan(survivors, ...)`` for a
new deployment (re-cut segments loaded on the survivors: :func:`even_replan`) and resumes every
request from its last completed token (in kv_cache mode with a prefill of its context, since part of
its cache is gone). A token is recorded only when its step completed, so every (request, position)
is generated exactly once. Errors that are not a lost worker (a bad input, onnxruntime failing) stop
the run with their typed error; the tokens generated so far stay in ``error.partial``.
"""
from __future__ import annotations

import queue
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from llsim.hil.client import SegmentSpec, StageResult, plan_segment_specs
from llsim.hil.errors import DeadlineExceeded, Dropped, InputsTimeout, WorkerDied, WorkerError, WorkerLost
from llsim.hil.plane import connect_peers, graph_feeds, route, stage_outputs
from llsim.model.segment import empty_state



@dataclass
class Deployment:
    """A plan's segments loaded on nodes: ``nodes[i]`` runs segment i under the id ``specs[i].key``."""

    seg_dir: Path
    plan: dict
    nodes: list
    specs: list[SegmentSpec]
    tag: str
    load_s: dict = field(default_factory=dict)  # segment id -> seconds the node took to load it

    def key(self, s: int) -> str:
        return self.specs[s].key

    @property
    def kv(self) -> bool:
        return bool(self.plan.get("kv_cache"))

    @property
    def boundaries(self) -> list[int]:
        return list(self.plan["boundaries"])

    def unique_nodes(self) -> list:
        out = []
        for n in self.nodes:
            if all(n is not m for m in out):
                out.append(n)
        return out

    def unload(self) -> None:
        for n in self.unique_nodes():
            keys = [self.key(s) for s, m in enumerate(self.nodes) if m is n]
            try:
                if n.alive:
                    n.unload(keys)
            except WorkerError:
                pass


def deploy(seg_dir: str | Path, nodes: list, tag: str = "d0", threads: int | None = None) -> Deployment:
    """Load segment i of ``seg_dir`` on ``nodes[i]`` (one node may hold several), and open the links
    between real workers that forward to each other."""
    import json

    seg_dir = Path(seg_dir)
    plan = json.loads((seg_dir / "plan.json").read_text())
    if len(nodes) != len(plan["segments"]):
        raise ValueError(f"{len(plan['segments'])} segments but {len(nodes)} nodes")
    specs = plan_segment_specs(seg_dir, f"{tag}/", threads)
    dep = Deployment(seg_dir, plan, list(nodes), specs, tag)
    for n in dep.unique_nodes():
        mine = [specs[s] for s, m in enumerate(nodes) if m is n]
        for k, d in n.load(mine).items():
            dep.load_s[k] = d.get("load_s")
    connect_peers(plan, nodes)
    return dep


@dataclass
class StageRecord:
    deployment: str
    request: object
    position: int  # index of the token this step generates
    kind: str  # prefill | decode | recompute
    segment: int
    node: str
    seq_len: int  # tokens fed this step
    past_len: int  # tokens in the KV cache before it
    compute_s: float
    queue_s: float
    wait_s: float
    send_s: float
    bytes_in: int
    bytes_out: int
    elapsed_s: float


@dataclass
class TokenEvent:
    request: object
    position: int
    token: int
    deployment: str
    kind: str


@dataclass
class FailoverRecord:
    failed: list[str]
    error: str
    error_type: str
    detected_after_s: float  # from the first failing step's start to the failure being known
    stall_s: float  # re-planning: re-cutting the segments and loading them on the survivors
    detected_at: float  # time.monotonic() when the first stage failed
    old: str
    new: str | None
    boundaries: list[int] | None
    requests_resumed: list


@dataclass
class Generation:
    tokens: dict
    events: list[TokenEvent] = field(default_factory=list)
    stages: list[StageRecord] = field(default_factory=list)
    failovers: list[FailoverRecord] = field(default_factory=list)


class _Req:
    def __init__(self, rid, prompt: list[int], n: int):
        self.rid, self.prompt, self.n = rid, list(prompt), n
        self.generated: list[int] = []
        self.fresh = True
        self.step: _Step | None = None

    @property
    def finished(self) -> bool:
        return len(self.generated) >= self.n


class _Step:
    def __init__(self, req: _Req, dep: Deployment, kind: str, seq_len: int, past_len: int):
        self.req, self.dep, self.kind = req, dep, kind
        self.position = len(req.generated)
        self.seq_len, self.past_len = seq_len, past_len
        self.outstanding = 0
        self.token: int | None = None
        self.error: Exception | None = None
        self.started = time.monotonic()
        self.results: dict[int, StageResult] = {}


class GreedyRunner:
    """Greedy generation of ``new_tokens`` per prompt over ``deployment`` (see the module docstring).

    ``predict(segment, kind, seq_len, past_len) -> seconds`` (optional) sets each stage's deadline to
    ``floor_s`` (2 s) + ``slack`` (3) x the predicted time of it and of the stages before it (it waits
    for their outputs), so deadlines grow along the chain; a missed one is blamed on the step's first
    unfinished stage. Without it the clients' default deadline applies.
    ``replan(survivors, old_deployment, failed_nodes) -> Deployment`` enables failover."""

    def __init__(self, deployment: Deployment, mode: str = "kv_cache", *, replan: Callable | None = None,
                 predict: Callable | None = None, slack: float | None = None, floor_s: float | None = None,
                 reduce_on_worker: bool = True, max_failovers: int = 3, on_token: Callable | None = None):
        if mode not in ("kv_cache", "recompute"):
            raise ValueError("mode must be kv_cache or recompute")
        if mode == "kv_cache" and not deployment.kv:
            from llsim.errors import LLSimError
            raise LLSimError(f"{deployment.plan.get('model')}: its segments have no KV-cache inputs, so it runs in "
                             "recompute mode only (mode: recompute)")
        self.dep, self.mode = deployment, mode
        self.replan, self.predict = replan, predict
        self.slack, self.floor_s = slack, floor_s
        self.reduce_on_worker, self.max_failovers = reduce_on_worker, max_failovers
        self.on_token = on_token
        self._q: queue.Queue = queue.Queue()
        self._gen = Generation({})

    # -- one step
    def _graph_feeds(self, dep: Deployment, ids: list[int], total: int, past: int) -> dict[str, np.ndarray]:
        return graph_feeds(dep.plan, ids, total, past)

    def _launch(self, req: _Req) -> None:
        dep = self.dep
        seq = req.prompt + req.generated
        if self.mode == "kv_cache" and not req.fresh:
            kind, ids, past = "decode", seq[-1:], len(seq) - 1
        else:
            kind, ids, past = ("prefill" if self.mode == "kv_cache" or not req.generated else "recompute"), seq, 0
        step = _Step(req, dep, kind, len(ids), past)
        req.step = step
        feeds = self._graph_feeds(dep, ids, len(seq), past)
        segs = dep.plan["segments"]
        tail = len(segs) - 1
        fresh_state = kind != "decode"
        jobs, cum = [], 0.0
        for s, seg in enumerate(segs):
            node = dep.nodes[s]
            direct, expect = {}, []
            for i in seg["inputs"]:
                if i["from"] == "input" or (i["from"] == 0 and i["name"] in feeds):
                    direct[i["name"]] = feeds[i["name"]]
                else:
                    expect.append(i["name"])
            if fresh_state:
                for st in seg.get("state", []):
                    direct[st["input"]] = empty_state(st, 1)
            fw, reply = stage_outputs(dep.plan, dep.nodes, s, dep.key)
            reduce = {"logits": "argmax_last"} if (s == tail and self.reduce_on_worker
                                                  and node.has("reduce-argmax-last")) else None
            deadline = None
            if self.predict:  # a stage waits for the ones before it: its deadline counts their time too, so
                cum += self.predict(s, kind, len(ids), past)  # a later stage never expires before an earlier one
                deadline = (self.floor_s if self.floor_s is not None else 2.0) + (self.slack or 3.0) * cum
            jobs.append((s, node, direct, expect, fw, reply, reduce, deadline))
        step.outstanding = len(jobs)
        for s, node, direct, expect, fw, reply, reduce, deadline in jobs:
            node.submit(req.rid, step.position, dep.key(s), direct, expect=expect, forward=fw, reply=reply,
                        reduce=reduce, keep_state=self.mode == "kv_cache", deadline_s=deadline,
                        on_done=lambda f, _s=s, _st=step: self._q.put((_st, _s, f)))

    def _on_stage(self, step: _Step, s: int, fut) -> None:
        step.outstanding -= 1
        if step.error is not None:
            return
        exc = fut.exception()
        if exc is not None:
            self._fail(step, exc)
            return
        res: StageResult = fut.result()
        step.results[s] = res
        dep = step.dep
        self._gen.stages.append(StageRecord(dep.tag, step.req.rid, step.position, step.kind, s, res.worker,
                                            step.seq_len, step.past_len, res.compute_s, res.queue_s, res.wait_s,
                                            res.send_s, res.bytes_in, res.bytes_out, res.elapsed_s))
        if res.forward_errors:  # the next worker is unreachable: it is the one lost, not this one
            fe = res.forward_errors[0]
            dst = next((n for n in dep.nodes if getattr(n, "address", None) == fe.get("to")), None)
            self._fail(step, WorkerDied(f"unreachable from {res.worker} ({fe.get('code')}: {fe.get('message')})",
                                        getattr(dst, "name", fe.get("to"))))
            return
        seg = dep.plan["segments"][s]
        node = dep.nodes[s]
        for o in seg["outputs"]:
            for d in o["to"]:
                if not route(node, dep.nodes[d]):  # not forwarded by the worker: fed from here
                    try:
                        dep.nodes[d].feed(step.req.rid, step.position, dep.key(d), {o["name"]: res.outputs[o["name"]]})
                    except WorkerError as e:
                        self._fail(step, e)
                        return
        if s == len(dep.plan["segments"]) - 1:
            out = res.outputs["logits"]
            step.token = int(out.reshape(-1)[0]) if out.dtype == np.int64 and out.size == 1 else \
                int(np.argmax(out[0, -1]))

    @staticmethod
    def _culprit(step: _Step, exc: Exception) -> str | None:
        """For a missed deadline: the node of the step's first unfinished stage. Every later stage waits
        for its outputs, so a downstream deadline expiring first must not blame its own worker."""
        if not isinstance(exc, DeadlineExceeded):
            return getattr(exc, "worker", None)
        pending = [s for s in range(len(step.dep.plan["segments"])) if s not in step.results]
        return step.dep.nodes[pending[0]].name if pending else getattr(exc, "worker", None)

    def _fail(self, step: _Step, exc: Exception) -> None:
        step.error = exc
        self._failing = True
        if not isinstance(exc, (WorkerLost, DeadlineExceeded, Dropped, InputsTimeout)):
            self._fatal = self._fatal or exc
        elif not isinstance(exc, (Dropped, InputsTimeout)):
            self._errors.append((exc, step, self._culprit(step, exc)))
        for n in step.dep.unique_nodes():  # the step's other stages answer now instead of at their deadline
            if getattr(n, "alive", True):
                try:
                    n.drop(step.req.rid, wait=False)  # never wait here: the culprit may be wedged
                except WorkerError:
                    pass

    def _complete(self, step: _Step) -> None:
        req = step.req
        req.step = None
        if step.error is not None:
            return
        if step.position != len(req.generated) or step.token is None:  # never twice, never a gap
            raise AssertionError(f"internal: request {req.rid!r} completed position {step.position} "
                                 f"with {len(req.generated)} tokens recorded")
        req.generated.append(step.token)
        req.fresh = False
        ev = TokenEvent(req.rid, step.position, step.token, step.dep.tag, step.kind)
        self._gen.events.append(ev)
        if self.on_token:
            self.on_token(ev)

    # -- failover
    def _failover(self, reqs: list[_Req]) -> None:
        old = self.dep
        nodes = old.unique_nodes()
        # lost: the nodes whose connection is gone, and the ones blamed for a failure although their client
        # has not noticed yet (a worker its upstream could not reach; a missed deadline while it heartbeats)
        blamed = {who for _, _, who in self._errors}
        lost = [n for n in nodes if not getattr(n, "alive", True) or getattr(n, "name", None) in blamed]
        for n in lost:
            if getattr(n, "alive", False):
                n.close()
        first = self._errors[0][0] if self._errors else None
        if self._fatal is not None:
            self._raise(self._fatal)
        if not lost or first is None:
            self._raise(first or WorkerError("a step failed and no worker was found at fault"))
        if self.replan is None or len(self._gen.failovers) >= self.max_failovers:
            self._raise(first)
        survivors = [n for n in nodes if all(n is not m for m in lost)]
        if not survivors:
            self._raise(first)
        detected = max(0.0, min(t for t in self._fail_times) - min(st.started for _, st, _ in self._errors))
        t0 = time.monotonic()
        new = self.replan(survivors, old, lost)
        stall = time.monotonic() - t0
        for n in survivors:
            keys = [old.key(s) for s, m in enumerate(old.nodes) if m is n]
            try:
                n.unload(keys)
            except WorkerError:
                pass
        resumed = [r.rid for r in reqs if not r.finished]
        for r in reqs:
            r.fresh = True
            if not r.finished:
                for n in survivors:
                    try:
                        n.drop(r.rid)
                    except WorkerError:
                        pass
        self._gen.failovers.append(FailoverRecord([getattr(n, "name", "?") for n in lost], str(first),
                                                  type(first).__name__, detected, stall, min(self._fail_times),
                                                  old.tag, new.tag, new.boundaries, resumed))
        self.dep = new
        self._failing = False
        self._errors, self._fail_times = [], []

    def _raise(self, exc: Exception):
        exc.partial = self._gen
        raise exc

    # -- the loop
    def generate(self, prompts: dict, new_tokens: int, concurrency: int = 1,
                 idle_timeout_s: float = 600.0) -> Generation:
        """Generate ``new_tokens`` greedy tokens for each ``prompts[request]`` (a list of token ids),
        with up to ``concurrency`` requests in flight."""
        reqs = [_Req(rid, p, new_tokens) for rid, p in prompts.items()]
        self._gen = Generation({r.rid: r.generated for r in reqs})
        self._failing, self._fatal, self._errors, self._fail_times = False, None, [], []
        order = deque(reqs)
        while True:
            inflight = [r for r in reqs if r.step is not None]
            if not self._failing:
                for r in list(order):
                    if len(inflight) >= concurrency:
                        break
                    if r.finished or r.step is not None:
                        continue
                    order.remove(r)
                    order.append(r)
                    self._launch(r)
                    inflight.append(r)
                    if self._failing:
                        break
            inflight = [r for r in reqs if r.step is not None]
            if not inflight:
                if self._failing:
                    self._failover(reqs)
                    continue
                if all(r.finished for r in reqs):
                    return self._gen
            try:
                step, s, fut = self._q.get(timeout=idle_timeout_s)
            except queue.Empty:
                self._raise(WorkerError(f"no stage completed or failed for {idle_timeout_s:g} s"))
            had_error = step.error is not None
            self._on_stage(step, s, fut)
            if step.error is not None and not had_error:
                self._fail_times.append(time.monotonic())
            if step.outstanding == 0:
                self._complete(step)


# ---- re-planning and references ------------------------------------------------------------------
def even_replan(bundle, workdir: str | Path, threads: int | None = None) -> Callable:
    """A ``replan`` that cuts the model into one segment per survivor (as even as its modules allow),
    writes the files under ``workdir/<tag>`` and loads them on the survivors."""
    from llsim.model.segment import split_model

    workdir = Path(workdir)
    count = [0]

    def replan(survivors: list, old: Deployment, lost: list) -> Deployment:
        count[0] += 1
        n = min(len(survivors), bundle.graph.n_modules)
        b = bundle.graph.even_boundaries(n)
        tag = f"{old.tag}-f{count[0]}"
        out = workdir / tag
        split_model(bundle.om, bundle.cuts, bundle.graph, b, out, bundle.proto)
        return deploy(out, survivors[:n], tag, threads)

    return replan


def greedy_reference(proto, prompt: list[int], new_tokens: int, session=None) -> list[int]:
    """onnxruntime's greedy generation with the whole model (recompute: the full sequence each step;
    with a KV-cache model: a prefill, then one token per step with its present tensors). ``session``:
    an onnxruntime session of ``proto`` to reuse (many prompts of one model)."""
    import onnxruntime as ort

    from llsim.model.kv import state_pairs

    sess = session
    if sess is None:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = 1
        sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    pairs = state_pairs(proto)
    seq = list(prompt)
    out = []
    have = {i.name for i in sess.get_inputs()}  # exporters' graphs also take attention_mask (and position_ids)
    if not pairs:
        for _ in range(new_tokens):
            feeds = {"input_ids": np.asarray([seq], dtype=np.int64)}
            if "attention_mask" in have:
                feeds["attention_mask"] = np.ones((1, len(seq)), dtype=np.int64)
            if "position_ids" in have:
                feeds["position_ids"] = np.arange(len(seq), dtype=np.int64)[None]
            logits = sess.run(["logits"], feeds)[0]
            t = int(np.argmax(logits[0, -1]))
            seq.append(t)
            out.append(t)
        return out
    metas = {i.name: i for i in sess.get_inputs()}
    past = {}
    for p in pairs:
        shape = [d if isinstance(d, int) else 1 for d in metas[p.input].shape]
        shape[p.axis] = 0
        past[p.input] = np.zeros(shape, dtype=np.float32)
    ids = list(seq)
    names = ["logits"] + [p.output for p in pairs]
    for _ in range(new_tokens):
        feeds = {"input_ids": np.asarray([ids], dtype=np.int64), "attention_mask": np.ones((1, len(seq)), np.int64),
                 **past}
        vals = sess.run(names, feeds)
        t = int(np.argmax(vals[0][0, -1]))
        past = {p.input: v for p, v in zip(pairs, vals[1:])}
        seq.append(t)
        out.append(t)
        ids = [t]
    return out
