"""``llsim bench profile_adb``: ``llsim profile adb`` on a stand-in phone against ``llsim profile host``.

Both sweeps run in the same sitting with the same settings: one through llsim's worker on a
stand-in phone (``llsim hil fake-phone``; the real adb server on a private port, the worker deployed,
started by Termux's RUN_COMMAND, every graph pushed and timed through the worker's ``bench``), one in
this process. The stand-in's worker runs on this host, so both profiles describe the same CPU: the
held-out segments (:mod:`llsim.device.accuracy`: models not in the fit) timed here are predicted by
both, and their errors should be alike. Prints the table and writes ``results/profile_adb.txt``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    import adbutils

    from llsim.adb.fakephone import FakePhone
    from llsim.adb.profile import profile_adb
    from llsim.device.accuracy import measure_holdout, predict, summary
    from llsim.device.profiler import profile_host

    ap = argparse.ArgumentParser(prog="llsim bench profile_adb")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "results" / "profile_adb.txt"))
    args = ap.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="llsim-bench-profile-adb-"))
    port = _free_port()
    adb = adbutils.adb_path()
    env = dict(os.environ, HOME=str(tmp), ADB_MDNS="0", ADB_MDNS_AUTO_CONNECT="0")
    old = os.environ.get("ANDROID_ADB_SERVER_PORT")
    lines = []

    def say(m: str) -> None:
        print(m, flush=True)
        lines.append(m)

    subprocess.run([adb, "-P", str(port), "start-server"], env=env, check=True, capture_output=True, timeout=60)
    os.environ["ANDROID_ADB_SERVER_PORT"] = str(port)
    phone = None
    try:
        phone = FakePhone("kirin-990").start()
        adbutils.AdbClient(port=port).connect(phone.serial, timeout=10)
        time.sleep(0.5)
        prof, t_adb = profile_adb(phone.serial, tmp / "phone.yaml", threads, runs=args.runs, quick=args.quick,
                                  log=lambda m: None)
        host, t_host = profile_host(tmp / "host.yaml", threads, runs=args.runs, quick=args.quick, log=lambda m: None)
    finally:
        if phone is not None:
            phone.stop()
        subprocess.run([adb, "-P", str(port), "kill-server"], env=env, capture_output=True, timeout=30)
        if old is None:
            os.environ.pop("ANDROID_ADB_SERVER_PORT", None)
        else:
            os.environ["ANDROID_ADB_SERVER_PORT"] = old
    measured = measure_holdout(threads)
    say(f"llsim bench profile_adb --threads {args.threads} --runs {args.runs}{' --quick' if args.quick else ''}: "
        f"profile adb (stand-in kirin-990, worker on this host) {t_adb:.0f} s, profile host {t_host:.0f} s; "
        f"held-out segments timed on this host")
    say(f"{'profile':<14} {'threads':>7} {'n':>4} {'median APE':>11} {'p90 APE':>8} {'max APE':>8} {'pred/meas':>9}")
    for name, p in (("profile adb", prof), ("profile host", host)):
        for t in threads:
            s = summary(predict([m for m in measured if m.threads == t], p))
            say(f"{name:<14} {t:>7} {s['n']:>4} {s['median_ape']:>11.1%} {s['p90_ape']:>8.1%} {s['max_ape']:>8.1%} "
                f"{s['median_ratio']:>9.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
