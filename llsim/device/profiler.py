"""The profiler: measure a device, fit the cost model, write a profile (+ its raw samples).

Sweep (default, ~1-2 min on 2 cores; ``quick``: fewer shapes, two sequence lengths, two passes and
two rounds, about a third of that, for tests and a first look):

1. **operator micro-graphs**: MatMul at transformer shapes (M = 1..256 tokens), batched attention
   MatMuls, Softmax, LayerNormalization, RMSNorm pieces, elementwise ops, Gather, Transpose/Concat/Slice;
2. **real zoo segments**: the ``small-gpt2`` model at several sequence lengths (recompute steps), and
   KV-cache decode steps (one new token after 16 and 96 cached).

Per-op latencies come from onnxruntime's profiler (``enable_profiling``, graph optimisations off so
node names match the graph llsim analysed), warm-up runs discarded, medians kept. The per-class
coefficients are fitted on those samples; then optimised (default-fusion) runs of whole segments
calibrate ``run_overhead_us`` and ``fused_scale``. Where the ops run is an :class:`Executor`.
"""
from __future__ import annotations

import csv
import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from llsim.device.costmodel import MATMUL_GROUP, CostModel, gemm_rows
from llsim.device.executor import Executor, LocalExecutor, interleaved
from llsim.device.fit import nnls_relative
from llsim.device.profile import (ClassCoef, Cluster, Compute, DeviceProfile, Memory, NetworkIf, Provenance, Thermal,
                                  ThreadCoefs, dump_profile)
from llsim.model.cuts import model_graph_from_onnx
from llsim.model.onnx_graph import analyse

FIT_MODEL = "small-gpt2"
FIT_SEQS = (2, 4, 16, 64, 128)
FIT_PASTS = (16, 96)  # KV-cache decode steps: one new token after this many cached
#: timing protocol (the accuracy bench times its held-out segments the same way): per-op medians of
#: RUNS runs, the best of OP_PASSES interleaved passes; whole segments, the median over
#: SEGMENT_ROUNDS interleaved rounds of LocalExecutor.time_runs with segment_runs(RUNS) runs (the
#: typical latency a deployment sees: the fitted run overhead and fused scales predict it)
RUNS = 10
OP_PASSES = 3
SEGMENT_ROUNDS = 4


def segment_runs(runs: int) -> int:
    return max(runs // 2, 5)


def fit_seqs(quick: bool = False) -> tuple[int, ...]:
    return (4, 64) if quick else FIT_SEQS


def fit_pasts(quick: bool = False) -> tuple[int, ...]:
    """Cache lengths of the KV-cache decode steps in the sweep."""
    return (32,) if quick else FIT_PASTS


def segment_rounds(quick: bool = False) -> int:
    return 2 if quick else SEGMENT_ROUNDS


def op_passes(quick: bool = False) -> int:
    return 2 if quick else OP_PASSES


@dataclass
class Sample:
    source: str
    node: str
    op_type: str
    op_class: str
    flops: float
    bytes: int  # activations read + written
    weight_bytes: int
    dims: tuple[int, ...]
    threads: int
    seconds: float


# ---- micro-graphs ---------------------------------------------------------------------------------
class _MG:
    def __init__(self, name):
        self.name, self.nodes, self.inits, self.inputs, self.outputs, self.feeds = name, [], [], [], [], {}
        self.k = 0
        self.rng = np.random.default_rng(0)

    def inp(self, shape, dtype=np.float32):
        self.k += 1
        n = f"in{self.k}"
        self.inputs.append(helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape))
        self.feeds[n] = (self.rng.standard_normal(shape).astype(dtype) if dtype == np.float32
                         else self.rng.integers(0, 100, shape).astype(dtype))
        return n

    def w(self, shape, value=None):
        self.k += 1
        n = f"w{self.k}"
        arr = np.full(shape, value, np.float32) if value is not None else (self.rng.standard_normal(shape) * 0.05).astype(np.float32)
        self.inits.append(numpy_helper.from_array(arr, n))
        return n

    def c(self, arr):
        self.k += 1
        n = f"c{self.k}"
        self.inits.append(numpy_helper.from_array(np.asarray(arr), n))
        return n

    def op(self, op_type, ins, out=True, **attrs):
        self.k += 1
        o = f"{op_type}_{self.k}"
        self.nodes.append(helper.make_node(op_type, ins, [o], name=f"{self.name}/{op_type}_{self.k}", **attrs))
        if out:
            self.outputs.append(helper.make_empty_tensor_value_info(o))
        return o

    def model(self) -> tuple[bytes, dict]:
        g = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, initializer=self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        return m.SerializeToString(), self.feeds


