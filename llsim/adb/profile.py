"""``llsim profile adb SERIAL --out device_profiles/NAME.yaml``: measure a phone into a profile.

The profiler (:mod:`llsim.device.profiler`, the sweep and the fit of ``llsim profile host``) runs with
llsim's worker on the phone as its executor (:class:`llsim.hil.executor.WorkerExecutor`): the worker
is deployed as for a run (:func:`llsim.adb.deploy.deploy`), every micro-graph and zoo segment of the
sweep is pushed to ``/data/local/tmp/llsim/profile/`` once (by sha256) and timed there, onnxruntime's
per-node profile parsed on the phone and pulled back with the timings. The profile's identity comes
from the phone (``getprop``: model, SoC; ``cpufreq``: clusters and max frequencies; ``/proc/meminfo``:
RAM), its ``compute`` from the fit, its provenance says ``measured`` by ``llsim profile adb`` on that
phone with its onnxruntime version, and the raw samples are written beside it (``NAME.samples.csv``).
Thermal behaviour and the Wi-Fi interface are not measured by this sweep and are marked so. On exit,
an error or Ctrl-C the worker is stopped, the forward removed and the pushed graphs deleted.
"""
from __future__ import annotations

import datetime as dt
import secrets as _secrets
import tempfile
import time
from pathlib import Path

import adbutils

from llsim.adb import host as H
from llsim.adb import termux as T
from llsim.errors import LLSimError

PROFILE_DIR = f"{T.STAGE}/profile"


def phone_identity(info: H.PhoneInfo) -> dict:
    cores = sum(c["cores"] for c in info.clusters)
    return {"host": f"{info.model or '?'} ({info.serial})", "cpu": info.soc or "?", "cores": cores or None,
            "ram_total_gb": info.ram_total_gb, "ram_available_gb": info.ram_available_gb, "machine": info.abi or "?"}


def profile_adb(serial: str, out: Path, threads: list[int], runs: int | None = None, warmup: int = 3,
                quick: bool = False, name: str | None = None, log=print, phone_port: int = 7071):
    """Measure phone ``serial``; writes ``out`` and its samples CSV; returns (profile, seconds)."""
    from llsim.adb.backend import PhoneClient, stager
    from llsim.adb.deploy import deploy
    from llsim.device.profile import (Cluster, Compute, DeviceProfile, Memory, NetworkIf, Provenance, Thermal,
                                      dump_profile)
    from llsim.device.profiler import RUNS, measure, write_samples
    from llsim.hil.executor import WorkerExecutor
    from llsim.hil.launcher import WORKER_PY

    runs = runs or RUNS
    t0 = time.perf_counter()
    c = H.client()
    dev = H.device(c, serial)
    try:
        info = H.query(dev)
    except (adbutils.AdbError, OSError, EOFError) as e:
        raise H.adb_error(serial, e, "reading what the phone is", c) from None
    ident = phone_identity(info)
    if ident["cores"] and max(threads) > ident["cores"]:
        raise LLSimError(f"--threads {','.join(map(str, threads))}: {serial} has {ident['cores']} cores")
    if not info.ram_total_gb or info.ram_available_gb is None:
        raise LLSimError(f"{serial}: /proc/meminfo did not give MemTotal and MemAvailable: cannot write its memory")
    raw = _secrets.token_bytes(32)
    pushed: dict = {}
    with tempfile.TemporaryDirectory(prefix="llsim-profile-") as tmp, \
            deploy(serial, WORKER_PY, secret=raw, phone_port=phone_port, client=c, on_manual=log,
                   worker_args=["--name", f"profile-{serial}", "--heartbeat-s", "1"]) as d:
        client = PhoneClient(f"127.0.0.1:{d.local_port}", raw.hex().encode(), serial=serial, adb_client=c,
                             name=serial, heartbeat_s=1.0, patience=30, default_deadline_s=900.0)
        try:
            ident["onnxruntime_version"] = client.info.get("onnxruntime_version", "?")
            log(f"profiling {ident['host']} ({ident['cpu']}, {ident['cores']} cores) through its worker "
                f"(started by {d.method}), threads {threads}, onnxruntime {ident['onnxruntime_version']}")
            ex = WorkerExecutor(client, ident, tmp, stage_file=stager(c, serial, pushed, directory=PROFILE_DIR))
            samples, segments, coefs, how = measure(ex, threads, runs, warmup, log, quick, tool="llsim profile adb")
        finally:
            client.close()
            try:
                if H.states(c).get(serial) == "device":
                    dev.shell(f"rm -rf {PROFILE_DIR}", timeout=60)
            except (LLSimError, adbutils.AdbError, OSError, EOFError):
                pass
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    samples_path = out.with_suffix(".samples.csv")
    write_samples(samples_path, samples, segments)
    where = f"{info.model} ({info.soc}, serial {serial}, Android {info.android})"
    clusters = [Cluster(name=f"cluster{i}", cores=cl["cores"], freq_ghz=cl["max_ghz"])
                for i, cl in enumerate(info.clusters)] or [Cluster(name="all", cores=max(threads), freq_ghz=1.0)]
    stand_in = " It is llsim's stand-in phone: its timings are this host's." if info.stand_in else ""
    prof = DeviceProfile(
        name=name or out.stem, kind="phone", device=info.model or serial, soc=info.soc or "?", cpu=clusters,
        memory=Memory(ram_total_gb=info.ram_total_gb, ram_available_gb=min(info.ram_available_gb, info.ram_total_gb),
                      source=f"measured: /proc/meminfo of {where} over adb at profiling time"),
        compute=Compute(threads=coefs, default_threads=max(threads), source=f"measured on {where}: {how}"),
        thermal=Thermal(peak_speed=1.0, sustained_speed=1.0, time_to_throttle_s=0.0,
                        source="not measured: llsim profile adb times a short sweep (peak speed); replace with a "
                               "measured throttling curve, or a calibrated profile's thermal section, for long runs"),
        network=NetworkIf(wifi_standard="ac", spatial_streams=2,
                          source="not measured: placeholder (llsim profile adb does not measure the Wi-Fi)"),
        provenance=Provenance(kind="measured", tool="llsim profile adb", date=dt.date.today().isoformat(),
                              host=f"{info.model} ({serial})", onnxruntime_version=ident["onnxruntime_version"],
                              samples=samples_path.name),
        notes=(f"CPU clusters and max frequencies from cpufreq, SoC from getprop (ro.soc.* or ro.board.platform); "
               f"timings through llsim's worker in Termux on the phone.{stand_in}"),
    )
    elapsed = time.perf_counter() - t0
    dump_profile(prof, out, header=f"# measured by `llsim profile adb {serial} --out {out} --threads "
                                    f"{','.join(map(str, threads))}` in {elapsed:.0f} s; raw samples: {samples_path.name}")
    return prof, elapsed
