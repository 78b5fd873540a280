"""The ``llsim devices`` and ``llsim hil ...`` commands (registered by :func:`register`)."""
from __future__ import annotations

import json
import sys


def _console():
    from rich.console import Console

    return Console(width=80) if not sys.stdout.isatty() else Console(width=min(Console().width, 80))


# ---- llsim devices -------------------------------------------------------------------------------
def _info_for(c, serial: str, state: str, probe: bool, timeout: float):
    import adbutils

    from llsim.adb import host as H
    from llsim.adb import termux as T

    info = H.PhoneInfo(serial=serial, state=state)
    if state != "device":
        return info
    dev = adbutils.AdbDevice(c, serial)
    try:
        info = H.query(dev, state)
        if probe and info.termux:
            pr = T.probe(dev, timeout=timeout)
            info.termux_start = pr.method
            info.termux_checked = pr.checked
            if pr.facts:
                info.python = pr.facts.get("python")
                info.numpy = pr.facts.get("numpy")
                info.onnxruntime = pr.facts.get("onnxruntime")
    except (adbutils.AdbError, OSError, EOFError) as e:
        info.error = str(e) or type(e).__name__
    return info


def cmd_devices(args) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from rich import box
    from rich.table import Table

    from llsim.adb import host as H

    c = H.client()
    phones = H.list_phones(c)
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(phones)))) as ex:
        infos = list(ex.map(lambda p: _info_for(c, p[0], p[1], not args.no_probe, args.probe_timeout), phones))
    if args.json:
        print(json.dumps([i.to_json() for i in infos], indent=2))
        return 0
    con = _console()
    if not infos:
        con.print(f"no phones on the adb server {c.host}:{c.port} (plug one in with USB debugging on, or "
                  "`llsim hil fake-phone` for a stand-in)")
        return 0
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
              title=f"phones on adb server {c.host}:{c.port}")
    for col, kw in (("serial", {"no_wrap": True}), ("state", {"max_width": 12}), ("model, SoC", {"ratio": 1}),
                    ("CPU GHz", {"no_wrap": True}), ("RAM GB", {"justify": "right", "no_wrap": True}),
                    ("And.", {"justify": "right"}), ("Termux", {"max_width": 11})):
        t.add_column(col, **kw)
    for i in infos:
        if i.state != "device" or i.error:
            t.add_row(i.serial, i.state, i.error or {"unauthorized": "unlock it, tap Allow",
                                                     "offline": "replug it"}.get(i.state, ""), "", "", "", "")
            continue
        cpu = "\n".join(f"{cl['cores']}x{cl['max_ghz']:.2f}" for cl in i.clusters) or "?"
        ram = (f"{i.ram_available_gb:.1f}/{i.ram_total_gb:.1f}" if i.ram_total_gb and i.ram_available_gb is not None
               else "?")
        if not i.termux:
            tx = "missing"
        elif not i.termux_checked:
            tx = "yes, ORT ?"
        else:
            tx = f"ORT {i.onnxruntime}" if i.onnxruntime else ("no python" if not i.python else "no ORT")
            if i.python and not i.numpy:
                tx += ", no numpy"
        name = f"{i.model or '?'}, {i.soc or '?'}" + (" (stand-in)" if i.stand_in else "")
        t.add_row(i.serial, i.state, name, cpu, ram, i.android or "?", tx)
    con.print(t)
    con.print("RAM: available/total; Termux: whether python-onnxruntime imports there (llsim hil doctor SERIAL "
              "says more)")
    return 0


# ---- llsim hil doctor ----------------------------------------------------------------------------
def cmd_doctor(args) -> int:
    from llsim.adb.doctor import failed, run_checks

    checks = run_checks(args.serial, min_free_gb=args.min_free_gb, probe_timeout=args.probe_timeout)
    bad = failed(checks)
    if args.json:
        print(json.dumps({"serial": args.serial, "ready": not bad, "checks": [c.to_json() for c in checks]},
                         indent=2))
        return 1 if bad else 0
    con = _console()
    con.print(f"[bold]llsim hil doctor {args.serial}[/bold]", highlight=False)
    for c in checks:
        style = {"ok": "green", "FAIL": "red", "warn": "yellow", "skip": "dim"}[c.status]
        con.print(f"  [{style}]{c.status:<4}[/{style}]  {c.name:<22} {c.detail}", highlight=False)
        if c.fix and c.status in ("FAIL", "warn"):
            con.print(f"        fix: {c.fix}", highlight=False, soft_wrap=True)
    con.print("ready for llsim's worker" if not bad else "not ready: fix the FAIL lines above and run doctor again",
              highlight=False)
    return 1 if bad else 0


