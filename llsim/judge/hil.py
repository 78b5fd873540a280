"""Runs with real nodes (hardware in the loop): set-up, checks, and what they write besides a run's files.

A scenario whose devices include a real backend (``backend: local``: an onnxruntime worker on this
host), or that asks for real tensors (``hil: {tensors: true}``), runs through :class:`HilRuntime`:

1. the scenario is checked for what a real node cannot do (:func:`check_hil`: batch 1, fp32 zoo
   weights, simulated-only dynamics on a real device, a context longer than the model's positions);
2. the model is materialised (a zoo model with seeded random weights, or the user's ONNX file);
   prompts of ``workload.prompt_tokens`` random token ids are drawn from ``hil.prompt_seed`` (else
   the scenario's seed);
3. one worker process per real device is started (:class:`~llsim.hil.launcher.WorkerPool`: per-run
   secret file, loopback ports, CPU affinity when asked), and an in-process executor computes the
   simulated devices' segments;
4. the simulation runs with :class:`~llsim.sim.hilnode.HilNodes` (real workers' measured compute
   injected at the point the simulation needs it; the data plane :class:`~llsim.hil.plane.DataPlane`);
5. every process started is stopped by its pid at the end, on an error and on Ctrl-C.

Besides the usual files, the run directory gets ``fidelity.csv`` (:func:`fidelity_rows`: per real
stage and step kind, predicted vs measured compute; per link between real workers, the model's vs
the loopback transfer) and ``hil.json`` (prompts, workers, tokens' provenance, what was lost).
"""
from __future__ import annotations

import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from llsim.errors import LLSimError
from llsim.scenario import Scenario

#: event kinds that change a simulated phone's speed: meaningless on a real worker
SIM_ONLY = ("throttle", "background", "background_bursts", "thermal", "noise")


class Started:
    """What a backend starter gives for its devices: a connected client per device (the
    :class:`~llsim.hil.client.WorkerClient` interface), optionally a ``stage_file`` per device (the
    segment files' path on that device, see :class:`~llsim.hil.plane.DataPlane`), the pid of each
    device's worker when it is a process of this host, and ``stop()`` (stops everything it started;
    idempotent, called on every exit path)."""

    def __init__(self, clients: dict, stop, stage_file: dict | None = None, pids: dict | None = None,
                 info: dict | None = None):
        self.clients, self.stop, self.stage_file = clients, stop, stage_file or {}
        self.pids, self.info = pids or {}, info or {}


def _start_local(sc: Scenario, devs: list) -> Started:
    """``backend: local``: one worker process per device on this host (loopback, per-run secret)."""
    from llsim.hil.launcher import WorkerPool

    cpus = [list(d.affinity or ()) for d in devs]
    pool = WorkerPool.start(len(devs), 1, cpus=cpus if any(cpus) else None, heartbeat_s=sc.hil.heartbeat_s)
    return Started({d.index: pool.workers[k] for k, d in enumerate(devs)}, pool.stop,
                   pids={d.index: pool.processes[k].pid for k, d in enumerate(devs)},
                   info={"kill": lambda d, sig, _p=pool, _i={x.index: k for k, x in enumerate(devs)}: _p.kill(_i[d], sig)})


def _start_adb(sc: Scenario, devs: list) -> Started:
    """``backend: adb``: llsim's worker on Android phones over adb (:mod:`llsim.adb.backend`)."""
    from llsim.adb.backend import AdbBackend

    b = AdbBackend(sc, devs).start()
    return Started(dict(b.clients), b.stop, stage_file={d.index: b.stager(d.index) for d in devs},
                   info={"backend": b, "kill": b.kill})


#: backend name -> starter(scenario, its devices of that backend) -> Started. A new real backend is one
#: entry here (plus its name in the scenario schema's ``DeviceSpec.backend``).
BACKENDS = {"local": _start_local, "adb": _start_adb}


def real_devices(devices) -> list[int]:
    return [d.index for d in devices if d.backend != "sim"]