def micro_graphs(quick: bool = False) -> list[tuple[str, bytes, dict]]:
    ms = [1, 8, 32, 128] if quick else [1, 4, 16, 64, 256]
    kns = [(128, 512), (512, 128), (256, 256), (768, 768), (1024, 256), (256, 2048)]
    out = []
    g = _MG("matmul")  # > 2x a server L3 of weights in one graph: each run streams them from DRAM
    for m in ms:
        for k, n in kns:
            g.op("MatMul", [g.inp([m, k]), g.w([k, n])])
    for m in (1, 16):
        for _ in range(3):
            g.op("MatMul", [g.inp([m, 2048]), g.w([2048, 2048])])
    for m in (1, 4, 8):  # decode-shaped: mid-size weights streamed cold
        for k, n in ((640, 640), (640, 2560), (2560, 640), (1024, 1024)):
            g.op("MatMul", [g.inp([m, k]), g.w([k, n])])
    out.append(g)
    g = _MG("attention")
    for h, d in ((4, 64), (8, 32)):
        for s in (8, 32, 96):
            q, kt = g.inp([1, h, s, d]), g.inp([1, h, d, s])
            sc = g.op("MatMul", [q, kt])
            p = g.op("Softmax", [sc], axis=-1)
            g.op("MatMul", [p, g.inp([1, h, s, d])])
    out.append(g)
    g = _MG("norms")
    for rows, h in ((1, 256), (16, 512), (64, 768), (256, 256)):
        x = g.inp([rows, h])
        g.op("LayerNormalization", [x, g.w([h], 1.0), g.w([h], 0.0)], axis=-1)
        sq = g.op("Mul", [x, x])
        mean = g.op("ReduceMean", [sq], axes=[-1], keepdims=1)
        r = g.op("Reciprocal", [g.op("Sqrt", [mean])])
        g.op("Mul", [x, r])
    out.append(g)
    g = _MG("elementwise")
    for n in (256, 4096, 65536, 524288):
        a, b = g.inp([n]), g.inp([n])
        for op in ("Add", "Mul", "Div"):
            g.op(op, [a, b])
        for op in ("Tanh", "Sigmoid", "Erf", "Neg", "Abs"):
            g.op(op, [a])
        g.op("Where", [g.op("Greater", [a, b]), a, b])
    out.append(g)
    g = _MG("movement")
    for rows, h in ((8, 256), (64, 512), (256, 768)):
        x = g.inp([1, rows, 8, h // 8])
        g.op("Transpose", [x], perm=[0, 2, 1, 3])
        g.op("Concat", [x, x], axis=-1)
        g.op("Slice", [x, g.c(np.array([0], np.int64)), g.c(np.array([h // 16], np.int64)), g.c(np.array([-1], np.int64))])
        g.op("Softmax", [x], axis=-1)
        ids = g.inp([1, rows], np.int64)
        g.op("Gather", [g.w([2048, h]), ids], axis=0)
    out.append(g)
    return [(x.name, *x.model()) for x in out]


# ---- the sweep ---------------------------------------------------------------------------------------
def collect_samples(executor: Executor, threads: list[int], runs: int = RUNS, warmup: int = 3,
                    log=print, quick: bool = False) -> tuple[list[Sample], list[dict]]:
    """Per-op samples (unfused) and whole-segment optimised timings."""
    from llsim.model.load import onnx_bundle
    from llsim.model.onnx_graph import random_inputs
    from llsim.model.segment import segment_feeds, segment_protos

    samples: list[Sample] = []
    segments: list[dict] = []
    graphs = []
    for name, model, feeds in micro_graphs(quick):
        om = analyse(onnx.load_from_string(model), 1, 1)
        graphs.append((f"micro:{name}", model, feeds, om, model_graph_from_onnx(om)))
    # optimised whole-graph timings calibrate the deployed (fused) latency: micro-graphs give op mixes
    # the zoo segments do not have
    seg_runs = [(src, model, feeds, [op for m in mg.modules for op in m.ops]) for src, model, feeds, _, mg in graphs]
    # recompute steps at several lengths, and KV-cache decode steps (one new token after P cached: the
    # step a deployment runs most, weight-streaming matmuls of one row and attention over the cache)
    steps = [(seq, 0) for seq in fit_seqs(quick)] + [(1, past) for past in fit_pasts(quick)]
    for seq, past in steps:
        b = onnx_bundle(FIT_MODEL, seq_len=seq, kv_cache=past > 0, past_len=past)
        feeds = random_inputs(b.proto, b.om.dims, seed=0)
        tag = f"{FIT_MODEL}@{seq}" + (f"+{past}kv" if past else "")
        graphs.append((f"zoo:{tag}", b.proto.SerializeToString(), feeds, b.om, b.graph))
        n = b.graph.n_modules
        bounds = [0, 1, 2, n // 2, n - 1, n]
        segs = segment_protos(b.om, b.cuts, b.graph, bounds, b.proto)
        sfeeds = segment_feeds(b.proto, segs, feeds)
        for j, ((proto, _, _), f) in enumerate(zip(segs, sfeeds)):
            seg_runs.append((f"{tag}:seg{j}", proto.SerializeToString(), f,
                             [op for m in b.graph.modules[bounds[j]:bounds[j + 1]] for op in m.ops]))
    for t in threads:
        t0 = time.perf_counter()
        meds = interleaved(lambda g, first: executor.profile_nodes(g[1], g[2], t, runs, warmup if first else 1),
                           graphs, op_passes(quick))
        for (src, model, feeds, _, mg), med in zip(graphs, meds):
            # the ops a deployment runs: constant-folded ones are left out of the fit
            for cost in (op for m in mg.modules for op in m.ops if not op.const):
                if cost.name in med:
                    samples.append(Sample(src, cost.name, cost.op_type, cost.op_class, cost.flops,
                                          cost.bytes_in + cost.bytes_out, cost.param_bytes,
                                          cost.dims, t, med[cost.name]))
        log(f"  threads={t}: {len(graphs)} graphs profiled per op in {time.perf_counter() - t0:.1f}s")
        secs = interleaved(lambda j, first: executor.time_runs(j[1], j[2], t, segment_runs(runs),
                                                               warmup if first else 1), seg_runs,
                           segment_rounds(quick), combine="median")
        for (name, model, feeds, ops), sec in zip(seg_runs, secs):
            segments.append({"segment": name, "threads": t, "seconds": sec, "ops": ops})
        log(f"  threads={t}: {len(seg_runs)} optimised segment timings")
    return samples, segments


def fit_coefficients(samples: list[Sample], segments: list[dict], threads: list[int]) -> dict[int, ThreadCoefs]:
    out: dict[int, ThreadCoefs] = {}
    for t in threads:
        classes: dict[str, ClassCoef] = {}
        for cls in sorted({s.op_class for s in samples if s.threads == t}):
            rows = [s for s in samples if s.threads == t and s.op_class == cls and s.seconds > 0]
            if not rows:
                continue
            has_flops = any(s.flops > 0 for s in rows)
            split_w = cls in MATMUL_GROUP
            X = np.array([[1.0, s.flops if has_flops else 0.0,
                           float(s.bytes if split_w else s.bytes + s.weight_bytes),
                           float(s.weight_bytes if split_w else 0.0),
                           s.flops / np.sqrt(gemm_rows(s.dims)) if split_w else 0.0] for s in rows])
            y = np.array([s.seconds for s in rows])
            b = nnls_relative(X, y)
            inv = lambda v: round(1.0 / v / 1e9, 4) if v > 0 else 0.0  # noqa: E731
            if not np.any(b > 0):  # nothing fitted (ClassCoef rejects all zeros): the median time as overhead
                classes[cls] = ClassCoef(overhead_us=round(float(np.median(y)) * 1e6, 4))
                continue
            classes[cls] = ClassCoef(overhead_us=round(b[0] * 1e6, 4), gflops=inv(b[1]), gbps=inv(b[2]),
                                     weight_gbps=inv(b[3]), narrow_gflops=inv(b[4]))
        tc = ThreadCoefs(classes=classes)
        segs = [s for s in segments if s["threads"] == t]
        if segs:
            fake = DeviceProfile.model_construct(compute=Compute.model_construct(
                threads={t: tc}, default_threads=t, fallback_class="elementwise"), name="fit")
            cm = CostModel(fake)
            live = lambda s, mm: [o for o in s["ops"] if not o.const and (o.op_class in MATMUL_GROUP) == mm]  # noqa: E731
            work = lambda ops: sum(cm.op_seconds(o, t, overhead=False) for o in ops)  # noqa: E731
            X = np.array([[1.0, work(live(s, True)), work(live(s, False)), len(live(s, True)) + len(live(s, False))]
                          for s in segs])
            y = np.array([s["seconds"] for s in segs])
            b = nnls_relative(X, y)
            tc = ThreadCoefs(classes=classes, run_overhead_us=round(b[0] * 1e6, 3),
                             fused_scale={"matmul": round(max(b[1], 1e-3), 4), "other": round(max(b[2], 1e-3), 4)},
                             fused_op_overhead_us=round(b[3] * 1e6, 4))
        out[t] = tc
    return out


def write_samples(path: Path, samples: list[Sample], segments: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["kind", "source", "node", "op_type", "op_class", "flops", "bytes", "weight_bytes", "dims",
                    "threads", "seconds"])
        for s in samples:
            w.writerow(["op", s.source, s.node, s.op_type, s.op_class, f"{s.flops:.0f}", s.bytes, s.weight_bytes,
                        "x".join(map(str, s.dims)), s.threads, f"{s.seconds:.9f}"])
        for s in segments:
            live = [o for o in s["ops"] if not o.const]
            w.writerow(["segment", s["segment"], "", "", "", f"{sum(o.flops for o in live):.0f}",
                        sum(o.bytes_in + o.bytes_out for o in live), sum(o.param_bytes for o in live), "",
                        s["threads"], f"{s['seconds']:.9f}"])


def measure(executor: Executor, threads: list[int], runs: int = RUNS, warmup: int = 3, log=print,
            quick: bool = False, tool: str = "llsim profile host") -> tuple[list[Sample], list[dict], dict, str]:
    """The sweep on ``executor`` and the fit: (samples, segment timings, coefficients per thread count, how)."""
    samples, segments = collect_samples(executor, threads, runs, warmup, log, quick)
    coefs = fit_coefficients(samples, segments, threads)
    how = (f"{tool}: onnxruntime per-op profiling (graph optimisations off) over micro-graphs and "
           f"{FIT_MODEL} at seq {', '.join(map(str, fit_seqs(quick)))} and KV-cache decode after "
           f"{', '.join(map(str, fit_pasts(quick)))} cached; {warmup} warm-up runs discarded, per-op "
           f"median of {runs} runs, best of {op_passes(quick)} interleaved passes; NNLS fit on relative error; "
           f"fused_scale/run_overhead fitted on optimised whole-segment runs (median over {segment_rounds(quick)} "
           f"interleaved rounds of median-of-{segment_runs(runs)})")
    return samples, segments, coefs, how


def profile_host(out: Path, threads: list[int], executor: Executor | None = None, runs: int = RUNS, warmup: int = 3,
                 name: str | None = None, log=print, quick: bool = False) -> tuple[DeviceProfile, float]:
    executor = executor or LocalExecutor()
    t0 = time.perf_counter()
    info = executor.describe()
    log(f"profiling {info['host']} ({info['cpu']}, {info['cores']} cores), threads {threads}, "
        f"onnxruntime {info['onnxruntime_version']}")
    samples, segments, coefs, how = measure(executor, threads, runs, warmup, log, quick)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    samples_path = out.with_suffix(".samples.csv")
    write_samples(samples_path, samples, segments)
    today = dt.date.today().isoformat()
    total, avail = info.get("ram_total_gb") or 1.0, info.get("ram_available_gb") or 1.0
    prof = DeviceProfile(
        name=name or out.stem, kind="host", device=info["host"], soc=info["cpu"],
        cpu=[Cluster(name="all", cores=int(info["cores"] or 1), freq_ghz=1.0, core=info["machine"])],
        memory=Memory(ram_total_gb=round(total, 2), ram_available_gb=round(min(avail, total), 2),
                      source=f"measured: /proc/meminfo on {info['host']} at profiling time"),
        compute=Compute(threads=coefs, default_threads=max(threads), source=f"measured: {how}"),
        thermal=Thermal(peak_speed=1.0, sustained_speed=1.0, time_to_throttle_s=0.0,
                        source="not measured: a host is assumed not to throttle"),
        network=NetworkIf(wifi_standard="ac", spatial_streams=2,
                          source="not measured: placeholder; a host talks over loopback or Ethernet"),
        provenance=Provenance(kind="measured", tool="llsim profile host", date=today, host=info["host"],
                              onnxruntime_version=info["onnxruntime_version"], samples=samples_path.name),
        notes="cpu freq_ghz is not read on a host (1.0 placeholder); compute coefficients are what counts",
    )
    elapsed = time.perf_counter() - t0
    dump_profile(prof, out, header=f"# measured by `llsim profile host --out {out} --threads "
                                    f"{','.join(map(str, threads))}` in {elapsed:.0f} s; raw samples: {samples_path.name}")
    return prof, elapsed