# ---- llsim hil deploy ----------------------------------------------------------------------------
def _interrupt(signum, frame):
    raise KeyboardInterrupt


def cmd_deploy(args) -> int:
    import signal
    import time
    from pathlib import Path

    from llsim.adb.deploy import deploy

    methods = list(__import__("llsim.adb.termux", fromlist=["METHODS"]).METHODS) if args.method == "auto" \
        else [m.strip() for m in args.method.split(",")]
    say = (lambda m: print(m, file=sys.stderr)) if args.json else (lambda m: print(m, flush=True))
    with deploy(args.serial, Path(args.worker), [Path(f) for f in args.file], phone_port=args.phone_port,
                local_port=args.local_port, methods=methods, start_timeout=args.timeout,
                manual_timeout=args.manual_timeout, log=say) as d:
        if args.hold:  # from here on, `kill` (or a parent's shutdown) stops it as Ctrl-C does
            prev = signal.signal(signal.SIGTERM, _interrupt)
        report = {"serial": d.serial, "method": d.method, "local_port": d.local_port, "phone_port": d.phone_port,
                  "pushed": d.pushed, "skipped": d.skipped, "tried": d.tried,
                  "timings_s": {k: round(v, 3) for k, v in d.timings.items()}, "secret_file": d.secret_path}
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print(f"ready: 127.0.0.1:{d.local_port} reaches the worker on {d.serial} (started by {d.method}); "
                  f"pushed {len(d.pushed)}, skipped {len(d.skipped)} (same sha256)", flush=True)
        if args.hold:
            print("holding until Ctrl-C (or SIGTERM)", file=sys.stderr, flush=True)
            try:
                while True:
                    time.sleep(3600)
            finally:
                signal.signal(signal.SIGTERM, prev)
    if not args.json:
        print("stopped: worker stopped, forward and secrets removed")
    return 0


