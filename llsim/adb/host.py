"""The host side of ADB: the adb server, and what a phone is (model, SoC, CPU clusters, RAM, Android,
Termux), read through adbutils.

llsim never starts an adb server by itself (adbutils would, and leave a daemon behind): when none
answers, the error says how to start one. ``ANDROID_ADB_SERVER_HOST`` / ``ANDROID_ADB_SERVER_PORT``
choose the server, as for adb itself.
"""
from __future__ import annotations

import os
import re
import socket
from dataclasses import asdict, dataclass, field

import adbutils
from adbutils._adb import AdbConnection

from llsim.errors import LLSimError

DEFAULT_PORT = 5037


def adb_binary() -> str:
    try:
        return adbutils.adb_path()
    except Exception as e:  # adbutils raises when neither $ADBUTILS_ADB_PATH, PATH nor its wheel has one
        raise LLSimError(f"no adb binary found ({e}); install platform-tools or reinstall adbutils") from None


def server_address() -> tuple[str, int]:
    host = os.environ.get("ANDROID_ADB_SERVER_HOST") or "127.0.0.1"
    raw = os.environ.get("ANDROID_ADB_SERVER_PORT") or str(DEFAULT_PORT)
    try:
        port = int(raw)
        if not 0 < port < 65536:
            raise ValueError
    except ValueError:
        raise LLSimError(f"ANDROID_ADB_SERVER_PORT={raw!r} is not a TCP port (1-65535)") from None
    return host, port


def server_reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class _Connection(AdbConnection):
    """adbutils' connection without its fallback of starting an adb server."""

    def _safe_connect(self):
        create = getattr(self, "_create_socket", None)  # adbutils 2.x; a later 2.x without it: its own path
        return create() if create is not None else super()._safe_connect()


class Client(adbutils.AdbClient):
    def make_connection(self, timeout=None):
        timeout = timeout or 30
        try:
            c = _Connection(self.host, self.port)
        except adbutils.AdbError as e:
            raise LLSimError(_no_server(self.host, self.port, str(e))) from None
        c.conn.settimeout(timeout)
        return c


def _no_server(host: str, port: int, why: str = "") -> str:
    adb = adb_binary()
    start = f"{adb} start-server" if port == DEFAULT_PORT else f"{adb} -P {port} start-server"
    return (f"no adb server answers on {host}:{port}{' (' + why + ')' if why and 'refused' not in why else ''}: "
            f"start one with `{start}` (or point ANDROID_ADB_SERVER_PORT at a running one)")


def client() -> Client:
    """A client of the running adb server; one-line error when there is none."""
    host, port = server_address()
    if not server_reachable(host, port):
        raise LLSimError(_no_server(host, port))
    return Client(host, port)


def adb_error(serial: str, e: Exception, doing: str, c: "Client | None" = None) -> LLSimError:
    msg = str(e).strip() or type(e).__name__
    now = None
    if c is not None and server_reachable(c.host, c.port):
        try:
            now = states(c).get(serial, "gone")
        except LLSimError:
            now = None
    if now is not None and now != "device":
        msg = f"{msg}; it is now {now}"
    if (now is not None and now != "device") or isinstance(e, (ConnectionError, EOFError, socket.timeout, OSError)) \
            or "offline" in msg or "not found" in msg or "closed" in msg or "EOF" in msg:
        return LLSimError(f"{serial}: the phone stopped answering while {doing} ({msg}); check the cable, "
                          f"`adb devices`, and run again")
    return LLSimError(f"{serial}: adb failed while {doing}: {msg}")


def states(c: Client) -> dict[str, str]:
    """serial -> state (device, unauthorized, offline, ...) as the adb server lists them."""
    try:
        return {d.serial: d.state for d in c.list()}
    except adbutils.AdbError as e:
        raise LLSimError(f"the adb server at {c.host}:{c.port} failed to list devices: {e}") from None


def device(c: Client, serial: str) -> adbutils.AdbDevice:
    """The attached, authorised phone ``serial``; one-line errors that say what to do otherwise."""
    st = states(c)
    if serial not in st:
        known = ", ".join(f"{s} ({v})" for s, v in st.items()) or "none"
        raise LLSimError(f"no phone {serial!r} on the adb server {c.host}:{c.port} (attached: {known}); "
                         f"plug it in or `adb connect HOST:PORT`, then `llsim devices`")
    if st[serial] == "unauthorized":
        raise LLSimError(f"{serial} is unauthorized: unlock the phone and accept 'Allow USB debugging?'")
    if st[serial] != "device":
        raise LLSimError(f"{serial} is {st[serial]}: replug the cable (or `adb reconnect offline`)")
    return adbutils.AdbDevice(c, serial)


