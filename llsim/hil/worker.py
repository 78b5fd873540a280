#!/usr/bin/env python3
"""llsim hardware-in-the-loop worker: runs ONNX segments for a coordinator.

One self-contained file that imports only the standard library, numpy and onnxruntime, so it runs
unchanged on this host (``llsim worker ...`` or ``python worker.py ...``) and on an Android phone
in Termux (``pkg install python python-numpy python-onnxruntime``)::

    python worker.py --listen 127.0.0.1:7071 --secret-file /path/to/secret   # file mode 0600

After binding it prints one JSON line on stdout, ``{"listening": "HOST:PORT", "pid": N, ...}``
(``--listen HOST:0`` picks a free port), then serves until SIGTERM, a ``shutdown`` message, or the
death of ``--parent-pid``. The protocol is documented in docs/hil-protocol.md; in short:

* every message is a frame: ``b"LLSW" | u32 header length | u64 payload length`` (big-endian), a
  UTF-8 JSON header, then the raw bytes of the tensors the header lists (``name, dtype, shape,
  nbytes``). No pickle. Every length is checked against a bound before anything is allocated.
* the first message is a versioned ``hello``; then challenge-response authentication with the
  run's secret (HMAC-SHA256, both sides prove they know it). Nothing else is accepted before.
* a malformed, oversized, unauthenticated or out-of-version message gets an ``error`` frame and
  that connection is closed; the worker goes on serving the others. A request that is well formed
  but wrong (unknown segment, wrong dtype) gets a typed ``error`` (with the remote traceback where
  there is one) and the connection stays open.
* one segment execution at a time (a FIFO of ready jobs); connections, forwarding to the next
  workers of the ring and heartbeats run on other threads.

Only this file is pushed to a phone: keep it free of llsim imports (a test checks its imports).
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import platform
import queue
import secrets as _secrets
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback

import numpy as np

PROTOCOL = 1  # the version this file speaks
PROTOCOL_MIN = 1  # the oldest version it still accepts
WORKER_VERSION = "0.1.0"
MAGIC = b"LLSW"
PREFIX = struct.Struct(">4sIQ")  # magic, header length (u32), payload length (u64)
MAX_HEADER = 1 << 20  # bytes of JSON header once authenticated
MAX_PREAUTH_HEADER = 4096  # ... and before (hello/auth only, no payload)
DEFAULT_MAX_PAYLOAD = 1 << 30  # bytes of tensors in one frame (--max-payload-mb)
MAX_TENSORS = 4096
MAX_RANK = 16
MAX_NAME = 512
HANDSHAKE_S = 10.0  # a connection must authenticate within this long
FRAME_TIMEOUT_S = 30.0  # once a frame has started, each further chunk must arrive within this long
SEND_STALL_S = 30.0  # a peer that takes no bytes for this long is dropped
MAX_CONNECTIONS = 64
AUTH_LABEL = b"llsim-hil-v1"
DTYPES = ("float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
             "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int16)": "int16", "tensor(int8)": "int8",
             "tensor(uint8)": "uint8", "tensor(bool)": "bool"}
REDUCTIONS = ("argmax_last",)
INLINE_SEND_BYTES = 256 << 10  # results up to this size are sent by the executor itself (no thread hop)
INLINE_RUN_S = 0.005  # a stage this short may run on the thread that completed its inputs (see Core._enqueue)


def features() -> list[str]:
    f = ["auth-hmac-sha256", "frames-json-raw", "load-path-sha256", "kv-state", "forward", "heartbeat",
         "reduce-argmax-last", "drop", "unload", "pending-timeout", "shutdown", "status", "bench"]
    if hasattr(os, "sched_setaffinity"):
        f.append("affinity")
    return f


# ---- framing (shared with the coordinator's client) ---------------------------------------------
class ProtocolViolation(Exception):
    """A frame or message that breaks the protocol: answered with an error, then the connection closes."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class PeerClosed(Exception):
    """The other side closed the connection between frames."""


_ITEMSIZE = {d: np.dtype(d).itemsize for d in DTYPES}
_NAME = {np.dtype(d): d for d in DTYPES}  # dtype -> name without numpy's slow .name property
_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def encode(header: dict, tensors=()) -> list:
    """Frame parts for ``header`` (a dict with ``type``) and ``tensors`` ((name, array) pairs)."""
    metas, bufs, total = [], [], 0
    for name, arr in tensors:
        a = np.asarray(arr)
        if not a.flags.c_contiguous:
            a = np.ascontiguousarray(a)
        dt = _NAME.get(a.dtype)
        if dt is None:
            raise ValueError(f"tensor {name}: dtype {a.dtype} is not one the protocol carries ({', '.join(DTYPES)})")
        n = int(a.nbytes)
        metas.append({"name": name, "dtype": dt, "shape": list(a.shape), "nbytes": n})
        if n:
            bufs.append(memoryview(a).cast("B"))
        total += n
    h = dict(header)
    h["tensors"] = metas
    hb = _JSON(h).encode()
    head = PREFIX.pack(MAGIC, len(hb), total) + hb
    if total <= INLINE_SEND_BYTES:
        return [b"".join([head, *bufs])]
    return [head] + bufs


def send_parts(sock: socket.socket, parts, stall_s: float = SEND_STALL_S) -> int:
    """Send every part; give up (TimeoutError) if the peer takes no bytes for ``stall_s``. The socket
    stays in blocking mode (its reader may be blocked in recv): each send is non-blocking by flag."""
    sent = 0
    flag = getattr(socket, "MSG_DONTWAIT", 0)
    for part in parts:
        mv = memoryview(part).cast("B") if not isinstance(part, memoryview) else part
        if mv.format != "B":
            mv = mv.cast("B")
        while len(mv):
            try:
                n = sock.send(mv, flag) if flag else sock.send(mv)
            except (BlockingIOError, InterruptedError):
                n = 0
            if n:
                mv = mv[n:]
                sent += n
                continue
            _, w, _ = select.select([], [sock], [], stall_s)
            if not w:
                raise TimeoutError(f"the peer took no data for {stall_s:g} s")
    return sent


def _recv_into(sock: socket.socket, view: memoryview, started: bool, timeout_s: float, progress=None) -> None:
    """Fill ``view``. Before the frame started, wait as long as it takes (EOF there is a clean close);
    once started, each chunk must arrive within ``timeout_s`` and EOF is a truncated frame."""
    got, n = 0, len(view)
    flag = getattr(socket, "MSG_DONTWAIT", 0)
    while got < n:
        if not started and got == 0:
            k = sock.recv_into(view[got:], n - got)
        else:
            try:
                k = sock.recv_into(view[got:], n - got, flag) if flag else sock.recv_into(view[got:], n - got)
            except (BlockingIOError, InterruptedError):
                r, _, _ = select.select([sock], [], [], timeout_s)
                if not r:
                    raise ProtocolViolation("truncated", f"truncated frame: no data for {timeout_s:g} s in the "
                                            f"middle of a frame ({got} of {n} bytes of a part)") from None
                continue
        if k == 0:
            if not started and got == 0:
                raise PeerClosed()
            raise ProtocolViolation("truncated", f"truncated frame: the connection closed after {got} of {n} bytes "
                                    "of a part")
        got += k
        started = True
        if progress is not None:
            progress()


