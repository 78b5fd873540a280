"""Calibrated phone profiles: cost-model coefficients derived from public figures, arithmetic visible.

No phone was measured to write ``device_profiles/<phone>.yaml``: every coefficient comes from a
public spec sheet, a published tokens/s figure, or a stated assumption, through the pure functions
below. ``python -m llsim.device.calibration`` rewrites the YAMLs and prints the check table; a
profile measured on the phone (``llsim profile host`` under Termux) replaces them.

The model, per thread count T (threads fill the fastest cores first):

* **matmul compute** ``gflops(T) = sum over the T fastest cores of (fp32 flops/cycle x GHz)
  x INT8_DOT_SPEEDUP x EFFICIENCY``. fp32 flops/cycle = 128-bit NEON FMA pipes x 4 lanes x 2.
  The cited runs are q8f32 (int8 weights): onnxruntime runs them as int8 GEMMs, and every core here
  has the Armv8.2 dot-product instructions (SDOT/UDOT: 4 int8 MACs per 32-bit lane), hence x4.
* **weight streaming** ``weight_gbps(T) = BW x min(1, SINGLE_CORE_BW_SHARE x T)``: DRAM bandwidth
  saturates at two cores (DakeQQ pins two worker threads, "the best cost/performance ... due to
  limitations imposed by the RAM bandwidth"). BW is *fitted*: one cited decode tokens/s of one
  model per SoC (closed form, :func:`fit_bandwidth`); other models on the same SoC are held out.
  SoCs without a cited figure get ``BW = BW_ref x (their DRAM peak / the reference's DRAM peak)``.
* **activations** (every class) ``gbps(T) = sum over the T fastest cores of 16 B/cycle x GHz``:
  decode activations are KB-sized vectors and per-layer KV slices that live in L2/L3/SLC.
  Reshape-like ops (class ``shape``) move no bytes: overhead only. A Gather reads the rows it
  returns (its activation bytes), not its whole table: the table bytes the graph attaches to it are
  made negligible (``weight_gbps`` = 1e6).
* **per-op overheads** are the dev-VM measurement (``REFERENCE_HOST``) scaled by
  ``(host GHz x host scalar perf/GHz) / (phone fastest-core GHz x its scalar perf/GHz)``.
* ``fused_scale`` is neutral (1.0): no credit for graph fusions is assumed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llsim.device.costmodel import MATMUL_GROUP, CostModel
from llsim.device.profile import (PROFILE_DIR, ClassCoef, Cluster, Compute, DeviceProfile, Memory, NetworkIf,
                                  Provenance, Thermal, ThreadCoefs)
from llsim.model.analytic import analytic_graph
from llsim.model.graph import OP_CLASSES
from llsim.model.zoo import get_config

# ---- public per-core figures -------------------------------------------------------------------


@dataclass(frozen=True)
class CoreType:
    name: str
    fp32_flops_per_cycle: int  # 128-bit FMA pipes x 4 fp32 lanes x 2 flops
    dotprod: bool  # Armv8.2 SDOT/UDOT
    scalar_perf_per_ghz: float  # relative to the dev-VM host core (1.0): ASSUMPTION, only scales overheads


#: FMA throughput from the Arm Software Optimization Guides of each core (Q-form FMLA per cycle):
#: X3 4 pipes; A715/A710/A78/A76 2 pipes; A75 2 x 64-bit = one Q-form per cycle; A55 one Q-form per
#: cycle; A510 one 128-bit pipe per core (two cores share a 2 x 128-bit vector unit).
CORE_TYPES: dict[str, CoreType] = {c.name: c for c in [
    CoreType("Cortex-X3", 32, True, 0.80),
    CoreType("Cortex-A715", 16, True, 0.65),
    CoreType("Cortex-A710", 16, True, 0.65),
    CoreType("Cortex-A78", 16, True, 0.62),
    CoreType("Cortex-A76", 16, True, 0.55),
    CoreType("Cortex-A75", 8, True, 0.45),
    CoreType("Cortex-A55", 8, True, 0.30),
    CoreType("Cortex-A510", 8, True, 0.30),
]}

#: int8 dot product: 4 int8 MACs per 32-bit lane where fp32 does 1 (SDOT/UDOT, Armv8.2-A dotprod).
INT8_DOT_SPEEDUP = 4.0

#: Whole-model fraction of NEON peak reached by onnxruntime's CPU kernels. Arm learning path
#: (onnxruntime_perf_test on one Cortex C1-Pro core of a Vivo X300): ResNet50v2 in 339.38 ms without
#: KleidiAI. ResNet-50 = 3.8e9 multiply-adds (He et al., CVPR 2016, Table 1) = 7.6e9 flops ->
#: 7.6e9 / 0.33938 s = 22.4 GFLOPS; C1-Pro peak = 16 flops/cycle x 2.7 GHz (Dimensity 9500 spec,
#: ASSUMED 2 x 128-bit FMA pipes) = 43.2 GFLOPS -> 22.4 / 43.2 = 0.52.
EFFICIENCY = round(7.6e9 / 0.33938 / (16 * 2.7e9), 2)

#: One core streams this share of the saturated DRAM bandwidth (ASSUMPTION: a big Arm core is limited
#: by its outstanding L2 misses; two or more threads saturate, as DakeQQ's thread pinning note says).
SINGLE_CORE_BW_SHARE = 0.6

#: Sustained cache-to-core copy throughput per core, bytes/cycle (ASSUMPTION: one 128-bit access per
#: cycle; bytes read + written both count in llsim's activation bytes).
ACT_BYTES_PER_CYCLE = 16

#: A Gather reads only the rows it returns; its table bytes get this (negligible-cost) throughput.
GATHER_TABLE_GBPS = 1e6

#: Per-op overheads measured on llsim's dev VM (AMD EPYC, KVM, 2 vCPUs, onnxruntime 1.31.1) with
#: ``llsim profile host --threads 1,2``. The VM hides the boost clock: 2.6 GHz = BogoMIPS 5192 / 2.
REFERENCE_HOST = {
    "what": "llsim dev VM (AMD EPYC, 2 vCPU KVM), onnxruntime 1.31.1, `llsim profile host --threads 1,2`",
    "ghz": 2.6,
    "scalar_perf_per_ghz": 1.0,
    1: {"classes": {"matmul": 5.10, "attention": 5.10, "elementwise": 3.42, "gather": 3.96, "norm": 5.33,
                    "reduce": 3.09, "shape": 3.80, "softmax": 3.60, "quant": 3.42, "other": 3.42},
        "run_overhead_us": 71.6, "fused_op_overhead_us": 1.33},
    2: {"classes": {"matmul": 7.60, "attention": 7.60, "elementwise": 5.06, "gather": 6.56, "norm": 7.55,
                    "reduce": 4.97, "shape": 5.44, "softmax": 5.53, "quant": 5.06, "other": 5.06},
        "run_overhead_us": 69.6, "fused_op_overhead_us": 2.10},
}

#: The cited runs: DakeQQ's apps call SetIntraOpNumThreads(3) (the caller + two workers pinned to
#: the big cores, "2*A76" / "X3+A715" in the README) -> evaluated at 3 threads.
CITED_THREADS = 3
CONTEXT = 1024

DAKEQQ = ("DakeQQ, Native-LLM-for-Android, README 'Performance' tables (ONNX Runtime CPU, 1024 context, q8f32), "
          "https://github.com/DakeQQ/Native-LLM-for-Android; thread setup: SetIntraOpNumThreads(3) + "
          "session.intra_op_thread_affinities in Qwen_ONNX/app/src/main/cpp/project.cpp")


# ---- SoC specs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    cores: int
    core: str
    ghz: float


@dataclass(frozen=True)
class SocSpec:
    name: str
    clusters: tuple[ClusterSpec, ...]
    mem_type: str
    mem_mts: int  # transfers per second per pin, millions
    bus_bits: int
    source: str

    @property
    def dram_peak_gbps(self) -> float:
        return self.mem_mts * self.bus_bits / 8 / 1000

    def cores_fastest_first(self) -> list[tuple[CoreType, float]]:
        out = [(CORE_TYPES[c.core], c.ghz) for c in self.clusters for _ in range(c.cores)]
        return sorted(out, key=lambda x: -x[0].fp32_flops_per_cycle * x[1])

    @property
    def n_cores(self) -> int:
        return sum(c.cores for c in self.clusters)

    @property
    def big_mid_cores(self) -> int:
        """Cores outside the slowest cluster (the 'little' one)."""
        slowest = min(self.clusters, key=lambda c: CORE_TYPES[c.core].fp32_flops_per_cycle * c.ghz)
        return self.n_cores - slowest.cores


def peak_fp32_gflops(soc: SocSpec, threads: int) -> float:
    """NEON fp32 peak of the ``threads`` fastest cores."""
    return sum(ct.fp32_flops_per_cycle * ghz for ct, ghz in soc.cores_fastest_first()[:threads])


def matmul_gflops(soc: SocSpec, threads: int) -> float:
    cores = soc.cores_fastest_first()[:threads]
    dot = INT8_DOT_SPEEDUP if all(ct.dotprod for ct, _ in cores) else 1.0
    return peak_fp32_gflops(soc, threads) * dot * EFFICIENCY


def activation_gbps(soc: SocSpec, threads: int) -> float:
    return sum(ACT_BYTES_PER_CYCLE * ghz for _, ghz in soc.cores_fastest_first()[:threads])


def bandwidth_share(threads: int) -> float:
    return min(1.0, SINGLE_CORE_BW_SHARE * threads)


def overhead_scale(soc: SocSpec) -> float:
    ct, ghz = soc.cores_fastest_first()[0]
    return (REFERENCE_HOST["ghz"] * REFERENCE_HOST["scalar_perf_per_ghz"]) / (ghz * ct.scalar_perf_per_ghz)


def thread_coefs(soc: SocSpec, bw_gbps: float, threads: int) -> ThreadCoefs:
    """Coefficients at one thread count from the SoC spec and its saturated weight bandwidth."""
    ref = REFERENCE_HOST[min(threads, 2)]  # measured at 1 and 2 threads; tiny ops stay on one thread beyond
    s = overhead_scale(soc)
    mm = round(matmul_gflops(soc, threads), 1)
    act = round(activation_gbps(soc, threads), 1)
    wbw = round(bw_gbps * bandwidth_share(threads), 2)
    classes = {}
    for cls in OP_CLASSES:
        ov = round(ref["classes"][cls] * s, 2)
        if cls in MATMUL_GROUP:
            classes[cls] = ClassCoef(overhead_us=ov, gflops=mm, gbps=act, weight_gbps=wbw)
        elif cls == "shape":
            classes[cls] = ClassCoef(overhead_us=ov)
        elif cls == "gather":
            classes[cls] = ClassCoef(overhead_us=ov, gbps=act, weight_gbps=GATHER_TABLE_GBPS)
        else:
            classes[cls] = ClassCoef(overhead_us=ov, gbps=act)
    return ThreadCoefs(classes=classes, run_overhead_us=round(ref["run_overhead_us"] * s, 1),
                       fused_scale={"matmul": 1.0, "other": 1.0},
                       fused_op_overhead_us=round(ref["fused_op_overhead_us"] * s, 3))


def thread_counts(soc: SocSpec) -> list[int]:
    return sorted({t for t in (1, 2, CITED_THREADS, 4, 8) if t <= soc.n_cores})


def build_compute(soc: SocSpec, bw_gbps: float, source: str) -> Compute:
    return Compute(threads={t: thread_coefs(soc, bw_gbps, t) for t in thread_counts(soc)},
                   default_threads=min(4, soc.big_mid_cores), source=source)


# ---- decode tokens/s and the bandwidth fit -----------------------------------------------------


def decode_graph(model_name: str, context: int = CONTEXT):
    """One KV-cache decode step at ``context`` tokens: 1 new token attending to context-1 cached ones."""
    return analytic_graph(get_config(model_name), seq_len=1, past_len=context - 1, weight_dtype="int8")


def decode_seconds(profile: DeviceProfile, model_name: str, context: int = CONTEXT, threads: int | None = None) -> float:
    g = decode_graph(model_name, context)
    return CostModel(profile).segment_seconds(g.modules, threads)


def decode_tokens_per_s(profile: DeviceProfile, model_name: str, context: int = CONTEXT,
                        threads: int | None = None) -> float:
    """Predicted decode speed: the whole model as one segment (one session.run per token)."""
    return 1.0 / decode_seconds(profile, model_name, context, threads)


def prefill_seconds(profile: DeviceProfile, model_name: str, tokens: int, threads: int | None = None) -> float:
    g = analytic_graph(get_config(model_name), seq_len=tokens, weight_dtype="int8")
    return CostModel(profile).segment_seconds(g.modules, threads)


def _skeleton(soc: SocSpec, bw_gbps: float) -> DeviceProfile:
    return DeviceProfile.model_construct(
        name=soc.name, compute=Compute.model_construct(threads={t: thread_coefs(soc, bw_gbps, t) for t in
                                                                 thread_counts(soc)},
                                                       default_threads=CITED_THREADS, fallback_class="elementwise"))


def weight_bytes(model_name: str, context: int = CONTEXT) -> int:
    """Weight bytes a decode step streams through matmuls (int8)."""
    g = decode_graph(model_name, context)
    return sum(op.param_bytes for m in g.modules for op in m.ops if op.op_class in MATMUL_GROUP and not op.const)


def fit_bandwidth(soc: SocSpec, model_name: str, cited_tokens_per_s: float, context: int = CONTEXT,
                  threads: int = CITED_THREADS) -> dict:
    """Closed form: t_cited = t_rest + W / BW  ->  BW = W / (1/tok_s - t_rest).

    ``t_rest`` (compute, activations, overheads) does not depend on BW; at ``threads`` >= 2 the weight
    term is W / BW exactly (bandwidth share 1). Returns the numbers for the provenance ``method``.
    """
    if bandwidth_share(threads) < 1.0:
        raise ValueError("fit at a thread count where DRAM bandwidth is saturated")
    huge = 1e12  # weights free -> everything else
    t_rest = decode_seconds(_skeleton(soc, huge), model_name, context, threads)
    w = weight_bytes(model_name, context)
    t_cited = 1.0 / cited_tokens_per_s
    if t_cited <= t_rest:
        raise ValueError(f"{soc.name}: {model_name} at {cited_tokens_per_s} tok/s leaves no time for weights "
                         f"({t_rest * 1e3:.1f} ms of other work)")
    bw = w / (t_cited - t_rest) / 1e9
    return {"bw_gbps": bw, "weight_bytes": w, "t_cited_ms": t_cited * 1e3, "t_rest_ms": t_rest * 1e3,
            "t_weights_ms": (t_cited - t_rest) * 1e3, "dram_fraction": bw / soc.dram_peak_gbps,
            "n_ops": sum(1 for m in decode_graph(model_name, context).modules for op in m.ops if not op.const)}


# ---- the phones --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cite:
    model: str
    tokens_per_s: float
    where: str  # the source row


@dataclass(frozen=True)
class PhoneSpec:
    name: str
    device: str
    soc: SocSpec
    ram_total_gb: float
    ram_source: str
    wifi: tuple[str, int, int]  # standard, spatial streams, max width MHz
    wifi_source: str
    thermal: tuple[float, float]  # sustained fraction, time to throttle (s)
    thermal_source: str
    fit: Cite | None = None  # the ONE cited figure the bandwidth is fitted on
    spec_ref: str | None = None  # else: scale the bandwidth of this calibrated phone by DRAM peak ratio
    holdouts: tuple[Cite, ...] = ()
    extra_sources: tuple[str, ...] = ()
    notes: str = ""


#: Android typically leaves about half of RAM available to a new foreground app (OS, services, and
#: cached apps hold the rest). ASSUMPTION; `llsim profile host` on the phone reads MemAvailable.
RAM_AVAILABLE_FRACTION = 0.5
BUDGET_FRACTION = 0.7  # LinguaLinked: 0.7 x available RAM

THERMAL_CONTEXT = ("For scale only (GPU, not CPU): 3DMark Wild Life Stress Test stability 58.7% on Pixel 8 Pro, "
                   "69% on the 8 Gen 2 Galaxy S23 Ultra (gizmochina.com 2023-10-06 / notebookcheck.com, "
                   "via @Tech_Reve and PBKreviews)")

SD8G2 = SocSpec(
    "Snapdragon 8 Gen 2 (SM8550)",
    (ClusterSpec("prime", 1, "Cortex-X3", 3.19), ClusterSpec("gold-a715", 2, "Cortex-A715", 2.8),
     ClusterSpec("gold-a710", 2, "Cortex-A710", 2.8), ClusterSpec("silver", 3, "Cortex-A510", 2.0)),
    "LPDDR5X", 8400, 64,
    "Qualcomm Snapdragon 8 Gen 2 product brief (qualcomm.com): 1x Cortex-X3 3.19 GHz, 2x A715 + 2x A710 2.8 GHz, "
    "3x A510 2.0 GHz; LPDDR5X up to 4200 MHz (8400 MT/s), 4 x 16-bit = 64-bit")
TENSOR_G3 = SocSpec(
    "Google Tensor G3",
    (ClusterSpec("prime", 1, "Cortex-X3", 2.91), ClusterSpec("mid", 4, "Cortex-A715", 2.37),
     ClusterSpec("little", 4, "Cortex-A510", 1.70)),
    "LPDDR5X", 8533, 64,
    "Google Tensor G3 (Pixel 8 Pro): 1x Cortex-X3 2.91 GHz, 4x A715 2.37 GHz, 4x A510 1.70 GHz (Wikipedia 'Google "
    "Tensor'; XDA Pixel 8 Pro performance evaluation, 2023-10-23); Pixel 8 Pro: 12 GB LPDDR5X (store.google.com "
    "tech specs); 8533 MT/s and 64-bit bus ASSUMED (Google does not publish them)")
KIRIN990 = SocSpec(
    "HiSilicon Kirin 990 5G",
    (ClusterSpec("big", 2, "Cortex-A76", 2.86), ClusterSpec("mid", 2, "Cortex-A76", 2.36),
     ClusterSpec("little", 4, "Cortex-A55", 1.95)),
    "LPDDR4X", 4266, 64,
    "HiSilicon Kirin 990 5G (notebookcheck.net SoC page): 2x A76 2.86 GHz, 2x A76 2.36 GHz, 4x A55 1.95 GHz; "
    "LPDDR4X-4266, 4 x 16-bit (34.1 GB/s; nanoreview.net lists 31.78 GiB/s)")
KIRIN810 = SocSpec(
    "HiSilicon Kirin 810",
    (ClusterSpec("big", 2, "Cortex-A76", 2.27), ClusterSpec("little", 6, "Cortex-A55", 1.88)),
    "LPDDR4X", 4266, 64,
    "HiSilicon Kirin 810 (WikiChip hisilicon/kirin/810): 2x A76 2.27 GHz, 6x A55 1.88 GHz; LPDDR4X-4266, 4 channels "
    "x 16-bit")
EXYNOS1380 = SocSpec(
    "Samsung Exynos 1380",
    (ClusterSpec("big", 4, "Cortex-A78", 2.4), ClusterSpec("little", 4, "Cortex-A55", 2.0)),
    "LPDDR4X", 4266, 64,
    "Samsung Exynos 1380 (semiconductor.samsung.com; phonearena.com 2023-02-24): 4x A78 2.4 GHz, 4x A55 2.0 GHz; "
    "LPDDR4X or LPDDR5. Galaxy A54 ASSUMED LPDDR4X-4266 on a 64-bit bus (Samsung's A54 page does not state it)")
HELIO_G85 = SocSpec(
    "MediaTek Helio G85",
    (ClusterSpec("big", 2, "Cortex-A75", 2.0), ClusterSpec("little", 6, "Cortex-A55", 1.8)),
    "LPDDR4X", 3600, 32,
    "MediaTek Helio G85 (mediatek.com product page; computerbase.de 2020-05): 2x A75 2.0 GHz, 6x A55 1.8 GHz, 12 nm; "
    "LPDDR4X up to 1800 MHz (3600 MT/s); 2 x 16-bit = 32-bit bus ASSUMED (MediaTek gives type and clock only)")

PHONES: dict[str, PhoneSpec] = {p.name: p for p in [
    PhoneSpec(
        "snapdragon-8gen2", "Nubia Z50", SD8G2, 12.0,
        "Nubia Z50 spec (8/12/16 GB LPDDR5X); the 12 GB variant assumed",
        ("ax", 2, 160), "Nubia Z50 / FastConnect 7800: Wi-Fi 7 2x2; llsim models it as 802.11ax (its newest PHY), "
        "2 streams, 160 MHz",
        (0.75, 300.0), "ASSUMPTION (no CPU-only sustained test found for the Nubia Z50). " + THERMAL_CONTEXT,
        fit=Cite("qwen2-1.5b", 20.0, "Nubia Z50, 8_Gen2-CPU, Qwen-2-1.5B-Instruct q8f32: 20 token/s"),
        holdouts=(Cite("llama-3.2-1b", 25.0, "Nubia Z50, Llama-3.2-1B-Instruct q8f32: 25 token/s"),
                  Cite("minicpm-2b", 9.5, "Nubia Z50, MiniCPM-2.7B q8f32: 9.5 token/s")),
        notes="An earlier README revision listed Qwen2-1.5B at 20.5 tok/s (the cited figures move ~±5% between "
              "revisions)."),
    PhoneSpec(
        "tensor-g3", "Google Pixel 8 Pro", TENSOR_G3, 12.0, "Pixel 8 Pro tech specs: 12 GB LPDDR5X",
        ("ax", 2, 160), "Pixel 8 Pro tech specs: Wi-Fi 7 (802.11be) 2x2 MIMO; modelled as 802.11ax, 2 streams, "
        "160 MHz",
        (0.6, 120.0), "ASSUMPTION, informed by XDA (Pixel 8 Pro performance evaluation, 2023-10-23): 'a very "
        "aggressive CPU frequency scaler ... performance drops off a cliff quite quickly ... under a sustained "
        "computational load'. " + THERMAL_CONTEXT,
        spec_ref="snapdragon-8gen2",
        extra_sources=("LM-Meter (Wang et al., SEC 2025; https://github.com/amai-gsu/LM-Meter), MLC-LLM on the "
                       "Pixel 8 Pro GPU: Llama-3.2-3B decode 62.57 ms/token (a GPU figure, used only as a sanity "
                       "bound on DRAM bandwidth, see method)",),
        notes="No CPU tokens/s is published for Tensor G3: compute is from the core spec, DRAM bandwidth from the "
              "8 Gen 2 fit scaled by DRAM peak. An estimate, not a measurement."),
    PhoneSpec(
        "kirin-990", "Huawei P40", KIRIN990, 8.0, "Huawei P40 specs (consumer.huawei.com): 8 GB RAM",
        ("ax", 2, 160), "Huawei P40 specs: Wi-Fi 6+ (802.11ax), 2x2 MIMO, 160 MHz",
        (0.8, 300.0), "ASSUMPTION (no CPU-only sustained test found for the P40)",
        fit=Cite("qwen2-1.5b", 13.0, "P40, Kirin_990_5G-CPU, Qwen-2-1.5B-Instruct q8f32: 13 token/s"),
        holdouts=(Cite("llama-3.2-1b", 16.0, "P40, Llama-3.2-1B-Instruct q8f32: 16 token/s"),
                  Cite("minicpm-2b", 6.0, "P40, MiniCPM-2.7B q8f32: 6 token/s")),
        notes="An earlier README revision listed Qwen2-1.5B at 12.5 tok/s."),
    PhoneSpec(
        "kirin-810", "Honor 20S", KIRIN810, 6.0, "Honor 20S (6 GB + 128 GB and 8 GB variants); 6 GB assumed",
        ("ac", 1, 80), "Honor 20S specs list 802.11 a/b/g/n/ac dual-band; 1 spatial stream ASSUMED (not stated)",
        (0.85, 600.0), "ASSUMPTION (no sustained test found; two A76 at 2.27 GHz on 7 nm run cooler than flagships)",
        fit=Cite("qwen2-1.5b", 7.0, "Honor 20S, Kirin_810-CPU, Qwen-2-1.5B-Instruct q8f32: 7 token/s"),
        notes="Only one figure is published for this SoC: nothing to hold out. An earlier README revision listed "
              "6.5 tok/s."),
    PhoneSpec(
        "exynos-1380", "Samsung Galaxy A54 5G", EXYNOS1380, 8.0,
        "Galaxy A54 5G specs (samsung.com): 6 or 8 GB; 8 GB assumed",
        ("ax", 2, 80), "Galaxy A54 5G specs (samsung.com): 802.11a/b/g/n/ac/ax 2.4+5 GHz, HE80, MIMO",
        (0.8, 300.0), "ASSUMPTION (no CPU-only sustained test found)",
        spec_ref="kirin-990",
        notes="No tokens/s is published for Exynos 1380: compute is from the core spec, DRAM bandwidth from the "
              "Kirin 990 fit (same LPDDR4X-4266 x 64-bit peak) scaled by DRAM peak. An estimate, not a "
              "measurement."),
    PhoneSpec(
        "helio-g85", "Xiaomi Redmi Note 9", HELIO_G85, 4.0, "Redmi Note 9 (3/4 GB); 4 GB assumed",
        ("ac", 1, 80), "Redmi Note 9 specs: Wi-Fi 802.11 a/b/g/n/ac dual-band (Wi-Fi 5); 1 spatial stream ASSUMED",
        (0.9, 600.0), "ASSUMPTION (12 nm SoC at modest clocks; no sustained test found)",
        spec_ref="kirin-810",
        notes="Budget phone. No tokens/s is published: compute from the core spec, DRAM bandwidth from the Kirin 810 "
              "fit scaled by DRAM peak (14.4 / 34.1 GB/s). An estimate, not a measurement."),
]}

REPLACE = ("llsim profile adb SERIAL --out device_profiles/{name}.yaml --threads 1,2,4 (the phone attached over adb "
           "with Termux and python-onnxruntime: docs/real-phones.md; the profiler times every graph through "
           "llsim's worker on the phone)")


def phone_bandwidth(name: str) -> tuple[float, str]:
    """Saturated weight bandwidth (GB/s) of a phone and the arithmetic that gave it."""
    p = PHONES[name]
    if p.fit is not None:
        f = fit_bandwidth(p.soc, p.fit.model, p.fit.tokens_per_s)
        how = (f"BW fitted on {p.fit.model} {p.fit.tokens_per_s:g} tok/s at {CITED_THREADS} threads, "
               f"{CONTEXT} context: t = 1/{p.fit.tokens_per_s:g} = {f['t_cited_ms']:.2f} ms; everything but weights "
               f"(compute, activations, overheads of {f['n_ops']} ops) = "
               f"{f['t_rest_ms']:.2f} ms; weights W = {f['weight_bytes'] / 1e6:.1f} MB int8 -> BW = W / "
               f"({f['t_cited_ms']:.2f} - {f['t_rest_ms']:.2f}) ms = {f['bw_gbps']:.2f} GB/s = "
               f"{100 * f['dram_fraction']:.0f}% of the {p.soc.dram_peak_gbps:.1f} GB/s DRAM peak "
               f"({p.soc.mem_type}-{p.soc.mem_mts} x {p.soc.bus_bits}-bit)")
        return f["bw_gbps"], how
    ref = PHONES[p.spec_ref]
    bw_ref, _ = phone_bandwidth(p.spec_ref)
    bw = bw_ref * p.soc.dram_peak_gbps / ref.soc.dram_peak_gbps
    how = (f"BW ESTIMATED from spec ratio (no tokens/s published): {ref.name} fitted {bw_ref:.2f} GB/s x "
           f"({p.soc.mem_type}-{p.soc.mem_mts} x {p.soc.bus_bits}-bit = {p.soc.dram_peak_gbps:.1f} GB/s) / "
           f"({ref.soc.mem_type}-{ref.soc.mem_mts} x {ref.soc.bus_bits}-bit = {ref.soc.dram_peak_gbps:.1f} GB/s) "
           f"= {bw:.2f} GB/s")
    return bw, how


def compute_arithmetic(soc: SocSpec) -> str:
    parts = []
    for t in thread_counts(soc):
        cores = soc.cores_fastest_first()[:t]
        terms = " + ".join(f"{ct.fp32_flops_per_cycle}x{ghz:g}" for ct, ghz in cores)
        parts.append(f"T={t}: fp32 peak {terms} = {peak_fp32_gflops(soc, t):.1f} GFLOPS -> matmul "
                     f"{peak_fp32_gflops(soc, t):.1f} x {INT8_DOT_SPEEDUP:g} (int8 dot) x {EFFICIENCY} = "
                     f"{matmul_gflops(soc, t):.1f} GFLOPS; activations {ACT_BYTES_PER_CYCLE} B/cycle x "
                     f"{sum(g for _, g in cores):.2f} GHz = {activation_gbps(soc, t):.1f} GB/s; weights BW x "
                     f"{bandwidth_share(t):g}")
    ct, ghz = soc.cores_fastest_first()[0]
    parts.append(f"overheads = dev-VM per-op overheads x ({REFERENCE_HOST['ghz']} GHz x 1.0) / ({ghz:g} GHz x "
                 f"{ct.scalar_perf_per_ghz} {ct.name} scalar perf/GHz, ASSUMED) = x{overhead_scale(soc):.2f}")
    return "; ".join(parts)


def build_phone_profile(name: str) -> DeviceProfile:
    p = PHONES[name]
    soc = p.soc
    bw, bw_how = phone_bandwidth(name)
    avail = round(p.ram_total_gb * RAM_AVAILABLE_FRACTION, 2)
    sources = [DAKEQQ if p.fit else None, soc.source, *p.extra_sources,
               "Arm Software Optimization Guides (Cortex-X3, A715, A710, A78, A76, A75, A55, A510): FMLA throughput",
               "Arm learning path, onnxruntime_perf_test -p on one Cortex C1-Pro core (Vivo X300): ResNet50v2 "
               "339.38 ms without KleidiAI/SME2 (efficiency factor)",
               "He et al., 'Deep Residual Learning for Image Recognition', CVPR 2016, Table 1 (ResNet-50 3.8e9 "
               "multiply-adds)",
               "Zhao et al., 'LinguaLinked', ACL 2024 System Demonstrations (0.7 x available RAM budget)",
               f"per-op overhead reference: {REFERENCE_HOST['what']}"]
    sources = [s for s in sources if s]
    checks = ""
    if p.fit is not None:
        checks = (" Checks (not fitted): " + "; ".join(f"{h.model} cited {h.tokens_per_s:g} tok/s ({h.where})"
                                                        for h in p.holdouts) if p.holdouts else
                  " Nothing held out (one figure published).")
    method = (f"{bw_how}.{checks} Compute: {compute_arithmetic(soc)}. Cost per op class as in "
              f"llsim.device.calibration (shape ops overhead only; Gather tables not streamed; fused_scale 1.0). "
              f"Regenerate: python -m llsim.device.calibration --write")
    if p.spec_ref == "snapdragon-8gen2":
        # LM-Meter sanity bound: MLC q4f16_1 (about 4.5 bits/weight, ASSUMED) Llama-3.2-3B per token on the GPU
        gb = 3.213e9 * 4.5 / 8 / 1e9
        method += (f". Sanity bound (GPU, not used in the fit): LM-Meter Llama-3.2-3B 62.57 ms/token x "
                   f"{gb:.2f} GB (3.21e9 params x ~4.5 bits, MLC q4f16_1 ASSUMED) -> >= {gb / 0.06257:.1f} GB/s "
                   f"streamed on this SoC; this profile's CPU BW {bw:.1f} GB/s")
    prof = DeviceProfile(
        name=name, kind="phone", device=p.device, soc=soc.name,
        cpu=[Cluster(name=c.name, cores=c.cores, freq_ghz=c.ghz, core=c.core) for c in soc.clusters],
        memory=Memory(ram_total_gb=p.ram_total_gb, ram_available_gb=avail, budget_fraction=BUDGET_FRACTION,
                      source=f"{p.ram_source}; available = {RAM_AVAILABLE_FRACTION} x total (ASSUMPTION: Android "
                             f"keeps about half for the OS, services and cached apps); budget 0.7 x available "
                             f"(LinguaLinked)"),
        compute=build_compute(soc, bw, source=f"calibrated (not measured): {bw_how}"),
        thermal=Thermal(peak_speed=1.0, sustained_speed=p.thermal[0], time_to_throttle_s=p.thermal[1],
                        source=p.thermal_source),
        network=NetworkIf(wifi_standard=p.wifi[0], spatial_streams=p.wifi[1], max_width_mhz=p.wifi[2],
                          source=p.wifi_source),
        provenance=Provenance(kind="calibrated", sources=sources, method=method,
                              replace_with_measured=REPLACE.format(name=name)),
        notes=p.notes,
    )
    return prof


# ---- the check table ---------------------------------------------------------------------------


@dataclass
class CheckRow:
    phone: str
    model: str
    cited: float
    predicted: float
    role: str  # "fit" | "hold-out"

    @property
    def error(self) -> float:
        return (self.predicted - self.cited) / self.cited


def check_rows(profiles: dict[str, DeviceProfile] | None = None, threads: int = CITED_THREADS) -> list[CheckRow]:
    rows = []
    for name, p in PHONES.items():
        if p.fit is None:
            continue
        prof = profiles[name] if profiles else build_phone_profile(name)
        for cite, role in [(p.fit, "fit"), *[(h, "hold-out") for h in p.holdouts]]:
            rows.append(CheckRow(name, cite.model, cite.tokens_per_s,
                                 decode_tokens_per_s(prof, cite.model, CONTEXT, threads), role))
    return rows


def markdown_table(rows: list[CheckRow]) -> str:
    out = ["| phone | model | cited tok/s | predicted tok/s | error | role |", "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r.phone} | {r.model} | {r.cited:g} | {r.predicted:.1f} | {100 * r.error:+.1f}% | {r.role} |")
    return "\n".join(out)


def _header(p: DeviceProfile) -> str:
    spec = PHONES[p.name]
    lines = [f"# {p.device} ({p.soc}): CALIBRATED from public figures, not measured.",
             "# Generated by `python -m llsim.device.calibration --write` (llsim/device/calibration.py holds the",
             "# arithmetic); replace with a measurement:",
             f"#   {p.provenance.replace_with_measured}",
             f"# DRAM peak: {spec.soc.mem_type}-{spec.soc.mem_mts} x {spec.soc.bus_bits}-bit = "
             f"{spec.soc.dram_peak_gbps:.1f} GB/s"]
    bw, how = phone_bandwidth(p.name)
    for chunk in _wrap(how, 110):
        lines.append(f"# {chunk}")
    for t in sorted(p.compute.threads):
        c = p.compute.threads[t].classes["matmul"]
        lines.append(f"# T={t}: matmul {c.gflops:g} GFLOPS (int8), weights {c.weight_gbps:g} GB/s, activations "
                     f"{c.gbps:g} GB/s")
    return "\n".join(lines)


def _wrap(text: str, width: int) -> list[str]:
    out, line = [], ""
    for w in text.split():
        if len(line) + len(w) + 1 > width:
            out.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    if line:
        out.append(line)
    return out


def write_profiles(directory: Path = PROFILE_DIR) -> list[Path]:
    from llsim.device.profile import dump_profile

    paths = []
    for name in PHONES:
        prof = build_phone_profile(name)
        path = Path(directory) / f"{name}.yaml"
        dump_profile(prof, path, header=_header(prof))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m llsim.device.calibration",
                                 description="calibrated phone profiles from public figures")
    ap.add_argument("--write", action="store_true", help="rewrite device_profiles/<phone>.yaml")
    a = ap.parse_args(argv)
    if a.write:
        for p in write_profiles():
            print(f"wrote {p}")
    print(markdown_table(check_rows()))
    for name in PHONES:
        bw, _ = phone_bandwidth(name)
        print(f"{name}: BW {bw:.2f} GB/s = {100 * bw / PHONES[name].soc.dram_peak_gbps:.0f}% of DRAM peak")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
