"""Scenarios: validated YAML describing a model, a set of phones, a Wi-Fi network, an allocation,
a workload and a seed. One schema for the simulator, the allocator and HIL runs.

Errors name the file, the field path and what to do; ``--set path.to.field=value`` overrides a
field before validation (values are parsed as YAML scalars).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llsim.errors import LLSimError
from llsim.network.config import NetworkConfig

SCENARIO_DIR = Path(__file__).resolve().parents[1] / "scenarios"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceSpec(_Strict):
    profile: str
    count: int = Field(1, ge=1)
    name: str | None = None  # default: <profile>-<i>
    threads: int | None = Field(None, ge=1)
    ram_available_gb: float | None = Field(None, gt=0)
    rssi_dbm: float | None = None
    streams: int | None = Field(None, ge=1, le=4)
    speed: float = Field(1.0, gt=0)  # multiplier on compute throughput (e.g. a known-slow unit)
    worker: str | None = None  # HIL: "local" or "adb:<serial>"; None = simulated
    absent: bool = False  # not in the cluster at the start (a later ``join`` event brings it in)


class Stage(_Strict):
    device: int | str  # index into the expanded device list, or its name
    start_module: int = Field(ge=0)
    end_module: int = Field(ge=0)  # inclusive

    @model_validator(mode="after")
    def _order(self):
        if self.end_module < self.start_module:
            raise ValueError(f"end_module {self.end_module} < start_module {self.start_module}")
        return self


class Allocation(_Strict):
    strategy: str = "milp"  # milp | oracle | uniform | memory | lingualinked | halda | pipeedge | greedy | explicit
    stages: list[Stage] | None = None
    objective: Literal["latency", "throughput"] = "latency"
    time_limit_s: float = Field(30.0, gt=0)
    mip_gap: float = Field(1e-6, ge=0)
    header: int | None = None  # pin the header (first stage) to this device index

    @model_validator(mode="after")
    def _explicit(self):
        if self.strategy == "explicit" and not self.stages:
            raise ValueError("strategy 'explicit' needs a 'stages' list of {device, start_module, end_module}")
        if self.stages and self.strategy != "explicit":
            raise ValueError(f"'stages' given with strategy '{self.strategy}': set strategy: explicit")
        return self


class Workload(_Strict):
    prompt_tokens: int = Field(32, ge=1)
    new_tokens: int = Field(16, ge=1)
    requests: int = Field(1, ge=1)
    concurrency: int | None = Field(None, ge=1)  # closed loop: requests in flight
    arrival_rate: float | None = Field(None, gt=0)  # open loop: Poisson arrivals per second
    mode: Literal["kv_cache", "recompute"] = "kv_cache"
    batch: int = Field(1, ge=1)
    sample_ms: float = Field(0.0, ge=0)  # tail: sampling the next token
    tokenize_ms: float = Field(0.0, ge=0)  # header: tokenizing the prompt

    def step_shape(self, step: int) -> tuple[int, int]:
        """(new tokens S, cached tokens P) of generation step ``step`` (0 = prefill)."""
        if self.mode == "kv_cache":
            return (self.prompt_tokens, 0) if step == 0 else (1, self.prompt_tokens + step - 1)
        return (self.prompt_tokens + step, 0)

    @property
    def in_flight(self) -> int:
        """Requests the planner assumes in flight (closed loop: ``concurrency``; open loop: 1)."""
        return self.concurrency or 1

    @model_validator(mode="after")
    def _loop(self):
        if self.concurrency is not None and self.arrival_rate is not None:
            raise ValueError("give either concurrency (closed loop) or arrival_rate (open loop), not both")
        return self


# ---- dynamics: what happens to the cluster during a run --------------------------------------
class _Event(_Strict):
    at: float = Field(ge=0)  # seconds of simulated time
    device: int | str  # index into the expanded device list, or its name


class ThrottleEvent(_Event):
    """The phone runs at ``factor`` x its speed (thermal throttling) from ``at``, for ``duration_s``
    (None: until the end or a later throttle event)."""

    kind: Literal["throttle"]
    factor: float = Field(gt=0, le=4)
    duration_s: float | None = Field(None, gt=0)


class BackgroundEvent(_Event):
    """Another app takes ``share`` of the phone's cores for ``duration_s``: segments run at
    ``1 - share`` of their speed meanwhile."""

    kind: Literal["background"]
    share: float = Field(gt=0, lt=1)
    duration_s: float = Field(gt=0)


class RssiEvent(_Event):
    """The phone's signal changes to ``rssi_dbm`` (it walked away, a door closed). Below the
    weakest MCS's sensitivity the phone is out of range: it leaves."""

    kind: Literal["rssi"]
    rssi_dbm: float


