"""Starting programs in Termux from the host, and the Termux probe.

Three start methods (termux-app's ``TermuxConstants``; termux-app #1974, #4389):

* ``run-command``: ``am startservice ... com.termux.RUN_COMMAND`` with the program's path and
  arguments. Needs ``allow-external-apps = true`` in ``~/.termux/termux.properties`` and that the
  caller may send the intent (``com.termux.permission.RUN_COMMAND``, which the adb shell uid does
  not hold on every phone; a refusal shows as ``Error: Requires permission ...``).
* ``run-as``: ``run-as com.termux ...``; only for a debuggable Termux build.
* ``manual``: the user types the command in a Termux session; llsim waits for the port.

Whether a started program really runs is seen from the host only through its TCP port: Termux
silently refuses a RUN_COMMAND when allow-external-apps is off or the executable is missing.
"""
from __future__ import annotations

import json
import secrets
import shlex
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import adbutils
from adbutils import Network

TERMUX_PKG = "com.termux"
TERMUX_FILES = "/data/data/com.termux/files"
PREFIX = TERMUX_FILES + "/usr"
HOME = TERMUX_FILES + "/home"
PYTHON = PREFIX + "/bin/python"
SH = PREFIX + "/bin/sh"
STAGE = "/data/local/tmp/llsim"
METHODS = ("run-command", "run-as", "manual")
PROBE = Path(__file__).with_name("termux_probe.py")


def run_command_line(path: str, args: list[str], workdir: str = HOME) -> str:
    """The ``am`` command that makes Termux run ``path args`` in the background."""
    esc = ",".join(a.replace(",", "\\,") for a in args)
    return ("am startservice --user 0 -n com.termux/com.termux.app.RunCommandService "
            "-a com.termux.RUN_COMMAND "
            f"--es com.termux.RUN_COMMAND_PATH {shlex.quote(path)} "
            f"--esa com.termux.RUN_COMMAND_ARGUMENTS {shlex.quote(esc)} "
            f"--es com.termux.RUN_COMMAND_WORKDIR {shlex.quote(workdir)} "
            "--ez com.termux.RUN_COMMAND_BACKGROUND true")


def refused(am_output: str) -> str | None:
    """The reason ``am`` gives for not starting the service, or None."""
    for line in am_output.splitlines():
        if line.startswith("Error") or "Exception" in line:
            return line.strip()
    return None


def start_run_command(dev: adbutils.AdbDevice, path: str, args: list[str]) -> str | None:
    """Send the RUN_COMMAND intent; returns why it was refused, or None when ``am`` accepted it."""
    line = run_command_line(path, args)
    why = refused(dev.shell(line, timeout=30))
    if why and "background" in why:  # Android 8+ may refuse a background start: ask for a foreground service
        why = refused(dev.shell(line.replace("am startservice", "am start-foreground-service", 1), timeout=30))
    return why


def start_run_as(dev: adbutils.AdbDevice, script: str) -> str | None:
    """Run ``script`` (a shell command line) in the background under Termux's uid; None when started."""
    r = dev.shell2(f"run-as {TERMUX_PKG} sh -c {shlex.quote('nohup sh -c ' + shlex.quote(script) + ' >/dev/null 2>&1 &')}",
                   timeout=30, v2=True)
    if r.returncode != 0:
        return (r.output.strip().splitlines() or [f"run-as exited with {r.returncode}"])[-1]
    return None


def port_answers(dev: adbutils.AdbDevice, port: int) -> socket.socket | None:
    """A connection to ``tcp:port`` on the phone, or None when nothing listens there."""
    try:
        s = dev.create_connection(Network.TCP, port)
    except adbutils.AdbError as e:
        if "closed" in str(e) or "refused" in str(e) or "FAIL" in str(e) or "failed" in str(e).lower():
            return None
        raise
    return s


def wait_port(dev: adbutils.AdbDevice, port: int, timeout: float, stop=None) -> socket.socket | None:
    end = time.monotonic() + timeout
    while True:
        s = port_answers(dev, port)
        if s is not None:
            return s
        if time.monotonic() >= end or (stop is not None and stop()):
            return None
        time.sleep(0.15)


