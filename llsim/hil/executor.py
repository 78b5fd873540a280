"""The profiler's :class:`~llsim.device.executor.Executor` on a worker (``llsim profile adb``).

:class:`WorkerExecutor` runs what :class:`~llsim.device.executor.LocalExecutor` runs in this process
on a worker instead (a phone's, through adb; or a local one): each graph is written to a file
(named by its sha256), staged on the worker's device (``stage_file``: pushed to a phone unless it is
there with that sha256, so the profiler's later passes push nothing), loaded, timed there by the
worker's ``bench`` message, and unloaded. The timing protocol is LocalExecutor's, run on the
device: per-op kernel times from onnxruntime's profiler with graph optimisations off (a fresh
session per call, a cache-evicting read before every run, medians after the warm-up runs); whole
graphs optimised, the median of ``rounds`` x ``runs`` evicted runs.
"""
from __future__ import annotations

import hashlib
import itertools
import os
import statistics
from pathlib import Path

from llsim.hil.client import SegmentSpec


class WorkerExecutor:
    name = "worker"

    def __init__(self, client, identity: dict, workdir: str | Path, stage_file=None, evict_cache: bool | None = None):
        self.client = client
        self.identity = dict(identity)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.stage_file = stage_file
        self.evict = os.environ.get("LLSIM_EVICT_CACHE", "1") != "0" if evict_cache is None else evict_cache
        self._ids = itertools.count()
        self._files: dict[str, tuple[str, str]] = {}  # sha256 -> (path on the device, sha256)

    def describe(self) -> dict:
        return dict(self.identity)

    def _file(self, model: bytes) -> tuple[str, str]:
        digest = hashlib.sha256(model).hexdigest()
        if digest not in self._files:
            local = self.workdir / f"{digest}.onnx"
            if not local.exists():
                local.write_bytes(model)
            path = str(self.stage_file(local)) if self.stage_file else str(local)
            self._files[digest] = (path, digest)
        return self._files[digest]

    def _bench(self, model: bytes, feeds: dict, threads: int, optimize: bool, profile: bool, **kw) -> dict:
        path, digest = self._file(model)
        key = f"profile/{next(self._ids)}"
        self.client.load([SegmentSpec(key, path, digest, threads, optimize=optimize, profile=profile)])
        try:
            return self.client.bench(key, feeds, evict=self.evict, **kw)
        finally:
            self.client.unload([key])

    def profile_nodes(self, model, feeds, threads, runs, warmup):
        r = self._bench(model, feeds, threads, optimize=False, profile=True, runs=runs, warmup=warmup)
        return {k: statistics.median(v[warmup:] if len(v) > warmup else v) for k, v in r.get("nodes", {}).items()}

    def time_runs(self, model, feeds, threads, runs, warmup, rounds: int = 1):
        r = self._bench(model, feeds, threads, optimize=True, profile=False, runs=runs, warmup=warmup, rounds=rounds)
        return statistics.median(r["times_s"])  # the typical run, as LocalExecutor.time_runs
