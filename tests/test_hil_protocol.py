"""The HIL wire protocol: framing, handshake, authentication, bounds, and the bad-input table.

After every bad input the worker must still be alive and serving: a fresh authenticated connection
runs a real segment and returns what onnxruntime computes in this process."""
from __future__ import annotations

import ast
import json
import os
import shutil
import socket
import subprocess
import sys
import threading

import numpy as np
import onnxruntime as ort
import pytest

from hil_helpers import authed, error_then_closed, hello, prefix, raw, recv, send
from llsim.hil import worker as wire
from llsim.hil.client import WorkerClient, plan_segment_specs
from llsim.hil.errors import AuthError, BadInput, ProtocolError, SegmentLoadError, UnknownSegment, VersionError
from llsim.hil.launcher import WORKER_PY, WorkerPool, write_secret
from llsim.model.load import onnx_bundle
from llsim.model.segment import split_model


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One worker with segment 0 of tiny-gpt2 loaded as 's0'."""
    d = tmp_path_factory.mktemp("proto")
    b = onnx_bundle("tiny-gpt2", seq_len=5)
    split_model(b.om, b.cuts, b.graph, [0, 2, 5], d, b.proto)
    specs = plan_segment_specs(d, "s")
    pool = WorkerPool.start(1, heartbeat_s=0.2)
    pool.workers[0].load([specs[0]])
    sess = ort.InferenceSession(specs[0].path, providers=["CPUExecutionProvider"])
    yield pool, specs, sess
    pool.stop()


def assert_serving(served) -> None:
    """A new connection authenticates, and segment s0 computes exactly what onnxruntime computes here."""
    pool, specs, sess = served
    assert pool.processes[0].alive()
    with WorkerClient(pool.addresses[0], pool.secret, heartbeat_s=0.2) as c:
        ids = np.random.default_rng(7).integers(0, 256, (1, 6)).astype(np.int64)
        names = [o.name for o in sess.get_outputs()]
        r = c.submit("check", 0, "s0", {"input_ids": ids}, reply=names).result(timeout=10)
        for n, ref in zip(names, sess.run(names, {"input_ids": ids})):
            np.testing.assert_array_equal(r.outputs[n], ref)


# ---- framing ---------------------------------------------------------------------------------------
def test_frames_round_trip_every_dtype_and_shape():
    """Random tensors of every dtype the protocol carries, including empty and 0-d ones."""
    rng = np.random.default_rng(0)
    a, b = socket.socketpair()
    try:
        for trial in range(40):
            tensors = []
            for k in range(int(rng.integers(0, 5))):
                dt = wire.DTYPES[int(rng.integers(0, len(wire.DTYPES)))]
                shape = tuple(int(x) for x in rng.integers(0, 5, int(rng.integers(0, 4))))
                x = (rng.standard_normal(shape) * 100).astype(dt)
                tensors.append((f"t{k}/{dt}", x))
            header = {"type": "tensors", "n": trial, "text": "ünïcode"}
            t = threading.Thread(target=lambda: wire.send_parts(a, wire.encode(header, tensors)))
            t.start()
            h, got = wire.read_frame(b)
            t.join()
            assert h["n"] == trial and h["text"] == "ünïcode"
            assert [n for n, _ in got] == [n for n, _ in tensors]
            for (_, x), (_, y) in zip(tensors, got):
                assert x.dtype == y.dtype and x.shape == y.shape
                np.testing.assert_array_equal(x, y)
    finally:
        a.close()
        b.close()


def test_buffered_reader_splits_any_byte_stream_into_the_frames_sent():
    """Random frames (small, large headers, tensors larger than the buffer) sent back to back and cut at
    random places: the connection's buffered reader returns exactly the frames, in order."""
    rng = np.random.default_rng(5)
    frames = []
    for k in range(60):
        kind = k % 4
        tensors = []
        if kind == 1:
            tensors = [("big", rng.standard_normal(int(rng.integers(20_000, 60_000))).astype(np.float32))]
        elif kind == 2:
            tensors = [(f"t{i}", rng.integers(0, 9, (int(rng.integers(0, 4)), 3)).astype(np.int64)) for i in range(3)]
        header = {"type": "tensors", "k": k, "pad": "x" * (int(rng.integers(70_000, 200_000)) if kind == 3 else 3)}
        frames.append((header, tensors))
    stream = b"".join(bytes(p) for h, t in frames for p in wire.encode(h, t))
    a, b = socket.socketpair()

    def sender():
        i = 0
        while i < len(stream):
            n = int(rng.integers(1, 100_000))
            a.sendall(stream[i:i + n])
            i += n
        a.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=sender)
    t.start()
    reader = wire.FrameReader(b)
    for header, tensors in frames:
        h, got = reader.read()
        assert h["k"] == header["k"] and h["pad"] == header["pad"]
        assert [n for n, _ in got] == [n for n, _ in tensors]
        for (_, x), (_, y) in zip(tensors, got):
            np.testing.assert_array_equal(x, y)
    with pytest.raises(wire.PeerClosed):
        reader.read()
    t.join()
    a.close()
    b.close()