def _read_line(s: socket.socket, timeout: float = 10) -> bytes:
    s.settimeout(timeout)
    buf = b""
    try:
        while b"\n" not in buf:
            d = s.recv(65536)
            if not d:
                break
            buf += d
    except socket.timeout:
        pass
    finally:
        s.close()
    return buf


@dataclass
class Probe:
    """What llsim found out about Termux on a phone."""

    installed: bool
    method: str | None = None            # the start method that worked
    tried: dict = field(default_factory=dict)  # method -> why it did not work
    facts: dict | None = None            # the probe's JSON (python, numpy, onnxruntime, properties)
    python_missing: bool = False         # known for sure (run-as could look)
    external_apps: bool | None = None    # allow-external-apps, when known

    @property
    def checked(self) -> bool:
        return self.facts is not None


def ensure_stage(dev: adbutils.AdbDevice) -> None:
    # 0771: Termux's uid may traverse the directory but not list it
    r = dev.shell2(f"mkdir -p {STAGE} && chmod 771 {STAGE}", v2=True, timeout=30)
    if r.returncode != 0:
        raise adbutils.AdbError(f"cannot create {STAGE}: {r.output.strip()}")


def probe(dev: adbutils.AdbDevice, timeout: float = 8.0, methods=("run-command", "run-as")) -> Probe:
    """Which start method works and what Termux's python can import (the probe script, run in Termux)."""
    pm = dev.shell2(f"pm path {TERMUX_PKG}", v2=True, timeout=30)
    if not pm.output.strip().startswith("package:"):
        return Probe(installed=False)
    pr = Probe(installed=True)
    ensure_stage(dev)
    dev.sync.push(PROBE.read_bytes(), f"{STAGE}/termux_probe.py", mode=0o644)
    for method in methods:
        if method == "run-command":
            port = 20000 + secrets.randbelow(20000)
            why = start_run_command(dev, PYTHON, [f"{STAGE}/termux_probe.py", "--listen", f"127.0.0.1:{port}",
                                                  "--timeout", str(max(5, int(timeout) + 5))])
            if why:
                pr.tried[method] = why
                continue
            s = wait_port(dev, port, timeout)
            if s is None:
                pr.tried[method] = ("Termux accepted the RUN_COMMAND intent but the probe never listened: "
                                    "allow-external-apps is not true, or python is not installed in Termux")
                continue
            line = _read_line(s)
        else:
            r = dev.shell2(f"run-as {TERMUX_PKG} sh -c "
                           + shlex.quote(f"cd {HOME} 2>/dev/null; HOME={HOME} PREFIX={PREFIX} "
                                         f"LD_LIBRARY_PATH={PREFIX}/lib {PYTHON} {STAGE}/termux_probe.py --stdout"),
                           v2=True, timeout=60)
            if r.returncode != 0:
                text = r.output.strip()
                if "not debuggable" in text or "unknown package" in text:
                    pr.tried[method] = text.splitlines()[-1]
                    continue
                if "not found" in text or "No such file" in text:
                    pr.python_missing = True
                pr.tried[method] = (text.splitlines() or [f"exit {r.returncode}"])[-1]
                pr.method = method  # run-as works; python does not
                props = dev.shell2(f"run-as {TERMUX_PKG} cat {HOME}/.termux/termux.properties", v2=True).stdout
                pr.external_apps = _external_apps_on(props)
                return pr
            line = r.stdout.encode()
        try:
            pr.facts = json.loads(line.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            pr.tried[method] = f"the probe's answer was not JSON: {line[:200]!r}"
            continue
        pr.method = method
        props = pr.facts.get("properties", {})
        pr.external_apps = str(props.get("allow-external-apps", "false")).strip().lower() == "true"
        return pr
    return pr


def _external_apps_on(text: str) -> bool | None:
    if not text:
        return None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#") or "=" not in line:
            continue
        k, _, v = line.partition("=")
        if k.strip() == "allow-external-apps":
            return v.strip().lower() == "true"
    return False
