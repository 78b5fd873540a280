"""`llsim fidelity SCENARIO`: the scenario simulated, and run with its real nodes, side by side.

The simulated run is the same scenario with every device simulated (its profile's cost model), on
the same plan and seed; the real run drives the real workers (``backend: local``) through the
simulation on the virtual clock (:mod:`llsim.judge.hil`): their stages take the compute time the
workers measured. Everything else (the network model, the other phones, the workload) is the same
model in both, so the difference between the two runs is what the cost model got wrong about the
real nodes' compute, and what that changed in queueing.

The error is split into terms (:func:`terms`):

* ``compute``: per generated token, the predicted minus measured compute of the real stages it
  went through (mean over tokens), relative to the real run's per-token latency;
* ``queueing``: the rest of the per-token latency difference (waiting for a busy node, which
  follows from the compute times);
* ``transfer``: 0 with ``hil.shape: model`` (links take the link model's time in both runs); with
  ``shape: none``, the simulated run's link time between the real workers minus the real one;
* ``overhead``: the workers' per-stage protocol overhead (submit to result, minus compute), which
  neither run puts in the timeline; shown so a user can judge what a real deployment adds.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from llsim.scenario import Scenario

METRICS = (("TTFT ms (mean)", "ttft_ms"), ("per-token latency ms (mean)", ("token_latency_ms", "mean")),
           ("per-token latency ms (p50)", ("token_latency_ms", "p50")),
           ("per-token latency ms (p90)", ("token_latency_ms", "p90")), ("tokens/s", "tokens_per_s"))


def all_simulated(sc: Scenario) -> Scenario:
    devs = [d.model_copy(update={"backend": "sim", "affinity": None, "serial": None}) for d in sc.devices]
    return sc.model_copy(update={"devices": devs, "hil": sc.hil.model_copy(update={"tensors": False})})


def _get(m: dict, key):
    if isinstance(key, tuple):
        return (m.get(key[0]) or {}).get(key[1])
    return m.get(key)


def _err(sim, real):
    if sim is None or real is None or not real:
        return None
    return (sim - real) / real * 100


def terms(real_res, plane, sim_metrics: dict, sim_links: list[dict] | None = None,
          real_links: dict | None = None) -> dict:
    """The per-token latency difference split into compute, queueing, transfer and overhead (ms/token).
    ``transfer``: with ``hil.shape: none`` (``real_links``, the real run's transfers between real
    workers) the simulated run's link time between those pairs minus the real one, per token; else 0."""
    real_lat = _get(real_res.metrics, ("token_latency_ms", "mean")) or 0.0
    sim_lat = _get(sim_metrics, ("token_latency_ms", "mean")) or 0.0
    decode = [r for r in plane.runs if r.real and r.kind != "prefill"]
    n_tok = max(1, sum(1 for t in real_res.tokens if t["token"] > 0))
    compute = sum((r.predicted_s or 0.0) - r.compute_s for r in decode) * 1e3 / n_tok
    overhead = sum(r.elapsed_s - r.compute_s for r in decode) * 1e3 / n_tok
    transfer = 0.0
    if real_links:
        model_s = sum(lk["total_time_s"] for lk in (sim_links or []) if (lk["src"], lk["dst"]) in real_links)
        transfer = (model_s - sum(v[2] for v in real_links.values())) * 1e3 / max(1, len(real_res.tokens))
    diff = sim_lat - real_lat
    queue = diff - compute - transfer
    pct = (lambda v: v / real_lat * 100) if real_lat else (lambda v: None)
    return {"latency_diff_ms": diff, "compute_ms": compute, "queueing_ms": queue, "transfer_ms": transfer,
            "overhead_ms": overhead, "compute_pct": pct(compute), "queueing_pct": pct(queue),
            "transfer_pct": pct(transfer), "overhead_pct": pct(overhead)}


def compare(sc: Scenario, out: Path, timeline: bool = True) -> dict:
    """Run ``sc`` simulated and with its real nodes (into ``out``); the figures side by side."""
    from llsim.cluster import expand_devices
    from llsim.judge.run import make_plan, run_to_dir, simulate

    if not any(d.backend != "sim" for d in sc.devices):
        from llsim.errors import LLSimError

        raise LLSimError(f"{sc.path or 'scenario'}: no device has a real backend (backend: local), so there is "
                         "nothing to compare the simulation with")
    sim_sc = all_simulated(sc)
    plan = make_plan(sim_sc, expand_devices(sim_sc))
    sim_res, _, _ = simulate(sim_sc, plan=plan, timeline=False)
    real_res, devices, _ = run_to_dir(sc, out, plan=plan, timeline=timeline)
    rows = []
    for label, key in METRICS:
        s, r = _get(sim_res.metrics, key), _get(real_res.metrics, key)
        rows.append({"metric": label, "simulated": s, "real": r, "error_pct": _err(s, r)})
    from llsim.judge.hil import fidelity_rows

    stages = [r for r in fidelity_rows(real_res.hil.plane, devices, real_res.link_rows) if r["what"] == "compute"]
    return {"scenario": sc.name, "model": sc.model, "mode": sc.workload.mode,
            "concurrency": sc.workload.concurrency, "real_devices": [d.name for d in devices if d.backend != "sim"],
            "devices": len(devices), "out": str(out), "metrics": rows,
            "stop_reason": {"simulated": sim_res.metrics["stop_reason"], "real": real_res.metrics["stop_reason"]},
            "terms": terms(real_res, real_res.hil.plane, sim_res.metrics, sim_res.link_rows,
                           real_res.hil.nodes.real_links), "stages": stages, "shape": sc.hil.shape,
            "tokens": len(real_res.tokens)}


def latency_row(report: dict) -> dict:
    """The report's per-token latency (mean) row: simulated, real and their error."""
    return next(r for r in report["metrics"] if r["metric"] == "per-token latency ms (mean)")


def latency_error(report: dict) -> float | None:
    """The per-token latency error (mean), simulated vs real, in % (the fidelity bench's figure)."""
    return latency_row(report)["error_pct"]


def summary(reports: list[dict]) -> dict:
    errs = [abs(e) for e in (latency_error(r) for r in reports) if e is not None]
    return {"median_abs_error_pct": float(np.median(errs)) if errs else None,
            "max_abs_error_pct": float(max(errs)) if errs else None, "scenarios": len(reports)}