class LeaveEvent(_Event):
    """The phone disappears without notice (crash, low-memory kill, out of range)."""

    kind: Literal["leave"]
    reason: str = "crash"


class JoinEvent(_Event):
    """The phone (re)appears: it starts answering heartbeats and can be given work."""

    kind: Literal["join"]


class BurstsEvent(_Strict):
    """Random background-load bursts: a Poisson process of ``rate_per_s`` on each listed phone
    (all if None) between ``start_s`` and ``end_s``; each burst takes ``share`` of the cores for
    an exponential time of mean ``mean_duration_s``. Seeded by the scenario's seed."""

    kind: Literal["background_bursts"]
    devices: list[int | str] | None = None
    rate_per_s: float = Field(gt=0)
    share: float = Field(gt=0, lt=1)
    mean_duration_s: float = Field(gt=0)
    start_s: float = Field(0.0, ge=0)
    end_s: float | None = Field(None, gt=0)


class ThermalEvent(_Strict):
    """Sustained-load throttling from each listed phone's profile (``thermal``): after
    ``time_to_throttle_s`` of cumulative busy time (minus idle time, which cools it) the phone runs
    at ``sustained_speed``; it recovers when it has cooled to half that heat."""

    kind: Literal["thermal"]
    devices: list[int | str] | None = None


class NoiseEvent(_Strict):
    """Run-to-run jitter of segment times: each execution takes ``lognormal(0, sigma)`` x its
    time (a noisy but stable phone: no sustained slowdown)."""

    kind: Literal["noise"]
    devices: list[int | str] | None = None
    sigma: float = Field(gt=0, le=1)


DynamicsEvent = Annotated[ThrottleEvent | BackgroundEvent | RssiEvent | LeaveEvent | JoinEvent | BurstsEvent |
                          ThermalEvent | NoiseEvent, Field(discriminator="kind")]


class Balancer(_Strict):
    """The runtime load balancer (:mod:`llsim.balance`)."""

    enabled: bool = True
    interval_s: float = Field(1.0, gt=0)  # how often the coordinator consults the policy
    smoothing_s: float = Field(3.0, gt=0)  # time constant of the monitor's smoothed speed ratios
    threshold: float = Field(0.2, gt=0, lt=1)  # relative deviation from the plan's assumption that triggers
    sustain_s: float = Field(4.0, ge=0)  # ... when it lasts this long
    min_interval_s: float = Field(15.0, ge=0)  # between two rebalances
    min_gain: float = Field(0.05, ge=0)  # relative gain a new plan must promise
    gain_cost_margin: float = Field(1.5, ge=1)  # predicted gain over the horizon must exceed margin x cost
    horizon_s: float | None = Field(60.0, gt=0)  # a change must pay back within this long (None: the whole
    # remaining work known to the coordinator; a deviation may not last that long)
    min_samples: int = Field(5, ge=1)  # observations of a phone before its ratio is trusted
    overlap_replicas: bool = True  # pre-stage neighbours' boundary modules within memory slack
    strategy: str = "milp"  # for full re-plans
    heartbeat_s: float = Field(0.5, gt=0)
    heartbeat_misses: int = Field(3, ge=1)  # missed heartbeats before a phone is declared gone
    session_ms_per_module: float = Field(30.0, ge=0)  # opening an onnxruntime session for a module
    join_after_s: float = Field(2.0, ge=0)  # a (re)joined phone must answer heartbeats this long


class Duration(_Strict):
    max_sim_s: float = Field(3600.0, gt=0)
    max_wall_s: float = Field(600.0, gt=0)


