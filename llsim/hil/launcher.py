"""Start and stop ``backend: local`` workers: subprocesses of this host on free loopback ports.

``WorkerPool.start(n, threads)`` writes a per-run secret to a fresh 0600 file in a 0700 temporary
directory (never on a command line or in an environment), starts ``n`` workers
(``python llsim/hil/worker.py --listen 127.0.0.1:0 --secret-file F --parent-pid <this pid>``), reads
the port each one bound from its first stdout line, and connects a :class:`WorkerClient` to each.

Every process is stopped by its own pid (SIGTERM, then SIGKILL after a grace period, then reaped)
when the pool is stopped: on leaving the ``with`` block, on an error, at interpreter exit (atexit),
and on SIGTERM/SIGHUP (a handler that stops every live pool, then lets the signal take its usual
course). Ctrl-C raises KeyboardInterrupt, which unwinds the ``with`` block. If this process is
killed outright (SIGKILL), each worker notices that its parent is gone and exits by itself within a
second (``--parent-pid``).
"""
from __future__ import annotations

import atexit
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from llsim.hil.client import WorkerClient
from llsim.hil.errors import WorkerDied

WORKER_PY = Path(__file__).with_name("worker.py")


def write_secret(directory: str | Path) -> tuple[Path, bytes]:
    """A fresh 256-bit secret in ``directory/secret`` (created 0600, never world-readable)."""
    import secrets

    secret = secrets.token_hex(32).encode()
    path = Path(directory) / "secret"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secret + b"\n")
    finally:
        os.close(fd)
    return path, secret


@dataclass
class WorkerProcess:
    index: int
    proc: subprocess.Popen
    log_path: Path
    address: str | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 15) -> str | None:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return None
        return "\n".join(text[-lines:]) if text else None

    def alive(self) -> bool:
        return self.proc.poll() is None


_LIVE: set = set()
_LIVE_LOCK = threading.Lock()
_HOOKED = False


def _stop_all() -> None:
    with _LIVE_LOCK:
        pools = list(_LIVE)
    for p in pools:
        p.stop()


def _install_hooks() -> None:
    global _HOOKED
    if _HOOKED:
        return
    _HOOKED = True
    atexit.register(_stop_all)
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is None:
            continue
        prev = signal.getsignal(sig)
        if prev is signal.SIG_IGN:
            continue

        def handler(signum, frame, _prev=prev):
            _stop_all()
            if callable(_prev):
                _prev(signum, frame)
            else:  # the default action (terminate), now that the workers are stopped
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)

        signal.signal(sig, handler)


def register_live(obj) -> None:
    """Have ``obj.stop()`` called at interpreter exit and on SIGTERM/SIGHUP, as for worker pools (other
    things that start processes: phones' workers over adb, the stand-in phone)."""
    _install_hooks()
    with _LIVE_LOCK:
        _LIVE.add(obj)


def unregister_live(obj) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(obj)


