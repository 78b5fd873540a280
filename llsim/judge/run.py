"""`llsim run`: scenario -> plan -> simulation -> run directory."""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from llsim import registry
from llsim.alloc.adjust import adjusted_problem
from llsim.alloc.plan import Plan, header_first, validate_plan
from llsim.alloc.problem import build_problem
from llsim.cost.steps import token_bytes
from llsim.errors import LLSimError
from llsim.results.writer import write_json, write_run
from llsim.scenario import Scenario
from llsim.cluster import DeviceInstance, expand_devices
from llsim.judge.evaluate import allocate
from llsim.sim.engine import Simulation, SimResult


def n_modules(sc: Scenario) -> int:
    from llsim.model.load import model_graph

    return model_graph(sc.model, 1, sc.workload.batch).n_modules


def make_plan(sc: Scenario, devices: list[DeviceInstance]) -> Plan:
    n = n_modules(sc)
    a = sc.allocation
    names = [d.name for d in devices]
    present = [d.index for d in devices if not d.absent]
    if not present:
        raise LLSimError("every device is marked absent: at least one must be present at the start")
    s = registry.get(a.strategy)
    if s is None:
        raise LLSimError(f"allocation.strategy: {registry.unknown(a.strategy)}")
    if s.kind == "stages":
        plan = s.fn(a.stages, names)
    elif s.kind == "order":
        plan = s.fn(n, header_first(list(present), a.header))
    else:
        problem = None
        if len(present) < len(devices):  # phones that join later get no work in the initial plan
            problem = adjusted_problem(build_problem(sc, devices), {}, {}, set(present))
        plan = allocate(sc, devices, a.strategy, problem=problem).plan
    absent = [names[s.device] for s in plan.stages if s.device not in present]
    if absent:
        raise LLSimError(f"allocation: the plan gives modules to {', '.join(absent)}, marked absent at the start")
    return validate_plan(plan, n, len(devices))


def simulate(sc: Scenario, plan: Plan | None = None, progress=None, timeline: bool = True) -> tuple[SimResult, list[DeviceInstance], Plan]:
    devices = expand_devices(sc)
    plan = plan or make_plan(sc, devices)
    if sc.real_tensors:  # real workers and/or real tensors (llsim.judge.hil)
        from llsim.judge.hil import HilRuntime

        with HilRuntime(sc, devices) as rt:
            return _simulate_hil(rt, sc, devices, plan, progress, timeline), devices, plan
    sim = Simulation(sc, devices, plan, progress=progress, timeline=timeline)
    return sim.run(), devices, plan


def run_to_dir(sc: Scenario, out: Path, progress=None, plan: Plan | None = None, invocation: dict | None = None,
               rerun: dict | None = None, status=None, timeline: bool = True
               ) -> tuple[SimResult, list[DeviceInstance], Plan]:
    """Plan (unless ``plan`` is given), simulate, write ``out``. The manifest is written before the
    simulation starts, so even an interrupted run leaves a directory that says what it was.
    ``rerun``: the manifest being reproduced (its scenario file and profile records are kept);
    ``status(text)``: a context manager shown while planning; ``timeline``: record and write
    ``timeline.json`` (sweeps may leave it out)."""
    from llsim.results.manifest import build_manifest

    devices = expand_devices(sc)
    if plan is None:
        with status(f"planning: {sc.allocation.strategy} on {len(devices)} devices") if status else nullcontext():
            plan = make_plan(sc, devices)
    else:
        plan = validate_plan(plan, n_modules(sc), len(devices), "manifest plan")
    manifest = build_manifest(sc, devices, plan, invocation,
                              scenario_file=rerun.get("scenario_file") if rerun else None,
                              recorded_profiles=rerun.get("profiles") if rerun else None)
    if sc.real_tensors:
        return _run_hil_to_dir(sc, devices, plan, manifest, Path(out), progress, timeline)
    sim = Simulation(sc, devices, plan, progress=progress, timeline=timeline)  # refuses a plan that does not fit
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "manifest.json", manifest, indent=2, sort_keys=True)
    res = sim.run()
    write_run(out, manifest, res, [d.name for d in devices], token_bytes=token_bytes(sc.workload.batch),
              timeline=timeline)
    return res, devices, plan


def _run_hil_to_dir(sc: Scenario, devices, plan: Plan, manifest: dict, out: Path, progress, timeline: bool):
    """A run with real nodes (:mod:`llsim.judge.hil`): workers started first, stopped whatever happens;
    real devices' timeline tracks are named ``<name> (real)``; plus ``fidelity.csv`` and ``hil.json``."""
    from llsim.judge.hil import HilRuntime, write_hil_files

    Simulation(sc, devices, plan, timeline=False)  # refuses a plan that does not fit before any worker starts
    with HilRuntime(sc, devices) as rt:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "manifest.json", manifest, indent=2, sort_keys=True)
        res = _simulate_hil(rt, sc, devices, plan, progress, timeline)
        names = [d.name + (" (real)" if d.backend != "sim" else "") for d in devices]
        write_run(out, manifest, res, names, token_bytes=token_bytes(sc.workload.batch), timeline=timeline)
        write_hil_files(out, rt, res)
    return res, devices, plan


def _simulate_hil(rt, sc: Scenario, devices, plan: Plan, progress, timeline: bool) -> SimResult:
    """The simulation on ``rt``'s real nodes and clock (the initial plan's segments loaded first); the
    result carries the measured session costs, the real-time lag, and ``res.hil`` (the runtime)."""
    from llsim.judge.hil import add_measured_sessions

    sim = Simulation(sc, devices, plan, progress=progress, timeline=timeline, hil=rt.nodes, clock=rt.clock)
    rt.load(plan)
    res = sim.run()
    add_measured_sessions(rt, res)
    if rt.clock is not None:  # how far the simulation fell behind the wall clock
        res.metrics["realtime_lag_max_ms"] = rt.clock.lag_max_s * 1e3
        res.metrics["realtime_lag_mean_ms"] = rt.clock.lag_mean_s * 1e3
    res.hil = rt
    return res