# ---- what a phone is ---------------------------------------------------------------------------
_QUERY = ("echo @@props; getprop; echo @@meminfo; cat /proc/meminfo; echo @@cpufreq; "
          "grep -H . /sys/devices/system/cpu/cpu[0-9]*/cpufreq/cpuinfo_max_freq 2>/dev/null; "
          "echo @@termux; pm path com.termux 2>/dev/null; echo @@battery; dumpsys battery 2>/dev/null; "
          "echo @@thermal; grep -H . /sys/class/thermal/thermal_zone*/temp 2>/dev/null; echo @@df; "
          "df /data/local/tmp 2>/dev/null; echo @@end")


@dataclass
class PhoneInfo:
    serial: str
    state: str
    model: str | None = None
    manufacturer: str | None = None
    soc: str | None = None
    android: str | None = None
    sdk: int | None = None
    abi: str | None = None
    clusters: list[dict] = field(default_factory=list)  # [{"cores": n, "max_ghz": f}], slowest first
    ram_total_gb: float | None = None
    ram_available_gb: float | None = None
    termux: bool | None = None
    termux_start: str | None = None       # run-command | run-as | None (found by the probe)
    python: str | None = None             # versions, None when absent or unknown
    numpy: str | None = None
    onnxruntime: str | None = None
    termux_checked: bool = False          # whether python/numpy/onnxruntime were really looked at
    battery_level: int | None = None
    battery_charging: bool | None = None
    thermal_zones_readable: int = 0
    max_temp_c: float | None = None
    data_free_gb: float | None = None
    stand_in: bool = False
    llsim_profile: str | None = None
    error: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


