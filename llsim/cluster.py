"""A scenario's cluster: devices expanded from the YAML, their profiles, cost models and budgets."""
from __future__ import annotations

from dataclasses import dataclass

from llsim.device.costmodel import CostModel
from llsim.device.profile import DeviceProfile, load_profile
from llsim.scenario import Scenario


@dataclass
class DeviceInstance:
    index: int
    name: str
    profile: DeviceProfile
    threads: int
    budget_bytes: int
    cost: CostModel
    rssi_dbm: float | None
    streams: int | None
    absent: bool = False  # not in the cluster at the start (joins later)
    backend: str = "sim"  # sim | local (a real worker on this host) | adb (a worker on an Android phone)
    affinity: tuple[int, ...] | None = None  # CPUs of a real worker
    serial: str | None = None  # backend adb: the phone's adb serial, or "auto"


def expand_devices(sc: Scenario) -> list[DeviceInstance]:
    from llsim.validate import expanded_names

    out: list[DeviceInstance] = []
    profs = [load_profile(spec.profile) for spec in sc.devices]
    names = iter(expanded_names(sc.devices, [p.name for p in profs]))
    for spec, prof in zip(sc.devices, profs):
        for k in range(spec.count):
            i = len(out)
            name = next(names)[0]
            avail = spec.ram_available_gb if spec.ram_available_gb is not None else prof.memory.ram_available_gb
            threads = spec.threads or prof.compute.default_threads
            cm = CostModel(prof, speed=spec.speed)
            cm.coefs(threads)  # clear error for an unmeasured thread count
            out.append(DeviceInstance(i, name, prof, threads, int(avail * prof.memory.budget_fraction * 1e9), cm,
                                      spec.rssi_dbm, spec.streams, spec.absent, spec.backend,
                                      tuple(spec.affinity) if spec.affinity else None, spec.serial))
    return out
