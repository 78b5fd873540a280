"""Segments executed by the coordinator itself, behind the same interface as a real worker.

In a run that mixes simulated and real nodes, the simulated nodes' segments are executed on this
host by the coordinator to produce the real tensors the real nodes need (their *time* is still the
cost model's). :class:`LocalNode` does that with the worker's own execution core
(:class:`llsim.hil.worker.Core`: the same sessions, KV-state and input-assembly code), so it has the
same ``load / submit / feed / drop`` semantics and results as a :class:`~llsim.hil.client.WorkerClient`,
minus the socket. It never forwards to other workers: the coordinator routes its outputs.
"""
from __future__ import annotations

import itertools
import threading
import time
from typing import Callable

import numpy as np

from llsim.hil import worker as wire
from llsim.hil.client import SegmentSpec, StageFuture, StageResult
from llsim.hil.errors import WorkerDied, remote_error


class LocalNode:
    address = None  # nothing to forward to: the coordinator feeds it

    def __init__(self, name: str = "coordinator", threads: int = 1, spin: bool = False):
        self.name = name
        self.threads = threads
        # onnxruntime's threads spin for a while after each run by default: in the coordinator's process
        # that steals the CPU the real workers and the client's threads need (measured: a submit right after
        # an in-process run took 2.2 ms instead of 0.1 ms); these runs only produce tensors, so no spinning
        self.spin = spin
        self._futures: dict[int, StageFuture] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._closed = False
        self.info = {"features": [f for f in wire.features() if f not in ("forward", "heartbeat")],
                     "worker": "in-process", "name": name}
        self.core = wire.Core(self._done, self._error, forward=None, self_address=None)

    @property
    def alive(self) -> bool:
        return not self._closed

    def has(self, feature: str) -> bool:
        return feature in self.info["features"]

    def load(self, segments: list[SegmentSpec]) -> dict[str, dict]:
        try:
            specs = [dict(s.to_json(self.threads), spin=self.spin if s.spin is None else s.spin) for s in segments]
            return {d["segment"]: d for d in self.core.load(specs)}
        except wire.JobError as e:
            raise remote_error({"code": e.code, "message": e.message, "traceback": e.tb}, self.name) from None

    def unload(self, keys: list[str]) -> list[str]:
        return self.core.unload(keys)

    def drop(self, request, wait: bool = True) -> dict:
        return self.core.drop(request)

    def submit(self, request, step: int, segment: str, inputs: dict[str, np.ndarray] | None = None, *,
               expect=(), forward=(), reply=(), reduce: dict[str, str] | None = None, keep_state: bool = True,
               predicted_s=None, slack=None, floor_s=None, pending_timeout_s: float | None = None, deadline_s=None,
               on_done: Callable[[StageFuture], None] | None = None) -> StageFuture:
        fut = StageFuture(self.name, request, step, segment)
        if on_done is not None:
            fut.add_done_callback(on_done)
        if self._closed:
            fut.set_exception(WorkerDied("closed", self.name))
            return fut
        if forward:
            raise ValueError("a LocalNode does not forward to workers: reply its outputs and feed them")
        cid = next(self._ids)
        with self._lock:
            self._futures[cid] = fut
        msg = {"id": cid, "request": request, "step": int(step), "segment": segment, "expect": list(expect),
               "reply": list(reply), "reduce": dict(reduce or {}), "keep_state": keep_state}
        if pending_timeout_s is not None:
            msg["timeout_s"] = pending_timeout_s
        try:
            self.core.submit(self, msg, list((inputs or {}).items()), time.perf_counter())
        except wire.JobError as e:
            self._error(self, cid, e.code, e.message, e.tb)
        return fut

    def feed(self, request, step: int, segment: str, tensors: dict[str, np.ndarray]) -> None:
        try:
            self.core.feed(self, {"request": request, "step": int(step), "segment": segment}, list(tensors.items()))
        except wire.JobError as e:
            raise remote_error({"code": e.code, "message": e.message, "traceback": e.tb}, self.name) from None

    def _done(self, job, reply: list, timing: dict) -> None:
        with self._lock:
            fut = self._futures.pop(job.id, None)
        if fut is None or fut.done():
            return
        res = StageResult(self.name, job.key[0], job.key[1], job.key[2], dict(reply), timing["compute_s"],
                          timing["queue_s"], timing["wait_s"], timing["send_s"], timing["bytes_in"],
                          timing["bytes_out"], timing["forward_errors"], 0.0, timing["t_start"], timing["t_end"])
        res.elapsed_s = time.monotonic() - fut.submitted_at
        fut.set_result(res)

    def _error(self, owner, cid, code: str, message: str, tb) -> None:
        with self._lock:
            fut = self._futures.pop(cid, None)
        if fut is not None and not fut.done():
            fut.set_exception(remote_error({"code": code, "message": message, "traceback": tb}, self.name))

    def close(self) -> None:
        self._closed = True
        self.core.stop()
        with self._lock:
            futs = list(self._futures.values())
            self._futures.clear()
        for f in futs:
            if not f.done():
                f.set_exception(WorkerDied("closed", self.name))