# ---- llsim hil fake-phone ------------------------------------------------------------------------
def cmd_fake_phone(args) -> int:
    import signal
    import threading

    from llsim.adb import host as H
    from llsim.adb.fakephone import FakePhone, Knobs
    from llsim.errors import LLSimError

    bind, port = args.host, args.port
    if args.serial:
        h, _, p = args.serial.rpartition(":")
        if not h or not p.isdigit():
            raise LLSimError(f"--serial {args.serial!r} must be HOST:PORT on loopback, e.g. 127.0.0.1:5601 "
                             "(adb names a phone on TCP by its address)")
        bind, port = h, int(p)
    if not bind.startswith("127.") and bind not in ("localhost", "::1"):
        raise LLSimError(f"--host {bind}: the stand-in phone listens on loopback only (127.x.x.x)")
    k = Knobs(android=args.android, termux=not args.no_termux, external_apps=not args.no_external_apps,
              run_command_permission=not args.no_run_command, termux_debuggable=args.termux_debuggable,
              python=not args.no_python, numpy=not args.no_numpy, onnxruntime=not args.no_onnxruntime,
              battery_level=args.battery, charging=not args.not_charging,
              thermal_readable=not args.thermal_unreadable, battery_readable=not args.battery_unreadable,
              wifi=not args.no_wifi, wifi_isolated=args.wifi_isolated, unauthorized=args.unauthorized,
              usb_mbps=args.usb_mbps,
              free_gb=args.free_gb, unplug_after_s=args.unplug_after, replug_after_s=args.replug_after)
    c = H.client()  # before anything starts: one line when there is no adb server
    try:
        phone = FakePhone(args.profile, bind, port, k, sandbox=args.sandbox).start()
    except OSError as e:
        raise LLSimError(f"cannot listen on {bind}:{port}: {e.strerror or e} (port in use? choose another "
                         "--port)") from None
    stop = threading.Event()
    handlers = {}

    def on_stop(signum, frame):
        stop.set()

    def on_usr1(signum, frame):
        phone.authorize()

    def on_usr2(signum, frame):
        (phone.replug if not phone.online else phone.unplug)()

    for sig, fn in ((signal.SIGINT, on_stop), (signal.SIGTERM, on_stop), (signal.SIGUSR1, on_usr1),
                    (signal.SIGUSR2, on_usr2)):
        handlers[sig] = signal.signal(sig, fn)
    try:
        if not args.no_connect:
            msg = c.connect(phone.serial, timeout=10)
            if "connected" not in msg and not (k.unauthorized and "authenticate" in msg):
                raise LLSimError(f"the adb server at {c.host}:{c.port} did not take the stand-in phone: {msg}")
        p = phone.profile
        wifi = f"Wi-Fi {phone.wifi_ip}" + (" (isolated)" if k.wifi_isolated else "") if k.wifi else "no Wi-Fi"
        print(f"stand-in phone {phone.serial}: {p.device} ({p.soc}), profile {p.name}, Android {k.android}, {wifi}; "
              f"sandbox {phone.sandbox}", flush=True)
        print("ready; Ctrl-C stops it (kill -USR1 accepts the USB-debugging dialog, kill -USR2 unplugs/replugs)",
              flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        try:
            if not args.no_connect and H.server_reachable(c.host, c.port):
                c.disconnect(phone.serial)
        finally:
            phone.stop()
            for sig, h in handlers.items():
                signal.signal(sig, h)
    print(f"stopped {phone.serial}", flush=True)
    return 0


def register(sub) -> None:
    m = sub.add_parser("devices", help="the attached Android phones (adb): model, SoC, CPU, RAM, Termux")
    m.add_argument("--json", action="store_true")
    m.add_argument("--no-probe", action="store_true", help="do not start the Termux probe (python/onnxruntime ?)")
    m.add_argument("--probe-timeout", type=float, default=6.0, help="seconds to wait for the Termux probe")
    m.set_defaults(fn=cmd_devices)

    ph = sub.add_parser("hil", help="hardware in the loop: phone checks, deployment, a stand-in phone")
    hsub = ph.add_subparsers(dest="sub", required=True, parser_class=sub._parser_class)
    m = hsub.add_parser("doctor", help="check a phone's prerequisites and say how to fix each")
    m.add_argument("serial")
    m.add_argument("--json", action="store_true")
    m.add_argument("--min-free-gb", type=float, default=1.0)
    m.add_argument("--probe-timeout", type=float, default=8.0)
    m.set_defaults(fn=cmd_doctor)

    m = hsub.add_parser("deploy", help="push a worker (+ files) to a phone, start it, forward a port, then stop")
    m.add_argument("serial")
    m.add_argument("--worker", required=True, help="the worker program (python), run as "
                   "`python WORKER --listen 127.0.0.1:PORT --secret-file F`")
    m.add_argument("--file", action="append", default=[], help="a file to push beside it (repeatable)")
    m.add_argument("--phone-port", type=int, default=7071)
    m.add_argument("--local-port", type=int, help="default: a free port")
    m.add_argument("--method", default="auto", help="auto, or a comma-separated order of run-command, run-as, manual")
    m.add_argument("--timeout", type=float, default=20.0, help="seconds for the worker to answer per method")
    m.add_argument("--manual-timeout", type=float, default=120.0)
    m.add_argument("--hold", action="store_true", help="keep it running until Ctrl-C or SIGTERM")
    m.add_argument("--json", action="store_true")
    m.set_defaults(fn=cmd_deploy)

    m = hsub.add_parser("fake-phone", help="a stand-in phone speaking the adb protocol, registered with adb")
    m.add_argument("--profile", default="kirin-990", help="device profile the phone's facts come from")
    m.add_argument("--serial", help="HOST:PORT on loopback (adb names a TCP phone by its address)")
    m.add_argument("--host", default="127.0.0.1")
    m.add_argument("--port", type=int, default=0, help="default: a free port")
    m.add_argument("--sandbox", help="directory for the phone's files (default: a temporary one, removed)")
    m.add_argument("--android", default="13")
    m.add_argument("--no-termux", action="store_true")
    m.add_argument("--no-python", action="store_true", help="Termux without python")
    m.add_argument("--no-numpy", action="store_true")
    m.add_argument("--no-onnxruntime", action="store_true")
    m.add_argument("--no-external-apps", action="store_true", help="allow-external-apps not set")
    m.add_argument("--no-run-command", action="store_true", help="the adb shell may not send RUN_COMMAND")
    m.add_argument("--termux-debuggable", action="store_true", help="run-as com.termux works")
    m.add_argument("--unauthorized", action="store_true", help="the USB-debugging dialog is not accepted")
    m.add_argument("--usb-mbps", type=float, help="cap the link at this many MB/s each way")
    m.add_argument("--battery", type=int, default=85)
    m.add_argument("--not-charging", action="store_true")
    m.add_argument("--thermal-unreadable", action="store_true")
    m.add_argument("--battery-unreadable", action="store_true", help="Termux's programs cannot read the battery")
    m.add_argument("--no-wifi", action="store_true", help="not on the stand-ins' Wi-Fi (no wlan0 address)")
    m.add_argument("--wifi-isolated", action="store_true", help="on a Wi-Fi that isolates its clients")
    m.add_argument("--free-gb", type=float, default=40.0)
    m.add_argument("--unplug-after", type=float, help="go offline this many seconds after start")
    m.add_argument("--replug-after", type=float, help="come back this many seconds after going offline")
    m.add_argument("--no-connect", action="store_true", help="do not `adb connect` it")
    m.set_defaults(fn=cmd_fake_phone)