def check_tensor_meta(meta, max_bytes: int) -> tuple[str, str, tuple, int]:
    if not isinstance(meta, dict):
        raise ProtocolViolation("malformed", "a tensor entry of the header is not an object")
    name, dtype, shape, nbytes = meta.get("name"), meta.get("dtype"), meta.get("shape"), meta.get("nbytes")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
        raise ProtocolViolation("malformed", f"tensor name must be a string of 1..{MAX_NAME} characters")
    if dtype not in _ITEMSIZE:
        raise ProtocolViolation("malformed", f"tensor {name}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if (not isinstance(shape, list) or len(shape) > MAX_RANK
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise ProtocolViolation("malformed", f"tensor {name}: shape must be a list of at most {MAX_RANK} "
                                "non-negative integers")
    if not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes < 0:
        raise ProtocolViolation("malformed", f"tensor {name}: nbytes must be a non-negative integer")
    if nbytes > max_bytes:
        raise ProtocolViolation("too_large", f"tensor {name}: {nbytes} bytes exceeds the bound of {max_bytes}")
    size = _ITEMSIZE[dtype]
    for d in shape:
        size *= d
        if size > max_bytes:
            raise ProtocolViolation("too_large", f"tensor {name}: shape {shape} exceeds the bound of {max_bytes} "
                                    "bytes")
    if size != nbytes:
        raise ProtocolViolation("malformed", f"tensor {name}: nbytes {nbytes} != the {size} bytes of {shape} x "
                                f"{dtype}")
    return name, dtype, tuple(shape), nbytes


def _check_prefix(magic: bytes, hlen: int, plen: int, max_header: int, max_payload: int) -> None:
    if magic != MAGIC:
        raise ProtocolViolation("malformed", f"not an llsim HIL frame (magic {bytes(magic)!r}, expected {MAGIC!r})")
    if hlen == 0 or hlen > max_header:
        raise ProtocolViolation("too_large" if hlen else "malformed",
                                f"header length {hlen} is outside the bound 1..{max_header}")
    if plen > max_payload:
        raise ProtocolViolation("too_large", f"payload length {plen} exceeds the bound of {max_payload} bytes")


def _parse_header(hb, plen: int, max_payload: int) -> tuple[dict, list]:
    try:
        header = json.loads(bytes(hb).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ProtocolViolation("malformed", "the frame header is not UTF-8 JSON") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise ProtocolViolation("malformed", "the frame header must be a JSON object with a string 'type'")
    metas = header.get("tensors", [])
    if not isinstance(metas, list) or len(metas) > MAX_TENSORS:
        raise ProtocolViolation("malformed", f"'tensors' must be a list of at most {MAX_TENSORS} entries")
    checked = [check_tensor_meta(m, max_payload) for m in metas]
    if len({c[0] for c in checked}) != len(checked):
        raise ProtocolViolation("malformed", "a tensor name appears twice in one frame")
    total = sum(c[3] for c in checked)
    if total != plen:
        raise ProtocolViolation("malformed", f"payload length {plen} != the tensors' {total} bytes")
    return header, checked


def read_frame(sock: socket.socket, max_header: int = MAX_HEADER, max_payload: int = DEFAULT_MAX_PAYLOAD,
               timeout_s: float = FRAME_TIMEOUT_S, progress=None) -> tuple[dict, list]:
    """One frame: (header, [(name, array), ...]), reading exactly its bytes. Raises PeerClosed between
    frames, ProtocolViolation for anything malformed or over a bound (checked before any allocation).
    ``progress()`` is called as bytes arrive (a large frame still in transit is a sign of life).
    Connections use the buffered :class:`FrameReader`; this one suits a socket read frame by frame."""
    pre = bytearray(PREFIX.size)
    _recv_into(sock, memoryview(pre), False, timeout_s)
    magic, hlen, plen = PREFIX.unpack(pre)
    _check_prefix(magic, hlen, plen, max_header, max_payload)
    hb = bytearray(hlen)
    _recv_into(sock, memoryview(hb), True, timeout_s)
    header, checked = _parse_header(hb, plen, max_payload)
    out = []
    for name, dtype, shape, nbytes in checked:
        buf = np.empty(nbytes, dtype=np.uint8)
        if nbytes:
            _recv_into(sock, memoryview(buf), True, timeout_s, progress)
        out.append((name, buf.view(np.dtype(dtype)).reshape(shape)))
    return header, out


class FrameReader:
    """Frames from one socket through a buffer: a small frame (and whatever follows it) usually costs a
    single recv. Same bounds, checks and errors as :func:`read_frame`; tensor bytes beyond what the
    buffer holds are received straight into their arrays."""

    CHUNK = 1 << 16

    def __init__(self, sock: socket.socket, timeout_s: float = FRAME_TIMEOUT_S, progress=None):
        self.sock, self.timeout_s, self.progress = sock, timeout_s, progress
        self.buf = bytearray(self.CHUNK)
        self.start = self.end = 0
        self._flag = getattr(socket, "MSG_DONTWAIT", 0)

    def _recv(self, started: bool) -> None:
        """At least one more byte into the buffer (waiting forever at a frame boundary)."""
        if self.end == len(self.buf):
            n = self.end - self.start
            self.buf[:n] = self.buf[self.start:self.end]
            self.start, self.end = 0, n
        while True:
            with memoryview(self.buf) as mv:
                if not started:
                    k = self.sock.recv_into(mv[self.end:])
                else:
                    try:
                        k = self.sock.recv_into(mv[self.end:], 0, self._flag) if self._flag else \
                            self.sock.recv_into(mv[self.end:])
                    except (BlockingIOError, InterruptedError):
                        r, _, _ = select.select([self.sock], [], [], self.timeout_s)
                        if not r:
                            raise ProtocolViolation("truncated", f"truncated frame: no data for {self.timeout_s:g} s "
                                                    "in the middle of a frame") from None
                        continue
            if k == 0:
                if not started:
                    raise PeerClosed()
                raise ProtocolViolation("truncated", "truncated frame: the connection closed in the middle of a "
                                        "frame")
            self.end += k
            if self.progress is not None:
                self.progress()
            return

    def _need(self, n: int) -> None:
        """``n`` bytes buffered from ``start`` (n is bounded by the caller)."""
        if self.start + n > len(self.buf):  # make room: move what is left to the front, grow if need be
            left = self.end - self.start
            self.buf[:left] = self.buf[self.start:self.end]
            self.start, self.end = 0, left
            if n > len(self.buf):
                self.buf.extend(bytes(n - len(self.buf)))
        while self.end - self.start < n:
            self._recv(True)

    def read(self, max_header: int = MAX_HEADER, max_payload: int = DEFAULT_MAX_PAYLOAD) -> tuple[dict, list]:
        if self.end == self.start:
            self.start = self.end = 0
            self._recv(False)
        self._need(PREFIX.size)
        magic, hlen, plen = PREFIX.unpack_from(self.buf, self.start)
        _check_prefix(magic, hlen, plen, max_header, max_payload)
        self.start += PREFIX.size
        self._need(hlen)
        header, checked = _parse_header(self.buf[self.start:self.start + hlen], plen, max_payload)
        self.start += hlen
        out = []
        for name, dtype, shape, nbytes in checked:
            arr = np.empty(nbytes, dtype=np.uint8)
            take = min(nbytes, self.end - self.start)
            if take:
                with memoryview(self.buf) as mv:
                    memoryview(arr)[:take] = mv[self.start:self.start + take]
                self.start += take
            if take < nbytes:
                _recv_into(self.sock, memoryview(arr)[take:], True, self.timeout_s, self.progress)
            out.append((name, arr.view(np.dtype(dtype)).reshape(shape)))
        if self.start == self.end:
            self.start = self.end = 0
        if len(self.buf) > 4 * self.CHUNK and self.end - self.start < self.CHUNK:  # a large header passed
            left = self.end - self.start
            self.buf = bytearray(self.buf[self.start:self.end]) + bytearray(self.CHUNK - left)
            self.start, self.end = 0, left
        return header, out


def auth_mac(secret: bytes, who: bytes, nonce_client: str, nonce_worker: str) -> str:
    return hmac.new(secret, AUTH_LABEL + b" " + who + b" " + nonce_client.encode() + b" " + nonce_worker.encode(),
                    hashlib.sha256).hexdigest()


def read_secret(path: str, allow_shared: bool = False) -> bytes:
    """The run's secret from a file that only its owner can read (mode 0600)."""
    st = os.stat(path)
    if st.st_mode & 0o077 and not allow_shared:
        raise PermissionError(f"secret file {path} is readable by others (mode {st.st_mode & 0o777:o}): "
                              f"chmod 600 {path}")
    data = open(path, "rb").read().strip()
    if len(data) < 16:
        raise ValueError(f"secret file {path} holds {len(data)} bytes: at least 16 are needed")
    if len(data) > 4096:
        raise ValueError(f"secret file {path} holds {len(data)} bytes: at most 4096")
    return data


# ---- the execution core (also used in-process by the coordinator for simulated nodes) ----------
class JobError(Exception):
    """A well-formed request that cannot be served (answered with a typed error; the connection stays)."""

    def __init__(self, code: str, message: str, tb: str | None = None):
        super().__init__(message)
        self.code, self.message, self.tb = code, message, tb


def _ort():
    import onnxruntime as ort
    return ort


class Segment:
    """One loaded segment: its onnxruntime session and its input/output signature."""

    def __init__(self, key, path: str, sha256: str, threads: int = 1, state=(), optimize: bool = True,
                 spin: bool | None = None, ranks: dict | None = None, profile: bool = False):
        ort = _ort()
        t0 = time.perf_counter()
        h, size = hashlib.sha256(), 0
        try:
            with open(host_path(path), "rb") as f:  # in chunks: a phone should not hold a large segment twice
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
                    size += len(chunk)
        except OSError as e:
            raise JobError("not_found", f"segment {key}: cannot read {path}: {e.strerror or e}") from None
        digest = h.hexdigest()
        if not isinstance(sha256, str) or not hmac.compare_digest(digest, sha256.lower()):
            raise JobError("sha256_mismatch", f"segment {key}: {path} has sha256 {digest}, expected {sha256}")
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        if not optimize:
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if spin is not None:
            so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.profiling = bool(profile)  # onnxruntime's per-node profiler (for ``bench``; one use per load)
        if self.profiling:
            import tempfile
            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(tempfile.gettempdir(),
                                                  f"llsim-prof-{os.getpid()}-{_secrets.token_hex(4)}")
        try:
            self.sess = ort.InferenceSession(host_path(path), so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise JobError("bad_model", f"segment {key}: onnxruntime cannot load {path}: {str(e)[:500]}",
                           traceback.format_exc()) from None
        self.key, self.path, self.sha256, self.threads = key, path, digest, int(threads)
        self.last_run_s = float("inf")  # unknown until it ran once: the first run is on the executor
        self.file_bytes = size
        self.inputs = {}
        for i in self.sess.get_inputs():
            self.inputs[i.name] = (ORT_TYPES.get(i.type, i.type),
                                   [d if isinstance(d, int) else None for d in (i.shape or [])])
        self.outputs = [o.name for o in self.sess.get_outputs()]
        self.output_set = frozenset(self.outputs)
        # ranks the coordinator declares (segment files may leave input shapes open): checked on receipt
        for name, r in (ranks or {}).items():
            if name not in self.inputs or not isinstance(r, int) or not 0 <= r <= MAX_RANK:
                raise JobError("bad_request", f"segment {key}: 'ranks' names {name!r}, not an input of rank "
                               f"0..{MAX_RANK}")
            dtype, shape = self.inputs[name]
            if not shape:
                self.inputs[name] = (dtype, [None] * r)
            elif len(shape) != r:
                raise JobError("bad_request", f"segment {key}: input {name} has rank {len(shape)} in the file, "
                               f"{r} declared")
        self.state = {}
        for pair in state:
            if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                    or pair[0] not in self.inputs or pair[1] not in self.outputs):
                raise JobError("bad_state", f"segment {key}: state pair {pair!r} is not [an input, an output] "
                               "of the segment")
            self.state[pair[0]] = pair[1]
        self.load_s = time.perf_counter() - t0

    def describe(self) -> dict:
        return {"segment": self.key, "sha256": self.sha256, "bytes": self.file_bytes, "threads": self.threads,
                "load_s": self.load_s, "inputs": {k: {"dtype": d, "shape": s} for k, (d, s) in self.inputs.items()},
                "outputs": self.outputs, "state": self.state}

    def check(self, name: str, arr: np.ndarray) -> None:
        if name not in self.inputs:
            raise JobError("unknown_input", f"segment {self.key} has no input {name} (inputs: "
                           f"{', '.join(self.inputs)})")
        dtype, shape = self.inputs[name]
        if _NAME.get(arr.dtype) != dtype:
            raise JobError("bad_input", f"segment {self.key}: input {name} must be {dtype}, got {arr.dtype.name}")
        if shape is not None and shape != [] and (len(shape) != arr.ndim
                                                  or any(e is not None and e != g for e, g in zip(shape, arr.shape))):
            want = "[" + ", ".join("?" if e is None else str(e) for e in shape) + "]"
            raise JobError("bad_input", f"segment {self.key}: input {name} must have shape {want}, got "
                           f"{list(arr.shape)}")


class Job:
    __slots__ = ("id", "tag", "key", "seg", "owner", "given", "expect", "forward", "reply", "reduce", "keep_state",
                 "t_submit", "t_ready", "deadline", "bytes_in", "cancelled")

    def __init__(self, id, tag, key, seg, owner, given, expect, forward, reply, reduce, keep_state, t_submit,
                 deadline, bytes_in):
        self.id, self.tag, self.key, self.seg, self.owner = id, tag, key, seg, owner
        self.given, self.expect, self.forward, self.reply, self.reduce = given, expect, forward, reply, reduce
        self.keep_state, self.t_submit, self.t_ready, self.deadline = keep_state, t_submit, None, deadline
        self.bytes_in, self.cancelled = bytes_in, False


_EVICT: list = []


CACHE_SYSFS = "/sys/devices/system/cpu/cpu0/cache"


def cache_bytes() -> int:
    """This device's largest CPU cache (sysfs; 32 MiB where unreadable). The twin of
    llsim.device.executor._cache_bytes (this file imports nothing of llsim: it runs alone on a phone)."""
    best = 0
    try:
        entries = os.listdir(CACHE_SYSFS)
    except OSError:
        entries = []
    for d in entries:  # index0..N, and files such as uevent that have no size: skipped, not fatal
        try:
            with open(os.path.join(CACHE_SYSFS, d, "size")) as f:
                txt = f.read().strip()
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(txt[-1:], 1)
            best = max(best, int(txt.rstrip("KMG")) * mult)
        except (OSError, ValueError):
            continue
    return best or (32 << 20)


def evict_buffer() -> np.ndarray:
    if not _EVICT:
        _EVICT.append(np.ones(2 * cache_bytes() // 8, dtype=np.float64))
    return _EVICT[0]


def reduce_argmax_last(a: np.ndarray) -> np.ndarray:
    """Greedy token ids: argmax over the last axis at the last position of the one before it."""
    if a.ndim >= 3:
        a = a[..., -1, :]
    return np.argmax(a, axis=-1).astype(np.int64)


def read_rss() -> tuple[int | None, str]:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"), "rss"
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) * (1 if sys.platform == "darwin" else 1024), "peak_rss"
    except Exception:
        return None, "unavailable"


#: llsim's stand-in phone (llsim/adb/fakephone.py) runs this file as a program of this host: it sets
#: LLSIM_PHONE_ROOT (its sandbox: absolute paths in ``load`` messages are the phone's) and LLSIM_SYSFS_ROOT
#: (the /sys files Termux's uid may read there). Unset on a real phone and for local workers.
PHONE_ROOT = os.environ.get("LLSIM_PHONE_ROOT", "")
SYSFS_ROOT = os.environ.get("LLSIM_SYSFS_ROOT", "")


def host_path(path: str) -> str:
    """Where a path named in a message is on this machine (itself, except on the stand-in phone)."""
    return PHONE_ROOT + path if PHONE_ROOT and path.startswith("/") else path


def read_battery(root: str = SYSFS_ROOT + "/sys/class/power_supply") -> tuple[float | None, bool | None]:
    """(level %, charging) of the first battery under ``root`` where readable (often denied to apps on
    phones, absent on most hosts: then (None, None))."""
    try:
        supplies = sorted(os.listdir(root))
    except OSError:
        return None, None
    for name in supplies:
        d = os.path.join(root, name)
        try:
            with open(os.path.join(d, "type")) as f:
                if f.read().strip() != "Battery":
                    continue
            with open(os.path.join(d, "capacity")) as f:
                level = float(f.read().strip())
        except (OSError, ValueError):
            continue
        try:
            with open(os.path.join(d, "status")) as f:
                charging = f.read().strip() in ("Charging", "Full")
        except OSError:
            charging = None
        return level, charging
    return None, None


def read_temperatures(root: str = SYSFS_ROOT + "/sys/class/thermal") -> dict[str, float]:
    """Degrees C per thermal zone type, where readable (often denied on phones: then empty)."""
    out: dict[str, float] = {}
    try:
        zones = sorted(z for z in os.listdir(root) if z.startswith("thermal_zone"))
    except OSError:
        return out
    for z in zones:
        try:
            with open(os.path.join(root, z, "temp")) as f:
                v = float(f.read().strip())
        except (OSError, ValueError):
            continue
        try:
            with open(os.path.join(root, z, "type")) as f:
                name = f.read().strip() or z
        except OSError:
            name = z
        if name in out:
            name = f"{name}/{z}"
        out[name] = v / 1000.0 if abs(v) > 1000 else v
    return out


class Core:
    """Segments, per-request KV state, the jobs waiting for their inputs, and the one executor thread.

    ``emit_done(job, reply_tensors, info)`` and ``emit_error(owner, id, code, message, tb)`` deliver
    results; ``forward(job, target, segment, tensors)`` sends outputs to another worker (None: no
    forwarding here). Thread-safe."""

    def __init__(self, emit_done, emit_error, forward=None, self_address: str | None = None,
                 pending_timeout_s: float = 120.0, max_buffer_bytes: int = 4 << 30, max_jobs: int = 100_000,
                 log=None):
        self.emit_done, self.emit_error, self.forward = emit_done, emit_error, forward
        self.self_address = self_address
        self.pending_timeout_s = pending_timeout_s
        self.max_buffer_bytes, self.max_jobs = max_buffer_bytes, max_jobs
        self.log = log or (lambda m: None)
        self.lock = threading.RLock()
        self.segments: dict = {}
        self.state: dict = {}  # (request, segment) -> {input name: array}
        self.pending: dict = {}  # (request, step, segment) -> Job
        self.buffers: dict = {}  # (request, step, segment) -> [tensors dict, first arrival, bytes]
        self.buffered_bytes = 0
        self.live: dict = {}  # job id (owner-scoped) -> Job, until finished
        self.ready: queue.Queue = queue.Queue()
        self.outbox: queue.Queue = queue.Queue()
        self.busy = None  # key of the running job
        self.runs = 0
        self.exec_lock = threading.Lock()  # one session.run at a time, whichever thread runs it
        self.queued = 0  # jobs in self.ready
        self.running = False
        self.stall_after = None  # fault injection (tests): the executor wedges after this many runs
        self._stop = False
        self._jid = 0
        threading.Thread(target=self._executor, name="llsim-executor", daemon=True).start()
        threading.Thread(target=self._sender, name="llsim-outbox", daemon=True).start()

    # -- segments
    def load(self, specs: list) -> list[dict]:
        out = []
        for spec in specs:
            if not isinstance(spec, dict) or "segment" not in spec or not isinstance(spec.get("path"), str):
                raise JobError("bad_request", "each segment to load needs 'segment', 'path' and 'sha256'")
            key = spec["segment"]
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise JobError("bad_request", "a segment id must be a string or an integer")
            threads = spec.get("threads", 1)
            if not isinstance(threads, int) or not 1 <= threads <= 256:
                raise JobError("bad_request", f"segment {key}: threads must be an integer 1..256")
            ranks = spec.get("ranks") or {}
            if not isinstance(ranks, dict):
                raise JobError("bad_request", f"segment {key}: 'ranks' must map input names to ranks")
            seg = Segment(key, spec["path"], spec.get("sha256"), threads, spec.get("state", []) or [],
                          bool(spec.get("optimize", True)), spec.get("spin"), ranks, bool(spec.get("profile", False)))
            with self.lock:
                if key in self.segments:  # reloaded: state kept for the old session is stale
                    for sk in [sk for sk in self.state if sk[1] == key]:
                        del self.state[sk]
                self.segments[key] = seg
            out.append(seg.describe())
        return out

    def unload(self, keys) -> list:
        if not isinstance(keys, list):
            raise JobError("bad_request", "'segments' must be a list of segment ids")
        done = []
        with self.lock:
            for k in keys:
                if self.segments.pop(k, None) is not None:
                    done.append(k)
                for sk in [sk for sk in self.state if sk[1] == k]:
                    del self.state[sk]
        return done

    def state_bytes(self) -> int:
        with self.lock:
            return int(sum(a.nbytes for st in self.state.values() for a in st.values()))

    def bench(self, msg: dict, tensors: list) -> dict:
        """Time a loaded segment on the inputs sent (the profiler's executor on a device): ``warmup`` runs,
        then ``rounds`` x ``runs`` timed runs (``perf_counter`` around ``session.run``), each run preceded,
        with ``evict``, by a read of a buffer twice this device's largest CPU cache (weights then come
        from DRAM, as for a segment of hundreds of MB). A segment loaded with ``profile: true`` also
        gives onnxruntime's kernel time of every node in every run (its profiler's JSON, parsed here and
        deleted); its profiler then stops, so profile with a fresh load. Holds the executor meanwhile."""
        key = msg.get("segment")
        with self.lock:
            seg = self.segments.get(key)
        if seg is None:
            raise JobError("unknown_segment", f"no segment {key!r} is loaded")
        runs, warmup, rounds = msg.get("runs", 10), msg.get("warmup", 3), msg.get("rounds", 1)
        for name, v, hi in (("runs", runs, 10000), ("warmup", warmup, 1000), ("rounds", rounds, 100)):
            if not isinstance(v, int) or isinstance(v, bool) or not (0 if name == "warmup" else 1) <= v <= hi:
                raise JobError("bad_request", f"'{name}' must be an integer up to {hi}")
        feeds = {}
        for name, arr in tensors:
            seg.check(name, arr)
            feeds[name] = arr
        missing = sorted(set(seg.inputs) - set(feeds))
        if missing:
            raise JobError("missing_input", f"segment {key}: no value for input(s) {', '.join(missing)}")
        evict = evict_buffer() if msg.get("evict", True) else None
        import gc
        gc.collect()  # no garbage collection during the timed runs
        times = []
        try:
            with self.exec_lock:
                for i in range(warmup + rounds * runs):
                    if evict is not None:
                        evict.sum()  # a read-only sweep: evicts without dirty lines to write back
                    t0 = time.perf_counter()
                    seg.sess.run(None, feeds)
                    if i >= warmup:
                        times.append(time.perf_counter() - t0)
        except Exception as e:
            raise JobError("run_failed", f"segment {key}: {str(e)[:500]}", traceback.format_exc()) from None
        out = {"segment": key, "times_s": times, "warmup": warmup, "runs": runs, "rounds": rounds}
        if seg.profiling:
            path = seg.sess.end_profiling()
            seg.profiling = False
            per: dict = {}
            try:
                with open(path) as f:
                    for ev in json.load(f):
                        name = ev.get("name", "")
                        if ev.get("cat") == "Node" and name.endswith("_kernel_time"):
                            per.setdefault(name[: -len("_kernel_time")], []).append(ev.get("dur", 0) * 1e-6)
            except (OSError, ValueError) as e:
                raise JobError("run_failed", f"segment {key}: onnxruntime's profile could not be read: {e}") from None
            finally:
                try:
                    os.unlink(path)
                except OSError:
                    pass
            out["nodes"] = per  # node name -> kernel seconds per run, warm-up runs first
        return out

    # -- jobs
    def submit(self, owner, msg: dict, tensors: list, t_recv: float | None = None) -> None:
        """Register a stage to run once its inputs are all here. Raises JobError for a wrong request."""
        t_submit = t_recv if t_recv is not None else time.perf_counter()
        request, step, key = msg.get("request"), msg.get("step"), msg.get("segment")
        for name, v in (("request", request), ("segment", key)):
            if not isinstance(v, (str, int)) or isinstance(v, bool):
                raise JobError("bad_request", f"'{name}' must be a string or an integer")
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise JobError("bad_request", "'step' must be a non-negative integer")
        with self.lock:
            seg = self.segments.get(key)
        if seg is None:
            raise JobError("unknown_segment", f"segment {key!r} is not loaded on this worker (loaded: "
                           f"{', '.join(map(repr, self.segments)) or 'none'})")
        given = {}
        for name, arr in tensors:
            seg.check(name, arr)
            given[name] = arr
        expect = msg.get("expect", [])
        if not isinstance(expect, list) or not all(isinstance(x, str) for x in expect):
            raise JobError("bad_request", "'expect' must be a list of input names")
        for x in expect:
            if x not in seg.inputs:
                raise JobError("unknown_input", f"segment {key} has no input {x} to expect")
            if x in given:
                raise JobError("bad_request", f"input {x} is both sent and expected")
        outs = seg.output_set
        reply = msg.get("reply", [])
        if not isinstance(reply, list) or not all(isinstance(x, str) and x in outs for x in reply):
            raise JobError("unknown_output", f"'reply' must list outputs of segment {key} ({', '.join(seg.outputs)})")
        reduce = msg.get("reduce") or {}
        if not isinstance(reduce, dict) or not all(k in reply and v in REDUCTIONS for k, v in reduce.items()):
            raise JobError("bad_request", f"'reduce' maps replied outputs to one of {', '.join(REDUCTIONS)}")
        forward = msg.get("forward", [])
        if not isinstance(forward, list):
            raise JobError("bad_request", "'forward' must be a list")
        for f in forward:
            if (not isinstance(f, dict) or not isinstance(f.get("to"), str)
                    or not isinstance(f.get("tensors"), list) or "segment" not in f):
                raise JobError("bad_request", "each forward needs 'to' (HOST:PORT), 'segment' and 'tensors'")
            bad = [x for x in f["tensors"] if x not in outs]
            if bad:
                raise JobError("unknown_output", f"segment {key} has no output {bad[0]} to forward")
            if self.forward is None and f["to"] != self.self_address:
                raise JobError("bad_request", "this executor does not forward to other workers")
        keep_state = bool(msg.get("keep_state", True))
        state_key = (request, key)
        with self.lock:
            resident = self.state.get(state_key, {})
            missing = [x for x in seg.inputs if x not in given and x not in expect
                       and not (x in seg.state and x in resident)]
        if missing:
            st = [x for x in missing if x in seg.state]
            if st:
                raise JobError("no_state", f"no KV state {st[0]} for request {request!r} on segment {key}: it was "
                               "dropped or never prefilled (send the empty past tensors to start one)")
            raise JobError("missing_input", f"segment {key}: input {missing[0]} is neither sent nor expected")
        timeout = msg.get("timeout_s", self.pending_timeout_s)
        if not isinstance(timeout, (int, float)) or not 0 < timeout <= 86400:
            raise JobError("bad_request", "'timeout_s' must be a number of seconds in (0, 86400]")
        jkey = (request, step, key)
        with self.lock:
            if jkey in self.pending:
                raise JobError("duplicate", f"request {request!r} step {step} segment {key} is already submitted")
            if len(self.live) >= self.max_jobs:
                raise JobError("busy", f"{self.max_jobs} jobs are waiting already")
            self._jid += 1
            job = Job(msg.get("id"), self._jid, jkey, seg, owner, given, set(expect), forward, reply, reduce,
                      keep_state, t_submit, t_submit + float(timeout), sum(int(a.nbytes) for a in given.values()))
            buf = self.buffers.pop(jkey, None)
            if buf is not None:
                self.buffered_bytes -= buf[2]
                stray = [name for name in buf[0] if name not in job.expect]
                if stray:
                    raise JobError("unexpected_input", f"input {stray[0]} of request {request!r} step {step} "
                                   f"segment {key} arrived but was not expected")
                for name, arr in buf[0].items():
                    job.given[name] = arr
                    job.expect.discard(name)
                    job.bytes_in += int(arr.nbytes)
            self.live[job.tag] = job
            if job.expect:
                self.pending[jkey] = job
                return
        self._enqueue(job)

    def feed(self, sender, msg: dict, tensors: list) -> None:
        """Inputs for a stage, from another worker or the coordinator (before or after its submit)."""
        request, step, key = msg.get("request"), msg.get("step"), msg.get("segment")
        if not isinstance(step, int) or isinstance(step, bool):
            raise JobError("bad_request", "'step' must be an integer")
        jkey = (request, step, key)
        with self.lock:
            seg = self.segments.get(key)
            if seg is None:
                raise JobError("unknown_segment", f"tensors for segment {key!r}, which is not loaded here")
            for name, arr in tensors:
                seg.check(name, arr)
            job = self.pending.get(jkey)
            if job is None:
                buf = self.buffers.setdefault(jkey, [{}, time.perf_counter(), 0])
                n = sum(int(a.nbytes) for _, a in tensors)
                if self.buffered_bytes + n > self.max_buffer_bytes:
                    raise JobError("busy", f"{self.buffered_bytes} bytes are buffered for stages not yet submitted")
                for name, arr in tensors:
                    buf[0][name] = arr
                buf[2] += n
                self.buffered_bytes += n
                return
            for name, arr in tensors:
                if name not in job.expect:
                    raise JobError("unexpected_input", f"input {name} of request {request!r} step {step} segment "
                                   f"{key} was not expected")
                job.given[name] = arr
                job.expect.discard(name)
                job.bytes_in += int(arr.nbytes)
            if job.expect:
                return
            del self.pending[jkey]
        self._enqueue(job)

    def drop(self, request) -> dict:
        """Forget a request: its KV state everywhere and the stages waiting for it (answered 'dropped')."""
        cancelled = []
        with self.lock:
            freed = 0
            for sk in [sk for sk in self.state if sk[0] == request]:
                freed += sum(a.nbytes for a in self.state.pop(sk).values())
            for jk in [jk for jk in self.pending if jk[0] == request]:
                job = self.pending.pop(jk)
                self.live.pop(job.tag, None)
                cancelled.append(job)
            for jk in [jk for jk in self.buffers if jk[0] == request]:
                self.buffered_bytes -= self.buffers.pop(jk)[2]
            for job in self.live.values():  # queued or running: answered 'dropped', state not kept
                if job.key[0] == request:
                    job.cancelled = True
        for job in cancelled:
            self.emit_error(job.owner, job.id, "dropped", f"request {request!r} was dropped", None)
        return {"state_bytes_freed": int(freed), "jobs_cancelled": len(cancelled)}

    def sweep(self, now: float | None = None) -> None:
        """Stages whose inputs did not all arrive in time: answered 'inputs_timeout'."""
        now = time.perf_counter() if now is None else now
        expired = []
        with self.lock:
            for jk, job in list(self.pending.items()):
                if now > job.deadline:
                    del self.pending[jk]
                    self.live.pop(job.tag, None)
                    expired.append(job)
            for jk, buf in list(self.buffers.items()):
                if now - buf[1] > self.pending_timeout_s:
                    self.buffered_bytes -= buf[2]
                    del self.buffers[jk]
        for job in expired:
            self.emit_error(job.owner, job.id, "inputs_timeout",
                            f"request {job.key[0]!r} step {job.key[1]} segment {job.key[2]}: inputs "
                            f"{', '.join(sorted(job.expect))} did not arrive within "
                            f"{job.deadline - job.t_submit:g} s", None)

    def _feeds(self, job: Job):
        """The job's session inputs (its tensors + the KV state kept for its request), or an error."""
        with self.lock:
            self.live.pop(job.tag, None)
            if job.cancelled:
                return None, ("dropped", f"request {job.key[0]!r} was dropped")
            feeds = dict(job.given)
            resident = self.state.get((job.key[0], job.seg.key), {})
            for name in job.seg.state:
                if name not in feeds:
                    if name not in resident:
                        return None, ("no_state", f"KV state of request {job.key[0]!r} on segment {job.seg.key} "
                                      "was dropped before the stage ran")
                    feeds[name] = resident[name]
            self.busy = job.key
            return feeds, None

    def _enqueue(self, job: Job) -> None:
        """A job whose inputs are all in. It runs on the executor thread, in FIFO order; except that a
        short stage (its segment's last run took < INLINE_RUN_S) finding the executor idle and nothing
        queued runs at once on the thread that completed it, which saves a thread hand-over (~50 us).
        Long stages never run on a connection thread, whose reading must go on."""
        job.t_ready = time.perf_counter()
        with self.lock:
            inline = (job.seg.last_run_s < INLINE_RUN_S and self.queued == 0 and not self.running
                      and not self._stop)
            if inline:
                self.running = True
            else:
                self.queued += 1
        if not inline:
            self.ready.put(job)
            return
        with self.exec_lock:
            try:
                self._run(job)
            finally:
                with self.lock:  # before the lock is released: the flag never says idle while a run goes on
                    self.running = False

    def _executor(self) -> None:
        while not self._stop:
            job = self.ready.get()
            if job is None:
                return
            with self.exec_lock:
                with self.lock:
                    self.queued -= 1
                    self.running = True
                try:
                    self._run(job)
                finally:
                    with self.lock:
                        self.running = False

    def _run(self, job: Job) -> None:
        feeds, err = self._feeds(job)
        if err is not None:
            self.emit_error(job.owner, job.id, err[0], err[1], None)
            return
        if self.stall_after is not None and self.runs >= self.stall_after:
            self.log("fault injection: the executor stalls (heartbeats go on)")
            threading.Event().wait()
        t_start = time.perf_counter()
        try:
            vals = job.seg.sess.run(None, feeds)
        except Exception as e:
            self.busy = None
            self.emit_error(job.owner, job.id, "run_failed", f"segment {job.seg.key}: onnxruntime failed: "
                            f"{str(e)[:1000]}", traceback.format_exc())
            return
        t_end = time.perf_counter()
        self.runs += 1
        self.busy = None
        job.seg.last_run_s = t_end - t_start
        outs = dict(zip(job.seg.outputs, vals))
        if job.seg.state and job.keep_state:
            with self.lock:
                if not job.cancelled:
                    self.state[(job.key[0], job.seg.key)] = {i: outs[o] for i, o in job.seg.state.items()}
        info = {"t_start": t_start, "t_end": t_end}
        out_bytes = sum(int(outs[x].nbytes) for f in job.forward for x in f["tensors"])
        out_bytes += sum(int(outs[x].nbytes) for x in job.reply)
        if out_bytes <= INLINE_SEND_BYTES:
            self._finish(job, outs, info)
        else:
            self.outbox.put((job, outs, info))

    def _sender(self) -> None:
        while True:
            job, outs, info = self.outbox.get()
            if job is None:
                return
            self._finish(job, outs, info)

    def _finish(self, job: Job, outs: dict, info: dict) -> None:
        bytes_out, errors = 0, []
        for f in job.forward:
            tensors = [(x, outs[x]) for x in f["tensors"]]
            try:
                if f["to"] == self.self_address or self.forward is None:
                    self.feed(None, {"request": job.key[0], "step": job.key[1], "segment": f["segment"]}, tensors)
                else:
                    self.forward(job, f["to"], f["segment"], tensors)
                    bytes_out += sum(int(a.nbytes) for _, a in tensors)
            except JobError as e:
                errors.append({"to": f["to"], "segment": f["segment"], "code": e.code, "message": e.message})
            except Exception as e:  # peer unreachable, stalled, ...
                errors.append({"to": f["to"], "segment": f["segment"], "code": "forward_failed",
                               "message": f"{type(e).__name__}: {e}"})
        t_sent = time.perf_counter()
        reply = []
        for x in job.reply:
            how = job.reduce.get(x)
            reply.append((x, reduce_argmax_last(outs[x]) if how == "argmax_last" else outs[x]))
        bytes_out += sum(int(a.nbytes) for _, a in reply)
        t0, t1 = info["t_start"], info["t_end"]
        timing = {"wait_s": job.t_ready - job.t_submit, "queue_s": t0 - job.t_ready, "compute_s": t1 - t0,
                  "send_s": t_sent - t1, "bytes_in": job.bytes_in, "bytes_out": bytes_out,
                  "forward_errors": errors, "t_submit": job.t_submit, "t_start": t0, "t_end": t1}
        self.emit_done(job, reply, timing)

    def stop(self) -> None:
        self._stop = True
        self.ready.put(None)
        self.outbox.put((None, None, None))


# ---- the server -----------------------------------------------------------------------------------
class Conn:
    def __init__(self, sock: socket.socket, addr, frame_timeout_s: float = FRAME_TIMEOUT_S):
        self.sock, self.addr = sock, addr
        self.reader = FrameReader(sock, frame_timeout_s)
        self.role = None
        self.wlock = threading.Lock()
        self.alive = True
        self.nonce = None

    def send(self, header: dict, tensors=()) -> bool:
        if not self.alive:
            return False
        parts = encode(header, tensors)
        try:
            with self.wlock:
                send_parts(self.sock, parts)
            return True
        except (OSError, TimeoutError, ValueError):
            self.close()
            return False

    def close(self) -> None:
        self.alive = False
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


class PeerLink:
    """An authenticated connection from this worker to another worker of the ring (to forward tensors)."""

    def __init__(self, address: str, secret: bytes, origin: str):
        host, port = split_address(address)
        self.sock = socket.create_connection((host, port), timeout=HANDSHAKE_S)
        tune_socket(self.sock)
        nonce = _secrets.token_hex(16)
        send_parts(self.sock, encode({"type": "hello", "protocol": PROTOCOL, "min_protocol": PROTOCOL_MIN,
                                      "role": "peer", "nonce": nonce, "client": f"llsim-worker {WORKER_VERSION}",
                                      "origin": origin, "features": features()}))
        h, _ = read_frame(self.sock, MAX_PREAUTH_HEADER, 0, HANDSHAKE_S)
        if h.get("type") != "hello":
            raise ConnectionError(f"peer {address}: {h.get('message', 'no hello')}")
        wn = h.get("nonce", "")
        send_parts(self.sock, encode({"type": "auth", "mac": auth_mac(secret, b"client", nonce, wn)}))
        h, _ = read_frame(self.sock, MAX_PREAUTH_HEADER, 0, HANDSHAKE_S)
        if h.get("type") != "welcome" or not hmac.compare_digest(str(h.get("mac", "")),
                                                                  auth_mac(secret, b"worker", nonce, wn)):
            raise ConnectionError(f"peer {address}: authentication failed ({h.get('message', 'bad proof')})")
        self.sock.settimeout(None)
        self.lock = threading.Lock()
        self.address = address
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:  # the peer answers only errors; read them so its sends never block
        try:
            while True:
                h, _ = read_frame(self.sock)
                if h.get("type") == "error":
                    sys.stderr.write(f"llsim-worker: peer {self.address}: {h.get('code')}: {h.get('message')}\n")
        except Exception:
            self.close()

    def send(self, header: dict, tensors) -> None:
        with self.lock:
            send_parts(self.sock, encode(header, tensors))

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


SOCKET_BUFFER = 4 << 20  # bytes: a stage's tensors fit the kernel's buffers, not sent in 16 KiB handfuls


def tune_socket(sock: socket.socket) -> None:
    """No Nagle delay, and send/receive buffers that hold a stage's tensors (the default 16 KiB send
    buffer makes a 36 KB frame cross in several wake-ups of both processes)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        except OSError:
            pass


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"address {address!r} must be HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


class Server:
    def __init__(self, secret: bytes, host: str = "127.0.0.1", port: int = 0, max_payload: int = DEFAULT_MAX_PAYLOAD,
                 heartbeat_s: float = 0.5, pending_timeout_s: float = 120.0, frame_timeout_s: float = FRAME_TIMEOUT_S,
                 thermal_root: str = SYSFS_ROOT + "/sys/class/thermal", name: str | None = None, log=None):
        self.secret = secret
        self.max_payload = max_payload
        self.heartbeat_s = heartbeat_s
        self.frame_timeout_s = frame_timeout_s
        self.thermal_root = thermal_root
        self.log = log or (lambda m: sys.stderr.write(f"llsim-worker {time.strftime('%H:%M:%S')} {m}\n"))
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.lsock = socket.socket(fam, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, port))
        self.lsock.listen(64)
        bound = self.lsock.getsockname()
        self.address = f"{host}:{bound[1]}" if fam == socket.AF_INET else f"[{host}]:{bound[1]}"
        self.name = name or self.address
        self.conns: set = set()
        self.controls: set = set()
        self.clock = threading.Lock()
        self.peers: dict = {}
        self.plock = threading.Lock()
        self.stopped = threading.Event()
        self.hb_seq = 0
        self.core = Core(self._emit_done, self._emit_error, self._forward, self.address, pending_timeout_s,
                         log=self.log)

    # -- lifecycle
    def serve_forever(self) -> None:
        threading.Thread(target=self._heartbeats, name="llsim-heartbeat", daemon=True).start()
        threading.Thread(target=self._accept, name="llsim-accept", daemon=True).start()
        # wake up regularly: a signal the kernel hands to another thread (e.g. a SIGTERM that waited while
        # the process was stopped) runs its Python handler only once the main thread executes again
        while not self.stopped.wait(0.2):
            pass

    def stop(self) -> None:
        self.stopped.set()
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.clock:
            conns = list(self.conns)
        for c in conns:
            c.close()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                sock, addr = self.lsock.accept()
            except OSError:
                if self.stopped.is_set():
                    return
                time.sleep(0.05)
                continue
            tune_socket(sock)
            conn = Conn(sock, addr, self.frame_timeout_s)
            with self.clock:
                if len(self.conns) >= MAX_CONNECTIONS:
                    full = True
                else:
                    full = False
                    self.conns.add(conn)
            if full:
                conn.send({"type": "error", "code": "busy", "message": f"{MAX_CONNECTIONS} connections are open"})
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), name=f"llsim-conn-{addr}", daemon=True).start()

    # -- one connection
    def _serve(self, conn: Conn) -> None:
        try:
            conn.sock.settimeout(HANDSHAKE_S)
            try:
                self._handshake(conn)
            except socket.timeout:
                raise ProtocolViolation("timeout", f"no authentication within {HANDSHAKE_S:g} s") from None
            conn.sock.settimeout(None)
            while conn.alive and not self.stopped.is_set():
                header, tensors = conn.reader.read(MAX_HEADER, self.max_payload)
                self._dispatch(conn, header, tensors, time.perf_counter())
        except PeerClosed:
            pass
        except ProtocolViolation as e:
            self.log(f"closing {conn.addr}: {e.code}: {e.message}")
            conn.send({"type": "error", "code": e.code, "message": e.message, "fatal": True})
        except (OSError, TimeoutError) as e:
            if conn.alive:
                self.log(f"connection {conn.addr} lost: {e}")
        except Exception as e:  # a bug here must not take the worker down
            self.log(f"closing {conn.addr} after an internal error: {e!r}")
            conn.send({"type": "error", "code": "internal", "message": f"{type(e).__name__}: {e}",
                       "traceback": traceback.format_exc(), "fatal": True})
        finally:
            conn.close()
            with self.clock:
                self.conns.discard(conn)
                self.controls.discard(conn)

    def _handshake(self, conn: Conn) -> None:
        h, _ = conn.reader.read(MAX_PREAUTH_HEADER, 0)
        if h["type"] != "hello":
            raise ProtocolViolation("unauthenticated", f"'{h['type']}' before hello and authentication")
        proto, lo = h.get("protocol"), h.get("min_protocol", h.get("protocol"))
        if not isinstance(proto, int) or not isinstance(lo, int) or isinstance(proto, bool):
            raise ProtocolViolation("malformed", "hello needs an integer 'protocol'")
        version = min(proto, PROTOCOL)
        if version < max(lo, PROTOCOL_MIN):
            if lo > PROTOCOL:
                msg = (f"the coordinator needs protocol >= {lo}, this worker speaks {PROTOCOL_MIN}..{PROTOCOL} "
                       f"(worker {WORKER_VERSION}): the worker is out of date, push the new worker.py")
            else:
                msg = (f"the coordinator speaks protocol <= {proto}, this worker needs >= {PROTOCOL_MIN} "
                       f"(worker {WORKER_VERSION}): the coordinator (llsim) is out of date")
            raise ProtocolViolation("version", msg)
        role = h.get("role")
        if role not in ("coordinator", "peer"):
            raise ProtocolViolation("malformed", "hello 'role' must be 'coordinator' or 'peer'")
        cn = h.get("nonce")
        if not isinstance(cn, str) or not 16 <= len(cn) <= 128:
            raise ProtocolViolation("malformed", "hello needs a 'nonce' of 16..128 characters")
        wn = _secrets.token_hex(16)
        import onnxruntime as ort
        conn.send({"type": "hello", "protocol": version, "worker": "llsim-worker", "worker_version": WORKER_VERSION,
                   "onnxruntime_version": ort.__version__, "numpy_version": np.__version__,
                   "python": platform.python_version(), "platform": f"{platform.system()} {platform.machine()}",
                   "pid": os.getpid(), "name": self.name, "address": self.address, "cpus": _cpus(),
                   "features": features(), "max_payload": self.max_payload, "nonce": wn})
        a, _ = conn.reader.read(MAX_PREAUTH_HEADER, 0)
        if a["type"] != "auth":
            raise ProtocolViolation("unauthenticated", f"'{a['type']}' before authentication")
        if not hmac.compare_digest(str(a.get("mac", "")), auth_mac(self.secret, b"client", cn, wn)):
            time.sleep(0.05)
            raise ProtocolViolation("auth", "authentication failed: the proof does not match this run's secret")
        conn.role = role
        conn.send({"type": "welcome", "mac": auth_mac(self.secret, b"worker", cn, wn)})
        if role == "coordinator":
            with self.clock:
                self.controls.add(conn)

    def _dispatch(self, conn: Conn, h: dict, tensors: list, t_recv: float) -> None:
        t = h["type"]
        mid = h.get("id")
        if mid is not None and (not isinstance(mid, (int, str)) or isinstance(mid, bool)):
            raise ProtocolViolation("malformed", "'id' must be an integer or a string")
        allowed = ("tensors", "ping") if conn.role == "peer" else (
            "configure", "load", "unload", "submit", "tensors", "drop", "peers", "ping", "status", "shutdown", "bench")
        if t not in allowed:
            raise ProtocolViolation("malformed", f"unknown message type '{t}' for a {conn.role} connection "
                                    f"(expected one of {', '.join(allowed)})")
        if t not in ("submit", "tensors", "bench") and tensors:
            raise ProtocolViolation("malformed", f"'{t}' carries no tensors")
        try:
            if t == "submit":
                self.core.submit(conn, h, tensors, t_recv)
            elif t == "tensors":
                self.core.feed(conn, h, tensors)
            elif t == "ping":
                conn.send({"type": "pong", "id": mid, "t": time.time()})
            elif t == "load":
                segs = h.get("segments")
                if not isinstance(segs, list):
                    raise JobError("bad_request", "'segments' must be a list")
                conn.send({"type": "loaded", "id": mid, "segments": self.core.load(segs)})
            elif t == "unload":
                conn.send({"type": "unloaded", "id": mid, "segments": self.core.unload(h.get("segments") or [])})
            elif t == "drop":
                conn.send({"type": "dropped", "id": mid, **self.core.drop(h.get("request"))})
            elif t == "peers":
                conn.send({"type": "peers", "id": mid, "peers": self._connect_peers(h.get("addresses"))})
            elif t == "configure":
                conn.send({"type": "configured", "id": mid, **self._configure(h)})
            elif t == "status":
                conn.send({"type": "status", "id": mid, **self._status()})
            elif t == "bench":
                conn.send({"type": "benched", "id": mid, **self.core.bench(h, tensors)})
            elif t == "shutdown":
                conn.send({"type": "bye", "id": mid})
                self.log("shutdown requested by the coordinator")
                threading.Thread(target=self.stop, daemon=True).start()
        except JobError as e:
            conn.send({"type": "error", "id": mid, "code": e.code, "message": e.message, "traceback": e.tb,
                       "fatal": False, "about": t, "request": h.get("request"), "step": h.get("step"),
                       "segment": h.get("segment")})

    def _configure(self, h: dict) -> dict:
        out = {}
        if "heartbeat_s" in h:
            v = h["heartbeat_s"]
            if not isinstance(v, (int, float)) or not 0.01 <= v <= 600:
                raise JobError("bad_request", "'heartbeat_s' must be 0.01..600 seconds")
            self.heartbeat_s = float(v)
            out["heartbeat_s"] = self.heartbeat_s
        if "pending_timeout_s" in h:
            v = h["pending_timeout_s"]
            if not isinstance(v, (int, float)) or not 0 < v <= 86400:
                raise JobError("bad_request", "'pending_timeout_s' must be a number of seconds in (0, 86400]")
            self.core.pending_timeout_s = float(v)
            out["pending_timeout_s"] = float(v)
        if h.get("cpus") is not None:
            out["cpus"] = set_affinity(h["cpus"])
        return out

    def _status(self) -> dict:
        rss, kind = read_rss()
        with self.core.lock:
            return {"segments": [s.describe() for s in self.core.segments.values()], "pending": len(self.core.pending),
                    "state_requests": len(self.core.state), "runs": self.core.runs, rss_key(kind): rss,
                    "state_bytes": int(sum(a.nbytes for st in self.core.state.values() for a in st.values())),
                    "buffered_bytes": self.core.buffered_bytes}

    # -- results
    def _emit_done(self, job: Job, reply: list, timing: dict) -> None:
        owner = job.owner
        if owner is None:
            return
        owner.send({"type": "done", "id": job.id, "request": job.key[0], "step": job.key[1],
                    "segment": job.key[2], **timing}, reply)

    def _emit_error(self, owner, mid, code: str, message: str, tb) -> None:
        if owner is not None:
            owner.send({"type": "error", "id": mid, "code": code, "message": message, "traceback": tb})

    def _forward(self, job: Job, to: str, segment, tensors: list) -> None:
        header = {"type": "tensors", "request": job.key[0], "step": job.key[1], "segment": segment,
                  "from": self.address}
        for attempt in (0, 1):
            link = self._peer(to)
            try:
                link.send(header, tensors)
                return
            except (OSError, TimeoutError):
                with self.plock:
                    if self.peers.get(to) is link:
                        del self.peers[to]
                link.close()
                if attempt:
                    raise

    def _peer(self, to: str) -> PeerLink:
        with self.plock:
            link = self.peers.get(to)
            if link is None:
                link = PeerLink(to, self.secret, self.address)
                self.peers[to] = link
            return link

    def _connect_peers(self, addresses) -> dict:
        """Open the links to the next workers of the ring now, so the first forward does not pay for it."""
        if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses) or len(addresses) > 256:
            raise JobError("bad_request", "'addresses' must be a list of HOST:PORT strings")
        out = {}
        for a in addresses:
            if a == self.address:
                out[a] = "self"
                continue
            try:
                split_address(a)
                self._peer(a)
                out[a] = "ok"
            except Exception as e:
                out[a] = f"{type(e).__name__}: {e}"
        return out

    # -- heartbeats (and the sweep of stages whose inputs never came)
    def _heartbeats(self) -> None:
        while not self.stopped.is_set():
            time.sleep(self.heartbeat_s)
            self.core.sweep()
            with self.clock:
                targets = list(self.controls)
            if not targets:
                continue
            self.hb_seq += 1
            rss, kind = read_rss()
            temps = read_temperatures(self.thermal_root)
            battery, charging = read_battery(os.path.join(os.path.dirname(self.thermal_root), "power_supply"))
            hb = {"type": "heartbeat", "seq": self.hb_seq, "t": time.time(), rss_key(kind): rss,
                  "temp_c": temps or None, "temp_max_c": max(temps.values()) if temps else None,
                  "battery_pct": battery, "charging": charging,
                  "busy": self.core.busy is not None, "queued": self.core.ready.qsize(),
                  "pending": len(self.core.pending), "state_bytes": self.core.state_bytes(), "runs": self.core.runs}
            for c in targets:
                c.send(hb)


def rss_key(kind: str) -> str:
    return "rss_bytes" if kind == "rss" else ("peak_rss_bytes" if kind == "peak_rss" else "rss_bytes")


def _cpus():
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def set_affinity(cpus) -> list | None:
    if not hasattr(os, "sched_setaffinity"):
        raise JobError("unsupported", "CPU affinity is not available on this platform")
    if not isinstance(cpus, list) or not cpus or not all(isinstance(c, int) and c >= 0 for c in cpus):
        raise JobError("bad_request", "'cpus' must be a non-empty list of CPU indices")
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as e:
        raise JobError("bad_request", f"cannot pin to CPUs {cpus}: {e.strerror}") from None
    return _cpus()


def _watch_parent(pid: int, server: Server) -> None:
    while not server.stopped.is_set():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            server.log(f"parent process {pid} is gone: exiting")
            server.stop()
            return
        except PermissionError:
            pass
        if os.getppid() == 1 and pid != 1:
            server.log(f"parent process {pid} is gone (re-parented): exiting")
            server.stop()
            return
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="llsim worker", description="llsim HIL worker: runs ONNX segments for a "
                                 "coordinator (protocol: docs/hil-protocol.md)")
    ap.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to bind (default 127.0.0.1:0, a free port)")
    ap.add_argument("--secret-file", required=True, help="file holding this run's secret (mode 0600)")
    ap.add_argument("--cpus", help="pin the worker to these CPUs, e.g. 0 or 0,1 (where the OS allows)")
    ap.add_argument("--max-payload-mb", type=float, default=DEFAULT_MAX_PAYLOAD / 2**20,
                    help="largest frame payload accepted (MiB)")
    ap.add_argument("--heartbeat-s", type=float, default=0.5, help="heartbeat interval until a coordinator sets one")
    ap.add_argument("--pending-timeout-s", type=float, default=120.0,
                    help="how long a stage waits for its inputs before it is answered inputs_timeout")
    ap.add_argument("--frame-timeout-s", type=float, default=FRAME_TIMEOUT_S,
                    help="a started frame must make progress within this long")
    ap.add_argument("--parent-pid", type=int, help="exit when this process is gone (set by llsim's launcher)")
    ap.add_argument("--name", help="name shown in hello and logs")
    ap.add_argument("--thermal-root", default=SYSFS_ROOT + "/sys/class/thermal", help=argparse.SUPPRESS)
    ap.add_argument("--fault-stall-after", type=int, help=argparse.SUPPRESS)  # tests: wedge after N runs
    ap.add_argument("--allow-shared-secret-file", action="store_true",
                    help="accept a secret file readable by others (e.g. pushed by adb to a phone)")
    ap.add_argument("--version", action="version", version=f"llsim-worker {WORKER_VERSION} (protocol {PROTOCOL})")
    args = ap.parse_args(argv)

    def fail(msg: str) -> int:
        sys.stderr.write(f"llsim worker: error: {msg}\n")
        return 2

    try:
        secret = read_secret(args.secret_file, args.allow_shared_secret_file)
    except FileNotFoundError:
        return fail(f"secret file {args.secret_file} does not exist")
    except (OSError, ValueError) as e:
        return fail(str(e))
    try:
        host, port = split_address(args.listen)
    except ValueError as e:
        return fail(f"--listen: {e}")
    if args.cpus:
        try:
            set_affinity([int(c) for c in args.cpus.split(",") if c.strip()])
        except (ValueError, JobError) as e:
            return fail(f"--cpus {args.cpus}: {getattr(e, 'message', e)}")
    try:
        import onnxruntime  # noqa: F401  (fail now, with a clear message, rather than at the first hello)
    except ImportError as e:
        return fail(f"onnxruntime is not importable here ({e}); on Termux: pkg install python-onnxruntime")
    try:
        server = Server(secret, host, port, int(args.max_payload_mb * 2**20), args.heartbeat_s, args.pending_timeout_s,
                        args.frame_timeout_s, args.thermal_root, args.name)
    except OSError as e:
        return fail(f"cannot listen on {args.listen}: {e.strerror or e}")
    if host not in ("127.0.0.1", "localhost", "::1"):
        server.log(f"listening on {host}: reachable from other machines (authenticated, not encrypted)")

    def on_signal(signum, frame):
        server.log(f"signal {signum}: exiting")
        server.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.parent_pid:
        threading.Thread(target=_watch_parent, args=(args.parent_pid, server), daemon=True).start()
    import onnxruntime as ort
    sys.stdout.write(json.dumps({"listening": server.address, "pid": os.getpid(), "protocol": PROTOCOL,
                                 "worker_version": WORKER_VERSION, "onnxruntime_version": ort.__version__}) + "\n")
    sys.stdout.flush()
    if args.fault_stall_after is not None:
        server.core.stall_after = args.fault_stall_after
    server.serve_forever()
    server.core.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
