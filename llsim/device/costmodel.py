"""The cost model: predicted latency of an op, a module, a segment on a device profile.

Per op class c and thread count T (coefficients fitted by the profiler, see :mod:`llsim.device.fit`)::

    t(op) = overhead_c + flops / F_c + (bytes_in + bytes_out) / BW_c + weight_bytes / WBW_c
            + flops / sqrt(M) / NF_c

Compute-bound ops (matmul) are governed by F, memory-bound ones (elementwise, gather, norms) by BW,
and matmuls at decode shapes by WBW: weights are streamed from DRAM on every call because a
model's weights are far larger than the caches. NF charges narrow GEMMs (M = 2..64 rows: decode
steps of a batch, short prompts), which run below the kernel's peak rate: on the dev VM a 768x768
weight costs 118 ps per element at M=1, 255 at M=8, 370 at M=16 and then ~9.3 ps per extra row,
a concave curve a FLOP term plus a weight term cannot follow. Ops computed from weights alone (``const``) are
folded away by the runtime and cost nothing in a deployment. Whole segments
are what a deployment sees, an onnxruntime session with its default fusions on, so the unfused
per-op sum is scaled by the profile's ``fused_scale`` (matmul part, rest), fitted against optimised
whole-segment runs, plus one ``run_overhead`` per call.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Iterable

from llsim.device.profile import DeviceProfile, ThreadCoefs
from llsim.errors import LLSimError
from llsim.model.graph import Module, OpCost

MATMUL_GROUP = {"matmul", "attention"}


def gemm_rows(dims: tuple[int, ...]) -> int:
    """M of a matmul's ``(batch, M, K, N)``; 1 for anything else."""
    return max(int(dims[1]), 1) if len(dims) == 4 else 1


@dataclass
class CostModel:
    profile: DeviceProfile
    speed: float = 1.0  # multiplier on throughput (thermal throttling, background load)

    def __post_init__(self):
        self._warned: set[tuple[int, str]] = set()

    def coefs(self, threads: int | None) -> ThreadCoefs:
        t = threads or self.profile.compute.default_threads
        c = self.profile.compute.threads.get(t)
        if c is None:
            where = self.profile.path or self.profile.name
            raise LLSimError(f"{where}: profile '{self.profile.name}' has no coefficients for {t} threads "
                             f"(measured: {sorted(self.profile.compute.threads)}); use one of those or re-profile "
                             f"with --threads {t}")
        return c

    def _class_coef(self, tc: ThreadCoefs, cls: str, threads: int):
        coef = tc.classes.get(cls)
        if coef is None:
            fb = self.profile.compute.fallback_class
            if (threads, cls) not in self._warned:
                self._warned.add((threads, cls))
                warnings.warn(f"profile {self.profile.name}: no coefficients for op class '{cls}' at {threads} "
                              f"threads; using '{fb}'", stacklevel=3)
            coef = tc.classes.get(fb)
            if coef is None:
                raise LLSimError(f"profile {self.profile.name}: neither '{cls}' nor fallback '{fb}' at {threads} threads")
        return coef

    def op_seconds(self, op: OpCost, threads: int | None = None, overhead: bool = True) -> float:
        """One op as profiled (unfused session); ``overhead=False`` gives its work alone."""
        t = threads or self.profile.compute.default_threads
        tc = self.coefs(t)
        c = self._class_coef(tc, op.op_class, t)
        act = op.bytes_in + op.bytes_out
        wb = op.param_bytes
        if c.weight_gbps <= 0:
            act, wb = act + wb, 0
        s = c.overhead_us * 1e-6 if overhead else 0.0
        if c.gflops > 0:
            s += op.flops / (c.gflops * 1e9 * self.speed)
        if c.gbps > 0:
            s += act / (c.gbps * 1e9 * self.speed)
        if wb:
            s += wb / (c.weight_gbps * 1e9 * self.speed)
        if c.narrow_gflops > 0:
            s += op.flops / math.sqrt(gemm_rows(op.dims)) / (c.narrow_gflops * 1e9 * self.speed)
        return s

    def ops_seconds(self, ops: Iterable[OpCost], threads: int | None = None, fused: bool = True) -> float:
        """Sum over ops; with ``fused`` the deployment (optimised session) scaling is applied."""
        t = threads or self.profile.compute.default_threads
        tc = self.coefs(t)
        per_op = tc.fused_op_overhead_us if fused else None
        mm = other = 0.0
        n = 0
        for op in ops:
            if fused and op.const:
                continue
            n += 1
            s = self.op_seconds(op, t, overhead=per_op is None)
            if op.op_class in MATMUL_GROUP:
                mm += s
            else:
                other += s
        if not fused:
            return mm + other
        s = mm * tc.fused_scale.get("matmul", 1.0) + other * tc.fused_scale.get("other", 1.0)
        return s + (per_op or 0.0) * 1e-6 * n

    def module_seconds(self, module: Module, threads: int | None = None) -> float:
        return self.ops_seconds(module.ops, threads)

    def segment_seconds(self, modules: Iterable[Module], threads: int | None = None) -> float:
        """One session.run over a contiguous range of modules."""
        t = threads or self.profile.compute.default_threads
        ops = [op for m in modules for op in m.ops]
        return self.coefs(t).run_overhead_us * 1e-6 + self.ops_seconds(ops, t)