def check_hil(sc: Scenario, devices) -> None:
    """What a run with real tensors cannot do, as one clear error (the field and the fix)."""
    from llsim.model.load import is_onnx_path

    where = sc.path or "scenario"
    w = sc.workload
    problems = []
    if w.batch != 1:
        problems.append(f"workload.batch: real nodes run batch 1 (got {w.batch}); set workload.batch: 1")
    if sc.weight_dtype != "fp32" and not is_onnx_path(sc.model):
        problems.append(f"weight_dtype: real nodes run the zoo model's fp32 weights (got {sc.weight_dtype}); "
                        "set weight_dtype: fp32 or pass a quantized .onnx file as model")
    real = set(real_devices(devices))
    import os

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    for d in devices:
        bad = [c for c in (d.affinity or ()) if cpus is not None and c not in cpus]
        if d.backend == "local" and bad:
            problems.append(f"{d.name}: affinity CPU {bad[0]} is not available on this host (CPUs "
                            f"{', '.join(map(str, cpus))})")
    names = {d.name: d.index for d in devices}
    for i, ev in enumerate(sc.events):
        if ev.kind_name not in SIM_ONLY:
            continue
        refs = ev.devices if hasattr(ev, "devices") else [ev.device]
        targets = set(range(len(devices))) if refs is None else {names.get(r, r) for r in refs}
        hit = sorted(devices[t].name for t in targets if isinstance(t, int) and t in real)
        if hit:
            problems.append(f"events[{i}] ({ev.kind_name}) acts on {', '.join(hit)}, a real worker: it is a "
                            "simulated dynamic (list only simulated devices in it, or simulate those devices)")
    if problems:
        raise LLSimError(f"{where}: this scenario cannot run with real nodes: " + "; ".join(problems))


def draw_prompts(sc: Scenario, vocab: int) -> list[list[int]]:
    seed = sc.hil.prompt_seed if sc.hil.prompt_seed is not None else sc.seed
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x48494C]))  # "HIL": apart from the run's streams
    w = sc.workload
    return [[int(x) for x in rng.integers(0, vocab, w.prompt_tokens)] for _ in range(w.requests)]


def _vocab_and_positions(sc: Scenario, bundle) -> tuple[int, int | None]:
    from llsim.model.load import is_onnx_path

    if not is_onnx_path(sc.model):
        from llsim.model.zoo import get_config

        cfg = get_config(sc.model)
        return cfg.vocab, cfg.max_positions
    t = bundle.om.tensors.get("logits")
    if t is None or not t.shape or not isinstance(t.shape[-1], int):
        raise LLSimError(f"{sc.model}: real nodes need a 'logits' output whose last dimension (the vocabulary) is "
                         "known")
    return int(t.shape[-1]), None


