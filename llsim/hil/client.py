"""The coordinator's side of a worker connection: :class:`WorkerClient`.

It connects and authenticates (:mod:`llsim.hil.worker` defines the frames; docs/hil-protocol.md the
messages), loads segments, submits stages asynchronously and delivers each completion as a
:class:`StageFuture` (``concurrent.futures.Future``; ``on_done`` callbacks make it a thread-safe
queue item for an engine loop), sets up ring forwarding between workers (``forward=`` of a submit)
and watches the worker:

* heartbeats: any frame counts as a sign of life; none for ``patience x heartbeat_s`` -> every call in
  flight fails with :class:`~llsim.hil.errors.WorkerHung` and the connection is closed;
* a closed connection (killed, crashed) -> :class:`~llsim.hil.errors.WorkerDied` at once, with the tail
  of the worker's log when the launcher knows it;
* per-call deadlines: ``max(floor_s, predicted_s x slack)`` -> :class:`~llsim.hil.errors.DeadlineExceeded`;
* a worker that stops taking the bytes sent to it -> ``WorkerHung`` after ``send_stall_s``.

So no call blocks its caller for longer than its deadline, and a dead worker surfaces within
``patience x heartbeat_s``. One monitor thread serves every client of the process.
"""
from __future__ import annotations

import hmac
import itertools
import json
import secrets
import socket
import threading
import time
import weakref
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from llsim.filehash import sha256_file
from llsim.hil import worker as wire
from llsim.hil.errors import (AuthError, DeadlineExceeded, ProtocolError, VersionError, WorkerDied, WorkerError,
                              WorkerHung, WorkerLost, remote_error)

CLIENT_VERSION = "0.1.0"


@dataclass(frozen=True)
class SegmentSpec:
    """A segment file to load on a worker, under the id ``key``."""

    key: str
    path: str
    sha256: str
    threads: int | None = None  # intra-op threads; None: the client's default (WorkerPool.start(n, threads))
    state: tuple[tuple[str, str], ...] = ()  # KV-cache (past input, present output) pairs
    optimize: bool = True
    ranks: tuple[tuple[str, int], ...] = ()  # input ranks the worker checks (segment files may not declare them)
    spin: bool | None = None  # onnxruntime's allow_spinning (None: its default, on); see docs/hil-protocol.md
    profile: bool = False  # onnxruntime's per-node profiler on (for WorkerClient.bench; feature "bench")

    def to_json(self, default_threads: int = 1) -> dict:
        threads = self.threads if self.threads is not None else default_threads
        out = {"segment": self.key, "path": self.path, "sha256": self.sha256, "threads": threads,
               "state": [list(p) for p in self.state], "optimize": self.optimize, "ranks": dict(self.ranks),
               "spin": self.spin}
        if self.profile:
            out["profile"] = True
        return out



def plan_segment_specs(seg_dir: str | Path, prefix: str = "", threads: int | None = None) -> list[SegmentSpec]:
    """One spec per segment of a ``split_model`` directory (plan.json), ids ``{prefix}{index}``."""
    seg_dir = Path(seg_dir)
    plan = json.loads((seg_dir / "plan.json").read_text())
    out = []
    for s in plan["segments"]:
        f = (seg_dir / s["file"]).resolve()
        ranks = [(i["name"], len(i["shape"])) for i in s["inputs"]]
        ranks += [(st["input"], len(st["shape"])) for st in s.get("state", [])]
        out.append(SegmentSpec(f"{prefix}{s['index']}", str(f), sha256_file(f), threads,
                               tuple((st["input"], st["output"]) for st in s.get("state", [])), True, tuple(ranks)))
    return out


@dataclass(frozen=True)
class Forward:
    """Send outputs ``tensors`` of a stage straight to the worker at ``to`` as inputs of its ``segment``."""

    to: str
    segment: str
    tensors: tuple[str, ...]

    def to_json(self) -> dict:
        return {"to": self.to, "segment": self.segment, "tensors": list(self.tensors)}