class Scenario(_Strict):
    name: str = "scenario"
    description: str = ""
    model: str
    weight_dtype: Literal["fp32", "fp16", "int8"] = "fp32"
    seed: int = 0
    devices: list[DeviceSpec] = Field(min_length=1)
    network: NetworkConfig = Field(default_factory=lambda: {"kind": "infrastructure"})
    allocation: Allocation = Field(default_factory=Allocation)
    workload: Workload = Field(default_factory=Workload)
    duration: Duration = Field(default_factory=Duration)
    balancer: Balancer = Field(default_factory=lambda: Balancer(enabled=False))
    events: list[DynamicsEvent] = Field(default_factory=list)

    path: Path | None = Field(None, exclude=True)

    @field_validator("model")
    @classmethod
    def _model(cls, v):
        if not v.strip():
            raise ValueError("model must be a zoo name or an .onnx path")
        return v


def _hint(err: dict) -> str:
    t = err["type"]
    if t == "extra_forbidden":
        return "unknown field (a typo?); remove or rename it"
    if t == "missing":
        return "required field is missing; add it"
    return err["msg"]


def _loc(err: dict) -> str:
    from llsim.network.config import _KINDS

    parts = []
    for x in err["loc"]:
        if str(x) in _KINDS or str(x).startswith("function-"):
            continue
        parts.append(f"[{x}]" if isinstance(x, int) else f".{x}")
    if err["type"] == "invalid_network_kind":
        parts.append(".kind")
    return "".join(parts).lstrip(".")


def apply_overrides(data: dict, sets: list[str]) -> dict:
    for item in sets or []:
        if "=" not in item:
            raise LLSimError(f"--set '{item}': expected path.to.field=value")
        path, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        cur: Any = data
        keys = path.split(".")
        for i, k in enumerate(keys):
            last = i == len(keys) - 1
            if isinstance(cur, list):
                try:
                    idx = int(k)
                    cur[idx]
                except (ValueError, IndexError):
                    raise LLSimError(f"--set {path}: '{k}' is not an index of the list at "
                                     f"{'.'.join(keys[:i]) or 'top level'}") from None
                if last:
                    cur[idx] = value
                else:
                    cur = cur[idx]
            else:
                if last:
                    cur[k] = value
                else:
                    if k not in cur or cur[k] is None:
                        cur[k] = {}
                    cur = cur[k]
    return data


def load_scenario(name_or_path: str | Path, sets: list[str] | None = None, seed: int | None = None) -> Scenario:
    p = Path(name_or_path)
    if not p.exists() and p.suffix not in (".yaml", ".yml"):
        cand = SCENARIO_DIR / f"{name_or_path}.yaml"
        if cand.exists():
            p = cand
    if not p.exists():
        raise LLSimError(f"{p}: no such scenario file (give a path or a name from scenarios/)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise LLSimError(f"{p}:{' line ' + str(mark.line + 1) if mark else ''} is not valid YAML: "
                         f"{getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise LLSimError(f"{p}: expected a mapping of fields (model, devices, network, ...) at the top level")
    data = apply_overrides(data, sets or [])
    if seed is not None:
        data["seed"] = seed
    return validate_scenario(data, p)


def validate_scenario(data: dict, path: Path | None = None) -> Scenario:
    where = str(path) if path else "scenario"
    try:
        sc = Scenario.model_validate(data)
    except ValidationError as e:
        errs = e.errors()
        first = errs[0]
        more = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
        raise LLSimError(f"{where}: field '{_loc(first)}': {_hint(first)}{more}") from None
    sc.path = path
    _check_refs(sc, where)
    return sc


def _check_refs(sc: Scenario, where: str) -> None:
    from llsim.device.profile import list_profiles, resolve_profile_path

    base = sc.path.parent if sc.path else Path.cwd()
    for i, d in enumerate(sc.devices):
        prof = d.profile
        cand = base / prof
        if cand.suffix in (".yaml", ".yml") and cand.exists():
            d.profile = str(cand)
            continue
        try:
            resolve_profile_path(prof)
        except LLSimError:
            raise LLSimError(f"{where}: field 'devices[{i}].profile': unknown profile '{prof}'; use one of "
                             f"{', '.join(list_profiles())} or a path to a profile YAML") from None
    if sc.model.endswith(".onnx") and not Path(sc.model).is_absolute():
        cand = base / sc.model
        if cand.exists():
            sc.model = str(cand)


def dump_resolved(sc: Scenario) -> dict:
    return sc.model_dump(mode="json", exclude={"path"})
