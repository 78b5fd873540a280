"""``backend: adb``: scenario devices that are Android phones, each running llsim's worker in Termux.

The HIL runtime (:mod:`llsim.judge.hil`, ``BACKENDS["adb"]``) starts an :class:`AdbBackend` with the
scenario and its ``adb`` devices. In order:

1. the adb server must answer, and every phone named by ``serial`` must be attached and in state
   ``device``; ``serial: auto`` takes the next attached phone in state ``device`` that no other
   device of the scenario names (by serial order). Every refusal is one line naming the device;
2. each phone gets the worker (:func:`llsim.adb.deploy.deploy`: pushed unless it is there with the
   same sha256, the run's secret as a 0600 file, started by Termux RUN_COMMAND / ``run-as`` / the
   user, ``adb forward``, waited for), and a :class:`PhoneClient` connects through the forward;
3. with ``hil.phone_to_phone`` (the default) and two phones or more, the workers listen on every
   interface of their phone, each phone's addresses are read (``ip addr``: Wi-Fi first, never the
   cellular ones), and each worker is asked to open an authenticated link to every other phone's
   worker at each of its addresses: a pair that connects sends its tensors phone to phone, any
   other pair through this host (the coordinator relays them, as for a simulated end);
4. segment files reach a phone when the data plane loads them (``stage_file``): pushed to
   ``/data/local/tmp/llsim/segments/<sha256>.onnx`` unless the phone has that file with that sha256
   (so a second run, or a re-plan back to an earlier cut, pushes nothing).

``stop()`` (on every exit path: the end of the run, an error, Ctrl-C, SIGTERM/SIGHUP through the
launcher's hooks) closes the connections and undoes each deployment: the worker is stopped, the
forward removed, the secrets deleted. A phone unplugged meanwhile cannot be reached; the run's
results are kept and ``hil.json`` says what was left there (``cleanup`` per worker). Segment files
stay on the phone for the next run (``adb shell rm -r /data/local/tmp/llsim/segments`` frees them).
"""
from __future__ import annotations

import os
import secrets as _secrets
import signal
import sys
import threading
from contextlib import ExitStack
from pathlib import Path

import adbutils

from llsim.adb import host as H
from llsim.adb import termux as T
from llsim.adb.deploy import deploy, phone_digests
from llsim.errors import LLSimError
from llsim.filehash import sha256_file
from llsim.hil.client import WorkerClient
from llsim.hil.errors import WorkerDied, WorkerError

AUTO = "auto"
PHONE_PORT = 7071
SEGMENTS = f"{T.STAGE}/segments"


class PhoneClient(WorkerClient):
    """A :class:`WorkerClient` to a worker on a phone, connected through ``adb forward``. Its worker
    reaches another phone's worker at the address found by :func:`find_routes` (``reach``), or not:
    then their tensors go through the coordinator. A lost connection says what adb knows of the phone
    (unplugged: offline or gone)."""

    on_this_host = False

    def __init__(self, address: str, secret: bytes, *, serial: str, adb_client, **kw):
        self.serial = serial
        self._adb = adb_client
        self.reach: dict[PhoneClient, str] = {}
        super().__init__(address, secret, **kw)

    def peer_address(self, other) -> str | None:
        if other is self:
            return self.info.get("address")  # the worker's own listening address: delivered in place
        return self.reach.get(other)

    def __hash__(self) -> int:
        return id(self)

    def phone_state(self) -> str:
        try:
            return H.states(self._adb).get(self.serial, "gone")
        except Exception:
            return "unknown (the adb server does not answer)"

    def _lose(self, err) -> None:
        # a closed connection (seen by the reader thread): ask adb what became of the phone; not for a
        # silent worker (seen by the monitor thread shared by every client: it must not wait on adb)
        if self.health.lost is None and not self._closing and isinstance(err, WorkerDied):
            st = self.phone_state()
            if st != "device":
                err = type(err)(f"{err.detail}; the phone {self.serial} is {st} (unplugged?)", self.name)
        super()._lose(err)


class _Terminated(BaseException):
    """SIGTERM while phones are being deployed: unwind (undoing what was done), then terminate."""