@dataclass
class StageResult:
    """One completed stage: the outputs asked for and what the worker measured (its own clock)."""

    worker: str
    request: object
    step: int
    segment: str
    outputs: dict[str, np.ndarray]
    compute_s: float  # session.run
    queue_s: float  # ready (all inputs in) -> started: the worker was busy with other stages
    wait_s: float  # submitted -> all inputs in (forwarded tensors in flight, upstream stages)
    send_s: float  # forwarding the outputs to the next workers
    bytes_in: int
    bytes_out: int
    forward_errors: list = field(default_factory=list)
    elapsed_s: float = 0.0  # coordinator's clock: submit -> completion received
    t_start: float = 0.0  # the worker's perf_counter at the start and end of session.run (its own clock:
    t_end: float = 0.0  # comparable between stages of one worker only; on one Linux host it is CLOCK_MONOTONIC,
    t_submit: float = 0.0  # the same clock as this process's perf_counter) and when its submit was read
    t_received: float = 0.0  # this process's perf_counter when the completion frame was read


@dataclass
class Health:
    """What the heartbeats say (``None`` where the worker cannot read it, e.g. a phone's thermal zones)."""

    connected_at: float
    last_seen: float  # time.monotonic() of the last frame received
    heartbeats: int = 0
    rss_bytes: int | None = None
    temp_c: dict | None = None
    temp_max_c: float | None = None
    battery_pct: float | None = None
    charging: bool | None = None
    busy: bool = False
    queued: int = 0
    pending: int = 0
    state_bytes: int = 0
    runs: int = 0
    lost: WorkerLost | None = None

    @property
    def alive(self) -> bool:
        return self.lost is None


class StageFuture(Future):
    """A submitted stage; ``result()`` is a :class:`StageResult` or raises a typed worker error."""

    def __init__(self, worker: str, request, step: int, segment: str):
        super().__init__()
        self.worker, self.request, self.step, self.segment = worker, request, step, segment
        self.submitted_at = time.monotonic()


@dataclass
class _Call:
    future: Future
    kind: str
    deadline: float | None
    what: str
    key: tuple | None = None  # (request, step, segment) of a stage


class _Monitor:
    """One thread for every client: heartbeat patience and call deadlines."""

    def __init__(self):
        self.clients: weakref.WeakSet = weakref.WeakSet()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def add(self, c: "WorkerClient") -> None:
        with self.lock:
            self.clients.add(c)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="llsim-hil-monitor", daemon=True)
                self.thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(0.01)
            now = time.monotonic()
            with self.lock:
                clients = list(self.clients)
            for c in clients:
                try:
                    c._check(now)
                except Exception:  # never let one client stop the monitor
                    pass


_MONITOR = _Monitor()


