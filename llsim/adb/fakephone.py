"""The stand-in phone: a device daemon that speaks the adb transport protocol on a loopback port.

Registered with the real adb server by ``adb connect HOST:PORT``, it is a phone to adb, adbutils
and llsim: CNXN/AUTH handshake (version and max payload negotiated, checksums while the version
needs them), streams with one WRTE in flight, and the services ``shell:``, ``shell,v2:`` (exit
codes), ``exec:``, ``sync:`` (STAT/STA2/LST2/LIST/SEND/RECV/DONE/QUIT) and ``tcp:PORT``. Its
facts (getprop, /proc/meminfo, cpufreq, thermal zones, ``dumpsys battery``) come from an llsim
device profile; pushed files live in a sandbox directory (:mod:`llsim.adb.phonefs`); commands run
in a small shell (:mod:`llsim.adb.shell`). Termux is emulated: ``pm``, ``am startservice ...
com.termux.RUN_COMMAND`` and ``run-as com.termux`` start the requested program (Termux's python is
this host's Python) in the sandbox under Termux's uid, and ``tcp:PORT`` reaches that program.

Each phone has its own loopback: a program's ``--listen 127.0.0.1:P`` / ``--port P`` arguments are
rewritten to a free port of this host, and ``tcp:P`` is forwarded there. Its Wi-Fi is an address of
its own in 127.0.0.0/8 (``ip addr`` shows it on ``wlan0``): a program listening on ``0.0.0.0:P`` (or on
that address) is bound there on port P itself, so the stand-ins' programs reach each other at
``ADDRESS:P`` as phones on one Wi-Fi do, and ``tcp:P`` reaches it too.

The programs it starts are this host's processes in their own sessions; they are stopped with the
phone (:meth:`FakePhone.stop`, also at interpreter exit and on SIGTERM/SIGHUP of this process), and
each exits by itself within a second once this process is gone (a watchdog in the ``sitecustomize``
the stand-in gives them), so none outlives a killed test run.

Fault knobs (:class:`Knobs`, and methods :meth:`FakePhone.unplug`, :meth:`replug`,
:meth:`authorize`): unplugged mid-run, a slow USB link, unauthorised, Termux missing, Termux's
python/numpy/onnxruntime missing, allow-external-apps unset, RUN_COMMAND permission denied, low
battery, thermal zones unreadable.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import posixpath
import re
import secrets
import shutil
import signal
import socket
import stat as stat_mod
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from llsim.adb import protocol as P
from llsim.adb.phonefs import (ROOT, SHELL, TERMUX, TERMUX_DATA, TERMUX_HOME, TERMUX_PKG, TERMUX_PREFIX,
                               TERMUX_PROPERTIES, TERMUX_PYTHON, TERMUX_SH, FSError, PhoneFS, norm)
from llsim.adb.shell import IO, Ctx, execute, run_script

SDK_OF_RELEASE = {"9": 28, "10": 29, "11": 30, "12": 31, "13": 33, "14": 34, "15": 35}
FEATURES = "shell_v2,cmd,stat_v2,fixed_push_mkdir"
PHONE_ROOTS = ("/data/", "/sdcard", "/storage/", "/proc/", "/sys/", "/system/", "/dev/")
WIFI_NET = "127.64.0.0/10"  # the stand-ins' Wi-Fi: each phone an address of its own
RUN_COMMAND_SERVICE = "com.termux/com.termux.app.RunCommandService"
RUN_COMMAND_PERMISSION = "com.termux.permission.RUN_COMMAND"
_BLOCKER = '''import os, sys
_missing = {m for m in os.environ.get("LLSIM_FAKEPHONE_MISSING", "").split(",") if m}
class _Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _missing:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _Missing())
_parent = int(os.environ.get("LLSIM_FAKEPHONE_PARENT", "0") or 0)
if _parent:  # the stand-in phone's process is this program's parent: when it is gone, so is the phone
    import signal as _signal, threading as _threading, time as _time
    def _watch():
        while os.getppid() == _parent:
            _time.sleep(0.25)
        try:
            os.killpg(0, _signal.SIGTERM)  # this program and anything it started (its own session)
        except OSError:
            pass
        _time.sleep(2.0)
        os._exit(143)
    _threading.Thread(target=_watch, name="llsim-fakephone-watchdog", daemon=True).start()
if "LLSIM_FAKEPHONE_WIFI" in os.environ:  # a phone off the stand-ins' Wi-Fi (or isolated) reaches none of it
    import errno as _errno, ipaddress as _ip, socket as _socket
    _net, _own = _ip.ip_network("127.64.0.0/10"), os.environ["LLSIM_FAKEPHONE_WIFI"]
    def _check(addr):
        try:
            a = _ip.ip_address(addr[0])
        except (ValueError, TypeError, IndexError):
            return
        if a in _net and not _own:
            raise OSError(_errno.ENETUNREACH, "Network is unreachable")
    _connect, _connect_ex = _socket.socket.connect, _socket.socket.connect_ex
    def _c(self, addr):
        _check(addr)
        return _connect(self, addr)
    def _cx(self, addr):
        try:
            _check(addr)
        except OSError as e:
            return e.errno
        return _connect_ex(self, addr)
    _socket.socket.connect, _socket.socket.connect_ex = _c, _cx
'''


@dataclass
class Knobs:
    """What the stand-in phone is like, and which faults it has."""

    android: str = "13"
    termux: bool = True
    external_apps: bool = True         # allow-external-apps = true in ~/.termux/termux.properties
    run_command_permission: bool = True  # the adb shell may send com.termux.RUN_COMMAND
    termux_debuggable: bool = False    # run-as com.termux works
    python: bool = True                # pkg install python
    numpy: bool = True                 # pkg install python-numpy
    onnxruntime: bool = True           # pkg install python-onnxruntime
    battery_level: int = 85
    charging: bool = True
    thermal_readable: bool = True      # thermal zones readable by the adb shell and by Termux's programs
    battery_readable: bool = True      # /sys/class/power_supply/battery readable by Termux's programs
    wifi: bool = True                  # on a Wi-Fi (wlan0 has an address other stand-ins reach)
    wifi_isolated: bool = False        # ... but the access point isolates clients: nobody reaches its address
    wifi_ip: str | None = None         # default: a random address of 127.0.0.0/8 of its own
    unauthorized: bool = False         # the "Allow USB debugging?" dialog is not accepted
    usb_mbps: float | None = None      # link bandwidth cap, MB/s each way (None: as fast as loopback)
    storage_gb: float = 128.0
    free_gb: float = 40.0
    max_payload: int = P.MAX_PAYLOAD
    version: int = P.A_VERSION
    unplug_after_s: float | None = None         # goes offline this long after start
    unplug_after_push_bytes: int | None = None  # ... or once this many bytes were pushed
    replug_after_s: float | None = None          # comes back this long after going offline


@dataclass
class Proc:
    pid: int
    ppid: int
    uid: int
    cmdline: str
    popen: subprocess.Popen | None = None
    thread: threading.Thread | None = None
    done: threading.Event = field(default_factory=threading.Event)
    status: int = 0
    killed: bool = False

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return not self.done.is_set()


class _Pacer:
    """A token bucket: a slow USB link."""

    def __init__(self, mbps: float | None):
        self.rate = mbps * 1e6 if mbps else None
        self.t = time.monotonic()

    async def __call__(self, nbytes: int):
        if not self.rate:
            return
        now = time.monotonic()
        self.t = max(self.t, now) + nbytes / self.rate
        if self.t > now:
            await asyncio.sleep(self.t - now)


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", s.lower()).strip("_")


class FakePhone:
    def __init__(self, profile: str = "kirin-990", host: str = "127.0.0.1", port: int = 0,
                 knobs: Knobs | None = None, sandbox: str | Path | None = None, name: str | None = None):
        from llsim.device.profile import load_profile

        self.profile = load_profile(profile)
        self.knobs = knobs or Knobs()
        self.host = host
        self.port = port
        self._own_sandbox = sandbox is None
        self.sandbox = Path(sandbox) if sandbox else Path(tempfile.mkdtemp(prefix="llsim-fakephone-"))
        self.fs = PhoneFS(self.sandbox)
        self.name = name or self.profile.name
        self.procs: dict[int, Proc] = {}
        self._next_pid = 4000
        self._pid_lock = threading.Lock()
        self.port_map: dict[int, tuple[str, int]] = {}  # phone port -> where its listener is on this host
        self.wifi_ip = self.knobs.wifi_ip or (f"127.{secrets.randbelow(64) + 64}.{secrets.randbelow(256)}."
                                              f"{secrets.randbelow(253) + 1}")  # in WIFI_NET
        self.pushed_bytes = 0
        self.log: list[str] = []
        self.authorized = not self.knobs.unauthorized
        self.online = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._transports: set = set()
        self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix=f"phone-{self.name}")
        self._timers: list = []
        self._populate()

    # ---- identity ------------------------------------------------------------------------------
    @property
    def serial(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def ncpu(self) -> int:
        return self.profile.cores

    def _populate(self) -> None:
        prof, k, fs = self.profile, self.knobs, self.fs
        sdk = SDK_OF_RELEASE.get(k.android.split(".")[0], 33)
        soc_words = prof.soc.split()
        slug = _slug(prof.name)
        self.props = {
            "ro.product.model": prof.device,
            "ro.product.manufacturer": prof.device.split()[0],
            "ro.product.brand": prof.device.split()[0].lower(),
            "ro.product.name": slug,
            "ro.product.device": slug,
            "ro.product.cpu.abi": "arm64-v8a",
            "ro.board.platform": _slug(" ".join(soc_words[1:]) or prof.soc),
            "ro.hardware": _slug(" ".join(soc_words[1:]) or prof.soc),
            "ro.build.version.release": k.android,
            "ro.build.version.sdk": str(sdk),
            "ro.build.type": "user",
            "ro.debuggable": "0",
            "ro.serialno": hashlib.sha1(f"{prof.name}:{self.host}:{self.port}".encode()).hexdigest()[:12].upper(),
            "ro.llsim.stand_in": "1",
            "ro.llsim.profile": prof.name,
        }
        if sdk >= 31:
            self.props["ro.soc.manufacturer"] = soc_words[0]
            self.props["ro.soc.model"] = " ".join(soc_words[1:]) or prof.soc
        # CPUs: the slowest cluster first, as Android numbers them
        cpus = []
        for c in sorted(prof.cpu, key=lambda c: c.freq_ghz):
            cpus += [c] * c.cores
        n = len(cpus)
        fs.put("/sys/devices/system/cpu/possible", f"0-{n - 1}\n")
        fs.put("/sys/devices/system/cpu/present", f"0-{n - 1}\n")
        fs.put("/sys/devices/system/cpu/online", f"0-{n - 1}\n")
        cpuinfo = ""
        for i, c in enumerate(cpus):
            khz = int(round(c.freq_ghz * 1e6))
            base = f"/sys/devices/system/cpu/cpu{i}/cpufreq"
            fs.put(f"{base}/cpuinfo_max_freq", f"{khz}\n")
            fs.put(f"{base}/cpuinfo_min_freq", "300000\n")
            fs.put(f"{base}/scaling_cur_freq", f"{khz}\n")
            fs.put(f"{base}/scaling_max_freq", f"{khz}\n")
            cpuinfo += f"processor\t: {i}\nBogoMIPS\t: 52.00\nCPU part\t: {c.core or c.name}\n\n"
        fs.put("/proc/cpuinfo", cpuinfo + f"Hardware\t: {prof.soc}\n")
        total_kb = int(prof.memory.ram_total_gb * 1e9 / 1024)
        avail_kb = int(prof.memory.ram_available_gb * 1e9 / 1024)
        fs.put("/proc/meminfo", (f"MemTotal:       {total_kb:>8} kB\nMemFree:        {avail_kb // 4:>8} kB\n"
                                 f"MemAvailable:   {avail_kb:>8} kB\nBuffers:        {total_kb // 200:>8} kB\n"
                                 f"Cached:         {avail_kb // 2:>8} kB\nSwapTotal:      {total_kb // 2:>8} kB\n"
                                 f"SwapFree:       {total_kb // 3:>8} kB\n"))
        zones = [("soc_thermal", 41200), ("battery", 30500)]
        zones += [(f"cpu-{c.name}", 43000 + 1500 * i) for i, c in enumerate(prof.cpu)] + [("gpu", 39800)]
        for i, (typ, milli) in enumerate(zones):
            fs.put(f"/sys/class/thermal/thermal_zone{i}/type", typ + "\n")
            fs.put(f"/sys/class/thermal/thermal_zone{i}/temp", f"{milli}\n",
                   mode=0o444 if k.thermal_readable else 0o600)
        bat = "/sys/class/power_supply/battery"
        for f, v in (("type", "Battery"), ("capacity", str(k.battery_level)),
                     ("status", "Charging" if k.charging else "Discharging"), ("temp", "305")):
            fs.put(f"{bat}/{f}", v + "\n", mode=0o444 if k.battery_readable else 0o440)
        fs.put("/system/bin/sh", "#!/system/bin/sh (stand-in)\n", mode=0o755)
        fs.put_dir("/data", ROOT, 0o771)
        fs.put_dir("/data/local", ROOT, 0o751)
        fs.put_dir("/data/local/tmp", SHELL, 0o771)
        fs.put_dir("/data/data", ROOT, 0o771)
        fs.put_dir("/dev", ROOT, 0o755)
        fs.put_dir("/sdcard", ROOT, 0o770)
        self._packages = {"android": "/system/framework/framework-res.apk",
                          "com.android.shell": "/system/priv-app/Shell/Shell.apk",
                          "com.android.settings": "/system/priv-app/Settings/Settings.apk"}
        if k.termux:
            self._packages[TERMUX_PKG] = "/data/app/~~llsimStandIn==/com.termux-1/base.apk"
            fs.put_dir(TERMUX_DATA, TERMUX, 0o700)
            for d in ("/files", "/files/usr", "/files/usr/bin", "/files/usr/lib", "/files/usr/tmp", "/files/home",
                      "/files/home/.termux"):
                fs.put_dir(TERMUX_DATA + d, TERMUX, 0o700)
            fs.put(TERMUX_SH, "#!dash (stand-in)\n", uid=TERMUX, mode=0o700)
            if k.python:
                fs.put(TERMUX_PYTHON, "#!python (stand-in: this host's Python)\n", uid=TERMUX, mode=0o700)
                fs.put(TERMUX_PREFIX + "/bin/python3", "#!python (stand-in)\n", uid=TERMUX, mode=0o700)
            fs.put(TERMUX_PROPERTIES, ("allow-external-apps = true\n" if k.external_apps
                                       else "# allow-external-apps = true\n"), uid=TERMUX, mode=0o600)
        blk = self.sandbox / "host" / "pyblock"
        blk.mkdir(parents=True, exist_ok=True)
        (blk / "sitecustomize.py").write_text(_BLOCKER)
        (self.sandbox / "host" / "logs").mkdir(exist_ok=True)

    def packages(self) -> dict[str, str]:
        return self._packages

    def battery_text(self) -> str:
        k = self.knobs
        return ("Current Battery Service state:\n"
                f"  AC powered: false\n  USB powered: {str(k.charging).lower()}\n  Wireless powered: false\n"
                "  Max charging current: 500000\n  Max charging voltage: 5000000\n  Charge counter: 2900000\n"
                f"  status: {2 if k.charging else 3}\n  health: 2\n  present: true\n  level: {k.battery_level}\n"
                "  scale: 100\n  voltage: 4012\n  temperature: 305\n  technology: Li-ion\n")

    def df(self, path: str) -> tuple[int, int, int, str]:
        k = self.knobs
        total = int(k.storage_gb * 1e9 / 1024)
        avail = max(0, int(k.free_gb * 1e9 / 1024) - self.fs.used_bytes("/data") // 1024)
        mount = "/data" if path.startswith("/data") else "/"
        return total, total - avail, avail, mount

    # ---- processes -----------------------------------------------------------------------------
    def new_pid(self) -> int:
        with self._pid_lock:
            self._next_pid += 1
            return self._next_pid

    def killed(self, pid: int) -> bool:
        p = self.procs.get(pid)
        return bool(p and p.killed)

    def background(self, ctx: Ctx, fn) -> int:
        pid = self.new_pid()
        sub = ctx.fork()
        sub.pid = pid
        sub.attach = True
        proc = Proc(pid, ctx.pid, ctx.uid, "sh (background)")
        self.procs[pid] = proc

        def body():
            try:
                fn(sub)
                proc.status = sub.status
            except Exception as e:  # a bug in the emulator must not kill the phone
                self.log.append(f"background {pid}: {e!r}")
                proc.status = 1
            finally:
                proc.done.set()

        t = threading.Thread(target=body, daemon=True, name=f"{self.name}-bg-{pid}")
        proc.thread = t
        ctx.children.append(pid)
        t.start()
        return pid

    def wait_pid(self, pid: int) -> int:
        p = self.procs.get(pid)
        if p is None:
            return 127
        p.done.wait()
        if p.popen is not None:
            p.popen.wait()
            return p.popen.returncode if p.popen.returncode >= 0 else 128 - p.popen.returncode
        return p.status

    def kill_pid(self, uid: int, pid: int, sig: int = 15) -> str | None:
        p = self.procs.get(pid)
        if p is None or not p.alive():
            return "No such process"
        if uid not in (ROOT, p.uid):
            return "Operation not permitted"
        p.killed = True
        if p.popen is not None and p.popen.poll() is None:
            try:
                os.killpg(p.popen.pid, signal.SIGKILL if sig == 9 else signal.SIGTERM)
            except ProcessLookupError:
                pass
        return None

    def _host_args(self, ctx: Ctx, argv: list[str]) -> list[str]:
        out = []
        prev = ""
        for a in argv:
            m = re.fullmatch(r"(127\.0\.0\.1|localhost|0\.0\.0\.0|" + re.escape(self.wifi_ip) + r"):(\d+)", a)
            if m:
                a = self.listen_address(m.group(1), int(m.group(2)))
            elif prev == "--port" and a.isdigit():
                a = str(self.host_port(int(a)))
            elif a.startswith("--port=") and a[7:].isdigit():
                a = f"--port={self.host_port(int(a[7:]))}"
            else:
                key, eq, val = a.partition("=") if a.startswith("--") else ("", "", a)
                if val.startswith("/") and (val + "/").startswith(PHONE_ROOTS) or val in ("/data", "/sdcard"):
                    p = norm(val)
                    if self.fs.exists(p) and not self.fs.is_dir(p) and not self.fs.access(ctx.uid, p, 4):
                        host = str(self.sandbox / "host" / "denied" / p.lstrip("/"))  # as unreadable as on a phone
                        self.log.append(f"uid {ctx.uid} may not read {p}: the program sees no file")
                    else:
                        host = str(self.fs.host(p))
                    a = key + eq + host
            out.append(a)
            prev = a if not a.isdigit() else prev
        return out

    def host_port(self, phone_port: int) -> int:
        """The port of this host that stands for the phone's loopback port ``phone_port``."""
        if phone_port not in self.port_map or self.port_map[phone_port][0] != "127.0.0.1":
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port_map[phone_port] = ("127.0.0.1", s.getsockname()[1])
        return self.port_map[phone_port][1]

    def listen_address(self, host: str, phone_port: int) -> str:
        """Where a program asked to listen on ``host:phone_port`` listens on this host: the phone's
        loopback is a free port of this host's; every interface (or the Wi-Fi address) is the Wi-Fi
        address and the same port, unless there is no Wi-Fi or the access point isolates its clients
        (then the phone's Wi-Fi address reaches nothing)."""
        k = self.knobs
        if host in ("0.0.0.0", self.wifi_ip) and k.wifi and not k.wifi_isolated:
            self.port_map[phone_port] = (self.wifi_ip, phone_port)
            return f"{self.wifi_ip}:{phone_port}"
        return f"127.0.0.1:{self.host_port(phone_port)}"

    def interfaces(self) -> list[tuple[str, str, int]]:
        """(name, IPv4 address, prefix length) as ``ip addr`` lists them."""
        out = [("lo", "127.0.0.1", 8)]
        if self.knobs.wifi:
            out.append(("wlan0", self.wifi_ip, 24))
        return out

    def sysfs_view(self, uid: int) -> Path:
        """A directory holding the /sys files ``uid`` may read (links into the sandbox): the root a
        program started here reads thermal zones and the battery from (``LLSIM_SYSFS_ROOT``), since it
        runs as this host's user, who could read them all."""
        view = self.sandbox / "host" / f"sysfs-{uid}"
        for base in ("/sys/class/thermal", "/sys/class/power_supply"):
            if not self.fs.is_dir(base):
                continue
            for sub in sorted(os.listdir(self.fs.host(base))):
                for f in ("type", "temp", "capacity", "status"):
                    p = f"{base}/{sub}/{f}"
                    dst = view / p.lstrip("/")
                    if self.fs.exists(p) and self.fs.access(uid, p, 4):
                        if not dst.is_symlink():  # updated in place: programs already running read it
                            dst.parent.mkdir(parents=True, exist_ok=True)
                            os.symlink(self.fs.host(p), dst)
                    elif dst.is_symlink():
                        dst.unlink()
        return view

    def exec_file(self, ctx: Ctx, path: str, argv: list[str], io: IO) -> int:
        fs = self.fs
        name = posixpath.basename(path)
        if not fs.access(ctx.uid, path, 1) or fs.is_dir(path):
            io.error(f"/system/bin/sh: {argv[0]}: Permission denied" if fs.exists(path)
                     else f"/system/bin/sh: {argv[0]}: inaccessible or not found")
            return 126 if fs.exists(path) else 127
        if path in (TERMUX_SH, "/system/bin/sh"):
            from llsim.adb.shell import b_sh
            return b_sh(ctx, ["sh"] + argv[1:], io)
        if path.startswith(TERMUX_PREFIX + "/bin/") and re.fullmatch(r"python(3(\.\d+)?)?", name):
            return self._python(ctx, argv, io)
        io.error(f"/system/bin/sh: {argv[0]}: not executable: magic 7F45")
        return 126

    def _python(self, ctx: Ctx, argv: list[str], io: IO) -> int:
        k = self.knobs
        args = self._host_args(ctx, argv[1:])
        script = next((a for a in argv[1:] if not a.startswith("-")), None)
        if script and argv[1:2] != ["-c"] and not argv[1].startswith("-"):
            p = norm(script, ctx.cwd)
            if not fs_readable(self.fs, ctx.uid, p):
                err = "No such file or directory" if not self.fs.exists(p) else "Permission denied"
                io.error(f"{argv[0]}: can't open file '{script}': [Errno {2 if 'No such' in err else 13}] {err}")
                return 2
        env = dict(os.environ)
        for key, val in ctx.env.items():
            env[key] = str(self.fs.host(val)) if val.startswith("/") and (val + "/").startswith(PHONE_ROOTS) else val
        env.setdefault("HOME", str(self.fs.host(TERMUX_HOME)))
        env["PREFIX"] = str(self.fs.host(TERMUX_PREFIX))
        env["TMPDIR"] = str(self.fs.host(TERMUX_PREFIX + "/tmp"))
        env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
        env["PYTHONNOUSERSITE"] = "1"
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PYTHONPATH"] = str(self.sandbox / "host" / "pyblock")
        env["LLSIM_FAKEPHONE_MISSING"] = ",".join(m for m, ok in (("numpy", k.numpy),
                                                                   ("onnxruntime", k.onnxruntime)) if not ok)
        env["LLSIM_FAKEPHONE_PARENT"] = str(os.getpid())
        env["LLSIM_SYSFS_ROOT"] = str(self.sysfs_view(ctx.uid))
        env["LLSIM_PHONE_ROOT"] = str(self.fs.root)  # llsim's worker reads the phone paths it is sent in here
        env["LLSIM_FAKEPHONE_WIFI"] = self.wifi_ip if k.wifi and not k.wifi_isolated else ""
        cwd = self.fs.host(ctx.cwd) if self.fs.is_dir(ctx.cwd) else self.fs.host(TERMUX_HOME)
        attach = getattr(ctx, "attach", False) and ctx.pid in self.procs and self.procs[ctx.pid].popen is None
        pid = ctx.pid if attach else self.new_pid()
        cmdline = " ".join(argv)
        logf = self.sandbox / "host" / "logs" / f"{pid}.log"
        if attach:
            proc = self.procs[pid]
            proc.cmdline = cmdline
            with logf.open("ab") as lf:
                proc.popen = subprocess.Popen([sys.executable] + args, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                              stdout=lf, stderr=subprocess.STDOUT, start_new_session=True)
            if proc.killed:
                self.kill_pid(ROOT, pid)
            proc.popen.wait()
            rc = proc.popen.returncode
            return rc if rc >= 0 else 128 - rc
        proc = Proc(pid, ctx.pid, ctx.uid, cmdline)
        self.procs[pid] = proc
        try:
            proc.popen = subprocess.Popen([sys.executable] + args, cwd=cwd, env=env, stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
            out, err = proc.popen.communicate(io.stdin)
        finally:
            proc.done.set()
        io.write(out)
        io.err += err
        rc = proc.popen.returncode
        return rc if rc >= 0 else 128 - rc

    # ---- Android's am: Termux's RUN_COMMAND ----------------------------------------------------
    def am(self, ctx: Ctx, argv: list[str], io: IO) -> int:
        sub = argv[1] if len(argv) > 1 else ""
        if sub == "force-stop" and len(argv) > 2:
            if argv[2] == TERMUX_PKG:
                for p in list(self.procs.values()):
                    if p.uid == TERMUX and p.alive():
                        self.kill_pid(ROOT, p.pid, 9)
            return 0
        if sub not in ("startservice", "start-service", "start-foreground-service"):
            io.error(f"am: unsupported by the llsim stand-in phone: {' '.join(argv[1:])}")
            return 1
        comp = action = None
        extras: dict[str, object] = {}
        i = 2
        while i < len(argv):
            a = argv[i]
            if a == "-n":
                comp, i = argv[i + 1], i + 2
            elif a == "-a":
                action, i = argv[i + 1], i + 2
            elif a == "--user":
                i += 2
            elif a in ("--es", "--ez", "--ei", "--esa"):
                key, val = argv[i + 1], argv[i + 2]
                if a == "--esa":
                    val = [x.replace("\\,", ",") for x in re.split(r"(?<!\\),", val)]
                elif a == "--ez":
                    val = val.lower() == "true"
                extras[key] = val
                i += 3
            else:
                i += 1
        short = comp.replace("com.termux/com.termux.", "com.termux/.") if comp else ""
        io.write(f"Starting service: Intent {{ act={action} cmp={short} (has extras) }}\n")
        pkg = (comp or "").split("/")[0]
        if pkg not in self._packages:
            io.write("Error: Not found; no service started.\n")
            return 255
        if comp == RUN_COMMAND_SERVICE and not self.knobs.run_command_permission:
            io.write(f"Error: Requires permission {RUN_COMMAND_PERMISSION}\n")
            return 255
        if comp == RUN_COMMAND_SERVICE and action == "com.termux.RUN_COMMAND":
            threading.Thread(target=self._termux_run_command, args=(extras,), daemon=True).start()
        return 0

    def termux_env(self) -> dict[str, str]:
        return {"HOME": TERMUX_HOME, "PREFIX": TERMUX_PREFIX, "PATH": TERMUX_PREFIX + "/bin",
                "TMPDIR": TERMUX_PREFIX + "/tmp", "LANG": "en_US.UTF-8"}

    def _termux_run_command(self, extras: dict) -> None:
        time.sleep(0.1)  # Termux receives the intent a little later
        if not self.knobs.external_apps:
            self.log.append("termux: RUN_COMMAND refused: allow-external-apps is not true in termux.properties")
            return
        path = str(extras.get("com.termux.RUN_COMMAND_PATH", ""))
        path = path.replace("$PREFIX", TERMUX_PREFIX).replace("~/", TERMUX_HOME + "/")
        args = extras.get("com.termux.RUN_COMMAND_ARGUMENTS") or []
        workdir = str(extras.get("com.termux.RUN_COMMAND_WORKDIR") or TERMUX_HOME)
        if not self.fs.exists(path) or not self.fs.access(TERMUX, path, 1):
            self.log.append(f"termux: RUN_COMMAND: {path}: no such executable")
            return
        ctx = Ctx(self, uid=TERMUX, cwd=workdir if self.fs.is_dir(workdir) else TERMUX_HOME,
                  env=self.termux_env(), umask=0o077, pid=0)
        self.background(ctx, lambda c: execute(c, [path] + list(args), IO()))

    def user_runs_in_termux(self, command: str) -> int:
        """A person types ``command`` in a Termux session (the manual start method); returns its pid."""
        ctx = Ctx(self, uid=TERMUX, cwd=TERMUX_HOME, env=self.termux_env(), umask=0o077, pid=0)
        return self.background(ctx, lambda c: run_script(c, command, IO()))

    def run_shell(self, command: str) -> tuple[bytes, bytes, int]:
        pid = self.new_pid()
        proc = Proc(pid, 1, SHELL, f"sh -c {command[:60]}")
        self.procs[pid] = proc
        ctx = Ctx(self, uid=SHELL, cwd="/", env={"PATH": "/product/bin:/apex/com.android.runtime/bin:/system/bin",
                                                  "HOME": "/", "TMPDIR": "/data/local/tmp"}, umask=0o000, pid=pid)
        io = IO()
        try:
            st = run_script(ctx, command, io)
        except Exception as e:  # an emulator bug: say so on stderr, never hang the stream
            io.error(f"llsim stand-in phone: internal error running {command!r}: {e!r}")
            st = 1
        finally:
            proc.done.set()
            self.procs.pop(pid, None)
        return bytes(io.out), bytes(io.err), st

    # ---- the daemon ----------------------------------------------------------------------------
    def start(self) -> "FakePhone":
        if self._thread is not None:
            return self
        started = threading.Event()
        err: list[BaseException] = []

        def run():
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._listen())
            except BaseException as e:  # e.g. port in use
                err.append(e)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name=f"fakephone-{self.name}")
        self._thread.start()
        started.wait(10)
        if err:
            self._thread = None
            raise err[0]
        from llsim.hil.launcher import register_live

        register_live(self)  # stopped at interpreter exit and on SIGTERM/SIGHUP, like local workers
        self._t0 = time.monotonic()
        k = self.knobs
        if k.unplug_after_s is not None:
            self._later(k.unplug_after_s, self.unplug)
        return self

    def _later(self, delay: float, fn) -> None:
        t = threading.Timer(delay, fn)
        t.daemon = True
        self._timers.append(t)
        t.start()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._on_connection, self.host, self.port,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        self.props["ro.serialno"] = hashlib.sha1(f"{self.profile.name}:{self.host}:{self.port}".encode()
                                                 ).hexdigest()[:12].upper()
        self.online = True

    def _call(self, coro_fn, timeout: float = 10):
        if self._loop is None or not self._loop.is_running():
            return None
        return asyncio.run_coroutine_threadsafe(coro_fn(), self._loop).result(timeout)

    def unplug(self) -> None:
        """The cable is pulled: every connection drops and the port stops answering."""
        async def go():
            if self._server is not None:
                self._server.close()
                self._server = None
            for t in list(self._transports):
                t.abort()
            self.online = False
        self._call(go)
        self.log.append("unplugged")
        if self.knobs.replug_after_s is not None:
            self._later(self.knobs.replug_after_s, self.replug)

    def replug(self) -> None:
        """The cable is back: the port answers again and the adb server reconnects by itself."""
        if self.online:
            return
        self._call(self._listen)
        self.log.append("replugged")

    def authorize(self) -> None:
        """The user taps "Allow" in the USB-debugging dialog."""
        self.authorized = True

        async def go():
            for t in list(self._transports):
                if t.awaiting_auth:
                    await t.send_cnxn()
        self._call(go)

    def stop(self) -> None:
        from llsim.hil.launcher import unregister_live

        unregister_live(self)
        for t in self._timers:
            t.cancel()
        if self._thread is not None:
            try:
                self.unplug()
            except Exception:
                pass
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._thread = None
        for p in list(self.procs.values()):
            p.killed = True
            if p.popen is not None and p.popen.poll() is None:
                try:
                    os.killpg(p.popen.pid, signal.SIGTERM)
                    p.popen.wait(3)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    try:
                        os.killpg(p.popen.pid, signal.SIGKILL)
                        p.popen.wait(3)
                    except (ProcessLookupError, subprocess.TimeoutExpired):
                        pass
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._own_sandbox:
            shutil.rmtree(self.sandbox, ignore_errors=True)

    def host_pids(self) -> list[int]:
        return [p.popen.pid for p in self.procs.values() if p.popen is not None and p.popen.poll() is None]

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    async def _on_connection(self, reader, writer) -> None:
        t = _Transport(self, reader, writer)
        self._transports.add(t)
        try:
            await t.run()
        finally:
            self._transports.discard(t)
            await t.shutdown()


