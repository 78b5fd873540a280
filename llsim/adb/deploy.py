"""Deploying a worker to a phone over ADB (the HIL runtime's entry point: :func:`deploy`).

::

    with deploy(serial, worker=Path("llsim/hil/worker.py"), files=segment_paths, secret=secret) as d:
        connect_to(("127.0.0.1", d.local_port), secret)    # the worker's own protocol
    # on exit, an error or Ctrl-C: worker stopped, forward removed, secrets deleted

Steps: the phone port must be free; ``adb forward tcp:LOCAL tcp:PORT`` (fails at once when LOCAL is
taken, before anything starts); the worker and the segment files go to ``/data/local/tmp/llsim/``
(world-readable, since Termux's uid runs the worker; files already there with the same sha256,
computed on the phone by ``sha256sum``, are skipped); a start script; the worker is started by the
first method that works (Termux RUN_COMMAND, ``run-as com.termux``, or the user in Termux, waited for
with a timeout); llsim waits until the phone port answers.

The per-run secret ends up as a 0600 file owned by Termux's uid in Termux's private home
(``~/.llsim/secret-RUN``): the adb shell uid cannot write there and a Termux program cannot read a
0600 file that the shell uid owns, so the secret is staged in ``/data/local/tmp/llsim`` under an
unguessable name (the directory is not listable by apps) and copied by the start script under
Termux's uid; the staged copy is deleted as soon as the worker answers, the private copy when the
worker stops.
"""
from __future__ import annotations

import secrets as _secrets
import shlex
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import adbutils

from llsim.filehash import sha256_file
from llsim.adb import host as H
from llsim.adb import termux as T
from llsim.errors import LLSimError


@dataclass
class Deployment:
    serial: str
    local_port: int
    phone_port: int
    method: str                      # the start method that worked: run-command | run-as | manual
    run_id: str
    secret_path: str                 # on the phone (the worker's --secret-file)
    pushed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    tried: dict = field(default_factory=dict)   # start methods that did not work, and why
    timings: dict = field(default_factory=dict)
    cleanup_notes: list[str] = field(default_factory=list)



def phone_digests(dev: adbutils.AdbDevice, paths: Sequence[str]) -> dict[str, str]:
    """sha256 of the files that exist on the phone (``sha256sum`` there; toybox has it since Android 6)."""
    if not paths:
        return {}
    out = dev.shell("sha256sum " + " ".join(shlex.quote(p) for p in paths) + " 2>/dev/null", timeout=600)
    got = {}
    for line in out.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and len(parts[0]) == 64:
            got[parts[1].strip()] = parts[0]
    return got


def _start_script(run_id: str, staged_secret: str, secret_path: str, worker_path: str, phone_port: int,
                  worker_args: Sequence[str], listen_host: str = "127.0.0.1") -> str:
    d = T.HOME + "/.llsim"
    args = " ".join(shlex.quote(a) for a in worker_args)
    return f"""# llsim worker launcher, run {run_id}: runs under Termux's uid (RUN_COMMAND, run-as or by hand)
umask 077
mkdir -p {d}
cat {staged_secret} > {secret_path} || exit 1
export PREFIX={T.PREFIX} HOME={T.HOME}
export PATH={T.PREFIX}/bin:$PATH LD_LIBRARY_PATH={T.PREFIX}/lib TMPDIR={T.PREFIX}/tmp
cd {T.HOME}
{T.PYTHON} {worker_path} --listen {listen_host}:{phone_port} --secret-file {secret_path} {args} > {d}/worker-{run_id}.log 2>&1 &
echo $! > {d}/worker-{run_id}.pid
wait $!
rm -f {secret_path} {d}/worker-{run_id}.pid
"""


