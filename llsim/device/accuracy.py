"""Cost-model accuracy: predicted vs measured whole-segment latency on models *not* used in the fit.

The profiler fits on micro-graphs and ``small-gpt2`` (hidden 256, seq 16/64/128). The held-out models
below have other widths, head counts, FFN sizes and families (BLOOM with ALiBi, Llama with rotary,
GQA and SwiGLU) and are measured at other sequence lengths, as optimised onnxruntime sessions (what a
deployment runs).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llsim.device.costmodel import CostModel
from llsim.device.executor import Executor, LocalExecutor
from llsim.device.profile import DeviceProfile
from llsim.model.zoo import ModelConfig, get_config

HOLDOUT = [
    get_config("small-bloom"),  # hidden 384, ALiBi
    get_config("small-llama"),  # hidden 320, rotary, GQA, SwiGLU
    ModelConfig("gpt2-512x4", "gpt2", 512, 4, 8, 6000, 2048, max_positions=1024),  # the fit family, other widths
]
HOLDOUT_SEQS = (8, 48, 160)


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


def evaluate(profile: DeviceProfile, threads: list[int], executor: Executor | None = None,
             models: list[ModelConfig] = HOLDOUT, seqs=HOLDOUT_SEQS, runs: int = 15, log=None) -> list[AccuracyRow]:
    from llsim.model.builder import build_model
    from llsim.model.cuts import analyse_cuts, model_graph_from_onnx
    from llsim.model.onnx_graph import analyse, random_inputs
    from llsim.model.segment import segment_feeds, segment_protos

    executor = executor or LocalExecutor()
    cm = CostModel(profile)
    rows = []
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
                    meas = executor.time_runs(sp.SerializeToString(), f, t, runs, 3)
                    pred = cm.segment_seconds(g.modules[bounds[j]:bounds[j + 1]], t)
                    rows.append(AccuracyRow(cfg.name, seq, t, f"modules {bounds[j]}-{bounds[j + 1] - 1}",
                                            pred * 1e3, meas * 1e3))
            if log:
                log(f"  {cfg.name} seq {seq}: done")
    return rows


def summary(rows: list[AccuracyRow]) -> dict:
    e = np.array([r.ape for r in rows])
    return {"n": len(rows), "median_ape": float(np.median(e)), "p90_ape": float(np.percentile(e, 90)),
            "max_ape": float(e.max())}