class HilRuntime:
    """The real side of a run: workers, the in-process executor, the data plane (a context manager)."""

    def __init__(self, sc: Scenario, devices):
        self.sc, self.devices = sc, devices
        self.started: list[Started] = []
        self.local = None
        self.plane = None
        self.nodes = None
        self._tmp: str | None = None

    def __enter__(self) -> "HilRuntime":
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        from llsim.hil.local import LocalNode
        from llsim.hil.plane import DataPlane
        from llsim.model.load import onnx_bundle
        from llsim.sim.hilnode import HilNodes

        sc, devices = self.sc, self.devices
        check_hil(sc, devices)
        w = sc.workload
        kv = w.mode == "kv_cache"
        bundle = onnx_bundle(sc.model, seq_len=w.prompt_tokens, kv_cache=kv)
        vocab, max_pos = _vocab_and_positions(sc, bundle)
        if max_pos is not None and w.prompt_tokens + w.new_tokens > max_pos:
            raise LLSimError(f"{sc.path or 'scenario'}: workload: prompt_tokens + new_tokens = "
                             f"{w.prompt_tokens + w.new_tokens} > the {max_pos} positions of {sc.model}")
        from llsim.judge.run import n_modules

        if bundle.graph.n_modules != n_modules(sc):
            raise LLSimError(f"internal: {sc.model} has {bundle.graph.n_modules} modules as ONNX but "
                             f"{n_modules(sc)} in the simulator's graph")
        self.prompts = draw_prompts(sc, vocab)
        real = real_devices(devices)
        self.local = LocalNode("coordinator")
        executors = {d.index: self.local for d in devices}
        stage_file = {}
        for backend in sorted({devices[d].backend for d in real}):
            st = BACKENDS[backend](sc, [devices[d] for d in real if devices[d].backend == backend])
            self.started.append(st)
            executors.update(st.clients)
            stage_file.update(st.stage_file)
        from llsim.judge.hilfiles import attach_clock

        attach_clock(self, executors)  # heartbeats' telemetry stamped with the simulation's time
        self._tmp = tempfile.mkdtemp(prefix="llsim-segments-")
        self.plane = DataPlane(bundle, executors, w.mode, self.prompts, self._tmp,
                               threads={d.index: d.threads for d in devices if d.backend != "sim"},
                               deadline_slack=sc.hil.deadline_slack, deadline_floor_s=sc.hil.deadline_floor_s,
                               stage_file=stage_file)
        self.executors = executors
        self.nodes = HilNodes(self.plane, set(real), sc.hil.shape)
        self.real = real
        from llsim.kernel import RealtimeClock

        self.clock = RealtimeClock() if sc.hil.clock == "realtime" else None  # None: the virtual clock

    def load(self, plan) -> None:
        """Load the initial plan's segments before the run starts (so its first steps, and the real-time
        clock, do not wait for sessions to open)."""
        self.plane.deployment(0, plan.boundaries, [st.device for st in plan.stages])

    def kill(self, device: int, sig: int) -> None:
        """Send ``sig`` to device ``device``'s worker (fault injection in tests)."""
        for st in self.started:
            if device in st.clients:
                st.info["kill"](device, sig)

    def close(self) -> None:
        if self.plane is not None:
            try:
                self.plane.close()
            except Exception:  # the workers may be gone: closing must not hide the run's own error
                pass
        if self.local is not None:
            self.local.close()
        for st in reversed(self.started):
            try:
                st.stop()
            except Exception:  # one backend failing to stop must not leave the others running
                pass
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    # ---- what the run writes besides the usual files ---------------------------------------------------
    def info(self, res) -> dict:
        devs = self.devices
        workers = []
        pids = {d: p for st in self.started for d, p in st.pids.items()}
        for d in self.real:
            c = self.executors[d]
            workers.append({"device": devs[d].name, "backend": devs[d].backend, "address": c.address,
                            "pid": pids.get(d), "threads": devs[d].threads, "affinity": list(devs[d].affinity or []),
                            "worker": dict(getattr(c, "info", {}) or {})})
        lag = {} if self.clock is None else {"realtime_lag_max_ms": self.clock.lag_max_s * 1e3,
                                             "realtime_lag_mean_ms": self.clock.lag_mean_s * 1e3}
        return {**lag, "clock": self.sc.hil.clock, "mode": self.sc.workload.mode, "model": self.sc.model,
                "prompts": self.prompts, "tokens": {str(r): t for r, t in self.plane.tokens().items()},
                "real_devices": [devs[d].name for d in self.real], "workers": workers,
                "kv_rebuilds": self.plane.catchups, "workers_lost": self.nodes.lost,
                "segments_load_s": {str(k): v for k, v in self.plane.load_s.items()},
                "segments_cut_s": {str(k): v for k, v in self.plane.split_s.items()}}


