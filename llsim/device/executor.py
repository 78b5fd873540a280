"""Where ops run. The profiler talks to an :class:`Executor`; :class:`LocalExecutor` runs
onnxruntime in this process. No executor runs on a phone yet (the HIL worker, :mod:`llsim.hil.worker`,
runs segments, not the profiler's micro-graphs)."""
from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from typing import Protocol

import numpy as np


class Executor(Protocol):
    name: str

    def describe(self) -> dict: ...

    def profile_nodes(self, model: bytes, feeds: dict[str, np.ndarray], threads: int, runs: int,
                      warmup: int) -> dict[str, float]:
        """Median kernel time (seconds) per node name, graph optimisations off."""

    def time_runs(self, model: bytes, feeds: dict[str, np.ndarray], threads: int, runs: int,
                  warmup: int) -> float:
        """Median wall time (seconds) of one session.run, default graph optimisations on."""


def interleaved(measure, jobs: list, rounds: int, combine: str = "min") -> list:
    """``measure(job, first)`` for every job, ``rounds`` times round-robin, combined per job (per key
    when ``measure`` returns a dict). A host slowed for a while (a noisy neighbour on a shared VM, a
    phone's governor) then spoils one round of many jobs, not all rounds of a few, where measuring
    each job in one block would bias that block.

    ``combine``: ``"min"`` (the fastest round: per-op kernel times, a lower bound the fit scales) or
    ``"median"`` (the typical round: whole-segment latencies, which a deployment sees as they come;
    the minimum of many rounds on a noisy host is a moment faster than any run that follows)."""
    if combine not in ("min", "median"):
        raise ValueError(f"combine must be 'min' or 'median', not {combine!r}")
    got: list[list] = [[] for _ in jobs]
    for r in range(rounds):
        for i, job in enumerate(jobs):
            got[i].append(measure(job, r == 0))
    red = min if combine == "min" else statistics.median

    def one(vals):
        if isinstance(vals[0], dict):
            keys = {k for v in vals for k in v}
            return {k: red([v[k] for v in vals if k in v]) for k in keys}
        return red(vals)

    return [one(v) for v in got]


def _host_cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _host_ram_gb() -> tuple[float, float]:
    total = avail = 0.0
    try:
        for line in open("/proc/meminfo"):
            k, v = line.split(":", 1)
            if k == "MemTotal":
                total = int(v.split()[0]) / 1e6
            elif k == "MemAvailable":
                avail = int(v.split()[0]) / 1e6
    except OSError:
        pass
    return total, avail


CACHE_SYSFS = "/sys/devices/system/cpu/cpu0/cache"


def _cache_bytes() -> int:
    """Largest CPU cache on this host (sysfs; 32 MiB if unknown), for eviction between timed runs."""
    best = 0
    try:
        entries = os.listdir(CACHE_SYSFS)
    except OSError:
        entries = []
    for d in entries:  # index0..N, and files such as uevent that have no size: skipped, not fatal
        try:
            txt = open(os.path.join(CACHE_SYSFS, d, "size")).read().strip()
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(txt[-1], 1)
            best = max(best, int(txt.rstrip("KMG")) * mult)
        except (OSError, ValueError, IndexError):
            continue
    return best or (32 << 20)


class LocalExecutor:
    """onnxruntime in this process. Between timed runs the CPU caches are evicted (a buffer of twice
    the largest cache is rewritten), so weights are read cold, as on a phone running a segment of
    hundreds of MB; activations stay warm within a run."""

    name = "local"

    def __init__(self, evict_cache: bool | None = None):
        if evict_cache is None:
            evict_cache = os.environ.get("LLSIM_EVICT_CACHE", "1") != "0"
        self._evict = np.ones(2 * _cache_bytes() // 8, dtype=np.float64) if evict_cache else None

    def _flush(self):
        if self._evict is not None:
            self._evict.sum()  # read-only sweep: evicts without leaving dirty lines to write back

    def describe(self) -> dict:
        import onnxruntime as ort

        total, avail = _host_ram_gb()
        return {"host": platform.node(), "cpu": _host_cpu(), "cores": os.cpu_count(), "ram_total_gb": total,
                "ram_available_gb": avail, "onnxruntime_version": ort.__version__, "machine": platform.machine()}

    def _session(self, model: bytes, threads: int, optimized: bool, profile_dir: str | None = None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        if not optimized:
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if profile_dir:
            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(profile_dir, "ort")
        return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])

    def profile_nodes(self, model, feeds, threads, runs, warmup):
        with tempfile.TemporaryDirectory() as d:
            sess = self._session(model, threads, optimized=False, profile_dir=d)
            for _ in range(warmup + runs):
                self._flush()
                sess.run(None, feeds)
            path = sess.end_profiling()
            events = json.load(open(path))
        per: dict[str, list[float]] = {}
        for ev in events:
            if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
                per.setdefault(ev["name"][: -len("_kernel_time")], []).append(ev["dur"] * 1e-6)
        return {k: statistics.median(v[warmup:] if len(v) > warmup else v) for k, v in per.items()}

    def time_runs(self, model, feeds, threads, runs, warmup, rounds: int = 1):
        """The median of ``rounds`` x ``runs`` timed runs (seconds), caches evicted before each: the
        typical latency of the segment, as a deployment that runs it over and over sees it (a
        minimum over rounds would be the host's fastest moment, which no later run repeats)."""
        import gc

        gc.collect()  # no idle session's thread pool may compete for the cores
        sess = self._session(model, threads, optimized=True)
        for _ in range(warmup):
            sess.run(None, feeds)
        ts = []
        for _ in range(rounds * runs):
            self._flush()
            t0 = time.perf_counter()
            sess.run(None, feeds)
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)
