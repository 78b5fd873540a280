"""``llsim hil doctor SERIAL``: is this phone ready to run llsim's worker, and what to do if not.

Each check is ok, FAIL (required: the exit code is 1), warn (optional, or could not be decided) or
skip (an earlier check failed). Every failing check prints the exact commands that fix it.
"""
from __future__ import annotations

from dataclasses import dataclass

import adbutils

from llsim.adb import host as H
from llsim.adb import termux as T
from llsim.errors import LLSimError

TERMUX_PROPS_FIX = ("in Termux: mkdir -p ~/.termux && echo 'allow-external-apps = true' >> "
                    "~/.termux/termux.properties && termux-reload-settings")
PKG_FIX = "in Termux: pkg install python python-numpy python-onnxruntime"


@dataclass
class Check:
    name: str
    status: str          # ok | FAIL | warn | skip
    detail: str = ""
    fix: str = ""
    required: bool = True

    def to_json(self) -> dict:
        return {"name": self.name, "status": self.status.lower(), "detail": self.detail, "fix": self.fix,
                "required": self.required}


def run_checks(serial: str, min_free_gb: float = 1.0, min_battery: int = 20, probe_timeout: float = 8.0) -> list[Check]:
    checks: list[Check] = []
    add = checks.append
    host, port = H.server_address()
    remaining = ["authorised", "Termux installed", "Termux start method", "allow-external-apps",
                 "python in Termux", "numpy in Termux", "onnxruntime in Termux", "free storage", "battery",
                 "thermal readable"]

    def skip_rest(after: str):
        for n in remaining[remaining.index(after) + 1 if after in remaining else 0:]:
            add(Check(n, "skip", "not checked (see above)", required=False))

    if not H.server_reachable(host, port):
        add(Check("adb server", "FAIL", f"nothing answers on {host}:{port}",
                  f"{H.adb_binary()} {'' if port == H.DEFAULT_PORT else f'-P {port} '}start-server"))
        add(Check("phone attached", "skip", "not checked (see above)", required=False))
        skip_rest("")
        return checks
    c = H.Client(host, port)
    try:
        ver = c.server_version()
        add(Check("adb server", "ok", f"{host}:{port}, protocol version {ver}"))
    except (adbutils.AdbError, LLSimError, OSError) as e:
        add(Check("adb server", "FAIL", f"{host}:{port} does not answer as an adb server: {e}",
                  f"{H.adb_binary()} -P {port} kill-server; {H.adb_binary()} -P {port} start-server"))
        skip_rest("")
        return checks
    st = H.states(c)
    if serial not in st:
        known = ", ".join(f"{s} ({v})" for s, v in st.items()) or "none"
        add(Check("phone attached", "FAIL", f"{serial} is not attached (attached: {known})",
                  "plug the phone in with USB debugging on (Settings > Developer options), or "
                  f"`adb connect {serial}` for a phone on TCP; then `llsim devices`"))
        skip_rest("")
        return checks
    add(Check("phone attached", "ok", f"{serial} ({st[serial]})"))
    if st[serial] == "unauthorized":
        add(Check("authorised", "FAIL", "the phone has not accepted this computer's adb key",
                  "unlock the phone and tap 'Allow' in 'Allow USB debugging?' (tick 'Always allow'); no dialog: "
                  "Developer options > Revoke USB debugging authorisations, replug"))
        skip_rest("authorised")
        return checks
    if st[serial] != "device":
        add(Check("authorised", "FAIL", f"the phone is {st[serial]}",
                  "replug the cable; then `adb reconnect offline` or restart the adb server"))
        skip_rest("authorised")
        return checks
    add(Check("authorised", "ok"))
    dev = adbutils.AdbDevice(c, serial)
    try:
        info = H.query(dev)
        pr = T.probe(dev, timeout=probe_timeout)
    except (adbutils.AdbError, OSError, EOFError) as e:
        raise H.adb_error(serial, e, "checking the phone", c) from None
    if not pr.installed:
        add(Check("Termux installed", "FAIL", "package com.termux is not installed",
                  "install Termux from F-Droid or its GitHub releases (not the outdated Play Store build), open "
                  f"it once, then: {PKG_FIX}"))
        for n in remaining[remaining.index("Termux start method"):remaining.index("free storage")]:
            add(Check(n, "skip", "needs Termux", required=False))
    else:
        add(Check("Termux installed", "ok", "com.termux"))
        if pr.method:
            add(Check("Termux start method", "ok", f"{pr.method} works"
                      + (f" ({'; '.join(f'{m}: {w}' for m, w in pr.tried.items())})" if pr.tried else "")))
        else:
            reasons = "; ".join(f"{m}: {w}" for m, w in pr.tried.items())
            add(Check("Termux start method", "FAIL", f"llsim cannot start programs in Termux ({reasons})",
                      f"{TERMUX_PROPS_FIX}; if `am` says 'Requires permission com.termux.permission.RUN_COMMAND', "
                      "this phone's adb shell may not send RUN_COMMAND: use a debuggable Termux build (run-as) or "
                      "start the worker by hand when llsim asks (deploy method 'manual')"))
        refused_perm = "Requires permission" in pr.tried.get("run-command", "")
        if pr.external_apps is True:
            add(Check("allow-external-apps", "ok", "true in ~/.termux/termux.properties"))
        elif pr.external_apps is False:
            add(Check("allow-external-apps", "FAIL", "not true in ~/.termux/termux.properties", TERMUX_PROPS_FIX))
        elif "run-command" in pr.tried and not refused_perm:
            add(Check("allow-external-apps", "FAIL", "Termux ignored RUN_COMMAND: allow-external-apps is not true "
                      "(or python is missing; see below)", TERMUX_PROPS_FIX))
        else:
            add(Check("allow-external-apps", "warn", "could not be read from the host", TERMUX_PROPS_FIX,
                      required=False))
        facts = pr.facts or {}
        if pr.checked:
            add(Check("python in Termux", "ok", f"Python {facts.get('python')}"))
            for mod in ("numpy", "onnxruntime"):
                if facts.get(mod):
                    add(Check(f"{mod} in Termux", "ok", f"{mod} {facts[mod]}"))
                else:
                    add(Check(f"{mod} in Termux", "FAIL", facts.get(mod + "_error", "not importable"),
                              f"in Termux: pkg install python-{mod}"))
        elif pr.python_missing:
            add(Check("python in Termux", "FAIL", f"{T.PYTHON} does not exist", PKG_FIX))
            for mod in ("numpy", "onnxruntime"):
                add(Check(f"{mod} in Termux", "skip", "needs python", required=False))
        else:
            for n in ("python", "numpy", "onnxruntime"):
                add(Check(f"{n} in Termux", "warn", "could not be checked (no start method worked)",
                          "check by hand in Termux: python -c 'import numpy, onnxruntime'; if that fails: "
                          + PKG_FIX, required=False))
    if info.data_free_gb is None:
        add(Check("free storage", "warn", "`df /data/local/tmp` gave nothing readable", required=False))
    elif info.data_free_gb < min_free_gb:
        add(Check("free storage", "FAIL", f"{info.data_free_gb:.2f} GB free in /data/local/tmp, need {min_free_gb:g}",
                  f"free space on the phone; remove old llsim files: adb -s {serial} shell rm -r {T.STAGE}"))
    else:
        add(Check("free storage", "ok", f"{info.data_free_gb:.1f} GB free in /data/local/tmp"))
    if info.battery_level is None:
        add(Check("battery", "warn", "`dumpsys battery` gave no level", required=False))
    elif info.battery_level < min_battery and not info.battery_charging:
        add(Check("battery", "warn", f"{info.battery_level}% and not charging: a run may be cut short and the phone "
                  "throttles when low", "charge the phone, keep it on USB power during runs", required=False))
    else:
        add(Check("battery", "ok", f"{info.battery_level}%{', charging' if info.battery_charging else ''}",
                  required=False))
    if info.thermal_zones_readable:
        add(Check("thermal readable", "ok", f"{info.thermal_zones_readable} zones, hottest {info.max_temp_c:.1f} C",
                  required=False))
    else:
        add(Check("thermal readable", "warn", "no /sys/class/thermal/thermal_zone*/temp is readable by the adb "
                  "shell: runs on this phone get no temperature telemetry", "nothing to fix (the phone's policy); "
                  "llsim runs without it", required=False))
    return checks


def failed(checks: list[Check]) -> bool:
    return any(c.status == "FAIL" and c.required for c in checks)