def resolve_serials(c: H.Client, devs) -> dict[int, str]:
    """Device index -> serial: named phones checked (attached, authorised, online), ``auto`` ones
    given the next free attached phone in state ``device``. One-line errors naming the device."""
    states = H.states(c)
    named = {d.serial for d in devs if d.serial != AUTO}
    out: dict[int, str] = {}
    for d in devs:
        if d.serial == AUTO:
            continue
        try:
            H.device(c, d.serial)
        except LLSimError as e:
            raise LLSimError(f"device {d.name} (backend: adb): {e}") from None
        out[d.index] = d.serial
    taken = set(out.values())
    for d in devs:
        if d.serial != AUTO:
            continue
        free = [s for s, st in sorted(states.items()) if st == "device" and s not in named and s not in taken]
        if not free:
            known = ", ".join(f"{s} ({v})" for s, v in sorted(states.items())) or "none"
            raise LLSimError(f"device {d.name} (backend: adb, serial: auto): no free phone in state 'device' on the "
                             f"adb server {c.host}:{c.port} (attached: {known}; taken by this scenario: "
                             f"{', '.join(sorted(named | taken)) or 'none'}); plug in another phone or simulate "
                             "this device")
        out[d.index] = free[0]
        taken.add(free[0])
    return out


class AdbBackend:
    """The phones of one run (see the module docstring); ``stop()`` is idempotent."""

    def __init__(self, sc, devs, log=None):
        self.sc, self.devs = sc, list(devs)
        self.log = log or (lambda m: print(f"llsim: {m}", file=sys.stderr, flush=True))
        self.c: H.Client | None = None
        self.serials: dict[int, str] = {}
        self.deployments: dict[int, object] = {}
        self.clients: dict[int, PhoneClient] = {}
        self.routes: dict[tuple[int, int], str] = {}  # (src device, dst device) -> address, phone to phone
        self.route_notes: dict[tuple[int, int], str] = {}  # why a pair goes through the host
        self.addresses: dict[int, list[tuple[str, str]]] = {}
        self._stack = ExitStack()
        self._lock = threading.Lock()
        self._stopped = False
        raw = _secrets.token_bytes(32)
        self._raw_secret = raw
        self.secret = raw.hex().encode()  # what the worker reads from its secret file (hex text)

    # ---- start ------------------------------------------------------------------------------------
    def start(self) -> "AdbBackend":
        from llsim.hil.launcher import WORKER_PY, register_live

        self.c = H.client()
        self.serials = resolve_serials(self.c, self.devs)
        register_live(self)
        p2p = self.sc.hil.phone_to_phone and len(self.devs) > 1
        prev = None
        if threading.current_thread() is threading.main_thread():
            def on_term(signum, frame):
                raise _Terminated()
            prev = signal.signal(signal.SIGTERM, on_term)
        try:
            for d in self.devs:
                serial = self.serials[d.index]
                args = ["--name", d.name, "--heartbeat-s", f"{self.sc.hil.heartbeat_s:g}"]
                if d.affinity:
                    args += ["--cpus", ",".join(map(str, d.affinity))]
                dep = self._stack.enter_context(deploy(
                    serial, WORKER_PY, secret=self._raw_secret, phone_port=PHONE_PORT, worker_args=args,
                    listen_host="0.0.0.0" if p2p else "127.0.0.1", client=self.c,
                    on_manual=lambda m, _d=d: self.log(f"{_d.name}: {m}")))
                self.deployments[d.index] = dep
                c = PhoneClient(f"127.0.0.1:{dep.local_port}", self.secret, serial=serial, adb_client=self.c,
                                name=d.name, heartbeat_s=self.sc.hil.heartbeat_s, patience=4)
                self._stack.callback(c.close)
                c.info["adb"] = {"serial": serial, "method": dep.method, "pushed": list(dep.pushed),
                                 "skipped": list(dep.skipped), "phone_port": dep.phone_port,
                                 "local_port": dep.local_port, "tried": dict(dep.tried)}
                self.clients[d.index] = c
                c.info["adb"]["battery_start_pct"] = self._battery(serial)
            if p2p:
                self.find_routes()
        except _Terminated:
            self.stop()
            signal.signal(signal.SIGTERM, prev)
            os.kill(os.getpid(), signal.SIGTERM)  # now as asked: the launcher's hooks, then the default action
            raise
        except adbutils.AdbError as e:
            self.stop()
            raise LLSimError(f"adb: {e}") from None
        except BaseException:
            self.stop()
            raise
        finally:
            if prev is not None and signal.getsignal(signal.SIGTERM) is not prev:
                signal.signal(signal.SIGTERM, prev)
        return self

    def find_routes(self) -> None:
        """Which phone's worker reaches which other's, and at what address (see the module docstring)."""
        for i, serial in self.serials.items():
            dev = adbutils.AdbDevice(self.c, serial)
            try:
                self.addresses[i] = H.addresses(dev)
            except (adbutils.AdbError, OSError, EOFError) as e:
                raise H.adb_error(serial, e, "reading its network addresses", self.c) from None
        for a, ca in self.clients.items():
            own = {ip for _, ip in self.addresses.get(a, [])}
            for b, cb in self.clients.items():
                if a == b:
                    continue
                cands = [f"{ip}:{PHONE_PORT}" for _, ip in self.addresses.get(b, []) if ip not in own]
                if not cands:
                    self.route_notes[(a, b)] = f"{cb.name} has no network address {ca.name} could reach it at"
                    continue
                try:
                    got = ca.connect_peers(cands)
                except WorkerError as e:
                    self.route_notes[(a, b)] = f"could not ask {ca.name}: {e}"
                    continue
                ok = [x for x in cands if got.get(x) == "ok"]
                if ok:
                    ca.reach[cb] = ok[0]
                    self.routes[(a, b)] = ok[0]
                else:
                    self.route_notes[(a, b)] = "; ".join(f"{x}: {got.get(x)}" for x in cands)
        for i, c in self.clients.items():
            c.info["adb"]["addresses"] = [f"{n} {ip}" for n, ip in self.addresses.get(i, [])]
            c.info["adb"]["reaches"] = {self.clients[b].name: addr for (a, b), addr in self.routes.items() if a == i}
            c.info["adb"]["via_host"] = {self.clients[b].name: why for (a, b), why in self.route_notes.items()
                                         if a == i}

    # ---- segment files ----------------------------------------------------------------------------
    def stager(self, index: int):
        """fn(local segment file) -> its path on device ``index``'s phone (pushed unless already there)."""
        return stager(self.c, self.serials[index], self.clients[index].info["adb"])

    # ---- stop -------------------------------------------------------------------------------------
    def stop(self) -> None:
        from llsim.hil.launcher import unregister_live

        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        for i, c in self.clients.items():
            c.info["adb"]["battery_end_pct"] = self._battery(self.serials[i])
        try:
            self._stack.close()  # connections closed, then each deployment undone (last deployed first)
        finally:
            unregister_live(self)
        for i, dep in self.deployments.items():
            if i in self.clients and getattr(dep, "cleanup_notes", None):
                self.clients[i].info["adb"]["cleanup"] = list(dep.cleanup_notes)

    def _battery(self, serial: str) -> int | None:
        try:
            if H.server_reachable(self.c.host, self.c.port) and H.states(self.c).get(serial) == "device":
                return H.battery(adbutils.AdbDevice(self.c, serial))
        except (LLSimError, adbutils.AdbError, OSError, EOFError):
            pass
        return None

    def __hash__(self) -> int:
        return id(self)

    @staticmethod
    def kill(device, sig) -> None:
        raise LLSimError("a phone's worker runs under Termux's uid: the host cannot signal it (unplug the phone, "
                         "or stop the worker in Termux)")


