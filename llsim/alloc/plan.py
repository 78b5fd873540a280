"""A plan: the ring of stages, each a device and a contiguous module range (inclusive ends)."""
from __future__ import annotations

from dataclasses import dataclass

from llsim.errors import LLSimError


@dataclass(frozen=True)
class StagePlan:
    device: int
    start_module: int
    end_module: int  # inclusive

    @property
    def modules(self) -> range:
        return range(self.start_module, self.end_module + 1)


@dataclass(frozen=True)
class Plan:
    stages: tuple[StagePlan, ...]
    strategy: str = "explicit"

    @property
    def boundaries(self) -> list[int]:
        return [s.start_module for s in self.stages] + [self.stages[-1].end_module + 1]

    @property
    def devices(self) -> list[int]:
        return [s.device for s in self.stages]

    def describe(self, names: list[str] | None = None) -> str:
        return " | ".join(f"{names[s.device] if names else s.device}:{s.start_module}-{s.end_module}"
                          for s in self.stages)

    def to_json(self) -> list[dict]:
        return [{"device": s.device, "start_module": s.start_module, "end_module": s.end_module} for s in self.stages]


def validate_plan(plan: Plan, n_modules: int, n_devices: int, where: str = "allocation.stages") -> Plan:
    if not plan.stages:
        raise LLSimError(f"{where}: the plan has no stages")
    expect = 0
    seen = set()
    for i, s in enumerate(plan.stages):
        if not 0 <= s.device < n_devices:
            raise LLSimError(f"{where}[{i}].device: {s.device} is not a device index (0..{n_devices - 1})")
        if s.device in seen:
            raise LLSimError(f"{where}[{i}].device: device {s.device} appears in two stages; give it one contiguous range")
        seen.add(s.device)
        if s.start_module != expect:
            what = "skips" if s.start_module > expect else "overlaps"
            raise LLSimError(f"{where}[{i}].start_module: {s.start_module} {what} module {expect}; stages must cover "
                             f"modules 0..{n_modules - 1} contiguously in ring order")
        expect = s.end_module + 1
    if expect != n_modules:
        raise LLSimError(f"{where}[{len(plan.stages) - 1}].end_module: {expect - 1}, but the model has modules "
                         f"0..{n_modules - 1}; the last stage must end at {n_modules - 1}")
    return plan


def header_first(order: list[int], header: int | None) -> list[int]:
    """``order`` with the pinned header (when it is in it) moved to the front."""
    if header is not None and header in order:
        order = [header] + [d for d in order if d != header]
    return order


def uniform_plan(n_modules: int, devices: list[int]) -> Plan:
    """Even layer split in device order (the simplest baseline)."""
    k = min(len(devices), n_modules)
    b = [round(i * n_modules / k) for i in range(k + 1)]
    return Plan(tuple(StagePlan(devices[i], b[i], b[i + 1] - 1) for i in range(k)), "uniform")


def explicit_plan(stages, names: list[str]) -> Plan:
    out = []
    for i, s in enumerate(stages):
        dev = s.device
        if isinstance(dev, str):
            if dev not in names:
                raise LLSimError(f"allocation.stages[{i}].device: no device named '{dev}' (devices: {', '.join(names)})")
            dev = names.index(dev)
        out.append(StagePlan(int(dev), s.start_module, s.end_module))
    return Plan(tuple(out), "explicit")


def plan_from_backpointers(table: dict, key, strategy: str) -> Plan:
    """Rebuild a plan from a DP table of ``key -> (cost, previous key | None, (device, start, end))``."""
    stages = []
    while key is not None:
        _, key, st = table[key]
        stages.append(StagePlan(*st))
    return Plan(tuple(reversed(stages)), strategy)
