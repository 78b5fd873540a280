"""`llsim run`: scenario -> plan -> simulation -> run directory."""
from __future__ import annotations

from pathlib import Path

from llsim.alloc.plan import Plan, explicit_plan, uniform_plan, validate_plan
from llsim.errors import LLSimError
from llsim.results.writer import versions, write_run
from llsim.scenario import Scenario, dump_resolved
from llsim.sim.cluster import DeviceInstance, expand_devices
from llsim.sim.engine import Simulation, SimResult


def n_modules(sc: Scenario) -> int:
    from llsim.model.load import model_graph

    return model_graph(sc.model, 1, sc.workload.batch).n_modules


def make_plan(sc: Scenario, devices: list[DeviceInstance]) -> Plan:
    n = n_modules(sc)
    a = sc.allocation
    names = [d.name for d in devices]
    if a.strategy == "explicit":
        plan = explicit_plan(a.stages, names)
    elif a.strategy == "uniform":
        order = list(range(len(devices)))
        if a.header is not None:
            order.remove(a.header)
            order.insert(0, a.header)
        plan = uniform_plan(n, order)
    else:
        try:
            from llsim.alloc.strategies import allocate
        except ImportError:
            raise LLSimError(f"allocation.strategy: '{a.strategy}' is not available; use uniform or explicit") from None
        plan = allocate(sc, devices, a.strategy).plan
    return validate_plan(plan, n, len(devices))


def simulate(sc: Scenario, plan: Plan | None = None, progress=None, timeline: bool = True) -> tuple[SimResult, list[DeviceInstance], Plan]:
    devices = expand_devices(sc)
    plan = plan or make_plan(sc, devices)
    sim = Simulation(sc, devices, plan, progress=progress, timeline=timeline)
    return sim.run(), devices, plan


def run_to_dir(sc: Scenario, out: Path, progress=None) -> tuple[SimResult, list[DeviceInstance], Plan]:
    res, devices, plan = simulate(sc, progress=progress)
    manifest = {"scenario": dump_resolved(sc), "scenario_file": str(sc.path) if sc.path else None, "seed": sc.seed,
                "plan": plan.to_json(), "plan_strategy": plan.strategy,
                "devices": [{"index": d.index, "name": d.name, "profile": d.profile.name,
                             "provenance": d.profile.provenance.kind} for d in devices],
                "versions": versions()}
    write_run(out, manifest, res, [d.name for d in devices])
    return res, devices, plan