def test_buffered_reader_reports_a_truncated_frame():
    a, b = socket.socketpair()
    data = b"".join(bytes(p) for p in wire.encode({"type": "tensors"}, [("x", np.arange(50, dtype=np.int64))]))
    a.sendall(data[:-7])
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(wire.ProtocolViolation, match="truncated"):
        wire.FrameReader(b).read()
    a.close()
    b.close()


def test_large_tensor_frames_cross_in_parts():
    a, b = socket.socketpair()
    x = np.arange(3_000_000, dtype=np.float32)  # 12 MB: larger than the socket buffers
    t = threading.Thread(target=lambda: wire.send_parts(a, wire.encode({"type": "tensors"}, [("x", x)])))
    t.start()
    _, got = wire.read_frame(b)
    t.join()
    np.testing.assert_array_equal(got[0][1], x)
    a.close()
    b.close()


def test_encode_refuses_object_arrays():
    with pytest.raises(ValueError, match="dtype"):
        wire.encode({"type": "tensors"}, [("x", np.array(["a"], dtype=object))])


# ---- the bad-input table ---------------------------------------------------------------------------
def _random_bytes(sock, seed):
    rng = np.random.default_rng(seed)
    sock.sendall(rng.integers(0, 256, int(rng.integers(16, 3000)), dtype=np.uint8).tobytes())


