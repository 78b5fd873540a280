"""Cost-model accuracy: predicted vs measured whole-segment latency on models *not* used in the fit.

The profiler fits on micro-graphs and ``small-gpt2`` (hidden 256, seq 2-128). The held-out models
below have other widths, head counts, FFN sizes and families (BLOOM with ALiBi, Llama with rotary,
GQA and SwiGLU) and are measured at other sequence lengths, as optimised onnxruntime sessions (what a
deployment runs).

Measuring and predicting are separate steps, so one set of measurements can be set against several
profiles (a fit made minutes ago on this host, and the committed one made on another day).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llsim.device.costmodel import CostModel
from llsim.device.executor import Executor, LocalExecutor, interleaved
from llsim.device.profile import DeviceProfile
from llsim.device.profiler import RUNS, SEGMENT_ROUNDS, segment_runs
from llsim.model.graph import Module
from llsim.model.zoo import ModelConfig, get_config

HOLDOUT = [
    get_config("small-bloom"),  # hidden 384, ALiBi
    get_config("small-llama"),  # hidden 320, rotary, GQA, SwiGLU
    ModelConfig("gpt2-512x4", "gpt2", 512, 4, 8, 6000, 2048, max_positions=1024),  # the fit family, other widths
]
HOLDOUT_SEQS = (8, 48, 160)


@dataclass
class Measured:
    model: str
    seq_len: int
    threads: int
    segment: str
    modules: list[Module]
    measured_ms: float


@dataclass
class AccuracyRow:
    model: str
    seq_len: int
    threads: int
    segment: str
    predicted_ms: float
    measured_ms: float

    @property
    def ape(self) -> float:
        return abs(self.predicted_ms - self.measured_ms) / self.measured_ms


def measure_holdout(threads: list[int], executor: Executor | None = None, models: list[ModelConfig] = HOLDOUT,
                    seqs=HOLDOUT_SEQS, runs: int = segment_runs(RUNS), rounds: int = SEGMENT_ROUNDS,
                    log=None) -> list[Measured]:
    """Each held-out model at each sequence length, cut into three segments, timed per thread count
    with the protocol the profiler's segment timings use (the median over interleaved rounds of
    ``time_runs``): the typical latency, as a deployment sees it, on both sides."""
    from llsim.model.builder import build_model
    from llsim.model.cuts import analyse_cuts, model_graph_from_onnx
    from llsim.model.onnx_graph import analyse, random_inputs
    from llsim.model.segment import segment_feeds, segment_protos

    executor = executor or LocalExecutor()
    jobs = []
    for cfg in models:
        proto = build_model(cfg, seed=1)
        for seq in seqs:
            om = analyse(proto, 1, seq)
            ca = analyse_cuts(om)
            g = model_graph_from_onnx(om, ca)
            n = g.n_modules
            bounds = [0, 2, n // 2 + 1, n]
            segs = segment_protos(om, ca, g, bounds, proto)
            feeds = segment_feeds(proto, segs, random_inputs(proto, om.dims, seed=0))
            for t in threads:
                for j, ((sp, _, _), f) in enumerate(zip(segs, feeds)):
                    jobs.append((Measured(cfg.name, seq, t, f"modules {bounds[j]}-{bounds[j + 1] - 1}",
                                          g.modules[bounds[j]:bounds[j + 1]], 0.0), sp.SerializeToString(), f))
    # interleaved rounds: a slow spell of the host spoils one round, not one model's rows
    secs = interleaved(lambda j, first: executor.time_runs(j[1], j[2], j[0].threads, runs, 3 if first else 1),
                       jobs, rounds, combine="median")
    for (m, _, _), sec in zip(jobs, secs):
        m.measured_ms = sec * 1e3
    if log:
        log(f"  {len(jobs)} segments timed in {rounds} interleaved rounds")
    return [m for m, _, _ in jobs]


def predict(measured: list[Measured], profile: DeviceProfile) -> list[AccuracyRow]:
    cm = CostModel(profile)
    return [AccuracyRow(m.model, m.seq_len, m.threads, m.segment, cm.segment_seconds(m.modules, m.threads) * 1e3,
                        m.measured_ms) for m in measured]


def summary(rows: list[AccuracyRow]) -> dict:
    e = np.array([r.ape for r in rows])
    bias = np.array([r.predicted_ms / r.measured_ms for r in rows])
    return {"n": len(rows), "median_ape": float(np.median(e)), "p90_ape": float(np.percentile(e, 90)),
            "max_ape": float(e.max()), "median_ratio": float(np.median(bias))}