def stager(c: H.Client, serial: str, record: dict | None = None, directory: str = SEGMENTS):
    """fn(local file) -> its path on the phone: ``directory/<sha256><suffix>`` (``directory``: by default
    /data/local/tmp/llsim/segments), pushed unless the phone has it with that sha256 (checked there after
    a push). ``record`` gets the digests pushed (``segments_pushed``) and found (``segments_skipped``)."""
    have: dict[str, str] = {}
    lock = threading.Lock()
    record = record if record is not None else {}

    def stage(path: Path) -> str:
        path = Path(path)
        digest = sha256_file(path)
        dst = f"{directory}/{digest}{path.suffix or '.onnx'}"
        with lock:
            if have.get(digest) == dst:
                return dst
            dev = adbutils.AdbDevice(c, serial)
            doing = f"pushing {path.name}"
            try:
                if phone_digests(dev, [dst]).get(dst) != digest:
                    dev.shell(f"mkdir -p {directory} && chmod 771 {directory}", timeout=30)
                    dev.sync.push(path, dst, mode=0o644)
                    doing = f"checking {path.name}'s sha256"
                    if phone_digests(dev, [dst]).get(dst) != digest:
                        raise LLSimError(f"{serial}: {dst} does not have the sha256 of {path} after the push "
                                         f"(storage full? `adb -s {serial} shell df /data/local/tmp`)")
                    record.setdefault("segments_pushed", []).append(digest[:16])
                else:
                    record.setdefault("segments_skipped", []).append(digest[:16])
            except (adbutils.AdbError, OSError, EOFError) as e:
                raise H.adb_error(serial, e, doing, c) from None
            have[digest] = dst
            return dst

    return stage