def _truncated(sock):
    hb = json.dumps({"type": "hello", "protocol": 1, "role": "coordinator", "nonce": "x" * 32}).encode()
    sock.sendall(prefix(len(hb), 0) + hb[: len(hb) // 2])
    sock.shutdown(socket.SHUT_WR)


PRE_AUTH = {
    "random bytes (seed 1)": lambda s, secret: _random_bytes(s, 1),
    "random bytes (seed 2)": lambda s, secret: _random_bytes(s, 2),
    "random bytes (seed 3)": lambda s, secret: _random_bytes(s, 3),
    "HTTP request": lambda s, secret: s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    "truncated frame": lambda s, secret: _truncated(s),
    "header length 2^31 before auth": lambda s, secret: s.sendall(prefix(2**31, 0)),
    "payload length 2^40 before auth": lambda s, secret: s.sendall(prefix(10, 2**40)),
    "hello larger than the pre-auth bound": lambda s, secret: send(
        s, {"type": "hello", "protocol": 1, "role": "coordinator", "nonce": "a" * 32, "pad": "x" * 5000}),
    "submit before hello": lambda s, secret: send(s, {"type": "submit", "segment": "s0"}),
    "header not JSON": lambda s, secret: s.sendall(prefix(5, 0) + b"{{{{{"),
    "header not UTF-8": lambda s, secret: s.sendall(prefix(4, 0) + b"\xff\xfe\xfd\xfc"),
    "header a JSON list": lambda s, secret: s.sendall(prefix(2, 0) + b"[]"),
    "hello without a nonce": lambda s, secret: send(s, {"type": "hello", "protocol": 1, "role": "coordinator"}),
    "hello with an unknown role": lambda s, secret: send(s, {"type": "hello", "protocol": 1, "role": "root",
                                                             "nonce": "n" * 32}),
    "empty header": lambda s, secret: s.sendall(prefix(0, 0)),
}


@pytest.mark.parametrize("case", list(PRE_AUTH))
def test_bad_input_before_authentication_closes_that_connection(served, case):
    pool = served[0]
    s = raw(pool.addresses[0])
    PRE_AUTH[case](s, pool.secret)
    err = error_then_closed(s)
    assert err["code"] in ("malformed", "too_large", "truncated", "unauthenticated"), err
    assert err["message"]
    s.close()
    assert_serving(served)


def _after_auth(served, fn):
    pool = served[0]
    s = authed(pool.addresses[0], pool.secret)
    fn(s)
    err = error_then_closed(s)
    s.close()
    return err


def _frame(tensors: list, plen: int, body: bytes = b"", shut: bool = False):
    """A frame whose header lists ``tensors`` as given (possibly lying), payload length ``plen``."""
    def fn(s):
        hb = json.dumps({"type": "tensors", "request": "r", "step": 0, "segment": "s0", "tensors": tensors}).encode()
        s.sendall(prefix(len(hb), plen) + hb + body)
        if shut:
            s.shutdown(socket.SHUT_WR)
    return fn


def _t(name="x", dtype="int64", shape=(1,), nbytes=8):
    return {"name": name, "dtype": dtype, "shape": list(shape), "nbytes": nbytes}


AFTER_AUTH = {
    "payload length 2^40": (lambda s: s.sendall(prefix(20, 2**40) + b"x" * 20), "too_large"),
    "header length 2^31": (lambda s: s.sendall(prefix(2**31, 0)), "too_large"),
    "tensor of nbytes 2^40": (_frame([_t(dtype="uint8", shape=[2**40], nbytes=2**40)], 2**40), "too_large"),
    "shape product 2^60 with a small nbytes": (_frame([_t(dtype="float32", shape=[2**30, 2**30], nbytes=8)], 8),
                                               "too_large"),
    "nbytes that does not match the shape": (_frame([_t(dtype="float32", shape=[2], nbytes=12)], 12, b"\0" * 12),
                                             "malformed"),
    "payload length not the sum of the tensors": (_frame([_t()], 99), "malformed"),
    "unknown dtype": (_frame([_t(dtype="complex64")], 8, b"\0" * 8), "malformed"),
    "negative dimension": (_frame([_t(shape=[-1], nbytes=0)], 0), "malformed"),
    "rank 17": (_frame([_t(shape=[1] * 17)], 8, b"\0" * 8), "malformed"),
    "shape not a list": (_frame([_t(shape="big")], 8, b"\0" * 8), "malformed"),
    "the same tensor name twice": (_frame([_t(), _t()], 16, b"\0" * 16), "malformed"),
    "truncated tensor bytes": (_frame([_t(shape=[100], nbytes=800)], 800, b"\0" * 100, shut=True), "truncated"),
    "bad magic": (lambda s: s.sendall(prefix(2, 0, b"XXXX") + b"{}"), "malformed"),
    "unknown message type": (lambda s: send(s, {"type": "format_disk"}), "malformed"),
    "a second hello": (lambda s: send(s, {"type": "hello", "protocol": 1}), "malformed"),
    "id of the wrong type": (lambda s: send(s, {"type": "ping", "id": [1]}), "malformed"),
    "tensors on a ping": (lambda s: send(s, {"type": "ping"}, [("x", np.zeros(1))]), "malformed"),
}


@pytest.mark.parametrize("case", list(AFTER_AUTH))
def test_bad_frames_after_authentication_close_that_connection(served, case):
    fn, code = AFTER_AUTH[case]
    err = _after_auth(served, fn)
    assert err["code"] == code, err
    assert_serving(served)


def test_wrong_secret_is_refused_and_worker_serves_on(served):
    pool = served[0]
    with pytest.raises(AuthError, match="authentication failed"):
        WorkerClient(pool.addresses[0], b"not-the-secret-of-this-run-000000")
    assert_serving(served)


def test_an_impostor_worker_is_detected_by_the_client(served, tmp_path):
    """Authentication is mutual: a worker started with another secret cannot pass for this run's."""
    other = WorkerPool.start(1)
    try:
        with pytest.raises(AuthError):
            WorkerClient(other.addresses[0], served[0].secret)
    finally:
        other.stop()


@pytest.mark.parametrize("proto,lo,side", [(99, 99, "worker is out of date"), (0, 0, "coordinator \\(llsim\\) is out")])
def test_wrong_version_names_the_side_out_of_date(served, proto, lo, side):
    pool = served[0]
    s = raw(pool.addresses[0])
    _, h = hello(s, protocol=proto, min_protocol=lo)
    assert h["type"] == "error" and h["code"] == "version"
    assert __import__("re").search(side, h["message"]), h["message"]
    s.close()
    assert_serving(served)


def test_version_error_reaches_the_client_typed(served, monkeypatch):
    monkeypatch.setattr(wire, "PROTOCOL_MIN", 7)
    monkeypatch.setattr(wire, "PROTOCOL", 7)
    with pytest.raises(VersionError, match="out of date"):
        WorkerClient(served[0].addresses[0], served[0].secret)


def test_hello_reports_versions_and_features(served):
    c = served[0].workers[0]
    assert c.info["protocol"] == wire.PROTOCOL and c.info["worker_version"] == wire.WORKER_VERSION
    assert c.info["onnxruntime_version"] == ort.__version__ and c.info["numpy_version"] == np.__version__
    for f in ("auth-hmac-sha256", "kv-state", "forward", "heartbeat", "reduce-argmax-last"):
        assert c.has(f)


def test_unknown_segment_is_a_typed_error_and_the_connection_stays(served):
    c = served[0].workers[0]
    with pytest.raises(UnknownSegment, match="not loaded"):
        c.submit("r", 0, "no-such-segment", {"input_ids": np.zeros((1, 3), np.int64)}).result(timeout=10)
    assert c.ping() < 5
    assert_serving(served)


@pytest.mark.parametrize("arr,match", [
    (np.zeros((1, 3), np.int32), "must be int64, got int32"),
    (np.zeros((1, 3), np.float32), "must be int64, got float32"),
    (np.zeros((3,), np.int64), "must have shape"),
    (np.zeros((1, 2, 3), np.int64), "must have shape"),
])
def test_wrong_dtype_or_shape_is_a_typed_error(served, arr, match):
    c = served[0].workers[0]
    with pytest.raises(BadInput, match=match):
        c.submit("r", 0, "s0", {"input_ids": arr}).result(timeout=10)
    assert c.alive
    assert_serving(served)


@pytest.mark.parametrize("kw,match", [
    ({"inputs": {"not_an_input": np.zeros(1, np.int64)}}, "no input not_an_input"),
    ({"inputs": {}}, "neither sent nor expected"),
    ({"inputs": {"input_ids": np.zeros((1, 3), np.int64)}, "reply": ["nope"]}, "'reply' must list outputs"),
    ({"inputs": {"input_ids": np.zeros((1, 3), np.int64)}, "expect": ["input_ids"]}, "both sent and expected"),
])
def test_inconsistent_submits_are_typed_errors(served, kw, match):
    c = served[0].workers[0]
    kw = dict(kw)
    with pytest.raises(BadInput, match=match):
        c.submit("r", 0, "s0", kw.pop("inputs"), **kw).result(timeout=10)
    assert_serving(served)


def test_a_failing_run_carries_the_remote_traceback(served):
    """Token ids beyond the vocabulary make onnxruntime's Gather fail on the worker."""
    from llsim.hil.errors import RunFailed

    c = served[0].workers[0]
    with pytest.raises(RunFailed) as ei:
        c.submit("r", 0, "s0", {"input_ids": np.full((1, 3), 10**6, np.int64)}, reply=[]).result(timeout=10)
    assert "Traceback" in ei.value.remote_traceback and "run" in ei.value.remote_traceback
    assert_serving(served)


def test_bad_segment_files_are_refused(served, tmp_path):
    c = served[0].workers[0]
    spec = served[1][1]
    from dataclasses import replace

    with pytest.raises(SegmentLoadError, match="sha256"):
        c.load([replace(spec, key="bad", sha256="0" * 64)])
    with pytest.raises(SegmentLoadError, match="cannot read"):
        c.load([replace(spec, key="bad", path=str(tmp_path / "missing.onnx"))])
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not onnx at all")
    import hashlib

    with pytest.raises(SegmentLoadError, match="cannot load"):
        c.load([replace(spec, key="bad", path=str(junk), sha256=hashlib.sha256(junk.read_bytes()).hexdigest())])
    with pytest.raises(SegmentLoadError, match="state pair"):
        c.load([replace(spec, key="bad", state=(("input_ids", "nope"),))])
    assert_serving(served)


def test_a_peer_connection_may_only_send_tensors(served):
    pool = served[0]
    s = authed(pool.addresses[0], pool.secret, role="peer")
    send(s, {"type": "load", "segments": []})
    err = error_then_closed(s)
    assert err["code"] == "malformed" and "peer" in err["message"]
    assert_serving(served)


def test_mutated_frames_never_kill_the_worker(served):
    """Fuzz: single-byte mutations of a valid submit frame, each on its own authenticated connection."""
    pool = served[0]
    frame = b"".join(bytes(p) for p in wire.encode(
        {"type": "submit", "id": 1, "request": "f", "step": 0, "segment": "s0", "reply": []},
        [("input_ids", np.ones((1, 4), np.int64))]))
    rng = np.random.default_rng(3)
    for _ in range(30):
        m = bytearray(frame)
        for _ in range(int(rng.integers(1, 4))):
            m[int(rng.integers(0, len(m)))] = int(rng.integers(0, 256))
        s = authed(pool.addresses[0], pool.secret)
        try:
            s.sendall(bytes(m))
            s.shutdown(socket.SHUT_WR)  # the worker may have closed already
            while True:
                recv(s, 5)
        except (wire.PeerClosed, wire.ProtocolViolation, OSError):
            pass
        s.close()
    assert_serving(served)


def test_many_connections_at_once_are_bounded(served):
    pool = served[0]
    socks = [raw(pool.addresses[0]) for _ in range(wire.MAX_CONNECTIONS + 5)]
    refused = 0
    for s in socks[-5:]:
        try:
            h, _ = recv(s, 5)
            refused += h.get("code") == "busy"
        except (wire.PeerClosed, OSError):
            refused += 1
    for s in socks:
        s.close()
    assert refused >= 1
    import time

    time.sleep(0.3)
    assert_serving(served)


# ---- the secret and the worker file ------------------------------------------------------------------
def test_secret_is_neither_on_the_command_line_nor_in_the_environment(served):
    pool = served[0]
    pid = pool.pids[0]
    cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
    environ = open(f"/proc/{pid}/environ", "rb").read()
    assert pool.secret not in cmdline and pool.secret not in environ
    assert (os.stat(pool.secret_file).st_mode & 0o777) == 0o600
    assert (os.stat(os.path.dirname(pool.secret_file)).st_mode & 0o077) == 0


def test_worker_refuses_a_secret_file_others_can_read(tmp_path):
    path, _ = write_secret(tmp_path)
    os.chmod(path, 0o644)
    r = subprocess.run([sys.executable, str(WORKER_PY), "--secret-file", str(path)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "chmod 600" in r.stderr


def test_worker_file_imports_only_stdlib_numpy_onnxruntime():
    tree = ast.parse(WORKER_PY.read_text())
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in worker.py"
            mods.add(node.module.split(".")[0])
    foreign = {m for m in mods if m not in sys.stdlib_module_names and m not in ("numpy", "onnxruntime", "__future__")}
    assert not foreign, f"worker.py imports {foreign}"


def test_worker_file_runs_alone_outside_the_package(tmp_path):
    """Copied alone into a directory (as pushed to a phone) and started with plain python, it serves."""
    lone = tmp_path / "phone"
    lone.mkdir()
    shutil.copy(WORKER_PY, lone / "worker.py")
    secret_path, secret = write_secret(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    p = subprocess.Popen([sys.executable, "-I", str(lone / "worker.py"), "--listen", "127.0.0.1:0", "--secret-file",
                          str(secret_path)], cwd=lone, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        line = json.loads(p.stdout.readline())
        assert line["pid"] == p.pid
        with WorkerClient(line["listening"], secret) as c:
            assert c.ping() < 5 and c.info["pid"] == p.pid
    finally:
        p.terminate()
        p.wait(timeout=10)
    assert p.returncode == 0


def test_llsim_worker_command_serves(tmp_path):
    secret_path, secret = write_secret(tmp_path)
    p = subprocess.Popen([sys.executable, "-m", "llsim", "worker", "--listen", "127.0.0.1:0", "--secret-file",
                          str(secret_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = json.loads(p.stdout.readline())
        with WorkerClient(line["listening"], secret) as c:
            assert c.info["worker"] == "llsim-worker"
    finally:
        p.terminate()
        p.wait(timeout=10)


def test_listen_address_errors_are_one_line(tmp_path):
    secret_path, _ = write_secret(tmp_path)
    r = subprocess.run([sys.executable, str(WORKER_PY), "--listen", "nonsense", "--secret-file", str(secret_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "HOST:PORT" in r.stderr


def test_protocol_error_type_for_fatal_errors():
    from llsim.hil.errors import remote_error

    assert isinstance(remote_error({"code": "malformed", "message": "x", "fatal": True}, "w"), ProtocolError)
    assert isinstance(remote_error({"code": "auth", "message": "x"}, "w"), AuthError)