def _stop_script(run_id: str, secret_path: str) -> str:
    d = T.HOME + "/.llsim"
    return f"""# llsim worker stopper, run {run_id}
P=$(cat {d}/worker-{run_id}.pid 2>/dev/null)
[ -n "$P" ] && kill $P
rm -f {secret_path} {d}/worker-{run_id}.pid
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def deploy(serial: str, worker: Path, files: Sequence[Path] = (), *, secret: bytes | None = None,
           phone_port: int = 7071, local_port: int | None = None, methods: Sequence[str] = T.METHODS,
           start_timeout: float = 20.0, manual_timeout: float = 120.0,
           on_manual: Callable[[str], None] | None = None, worker_args: Sequence[str] = (),
           log: Callable[[str], None] = lambda m: None, client: H.Client | None = None,
           listen_host: str = "127.0.0.1") -> Iterator[Deployment]:
    """Push, start, forward and wait; yields a :class:`Deployment`; always cleans up on exit.
    ``listen_host``: where the worker listens on the phone (its loopback by default, which ``adb
    forward`` reaches; ``0.0.0.0`` also lets other phones on its Wi-Fi reach it)."""
    worker = Path(worker)
    files = [Path(f) for f in files]
    for f in [worker] + files:
        if not f.is_file():
            raise LLSimError(f"{f}: no such file to deploy")
    names = [f.name for f in [worker] + files]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise LLSimError(f"two files to deploy are both named {sorted(dup)[0]!r}: they would overwrite each other "
                         f"in {T.STAGE}/")
    bad = [m for m in methods if m not in T.METHODS]
    if bad:
        raise LLSimError(f"unknown start method {bad[0]!r}; known: {', '.join(T.METHODS)}")
    c = client or H.client()
    dev = H.device(c, serial)
    run_id = _secrets.token_hex(6)
    secret = secret if secret is not None else _secrets.token_bytes(32)
    staged = f"{T.STAGE}/.s-{_secrets.token_hex(16)}"
    secret_path = f"{T.HOME}/.llsim/secret-{run_id}"
    start_sh = f"{T.STAGE}/start-{run_id}.sh"
    stop_sh = f"{T.STAGE}/stop-{run_id}.sh"
    dep = Deployment(serial, 0, phone_port, "", run_id, secret_path)
    doing = "checking the phone"
    forwarded = False
    launched: list[str] = []
    t0 = time.monotonic()
    ready = False
    try:
        # nothing may listen on the phone port yet: a second worker would not bind, and we would talk to the first
        doing = f"checking phone port {phone_port}"
        s = T.port_answers(dev, phone_port)
        if s is not None:
            s.close()
            raise LLSimError(f"{serial}: port {phone_port} is already in use on the phone (a worker of an earlier "
                             f"run?): stop it, or choose another phone port")
        doing = "forwarding a local port"
        dep.local_port = local_port or _free_port()
        try:
            dev.forward(f"tcp:{dep.local_port}", f"tcp:{phone_port}", norebind=True)
        except adbutils.AdbError as e:
            raise LLSimError(f"cannot forward 127.0.0.1:{dep.local_port} to {serial} tcp:{phone_port}: {e} "
                             f"(local port in use? choose another)") from None
        forwarded = True
        doing = "pushing files"
        T.ensure_stage(dev)
        targets = {f: f"{T.STAGE}/{f.name}" for f in [worker] + files}
        have = phone_digests(dev, list(targets.values()))
        for f, dst in targets.items():
            digest = sha256_file(f)
            if have.get(dst) == digest:
                dep.skipped.append(f.name)
                log(f"skipped {f.name} (already on the phone, same sha256)")
                continue
            doing = f"pushing {f.name}"
            dev.sync.push(f, dst, mode=0o644)
            dep.pushed.append(f.name)
            log(f"pushed {f.name} ({f.stat().st_size / 1e6:.2f} MB)")
        if dep.pushed:
            doing = "checking the pushed files' sha256"
            got = phone_digests(dev, [targets[f] for f in targets if f.name in dep.pushed])
            for f, dst in targets.items():
                if f.name in dep.pushed and got.get(dst) != sha256_file(f):
                    raise LLSimError(f"{serial}: {dst} does not have the sha256 of {f} after the push "
                                     f"(storage full? `adb shell df /data/local/tmp`)")
        dep.timings["push_s"] = time.monotonic() - t0
        doing = "writing the secret and the start script"
        dev.sync.push(secret.hex().encode(), staged, mode=0o644)
        dev.sync.push(_start_script(run_id, staged, secret_path, targets[worker], phone_port,
                                    worker_args, listen_host).encode(), start_sh, mode=0o644)
        dev.sync.push(_stop_script(run_id, secret_path).encode(), stop_sh, mode=0o644)
        t1 = time.monotonic()
        # the automatic methods: how each starts the worker, and what it means when it then stays silent
        starters = {
            "run-command": (lambda: T.start_run_command(dev, T.SH, [start_sh]),
                            "Termux accepted RUN_COMMAND but the worker did not answer within "
                            f"{start_timeout:g} s (allow-external-apps not true, or python missing?)"),
            "run-as": (lambda: T.start_run_as(dev, f"sh {start_sh}"),
                       f"started by run-as but did not answer within {start_timeout:g} s"),
        }
        for method in methods:
            doing = f"starting the worker ({method})"
            if method in starters:
                start, silent = starters[method]
                why = start()
                if why:
                    dep.tried[method] = why
                    continue
                launched.append(method)
                s = T.wait_port(dev, phone_port, start_timeout)
                if s is None:
                    dep.tried[method] = silent
                    continue
            else:
                cmd = f"sh {start_sh}"
                (on_manual or log)(f"start the worker by hand: open Termux on {serial} and run:  {cmd}")
                launched.append(method)
                s = T.wait_port(dev, phone_port, manual_timeout)
                if s is None:
                    dep.tried[method] = f"nobody started it within {manual_timeout:g} s"
                    continue
            s.close()
            dep.method = method
            break
        else:
            raise LLSimError(f"{serial}: could not start the worker: "
                             + "; ".join(f"{m}: {w}" for m, w in dep.tried.items())
                             + " (run `llsim hil doctor " + serial + "`)")
        dep.timings["start_s"] = time.monotonic() - t1
        doing = "removing the staged secret"
        dev.shell(f"rm -f {staged}")
        log(f"worker started by {dep.method}; 127.0.0.1:{dep.local_port} -> {serial} tcp:{phone_port}")
        ready = True
    except (adbutils.AdbError, OSError, EOFError) as e:
        raise H.adb_error(serial, e, doing, c) from None
    finally:
        if not ready:  # an error or Ctrl-C during the set-up
            _cleanup(c, serial, dep, forwarded, launched, staged, start_sh, stop_sh, log)
    try:
        yield dep  # errors of the caller's body pass through unchanged
    finally:
        _cleanup(c, serial, dep, forwarded, launched, staged, start_sh, stop_sh, log)


def _cleanup(c: H.Client, serial: str, dep: Deployment, forwarded: bool, launched: list[str], staged: str,
             start_sh: str, stop_sh: str, log) -> None:
    dev = adbutils.AdbDevice(c, serial)
    try:
        online = H.server_reachable(c.host, c.port) and H.states(c).get(serial) == "device"
    except LLSimError:
        online = False
    def send_stop(method: str) -> None:
        if method == "run-command":
            T.start_run_command(dev, T.SH, [stop_sh])
        elif method == "run-as":
            dev.shell(f"run-as {T.TERMUX_PKG} sh {stop_sh}", timeout=30)

    if launched and online:
        try:
            # a method that was accepted but whose worker never answered may still start it late: stop it too
            for m in launched:
                if m != dep.method:
                    send_stop(m)
            if dep.method == "manual":
                dep.cleanup_notes.append("the worker was started by hand: stop it in its Termux session (Ctrl-C)")
            elif dep.method:
                send_stop(dep.method)
                end = time.monotonic() + 10
                while time.monotonic() < end:
                    s = T.port_answers(dev, dep.phone_port)
                    if s is None:
                        break
                    s.close()
                    time.sleep(0.2)
                else:
                    dep.cleanup_notes.append(f"the worker still answers on {serial} tcp:{dep.phone_port}: stop it "
                                             "in Termux (Ctrl-C in its session)")
        except (adbutils.AdbError, OSError, EOFError) as e:
            dep.cleanup_notes.append(f"could not stop the worker on {serial}: {e}")
    elif launched:
        dep.cleanup_notes.append(f"{serial} is gone: the worker there may still run until the phone is replugged "
                                 f"(then `adb -s {serial} shell run-as com.termux sh {stop_sh}`, or stop it in Termux)")
    if forwarded and H.server_reachable(c.host, c.port):
        try:
            dev.forward_remove(f"tcp:{dep.local_port}", raise_non_found=False)
        except (adbutils.AdbError, OSError):
            pass
    if online:
        try:
            dev.shell(f"rm -f {staged} {start_sh} {stop_sh}", timeout=30)
        except (adbutils.AdbError, OSError, EOFError) as e:
            dep.cleanup_notes.append(f"could not remove {staged} on {serial}: {e}")
    for n in dep.cleanup_notes:
        log("cleanup: " + n)