def _sections(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    cur = None
    for line in text.splitlines():
        line = line.rstrip("\r")
        if line.startswith("@@"):
            cur = line[2:]
            out[cur] = []
        elif cur is not None:
            out[cur].append(line)
    return out


def parse_props(lines: list[str]) -> dict[str, str]:
    props = {}
    for line in lines:
        m = re.match(r"^\[([^\]]+)\]: \[(.*)\]$", line)
        if m:
            props[m.group(1)] = m.group(2)
    return props


def parse_meminfo(lines: list[str]) -> dict[str, int]:
    out = {}
    for line in lines:
        m = re.match(r"^(\w+):\s+(\d+)\s*kB", line)
        if m:
            out[m.group(1)] = int(m.group(2)) * 1024
    return out


def clusters_of(freqs_khz: dict[int, int]) -> list[dict]:
    """CPU clusters by distinct max frequency, slowest first."""
    by: dict[int, int] = {}
    for _, khz in sorted(freqs_khz.items()):
        by[khz] = by.get(khz, 0) + 1
    return [{"cores": n, "max_ghz": round(khz / 1e6, 3)} for khz, n in sorted(by.items())]


def parse_df(lines: list[str]) -> float | None:
    for line in lines[1:]:
        parts = line.split()
        if len(parts) >= 4 and parts[3].isdigit():
            return int(parts[3]) * 1024 / 1e9
    return None


def query(dev: adbutils.AdbDevice, state: str = "device") -> PhoneInfo:
    """One shell round trip: properties, memory, CPU clusters, Termux package, battery, thermal, storage."""
    info = PhoneInfo(serial=dev.serial, state=state)
    text = dev.shell(_QUERY, timeout=30)
    sec = _sections(text)
    if "end" not in sec:
        raise adbutils.AdbError(f"truncated answer from {dev.serial}")
    props = parse_props(sec.get("props", []))
    info.model = props.get("ro.product.model") or None
    info.manufacturer = props.get("ro.product.manufacturer") or None
    soc_model = props.get("ro.soc.model") or ""
    soc_maker = props.get("ro.soc.manufacturer") or ""
    if soc_model:
        info.soc = f"{soc_maker} {soc_model}".strip()
    else:  # before Android 12 (API 31)
        info.soc = props.get("ro.board.platform") or props.get("ro.hardware") or None
    info.android = props.get("ro.build.version.release") or None
    sdk = props.get("ro.build.version.sdk", "")
    info.sdk = int(sdk) if sdk.isdigit() else None
    info.abi = props.get("ro.product.cpu.abi") or None
    info.stand_in = props.get("ro.llsim.stand_in") == "1"
    info.llsim_profile = props.get("ro.llsim.profile") or None
    mem = parse_meminfo(sec.get("meminfo", []))
    if "MemTotal" in mem:
        info.ram_total_gb = round(mem["MemTotal"] / 1e9, 2)
    if "MemAvailable" in mem:
        info.ram_available_gb = round(mem["MemAvailable"] / 1e9, 2)
    freqs = {}
    for line in sec.get("cpufreq", []):
        m = re.search(r"/cpu(\d+)/cpufreq/cpuinfo_max_freq:(\d+)", line)
        if m:
            freqs[int(m.group(1))] = int(m.group(2))
    info.clusters = clusters_of(freqs)
    info.termux = any(line.startswith("package:") for line in sec.get("termux", []))
    bat = {}
    for line in sec.get("battery", []):
        k, _, v = line.strip().partition(":")
        bat[k.strip()] = v.strip()
    if bat.get("level", "").isdigit():
        scale = int(bat.get("scale", "100") or 100) or 100
        info.battery_level = round(100 * int(bat["level"]) / scale)
    if bat:
        info.battery_charging = any(bat.get(k) == "true" for k in ("AC powered", "USB powered", "Wireless powered"))
    temps = []
    for line in sec.get("thermal", []):
        m = re.search(r"thermal_zone\d+/temp:(-?\d+)", line)
        if m:
            v = int(m.group(1))
            temps.append(v / 1000 if abs(v) > 200 else float(v))
    info.thermal_zones_readable = len(temps)
    info.max_temp_c = max(temps) if temps else None
    info.data_free_gb = parse_df(sec.get("df", []))
    return info


def battery(dev: adbutils.AdbDevice) -> int | None:
    """The battery level in % (``dumpsys battery``, which the adb shell may always run), or None."""
    bat = {}
    for line in dev.shell("dumpsys battery 2>/dev/null", timeout=30).splitlines():
        k, _, v = line.strip().partition(":")
        bat[k.strip()] = v.strip()
    if not bat.get("level", "").isdigit():
        return None
    scale = int(bat["scale"]) if bat.get("scale", "").isdigit() and int(bat["scale"]) > 0 else 100
    return round(100 * int(bat["level"]) / scale)


def list_phones(c: Client) -> list[tuple[str, str]]:
    return sorted(states(c).items())


# ---- the phone's network addresses (phone-to-phone tensors) ---------------------------------------
_WIFI_PREFIXES = ("wlan", "swlan", "p2p", "ap", "wifi")


def parse_addresses(text: str) -> list[tuple[str, str]]:
    """(interface, IPv4 address) of every interface but loopback, from ``ip -4 -o addr show`` (or
    ``ip addr``); Wi-Fi interfaces (wlan*, p2p* for Wi-Fi Direct, ...) first."""
    out: list[tuple[str, str]] = []
    iface = None
    for line in text.splitlines():
        m = re.match(r"^\d+:\s+([^:\s]+):?\s+inet\s+(\d+\.\d+\.\d+\.\d+)/\d+", line)  # -o: one line each
        if m:
            iface, addr = m.group(1), m.group(2)
        else:
            h = re.match(r"^\d+:\s+([^:\s@]+)[:@]", line)
            if h:
                iface = h.group(1)
                continue
            m = re.match(r"^\s+inet\s+(\d+\.\d+\.\d+\.\d+)/\d+", line)
            if not m or iface is None:
                continue
            addr = m.group(1)
        if iface != "lo" and (iface, addr) not in out:
            out.append((iface, addr))
    return sorted(out, key=lambda x: (not x[0].startswith(_WIFI_PREFIXES), x[0]))


_NOT_LAN = ("rmnet", "r_rmnet", "ccmni", "dummy", "tun", "ifb", "v4-", "clat", "ip6tnl", "sit", "gre", "erspan")


def addresses(dev: adbutils.AdbDevice) -> list[tuple[str, str]]:
    """The phone's IPv4 addresses other phones may reach it at: Wi-Fi (and Ethernet) first, never the
    cellular, VPN or tunnel interfaces; [] when none is up."""
    found = parse_addresses(dev.shell("ip -4 -o addr show 2>/dev/null || ip addr 2>/dev/null", timeout=30))
    return [(i, a) for i, a in found if not i.startswith(_NOT_LAN)]