class WorkerClient:
    """A connection to one worker. ``WorkerClient.connect(address, secret)``; see the module docstring."""

    on_this_host = True  # the worker listens on this host at ``address`` (see peer_address)

    def __init__(self, address: str, secret: bytes, *, heartbeat_s: float = 0.5, patience: int = 4,
                 connect_timeout_s: float = 10.0, floor_s: float = 2.0, slack: float = 3.0,
                 default_deadline_s: float = 60.0, send_stall_s: float = 10.0, name: str | None = None,
                 log_tail: Callable[[], str | None] | None = None, pending_timeout_s: float | None = None,
                 threads: int = 1):
        self.address = address
        self.name = name or address
        self.heartbeat_s, self.patience = heartbeat_s, patience
        self.floor_s, self.slack, self.default_deadline_s = floor_s, slack, default_deadline_s
        self.send_stall_s = send_stall_s
        self.threads = threads  # default intra-op threads of the segments loaded here
        self.log_tail = log_tail
        self._secret = secret
        self._ids = itertools.count(1)
        self._calls: dict[int, _Call] = {}
        self._stage_ids: dict[tuple, int] = {}
        self.errors: list = []  # errors the worker reported about fed tensors of no known stage
        self._lock = threading.Lock()
        self._wlock = threading.Lock()
        self._closing = False
        self.info: dict = {}
        self.telemetry: list[tuple[float, float | None, float | None]] = []  # see _record_telemetry
        self.sim_clock: Callable[[], float | None] | None = None
        now = time.monotonic()
        self.health = Health(now, now)
        host, port = wire.split_address(address)
        try:
            self.sock = socket.create_connection((host, port), timeout=connect_timeout_s)
        except OSError as e:
            raise WorkerDied(f"cannot connect: {e.strerror or e}", self.name, self._tail()) from None
        wire.tune_socket(self.sock)
        try:
            self._handshake(connect_timeout_s)
        except BaseException:
            self.sock.close()
            raise
        self.sock.settimeout(None)
        self.health.last_seen = time.monotonic()
        self._reader = threading.Thread(target=self._read_loop, name=f"llsim-hil-{self.name}", daemon=True)
        self._reader.start()
        _MONITOR.add(self)
        cfg = {"heartbeat_s": heartbeat_s}
        if pending_timeout_s is not None:
            cfg["pending_timeout_s"] = pending_timeout_s
        self.configure(**cfg)

    @classmethod
    def connect(cls, address: str, secret: bytes, **kw) -> "WorkerClient":
        return cls(address, secret, **kw)

    # -- handshake
    def _handshake(self, timeout_s: float) -> None:
        self.sock.settimeout(timeout_s)
        nonce = secrets.token_hex(16)
        try:
            wire.send_parts(self.sock, wire.encode({"type": "hello", "protocol": wire.PROTOCOL,
                                                    "min_protocol": wire.PROTOCOL_MIN, "role": "coordinator",
                                                    "nonce": nonce, "client": f"llsim {CLIENT_VERSION}",
                                                    "features": wire.features()}), timeout_s)
            h, _ = wire.read_frame(self.sock, wire.MAX_PREAUTH_HEADER * 4, 0, timeout_s)
            if h["type"] == "error":
                raise remote_error(h, self.name)
            if h["type"] != "hello":
                raise ProtocolError(f"expected hello, got '{h['type']}'", self.name)
            self.info = {k: v for k, v in h.items() if k not in ("nonce", "tensors", "type")}
            wn = str(h.get("nonce", ""))
            wire.send_parts(self.sock, wire.encode({"type": "auth", "mac": wire.auth_mac(self._secret, b"client",
                                                                                          nonce, wn)}), timeout_s)
            h, _ = wire.read_frame(self.sock, wire.MAX_PREAUTH_HEADER, 0, timeout_s)
        except (wire.PeerClosed, ConnectionError) as e:
            raise WorkerDied(f"closed the connection during the handshake ({type(e).__name__})", self.name,
                             self._tail()) from None
        except socket.timeout:
            raise WorkerHung(f"no answer to the handshake within {timeout_s:g} s", self.name) from None
        except wire.ProtocolViolation as e:
            raise ProtocolError(f"{e.code}: {e.message}", self.name) from None
        if h["type"] == "error":
            raise remote_error(h, self.name)
        if h["type"] != "welcome" or not hmac.compare_digest(str(h.get("mac", "")),
                                                              wire.auth_mac(self._secret, b"worker", nonce, wn)):
            raise AuthError("the worker could not prove it holds this run's secret (a different run's worker, "
                            "or an impostor on that port)", self.name)
        if self.info.get("protocol") != wire.PROTOCOL:
            raise VersionError(f"the worker chose protocol {self.info.get('protocol')}, this coordinator speaks "
                               f"{wire.PROTOCOL}", self.name)

    def has(self, feature: str) -> bool:
        return feature in self.info.get("features", [])

    def peer_address(self, other) -> str | None:
        """Where this worker's ``forward`` reaches ``other``'s worker, or None when it cannot (their
        tensors then go through the coordinator). Workers on this host that share this run's secret
        reach each other at the address the coordinator connects to; other backends say for themselves
        (a phone's worker reaches another phone over their Wi-Fi, or not at all)."""
        if other is self:
            return self.address
        if not getattr(other, "on_this_host", False) or not hmac.compare_digest(other._secret, self._secret):
            return None
        return other.address

    # -- calls
    def _deadline(self, predicted_s: float | None, slack: float | None, floor_s: float | None,
                  default: float | None = None) -> float:
        if predicted_s is None:
            return default if default is not None else self.default_deadline_s
        return max(self.floor_s if floor_s is None else floor_s, predicted_s * (self.slack if slack is None else slack))

    def _send(self, header: dict, tensors=()) -> None:
        parts = wire.encode(header, tensors)
        lost = self.health.lost
        if lost is not None:
            raise lost
        try:
            with self._wlock:
                wire.send_parts(self.sock, parts, self.send_stall_s)
        except TimeoutError:
            err = WorkerHung(f"stopped taking data (nothing sent for {self.send_stall_s:g} s)", self.name)
            self._lose(err)
            raise err from None
        except OSError as e:
            err = WorkerDied(f"connection lost while sending ({e.strerror or e})", self.name, self._tail())
            self._lose(err)
            raise err from None

    def _call(self, header: dict, tensors=(), kind: str = "call", deadline_s: float | None = None,
              future: Future | None = None, what: str = "") -> Future:
        fut = future or Future()
        cid = next(self._ids)
        header = dict(header, id=cid)
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        key = (header.get("request"), header.get("step"), header.get("segment")) if kind == "stage" else None
        with self._lock:
            if self.health.lost is not None:
                fut.set_exception(self.health.lost)
                return fut
            self._calls[cid] = _Call(fut, kind, deadline, what or header["type"], key)
            if key is not None:
                self._stage_ids[key] = cid
        try:
            self._send(header, tensors)
        except WorkerError as e:
            with self._lock:
                self._calls.pop(cid, None)
                if key is not None:
                    self._stage_ids.pop(key, None)
            if not fut.done():
                fut.set_exception(e)
        return fut

    def _sync(self, header: dict, deadline_s: float, tensors=()) -> dict:
        return self._call(header, tensors, deadline_s=deadline_s).result(timeout=deadline_s + 5.0)

    def configure(self, **fields) -> dict:
        return self._sync({"type": "configure", **fields}, 10.0)

    def load(self, segments: list[SegmentSpec], deadline_s: float = 300.0) -> dict[str, dict]:
        """Load segment files on the worker (verified by sha256); returns per id its signature and
        ``load_s`` (file read + hash + session creation, measured there)."""
        r = self._sync({"type": "load", "segments": [s.to_json(self.threads) for s in segments]}, deadline_s)
        return {d["segment"]: d for d in r["segments"]}

    def unload(self, keys: list[str]) -> list[str]:
        return self._sync({"type": "unload", "segments": list(keys)}, 30.0)["segments"]

    def drop(self, request, deadline_s: float = 10.0, wait: bool = True) -> dict | None:
        """Forget ``request`` on the worker: its KV state, and its stages still waiting (they fail with
        :class:`~llsim.hil.errors.Dropped`). ``wait=False``: send it and return at once (a worker
        whose executor is wedged must not hold up a coordinator that is failing over)."""
        if not wait:
            self._call({"type": "drop", "request": request}, deadline_s=deadline_s)
            return None
        return self._sync({"type": "drop", "request": request}, deadline_s)

    def connect_peers(self, addresses: list[str]) -> dict[str, str]:
        """Have the worker open its links to these workers now ("ok", "self" or the error, per address)."""
        return self._sync({"type": "peers", "addresses": list(addresses)}, 30.0)["peers"]

    @property
    def alive(self) -> bool:
        return self.health.lost is None and not self._closing

    def status(self) -> dict:
        return self._sync({"type": "status"}, 10.0)

    def bench(self, segment: str, feeds: dict[str, np.ndarray], *, runs: int, warmup: int, rounds: int = 1,
              evict: bool = True, deadline_s: float = 900.0) -> dict:
        """Time ``segment`` on the worker (``warmup`` runs, then ``rounds`` x ``runs`` timed ones): the
        ``benched`` answer, ``times_s`` per timed run and, for a segment loaded with ``profile``, ``nodes``:
        onnxruntime's kernel seconds per node and run (docs/hil-protocol.md)."""
        return self._sync({"type": "bench", "segment": segment, "runs": int(runs), "warmup": int(warmup),
                           "rounds": int(rounds), "evict": bool(evict)}, deadline_s, list(feeds.items()))

    def ping(self) -> float:
        t0 = time.perf_counter()
        self._sync({"type": "ping"}, 10.0)
        return time.perf_counter() - t0

    def shutdown(self) -> None:
        """Ask the worker process to exit (for workers the launcher cannot signal, e.g. on a phone)."""
        try:
            self._sync({"type": "shutdown"}, 5.0)
        except WorkerError:
            pass
        self.close()

    def submit(self, request, step: int, segment: str, inputs: dict[str, np.ndarray] | None = None, *,
               expect: tuple[str, ...] | list[str] = (), forward: list[Forward] = (),
               reply: tuple[str, ...] | list[str] = (), reduce: dict[str, str] | None = None,
               keep_state: bool = True, predicted_s: float | None = None, slack: float | None = None,
               floor_s: float | None = None, pending_timeout_s: float | None = None,
               deadline_s: float | None = None,
               on_done: Callable[[StageFuture], None] | None = None) -> StageFuture:
        """Run ``segment`` for (request, step) once its inputs are there: ``inputs`` sent now, ``expect``
        named ones arriving from other workers (their ``forward``) or from :meth:`feed`. State inputs
        (KV cache) not sent are taken from what the worker keeps for ``request``. Outputs named in
        ``forward`` go straight to those workers; ``reply`` ones come back in the result (``reduce``
        ``{"logits": "argmax_last"}`` sends greedy token ids instead). The deadline is ``deadline_s``, else
        ``max(floor_s, predicted_s x slack)``, else the default. Never blocks beyond sending."""
        fut = StageFuture(self.name, request, step, segment)
        if on_done is not None:
            fut.add_done_callback(on_done)
        h = {"type": "submit", "request": request, "step": int(step), "segment": segment, "expect": list(expect),
             "forward": [f.to_json() for f in forward], "reply": list(reply), "keep_state": keep_state}
        if reduce:
            h["reduce"] = dict(reduce)
        if pending_timeout_s is not None:
            h["timeout_s"] = pending_timeout_s
        deadline = deadline_s if deadline_s is not None else self._deadline(predicted_s, slack, floor_s)
        self._call(h, list((inputs or {}).items()), kind="stage", deadline_s=deadline, future=fut,
                   what=f"request {request!r} step {step} segment {segment}")
        return fut

    def feed(self, request, step: int, segment: str, tensors: dict[str, np.ndarray]) -> None:
        """Inputs of a submitted (or soon submitted) stage that the coordinator holds (e.g. outputs of a
        segment it ran itself)."""
        self._send({"type": "tensors", "request": request, "step": int(step), "segment": segment,
                    "from": "coordinator"}, list(tensors.items()))

    # -- incoming
    def _read_loop(self) -> None:
        reader = wire.FrameReader(self.sock, progress=self._alive_now)
        try:
            while True:
                h, tensors = reader.read(wire.MAX_HEADER, wire.DEFAULT_MAX_PAYLOAD * 4)
                self.health.last_seen = time.monotonic()
                self._t_frame = time.perf_counter()
                self._on_frame(h, tensors)
        except wire.PeerClosed:
            err = WorkerDied("the worker closed the connection", self.name, self._tail())
        except wire.ProtocolViolation as e:
            err = WorkerDied(f"the connection broke mid-frame ({e.code}: {e.message})", self.name, self._tail())
        except OSError as e:
            err = WorkerDied(f"connection lost ({e.strerror or e})", self.name, self._tail())
        except Exception as e:  # pragma: no cover - a bug in this reader
            err = WorkerDied(f"internal error reading from the worker: {e!r}", self.name)
        if not self._closing:
            self._lose(err)

    def _alive_now(self) -> None:
        self.health.last_seen = time.monotonic()

    def _on_frame(self, h: dict, tensors: list) -> None:
        t = h["type"]
        if t == "heartbeat":
            hb = self.health
            hb.heartbeats += 1
            hb.rss_bytes = h.get("rss_bytes", h.get("peak_rss_bytes"))
            hb.temp_c, hb.temp_max_c = h.get("temp_c"), h.get("temp_max_c")
            hb.battery_pct, hb.charging = h.get("battery_pct"), h.get("charging")
            self._record_telemetry(hb)
            hb.busy, hb.queued, hb.pending = bool(h.get("busy")), int(h.get("queued", 0)), int(h.get("pending", 0))
            hb.state_bytes, hb.runs = int(h.get("state_bytes", 0)), int(h.get("runs", 0))
            return
        cid = h.get("id")
        if t == "error" and (h.get("fatal") or (cid is None and "fatal" not in h)):
            err = remote_error(h, self.name)
            if not isinstance(err, WorkerLost):
                err = WorkerDied(f"the worker closed the connection: {err.detail}", self.name)
            self._lose(err)
            return
        with self._lock:
            if cid is None and t == "error":  # a fed input refused: fail the stage it was meant for
                cid = self._stage_ids.get((h.get("request"), h.get("step"), h.get("segment")))
                if cid is None:
                    self.errors.append(remote_error(h, self.name))
                    return
            call = self._calls.pop(cid, None)
            if call is not None and call.kind == "stage":
                self._stage_ids.pop(call.key, None)
        if call is None or call.future.done():
            return  # a late answer to a call that already failed (deadline): dropped
        if t == "error":
            call.future.set_exception(remote_error(h, self.name))
        elif t == "done":
            fut = call.future
            res = StageResult(self.name, h.get("request"), h.get("step"), h.get("segment"), dict(tensors),
                              float(h.get("compute_s", 0.0)), float(h.get("queue_s", 0.0)),
                              float(h.get("wait_s", 0.0)), float(h.get("send_s", 0.0)), int(h.get("bytes_in", 0)),
                              int(h.get("bytes_out", 0)), list(h.get("forward_errors", [])), 0.0,
                              float(h.get("t_start", 0.0)), float(h.get("t_end", 0.0)))
            res.elapsed_s = time.monotonic() - getattr(fut, "submitted_at", time.monotonic())
            res.t_submit, res.t_received = float(h.get("t_submit", 0.0)), self._t_frame
            fut.set_result(res)
        else:
            call.future.set_result(h)

    def _record_telemetry(self, hb: Health) -> None:
        """Keep (time, hottest zone, battery level) when either changed or every 10 s (bounded): the run's
        telemetry. ``time`` is ``sim_clock()`` when the runtime set one (the simulation's time at that
        moment), else this process's monotonic clock."""
        t = self.sim_clock() if self.sim_clock is not None else time.monotonic()
        if t is None:
            return
        row = (float(t), hb.temp_max_c, hb.battery_pct)
        tl = self.telemetry
        if tl and tl[-1][1:] == row[1:] and row[0] - tl[-1][0] < 10.0:
            return
        if len(tl) >= 100_000:
            del tl[: len(tl) // 2]
        tl.append(row)

    # -- failure
    def _tail(self) -> str | None:
        try:
            return self.log_tail() if self.log_tail else None
        except Exception:
            return None

    def _lose(self, err: WorkerLost) -> None:
        with self._lock:
            if self.health.lost is None:
                self.health.lost = err
            calls = list(self._calls.values())
            self._calls.clear()
            self._stage_ids.clear()
        for c in calls:
            if not c.future.done():
                c.future.set_exception(err)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _check(self, now: float) -> None:
        if self.health.lost is not None or self._closing:
            return
        silent = now - self.health.last_seen
        if silent > self.heartbeat_s * self.patience:
            self._lose(WorkerHung(f"no heartbeat for {silent:.2f} s (patience {self.patience} x "
                                  f"{self.heartbeat_s:g} s)", self.name))
            return
        expired = []
        with self._lock:
            for cid, c in list(self._calls.items()):
                if c.deadline is not None and now > c.deadline:
                    del self._calls[cid]
                    if c.key is not None:
                        self._stage_ids.pop(c.key, None)
                    expired.append(c)
        for c in expired:
            if not c.future.done():
                c.future.set_exception(DeadlineExceeded(f"{c.what}: no answer within its deadline", self.name))

    def close(self) -> None:
        self._closing = True
        with self._lock:
            calls = list(self._calls.values())
            self._calls.clear()
            if self.health.lost is None:
                self.health.lost = WorkerDied("closed by the coordinator", self.name)
        for c in calls:
            if not c.future.done():
                c.future.set_exception(WorkerError("the connection was closed by the coordinator", self.name))
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
