"""Shared helpers of the HIL tests: raw protocol access, process checks, small deployments."""
from __future__ import annotations

import os
import secrets
import socket
import struct
import time
from pathlib import Path

from llsim.hil import worker as wire


def pid_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (absent, or a zombie nobody reaped yet): /proc and os.kill only."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def proc_argvs():
    """(pid, argv as bytes) of every process whose /proc/PID/cmdline can be read."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            yield int(d.name), (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue


def workers_of(parent: int) -> set[int]:
    """Live worker processes started with ``--parent-pid parent`` (from /proc/*/cmdline)."""
    out = set()
    for pid, argv in proc_argvs():
        if any(a.endswith(b"worker.py") for a in argv) and b"--parent-pid" in argv:
            i = argv.index(b"--parent-pid")
            if i + 1 < len(argv) and argv[i + 1] == str(parent).encode() and not pid_gone(pid):
                out.add(pid)
    return out


def wait_gone(pids, timeout_s: float = 5.0) -> list[int]:
    """The pids still running after ``timeout_s``."""
    end = time.monotonic() + timeout_s
    while True:
        left = [p for p in pids if not pid_gone(p)]
        if not left or time.monotonic() >= end:
            return left
        time.sleep(0.05)


def raw(address: str, timeout: float = 5.0) -> socket.socket:
    host, port = wire.split_address(address)
    s = socket.create_connection((host, port), timeout=timeout)
    s.settimeout(timeout)
    return s


def send(sock: socket.socket, header: dict, tensors=()) -> None:
    wire.send_parts(sock, wire.encode(header, tensors), 5.0)


def recv(sock: socket.socket, timeout: float = 5.0):
    sock.settimeout(timeout)
    return wire.read_frame(sock, wire.MAX_HEADER, wire.DEFAULT_MAX_PAYLOAD, timeout)


def hello(sock: socket.socket, protocol: int = wire.PROTOCOL, role: str = "coordinator", min_protocol=None):
    nonce = secrets.token_hex(16)
    send(sock, {"type": "hello", "protocol": protocol, "min_protocol": protocol if min_protocol is None else min_protocol,
                "role": role, "nonce": nonce})
    h, _ = recv(sock)
    return nonce, h


def authed(address: str, secret: bytes, role: str = "coordinator") -> socket.socket:
    """A raw socket past hello and authentication (to send malformed frames after auth)."""
    s = raw(address)
    nonce, h = hello(s, role=role)
    assert h["type"] == "hello", h
    send(s, {"type": "auth", "mac": wire.auth_mac(secret, b"client", nonce, h["nonce"])})
    w, _ = recv(s)
    assert w["type"] == "welcome", w
    return s


def error_then_closed(sock: socket.socket, timeout: float = 10.0) -> dict:
    """Read until the worker's error frame, then check it closes the connection; returns the error."""
    err = None
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            h, _ = recv(sock, timeout)
        except wire.PeerClosed:
            break
        except (ConnectionResetError, BrokenPipeError):
            break
        if h["type"] == "error":
            err = h
        elif h["type"] == "heartbeat":
            continue
    else:
        raise AssertionError("the worker did not close the connection")
    assert err is not None, "the connection closed without an error frame"
    return err


def prefix(hlen: int, plen: int, magic: bytes = wire.MAGIC) -> bytes:
    return struct.pack(">4sIQ", magic, hlen, plen)