def fs_readable(fs: PhoneFS, uid: int, path: str) -> bool:
    return fs.exists(path) and fs.access(uid, path, 4)


# ---- one adb transport (one TCP connection from the adb server) --------------------------------
class _Stream:
    def __init__(self, t: "_Transport", local_id: int, remote_id: int):
        self.t, self.local_id, self.remote_id = t, local_id, remote_id
        self.ready = asyncio.Event()
        self.ready.set()
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.buf = bytearray()
        self.closed = False

    async def write(self, data: bytes) -> bool:
        step = self.t.max_payload
        for i in range(0, len(data), step):
            await self.ready.wait()
            if self.closed:
                return False
            self.ready.clear()
            await self.t.send(P.Message(P.A_WRTE, self.local_id, self.remote_id, bytes(data[i:i + step])))
        return not self.closed

    async def recv(self) -> bytes | None:
        """The next WRTE payload (acknowledged); None once the peer closed."""
        if self.closed and self.inbox.empty():
            return None
        data = await self.inbox.get()
        if data is None:
            return None
        await self.t.send(P.Message(P.A_OKAY, self.local_id, self.remote_id))
        return data

    async def readexactly(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            d = await self.recv()
            if d is None:
                return None
            self.buf += d
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.ready.set()
            self.inbox.put_nowait(None)
            await self.t.send(P.Message(P.A_CLSE, self.local_id, self.remote_id))
            self.t.streams.pop(self.local_id, None)

    def peer_closed(self) -> None:
        self.closed = True
        self.ready.set()
        self.inbox.put_nowait(None)


class _Transport:
    def __init__(self, phone: FakePhone, reader, writer):
        self.phone, self.reader, self.writer = phone, reader, writer
        self.version = P.A_VERSION_MIN
        self.max_payload = P.MAX_PAYLOAD_V1
        self.streams: dict[int, _Stream] = {}
        self.tasks: set = set()
        self._next_id = 0
        self.awaiting_auth = False
        self.connected = False
        self.pace_out = _Pacer(phone.knobs.usb_mbps)
        self.pace_in = _Pacer(phone.knobs.usb_mbps)
        self.token = b""
        self._wlock = asyncio.Lock()

    def abort(self) -> None:
        self.writer.transport.abort()

    async def send(self, msg: P.Message) -> None:
        await self.pace_out(P.HEADER.size + len(msg.data))
        async with self._wlock:
            if self.writer.is_closing():
                return
            self.writer.write(msg.pack(with_checksum=self.version < P.A_VERSION_SKIP_CHECKSUM
                                       or msg.command in (P.A_CNXN, P.A_AUTH)))
            try:
                await self.writer.drain()
            except (ConnectionError, OSError):
                pass

    async def send_cnxn(self) -> None:
        props = self.phone.props
        banner = (f"device::ro.product.name={props['ro.product.name']};ro.product.model={props['ro.product.model']};"
                  f"ro.product.device={props['ro.product.device']};features={FEATURES}")
        self.awaiting_auth = False
        self.connected = True
        await self.send(P.Message(P.A_CNXN, self.version, self.max_payload, banner.encode()))

    async def run(self) -> None:
        k = self.phone.knobs
        try:
            while True:
                raw = await self.reader.readexactly(P.HEADER.size)
                cmd, arg0, arg1, length, check = P.parse_header(raw, max(self.max_payload, P.MAX_HANDSHAKE_PAYLOAD))
                data = await self.reader.readexactly(length) if length else b""
                await self.pace_in(P.HEADER.size + length)
                if (self.version < P.A_VERSION_SKIP_CHECKSUM or cmd == P.A_CNXN) and check and \
                        P.checksum(data) != check:
                    raise P.ProtocolError(f"{P.COMMANDS.get(cmd, cmd)}: data checksum mismatch")
                if cmd == P.A_CNXN:
                    self.version = min(arg0, k.version)
                    if self.version < P.A_VERSION_MIN:
                        raise P.ProtocolError(f"host protocol version 0x{arg0:08x} is too old")
                    self.max_payload = min(arg1, k.max_payload)
                    for s in list(self.streams.values()):
                        s.peer_closed()
                    self.streams.clear()
                    if self.phone.authorized:
                        await self.send_cnxn()
                    else:
                        await self._send_token()
                elif cmd == P.A_AUTH:
                    if arg0 == P.AUTH_SIGNATURE and not self.phone.authorized:
                        await self._send_token()  # no key of ours signs it: ask for the next one
                    elif arg0 == P.AUTH_RSAPUBLICKEY:
                        self.awaiting_auth = True  # the phone shows its "Allow USB debugging?" dialog
                        if self.phone.authorized:
                            await self.send_cnxn()
                    elif self.phone.authorized:
                        await self.send_cnxn()
                elif not self.connected:
                    raise P.ProtocolError(f"{P.COMMANDS.get(cmd, cmd)} before the connection was made")
                elif cmd == P.A_OPEN:
                    await self._open(arg0, data)
                elif cmd == P.A_OKAY:
                    s = self.streams.get(arg1)
                    if s is not None:
                        s.ready.set()
                elif cmd == P.A_WRTE:
                    s = self.streams.get(arg1)
                    if s is None:
                        await self.send(P.Message(P.A_CLSE, 0, arg0))
                    else:
                        s.inbox.put_nowait(data)
                elif cmd == P.A_CLSE:
                    s = self.streams.pop(arg1, None)
                    if s is not None:
                        s.peer_closed()
                else:
                    raise P.ProtocolError(f"unknown command 0x{cmd:08x}")
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except P.ProtocolError as e:
            self.phone.log.append(f"protocol error: {e}")

    async def shutdown(self) -> None:
        for s in list(self.streams.values()):
            s.peer_closed()
        for task in list(self.tasks):
            task.cancel()
        try:
            self.writer.close()
        except Exception:
            pass

    async def _send_token(self) -> None:
        self.token = os.urandom(P.TOKEN_SIZE)
        await self.send(P.Message(P.A_AUTH, P.AUTH_TOKEN, 0, self.token))

    async def _open(self, remote_id: int, data: bytes) -> None:
        service = data.rstrip(b"\0").decode(errors="replace")
        self._next_id += 1
        s = _Stream(self, self._next_id, remote_id)
        handler = None
        if service.startswith("shell"):
            head, _, cmd = service.partition(":")
            opts = head.split(",")[1:]
            handler = self._shell(s, cmd, v2="v2" in opts)
        elif service.startswith("exec:"):
            handler = self._shell(s, service[5:], v2=False)
        elif service == "sync:":
            handler = self._sync(s)
        elif service.startswith("tcp:"):
            port = service[4:].split(":")[0]
            if port.isdigit():
                hp = self.phone.port_map.get(int(port))
                try:
                    if hp is None:
                        raise ConnectionRefusedError
                    r, w = await asyncio.open_connection(*hp)
                except OSError:
                    await self.send(P.Message(P.A_CLSE, 0, remote_id))
                    return
                handler = self._tcp(s, r, w)
        if handler is None:
            await self.send(P.Message(P.A_CLSE, 0, remote_id))
            return
        self.streams[s.local_id] = s
        await self.send(P.Message(P.A_OKAY, s.local_id, remote_id))
        task = asyncio.get_running_loop().create_task(self._guard(s, handler))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _guard(self, s: _Stream, handler) -> None:
        try:
            await handler
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.phone.log.append(f"stream {s.local_id}: {e!r}")
        finally:
            if not self.writer.is_closing():
                await s.close()

    # ---- services ------------------------------------------------------------------------------
    async def _shell(self, s: _Stream, cmd: str, v2: bool) -> None:
        loop = asyncio.get_running_loop()
        if not cmd.strip():
            await self._interactive(s, v2)
            return
        out, err, status = await loop.run_in_executor(self.phone._pool, self.phone.run_shell, cmd)
        if not v2:
            await s.write(out + err)
            return
        step = self.max_payload - P.SHELL_V2_HEADER.size
        for kind, data in ((P.SHELL_STDOUT, out), (P.SHELL_STDERR, err)):
            for i in range(0, len(data), step):
                await s.write(P.shell_v2_packet(kind, data[i:i + step]))
        await s.write(P.shell_v2_packet(P.SHELL_EXIT, bytes([status & 0xFF])))

    async def _interactive(self, s: _Stream, v2: bool) -> None:
        """``adb shell`` with no command: one line at a time, a ``$`` prompt."""
        loop = asyncio.get_running_loop()
        prompt = f"{self.phone.props['ro.product.device']}:/ $ ".encode()
        pending = bytearray()

        async def out(kind, data):
            await s.write(P.shell_v2_packet(kind, data) if v2 else data)

        await out(P.SHELL_STDOUT, prompt)
        while True:
            if v2:
                hdr = await s.readexactly(P.SHELL_V2_HEADER.size)
                if hdr is None:
                    return
                kind, n = P.SHELL_V2_HEADER.unpack(hdr)
                data = await s.readexactly(n) if n else b""
                if data is None or kind == P.SHELL_CLOSE_STDIN:
                    return
                if kind != P.SHELL_STDIN:
                    continue
            else:
                data = await s.recv()
                if data is None:
                    return
            pending += data.replace(b"\r", b"\n")
            while b"\n" in pending:
                line, _, rest = bytes(pending).partition(b"\n")
                pending = bytearray(rest)
                text = line.decode(errors="replace").strip()
                if text in ("exit", "logout"):
                    if v2:
                        await s.write(P.shell_v2_packet(P.SHELL_EXIT, b"\0"))
                    return
                if text:
                    o, e, _ = await loop.run_in_executor(self.phone._pool, self.phone.run_shell, text)
                    if o:
                        await out(P.SHELL_STDOUT, o)
                    if e:
                        await out(P.SHELL_STDERR, e)
                await out(P.SHELL_STDOUT, prompt)

    async def _tcp(self, s: _Stream, reader, writer) -> None:
        async def up():  # phone program -> host
            try:
                while True:
                    d = await reader.read(self.max_payload)
                    if not d or not await s.write(d):
                        return
            except (ConnectionError, OSError):
                return
            finally:  # the program closed its end (or died): adbd closes the stream (CLSE), so must we
                s.inbox.put_nowait(None)

        task = asyncio.get_running_loop().create_task(up())
        try:
            while True:  # host -> phone program; OKAY only once the program's socket took the bytes
                if s.closed and s.inbox.empty():
                    break
                data = await s.inbox.get()
                if data is None:
                    break
                writer.write(data)
                await writer.drain()
                await self.send(P.Message(P.A_OKAY, s.local_id, s.remote_id))
        except (ConnectionError, OSError):
            pass
        finally:
            try:
                writer.close()
            except Exception:
                pass
            await task

    async def _sync(self, s: _Stream) -> None:
        fs = self.phone.fs
        while True:
            hdr = await s.readexactly(8)
            if hdr is None:
                return
            rid, n = P.SYNC_REQUEST.unpack(hdr)
            if rid == b"QUIT":
                return
            if n > P.SYNC_PATH_MAX:
                await self._sync_fail(s, f"path too long: {n}")
                return
            raw = await s.readexactly(n)
            if raw is None:
                return
            path = raw.decode(errors="replace")
            if rid == b"STAT":
                try:
                    mode, size, mtime, _ = fs.stat(SHELL, path)
                except FSError:
                    mode = size = mtime = 0
                await s.write(P.SYNC_STAT_V1.pack(b"STAT", mode, size & 0xFFFFFFFF, mtime))
            elif rid in (b"STA2", b"LST2"):
                try:
                    mode, size, mtime, meta = fs.stat(SHELL, path)
                    await s.write(P.SYNC_STAT_V2.pack(rid, 0, 64768, hash(path) & 0xFFFFFFFF, mode, 1, meta.uid,
                                                      meta.uid, size, mtime, mtime, mtime))
                except FSError as e:
                    await s.write(P.SYNC_STAT_V2.pack(rid, e.errno, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
            elif rid == b"LIST":
                try:
                    names = fs.listdir(SHELL, path)
                    entries = [".", ".."] + names
                except FSError:
                    entries = []
                for name in entries:
                    try:
                        mode, size, mtime, _ = fs.stat(ROOT, posixpath.join(norm(path), name))
                    except FSError:
                        continue
                    nb = name.encode()
                    await s.write(P.SYNC_DENT.pack(b"DENT", mode, size & 0xFFFFFFFF, mtime, len(nb)) + nb)
                await s.write(P.SYNC_DENT.pack(b"DONE", 0, 0, 0, 0))
            elif rid == b"SEND":
                if not await self._sync_send(s, path):
                    return
            elif rid == b"RECV":
                try:
                    with fs.open_read(SHELL, path) as f:
                        while True:
                            chunk = f.read(P.SYNC_DATA_MAX)
                            if not chunk:
                                break
                            if not await s.write(b"DATA" + len(chunk).to_bytes(4, "little") + chunk):
                                return
                    await s.write(b"DONE\0\0\0\0")
                except FSError as e:
                    await self._sync_fail(s, f"open failed: {os.strerror(e.errno)}")
            else:
                await self._sync_fail(s, f"unknown sync request {rid!r}")
                return

    async def _sync_fail(self, s: _Stream, msg: str) -> None:
        m = msg.encode()
        await s.write(b"FAIL" + len(m).to_bytes(4, "little") + m)

    async def _sync_send(self, s: _Stream, spec: str) -> bool:
        path, _, mode_s = spec.rpartition(",")
        if not path:
            path, mode_s = spec, "33188"
        try:
            mode = int(mode_s) & 0o7777
        except ValueError:
            mode = 0o644
        fs = self.phone.fs
        f, error = None, None
        try:
            if stat_mod.S_ISLNK(int(mode_s or 0)):
                raise FSError(95, path)
            f = fs.open_write(SHELL, path, mode)
        except FSError as e:
            error = f"couldn't create file: {os.strerror(e.errno)}"
        except ValueError:
            error = "bad mode"
        k = self.phone.knobs
        try:
            while True:
                hdr = await s.readexactly(8)
                if hdr is None:
                    return False
                rid, n = P.SYNC_REQUEST.unpack(hdr)
                if rid == b"DATA":
                    if n > P.SYNC_DATA_MAX:
                        await self._sync_fail(s, f"data chunk of {n} bytes exceeds {P.SYNC_DATA_MAX}")
                        return False
                    data = await s.readexactly(n)
                    if data is None:
                        return False
                    if f is not None:
                        f.write(data)
                    self.phone.pushed_bytes += n
                    if k.unplug_after_push_bytes is not None and self.phone.pushed_bytes >= k.unplug_after_push_bytes:
                        k.unplug_after_push_bytes = None
                        asyncio.get_running_loop().call_soon(
                            lambda: self.phone._pool.submit(self.phone.unplug))
                elif rid == b"DONE":
                    if f is not None:
                        f.close()
                        f = None
                        fs.set_mtime(path, n)
                    if error:
                        await self._sync_fail(s, error)
                    else:
                        await s.write(b"OKAY\0\0\0\0")
                    return True
                else:
                    await self._sync_fail(s, f"unexpected {rid!r} during SEND")
                    return False
        finally:
            if f is not None:
                f.close()
