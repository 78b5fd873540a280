"""Cost-model accuracy: predicted vs measured whole-segment latency on models *not* used in the fit.

The profiler fits on micro-graphs and ``small-gpt2`` (hidden 256, seq 2-128). The held-out models
below have other widths, head counts, FFN sizes and families (BLOOM with ALiBi, Llama with rotary,
GQA and SwiGLU) and are measured at other sequence lengths, as optimised onnxruntime sessions (what a
deployment runs).

Measuring and predicting are separate steps, so one set of measurements can be set against several
profiles (a fit made minutes ago on this host, and the committed one made on another day).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

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
#: exporter-made graphs none of which the fit sees (torch.onnx dynamo and TorchScript exports of Hugging
#: Face BLOOM, GPT-2, Llama, Qwen2, OPT; some quantized by onnxruntime), committed as weight stubs
FOREIGN_DIR = Path(__file__).resolve().parents[2] / "tests" / "data" / "foreign"
FOREIGN_SEQS = (16, 64, 128)


@dataclass
class Measured:
    model: str
    seq_len: int
    threads: int
    segment: str
    modules: list[Module]
    measured_ms: float
    meta: dict = field(default_factory=dict)  # foreign graphs: family, hidden, exporter, quantization


@dataclass
class AccuracyRow:
    model: str
    seq_len: int
    threads: int
    segment: str
    predicted_ms: float
    measured_ms: float
    meta: dict = field(default_factory=dict)

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

    executor = executor or LocalExecutor()
    jobs = []
    for cfg in models:
        proto = build_model(cfg, seed=1)
        for seq in seqs:
            parts = _parts(proto, seq, lambda n: [0, 2, n // 2 + 1, n])
            for t in threads:
                jobs += [(Measured(cfg.name, seq, t, label, mods, 0.0), model, f) for label, mods, model, f in parts]
    return _time(jobs, executor, runs, rounds, log, "segments")


def _parts(proto, seq: int, cut, whole: bool = False) -> list[tuple]:
    """``proto`` analysed at ``seq`` and cut at ``cut(n_modules)``: (label, modules, model bytes, feeds)
    of each segment (random inputs, seed 0), after the whole model's own if ``whole``."""
    from llsim.model.cuts import analyse_cuts, model_graph_from_onnx
    from llsim.model.onnx_graph import analyse, random_inputs
    from llsim.model.segment import segment_feeds, segment_protos

    om = analyse(proto, 1, seq)
    ca = analyse_cuts(om)
    g = model_graph_from_onnx(om, ca)
    bounds = cut(g.n_modules)
    segs = segment_protos(om, ca, g, bounds, proto)
    full = random_inputs(proto, om.dims, seed=0)
    parts = [("whole", g.modules, proto.SerializeToString(), full)] if whole else []
    for j, ((sp, _, _), f) in enumerate(zip(segs, segment_feeds(proto, segs, full))):
        parts.append((f"modules {bounds[j]}-{bounds[j + 1] - 1}", g.modules[bounds[j]:bounds[j + 1]],
                      sp.SerializeToString(), f))
    return parts


def _time(jobs: list, executor: Executor, runs: int, rounds: int, log, what: str) -> list[Measured]:
    """Time (Measured, model bytes, feeds) jobs with the profiler's segment estimator: the median over
    interleaved rounds (a slow spell of the host spoils one round, not one model's rows)."""
    secs = interleaved(lambda j, first: executor.time_runs(j[1], j[2], j[0].threads, runs, 3 if first else 1),
                       jobs, rounds, combine="median")
    for (m, _, _), sec in zip(jobs, secs):
        m.measured_ms = sec * 1e3
    if log:
        log(f"  {len(jobs)} {what} timed in {rounds} interleaved rounds")
    return [m for m, _, _ in jobs]


def foreign_manifest(directory: Path = FOREIGN_DIR) -> dict:
    """name -> family, hidden, exporter, quantization, file, ... of the committed foreign graphs."""
    path = directory / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the foreign graphs' manifest is missing (a source checkout of llsim has it)")
    return json.loads(path.read_text())["graphs"]


def measure_foreign(threads: list[int], executor: Executor | None = None, names: list[str] | None = None,
                    seqs=FOREIGN_SEQS, runs: int = segment_runs(RUNS), rounds: int = SEGMENT_ROUNDS,
                    directory: Path = FOREIGN_DIR, log=None) -> list[Measured]:
    """The exporter-made graphs of ``tests/data/foreign`` (weights restored by
    :func:`llsim.model.stub.load_stub`): each at each sequence length as the whole model and as its two
    halves, timed per thread count with the estimator of :func:`measure_holdout` (and the profiler's)."""
    from llsim.model.stub import load_stub

    executor = executor or LocalExecutor()
    man = foreign_manifest(directory)
    jobs = []
    for name in names or sorted(man):
        info = man[name]
        proto = load_stub(directory / info["file"])
        meta = {k: info[k] for k in ("family", "hidden", "exporter", "quantization")}
        for seq in seqs:
            parts = _parts(proto, seq, lambda n: [0, n // 2, n], whole=True)
            for t in threads:
                jobs += [(Measured(name, seq, t, label, mods, 0.0, meta), model, f) for label, mods, model, f in parts]
    return _time(jobs, executor, runs, rounds, log, "foreign graphs and segments")


def predict(measured: list[Measured], profile: DeviceProfile) -> list[AccuracyRow]:
    cm = CostModel(profile)
    return [AccuracyRow(m.model, m.seq_len, m.threads, m.segment, cm.segment_seconds(m.modules, m.threads) * 1e3,
                        m.measured_ms, m.meta) for m in measured]


def summary(rows: list[AccuracyRow]) -> dict:
    e = np.array([r.ape for r in rows])
    bias = np.array([r.predicted_ms / r.measured_ms for r in rows])
    return {"n": len(rows), "median_ape": float(np.median(e)), "p90_ape": float(np.percentile(e, 90)),
            "max_ape": float(e.max()), "median_ratio": float(np.median(bias))}