def fidelity_rows(plane, devices, link_rows: list[dict], real_links: dict | None = None) -> list[dict]:
    """``fidelity.csv``: per real stage (device, segment, modules) and step kind, the cost model's
    compute time vs the worker's measured one; per directed link between two real workers, the link
    model's mean transfer time vs the worker's forwarding time on this host."""
    groups: dict[tuple, list] = defaultdict(list)
    for r in plane.runs:
        if r.real:
            groups[(r.device, r.epoch, r.stage, r.kind)].append(r)
    rows = []
    for (d, ep, s, kind), rs in sorted(groups.items()):
        pred = np.array([r.predicted_s or 0.0 for r in rs]) * 1e3
        meas = np.array([r.compute_s for r in rs]) * 1e3
        over = np.array([r.elapsed_s - r.compute_s for r in rs]) * 1e3
        per = (pred - meas) / np.maximum(meas, 1e-9) * 100
        rows.append({"what": "compute", "device": devices[d].name, "epoch": ep, "stage": s, "kind": kind,
                     "src": "", "dst": "", "n": len(rs), "predicted_ms": float(pred.mean()),
                     "measured_ms": float(meas.mean()), "measured_p90_ms": float(np.percentile(meas, 90)),
                     "error_pct": float((pred.mean() - meas.mean()) / max(meas.mean(), 1e-9) * 100),
                     "worst_error_pct": float(per[np.argmax(np.abs(per))]),
                     "overhead_ms": float(over.mean()), "bytes": int(np.mean([r.bytes_in for r in rs]))})
    real = {r.device for r in plane.runs if r.real}
    sends: dict[int, list] = defaultdict(list)
    for r in plane.runs:
        if r.real:
            sends[r.device].append(r.send_s)
    from llsim.hil.plane import route

    ex = plane.executors
    for lk in link_rows:
        if lk["src"] in real and lk["dst"] in real:
            # the worker's forwarding time when it sends to that peer itself; via this host: not measured
            direct = route(ex[lk["src"]], ex[lk["dst"]]) is not None
            meas = sends.get(lk["src"], []) if direct else []
            rows.append({"what": "link", "device": "", "epoch": "", "stage": "", "kind": "",
                         "src": lk["src_name"], "dst": lk["dst_name"], "n": lk["transfers"],
                         "predicted_ms": lk["mean_time_s"] * 1e3,
                         "measured_ms": float(np.mean(meas)) * 1e3 if meas else None, "measured_p90_ms": None,
                         "error_pct": None, "worst_error_pct": None, "overhead_ms": None,
                         "bytes": int(lk["bytes"] / max(1, lk["transfers"]))})
    for (src, dst), (n, nb, secs) in sorted((real_links or {}).items()):  # hil.shape: none: no link model
        rows.append({"what": "link", "device": "", "epoch": "", "stage": "", "kind": "",
                     "src": devices[src].name, "dst": devices[dst].name, "n": n, "predicted_ms": None,
                     "measured_ms": secs / max(1, n) * 1e3, "measured_p90_ms": None, "error_pct": None,
                     "worst_error_pct": None, "overhead_ms": None, "bytes": int(nb / max(1, n))})
    return rows


def add_measured_sessions(rt: HilRuntime, res) -> None:
    """Each plan change's measured cost of loading the new segments on the real and in-process
    executors (wall seconds, every node of the plan), next to its predicted session cost."""
    from llsim.sim.dynamics import taken

    epoch = 0
    for row in taken(res.rebalances):  # each plan switch carried out starts the next epoch
        if row["kind"] == "terminal":
            continue
        epoch += 1
        row["measured_session_s"] = rt.plane.load_s.get(epoch)


def write_hil_files(out: Path, rt: HilRuntime, res) -> None:
    from llsim.results.writer import write_csv, write_json

    write_csv(out / "fidelity.csv", fidelity_rows(rt.plane, rt.devices, res.link_rows, rt.nodes.real_links))
    write_json(out / "hil.json", rt.info(res), indent=2, sort_keys=True)
    from llsim.judge.hilfiles import annotate_run_dir

    annotate_run_dir(out, rt, res)  # links.csv tensor_path, devices.csv telemetry, timeline counters