class WorkerPool:
    """Local worker processes and a connected client for each (``pool.workers[i]``)."""

    def __init__(self):
        self.processes: list[WorkerProcess] = []
        self.workers: list[WorkerClient] = []
        self.secret: bytes = b""
        self.secret_file: Path | None = None
        self._tmp: str | None = None
        self._stopped = False
        self._lock = threading.Lock()

    @classmethod
    def start(cls, n: int, threads: int = 1, *, cpus: list[list[int]] | None = None, heartbeat_s: float = 0.5,
              patience: int = 4, startup_timeout_s: float = 60.0, python: str | None = None,
              extra_args: list[str] | None = None, extra_args_per_worker: dict[int, list[str]] | None = None,
              **client_kw) -> "WorkerPool":
        """``n`` workers; ``threads`` is the intra-op thread count of the sessions they open (unless a
        :class:`SegmentSpec` says otherwise), ``cpus[i]`` an optional CPU affinity for worker i."""
        if n < 1:
            raise ValueError("a pool needs at least one worker")
        pool = cls()
        pool.threads = threads
        _install_hooks()
        with _LIVE_LOCK:
            _LIVE.add(pool)
        try:
            pool._tmp = tempfile.mkdtemp(prefix="llsim-hil-")  # 0700
            pool.secret_file, pool.secret = write_secret(pool._tmp)
            for i in range(n):
                log = Path(pool._tmp) / f"worker-{i}.log"
                args = [python or sys.executable, str(WORKER_PY), "--listen", "127.0.0.1:0", "--secret-file",
                        str(pool.secret_file), "--parent-pid", str(os.getpid()), "--name", f"local-{i}",
                        "--heartbeat-s", str(heartbeat_s)]
                if cpus and i < len(cpus) and cpus[i]:
                    args += ["--cpus", ",".join(map(str, cpus[i]))]
                args += list(extra_args or []) + list((extra_args_per_worker or {}).get(i, []))
                with open(log, "wb") as logf:
                    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=logf,
                                            start_new_session=True, close_fds=True)
                pool.processes.append(WorkerProcess(i, proc, log))
            deadline = time.monotonic() + startup_timeout_s
            for wp in pool.processes:
                wp.address = pool._read_address(wp, deadline)
            for wp in pool.processes:
                pool.workers.append(WorkerClient(wp.address, pool.secret, heartbeat_s=heartbeat_s, patience=patience,
                                                 name=f"local-{wp.index}", log_tail=wp.log_tail, threads=threads,
                                                 **client_kw))
        except BaseException:
            pool.stop()
            raise
        return pool

    def _read_address(self, wp: WorkerProcess, deadline: float) -> str:
        sel = selectors.DefaultSelector()
        sel.register(wp.proc.stdout, selectors.EVENT_READ)
        buf = b""
        try:
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WorkerDied("did not report its port in time", f"local-{wp.index}", wp.log_tail())
                if not sel.select(min(left, 0.5)):
                    if wp.proc.poll() is not None:
                        raise WorkerDied(f"exited with code {wp.proc.returncode} at start-up", f"local-{wp.index}",
                                         wp.log_tail())
                    continue
                chunk = os.read(wp.proc.stdout.fileno(), 4096)
                if not chunk:
                    wp.proc.wait(timeout=5)
                    raise WorkerDied(f"exited with code {wp.proc.returncode} at start-up", f"local-{wp.index}",
                                     wp.log_tail())
                buf += chunk
        finally:
            sel.close()
        try:
            return json.loads(buf.split(b"\n", 1)[0])["listening"]
        except (ValueError, KeyError):
            raise WorkerDied(f"printed an unexpected first line {buf[:200]!r}", f"local-{wp.index}",
                             wp.log_tail()) from None

    @property
    def pids(self) -> list[int]:
        return [wp.pid for wp in self.processes]

    @property
    def addresses(self) -> list[str]:
        return [wp.address for wp in self.processes]

    def stop(self, grace_s: float = 2.0) -> None:
        """Stop every worker by its own pid and reap it; remove the secret. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        for w in self.workers:
            try:
                w.close()
            except Exception:
                pass
        for wp in self.processes:
            if wp.proc.poll() is None:
                try:
                    os.kill(wp.pid, signal.SIGTERM)
                    os.kill(wp.pid, signal.SIGCONT)  # a stopped worker must run to handle it
                except ProcessLookupError:
                    pass
        end = time.monotonic() + grace_s
        for wp in self.processes:
            try:
                wp.proc.wait(timeout=max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.kill(wp.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    wp.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            if wp.proc.stdout:
                wp.proc.stdout.close()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to worker i (tests and fault injection)."""
        os.kill(self.processes[i].pid, sig)

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __len__(self) -> int:
        return len(self.processes)

    def __hash__(self) -> int:
        return id(self)


__all__ = ["WorkerPool", "WorkerProcess", "write_secret", "WORKER_PY", "register_live", "unregister_live"]
