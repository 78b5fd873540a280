"""Scenarios: validated YAML describing a model, a set of phones, a Wi-Fi network, an allocation,
a workload and a seed. One schema for the simulator, the allocator and hardware-in-the-loop runs
(a device's ``backend``: ``sim``, ``local`` for a real onnxruntime worker on this host, or ``adb``
for one on an Android phone (``serial``); ``hil:`` chooses how real and simulated time are mixed).

Errors name the file, the field path and what to do; ``--set path.to.field=value`` overrides a
field before validation (values are parsed as YAML scalars).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llsim.cost.steps import step_shape
from llsim.errors import LLSimError
from llsim.events import (EVENT_KINDS, BackgroundEvent, BurstsEvent, JoinEvent, LeaveEvent,  # noqa: F401 (re-exports)
                          NoiseEvent, RssiEvent, ThermalEvent, ThrottleEvent, events_union)
from llsim.network.config import InfrastructureConfig, NetworkConfig

SCENARIO_DIR = Path(__file__).resolve().parents[1] / "scenarios"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # every number finite


def _known_strategy(v: str, explicit: bool) -> str:
    from llsim import registry

    s = registry.get(v)
    if s is None or not (explicit or s.judged):
        raise ValueError(registry.unknown(v, judged_only=not explicit))
    return v


class DeviceSpec(_Strict):
    profile: str = Field(min_length=1)
    count: int = Field(1, ge=1, le=2007)  # 802.11: at most 2007 stations per access point
    name: str | None = None  # default: <profile>-<k>, k counting across entries (llsim.validate.expanded_names)
    threads: int | None = Field(None, ge=1, le=256)  # must be a thread count the profile has
    ram_available_gb: float | None = Field(None, gt=0, le=4096)
    rssi_dbm: float | None = Field(None, ge=-120, le=0)
    streams: int | None = Field(None, ge=1, le=4)
    speed: float = Field(1.0, gt=0, le=100)  # multiplier on compute throughput (e.g. a known-slow unit)
    absent: bool = False  # not in the cluster at the start (a later ``join`` event brings it in)
    # hardware in the loop: "sim" (the cost model), "local" (a real onnxruntime worker on this host
    # that llsim starts and stops; its sessions use ``threads`` intra-op threads; ``affinity``: CPUs)
    # "adb": a worker on an Android phone (Termux) that llsim deploys, starts and stops over adb; ``serial``:
    # the phone (`llsim devices`), or "auto" for the next free attached phone in state `device`
    backend: Literal["sim", "local", "adb"] = "sim"
    serial: str | None = Field(None, min_length=1, max_length=256)
    affinity: list[Annotated[int, Field(ge=0, le=4095)]] | None = Field(None, min_length=1, max_length=256)
    worker: str | None = None  # the old name of ``backend``: refused with a hint

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        from llsim.validate import NAME_RE

        if v is not None and (not NAME_RE.match(v) or v.isdigit()):
            raise ValueError(f"{v!r} is not a device name: 1-64 letters, digits, '.', '_', '+' or '-', starting "
                             "with a letter or digit, and not a number (a number is read as an index)")
        return v

    @field_validator("worker")
    @classmethod
    def _worker(cls, v):
        if v is not None:
            raise ValueError(f"'worker: {v}' is not a field any more: use backend (local for a worker on this host, "
                             "sim to simulate it)")
        return v

    @model_validator(mode="after")
    def _affinity(self):
        if self.affinity is not None and self.backend == "sim":
            raise ValueError("affinity pins a real worker's process to CPUs: it needs backend: local or adb")
        return self

    @model_validator(mode="after")
    def _serial(self):
        if self.serial is not None and self.backend != "adb":
            raise ValueError(f"serial {self.serial!r} names an Android phone: it needs backend: adb "
                             f"(this device has backend: {self.backend})")
        if self.backend == "adb" and self.serial is None:
            raise ValueError("backend: adb needs serial: SERIAL (see `llsim devices`) or serial: auto (the next "
                             "free attached phone)")
        if self.backend == "adb" and self.serial != "auto" and self.count > 1:
            raise ValueError(f"count {self.count} with serial {self.serial!r}: one phone is one device; use "
                             "serial: auto, or one entry per phone")
        return self


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
    time_limit_s: float = Field(30.0, gt=0, le=86400)
    mip_gap: float = Field(1e-6, ge=0, le=1)
    header: int | None = Field(None, ge=0)  # pin the header (first stage) to this device index

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, v):
        return _known_strategy(v, explicit=True)

    @model_validator(mode="after")
    def _explicit(self):
        if self.strategy == "explicit" and not self.stages:
            raise ValueError("strategy 'explicit' needs a 'stages' list of {device, start_module, end_module}")
        if self.stages and self.strategy != "explicit":
            raise ValueError(f"'stages' given with strategy '{self.strategy}': set strategy: explicit")
        return self


class Workload(_Strict):
    prompt_tokens: int = Field(32, ge=1, le=10**7)  # and within the model's positions (llsim.validate)
    new_tokens: int = Field(16, ge=1, le=10**7)
    requests: int = Field(1, ge=1, le=10**9)  # and within this host's memory (llsim.validate)
    concurrency: int | None = Field(None, ge=1, le=10**6)  # closed loop: requests in flight
    arrival_rate: float | None = Field(None, gt=0, le=1e6)  # open loop: Poisson arrivals per second
    mode: Literal["kv_cache", "recompute"] = "kv_cache"
    batch: int = Field(1, ge=1, le=4096)
    sample_ms: float = Field(0.0, ge=0, le=3.6e6)  # tail: sampling the next token
    tokenize_ms: float = Field(0.0, ge=0, le=3.6e6)  # header: tokenizing the prompt

    def step_shape(self, step: int) -> tuple[int, int]:
        """(new tokens S, cached tokens P) of generation step ``step`` (0 = prefill)."""
        return step_shape(self.mode, self.prompt_tokens, step)

    @property
    def in_flight(self) -> int:
        """Requests the planner assumes in flight (closed loop: ``concurrency``; open loop: 1)."""
        return self.concurrency or 1

    @model_validator(mode="after")
    def _loop(self):
        if self.concurrency is not None and self.arrival_rate is not None:
            raise ValueError("give either concurrency (closed loop) or arrival_rate (open loop), not both")
        return self


# ---- dynamics: what happens to the cluster during a run (each kind's schema and action: llsim.events) ---
DynamicsEvent = events_union()


class Balancer(_Strict):
    """The runtime load balancer (:mod:`llsim.balance`)."""

    enabled: bool = True
    interval_s: float = Field(1.0, ge=1e-3, le=1e6)  # how often the coordinator consults the policy
    smoothing_s: float = Field(3.0, gt=0, le=1e6)  # time constant of the monitor's smoothed speed ratios
    threshold: float = Field(0.2, gt=0, lt=1)  # relative deviation from the plan's assumption that triggers
    sustain_s: float = Field(4.0, ge=0, le=1e6)  # ... when it lasts this long
    min_interval_s: float = Field(15.0, ge=0, le=1e9)  # between two rebalances
    min_gain: float = Field(0.05, ge=0, le=1e6)  # relative gain a new plan must promise
    gain_cost_margin: float = Field(1.5, ge=1, le=1e6)  # predicted gain over the horizon must exceed margin x cost
    horizon_s: float | None = Field(None, gt=0, le=1e9)  # an upper bound on the payback window (None: the work
    # left and the learned duration of the condition bound it; llsim.balance.horizon)
    min_samples: int = Field(5, ge=1, le=10**6)  # observations of a phone before its ratio is trusted
    overlap_replicas: bool = True  # pre-stage neighbours' boundary modules within memory slack
    standby_replicas: bool = True  # idle phones hold standby copies of the riskiest stages (llsim.balance.replicas)
    strategy: str = "milp"  # for full re-plans
    heartbeat_s: float = Field(0.5, ge=1e-3, le=3600)
    heartbeat_misses: int = Field(3, ge=1, le=10**6)  # missed heartbeats before a phone is declared gone
    session_ms_per_module: float = Field(30.0, ge=0, le=1e6)  # opening an onnxruntime session for a module
    # a switch's drain is cut after max(this, 4 x its predicted time): the steps still in flight (on a
    # phone slowed to a crawl, say) are retried under the new plan from their last completed token
    drain_limit_s: float = Field(1.0, gt=0, le=1e6)
    join_after_s: float = Field(2.0, ge=0, le=1e9)  # a (re)joined phone must answer heartbeats this long

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, v):
        return _known_strategy(v, explicit=False)


class Hil(_Strict):
    """How a run with real nodes mixes real and simulated time (docs/hil.md)."""

    # virtual: the simulation stops where a real node's result is needed, waits for it, and the stage
    # takes the time the worker measured (real workers never contend; reproducible given the measurements)
    # realtime: simulated time is paced to the wall clock; real stages run concurrently and take the
    # wall time they took (submit to result); the lag of the simulation behind real time is recorded
    clock: Literal["virtual", "realtime"] = "virtual"
    # model: every link takes the link model's time (the tensors travel over loopback underneath);
    # none: a transfer between two real workers takes the time it really took on this host (unshaped)
    shape: Literal["model", "none"] = "model"
    tensors: bool = False  # real tensors (and token ids) even when every device is simulated
    deadline_slack: float = Field(5.0, ge=1, le=1e4)  # a real stage's deadline: floor + slack x predicted
    deadline_floor_s: float = Field(5.0, gt=0, le=3600)
    heartbeat_s: float = Field(0.5, gt=0, le=60)  # workers' heartbeats; 4 missed: the worker is lost
    prompt_seed: int | None = Field(None, ge=0, lt=2**63)  # prompts' token ids (default: the scenario's seed)
    # backend: adb: tensors between two phones go phone to phone over their Wi-Fi when they reach each other
    # (their workers then listen on every interface: authenticated, not encrypted); false: through this host
    phone_to_phone: bool = True


class Duration(_Strict):
    max_sim_s: float = Field(3600.0, gt=0, le=1e9)
    max_wall_s: float = Field(600.0, gt=0, le=7 * 86400)


class Scenario(_Strict):
    name: str = "scenario"  # also the default results directory runs/<name>-seed<N>: a plain name
    description: str = ""
    model: str
    weight_dtype: Literal["fp32", "fp16", "int8"] = "fp32"
    seed: int = Field(0, ge=0, lt=2**63)
    devices: list[DeviceSpec] = Field(min_length=1)
    network: NetworkConfig = Field(default_factory=lambda: InfrastructureConfig())  # defaults are not validated
    allocation: Allocation = Field(default_factory=Allocation)
    workload: Workload = Field(default_factory=Workload)
    duration: Duration = Field(default_factory=Duration)
    balancer: Balancer = Field(default_factory=lambda: Balancer(enabled=False))
    events: list[DynamicsEvent] = Field(default_factory=list)
    hil: Hil = Field(default_factory=Hil)

    path: Path | None = Field(None, exclude=True)

    @property
    def real_tensors(self) -> bool:
        """Whether a run executes the real segments (some device is real, or ``hil.tensors``)."""
        return self.hil.tensors or any(d.backend != "sim" for d in self.devices)

    @model_validator(mode="after")
    def _one_device_per_phone(self):
        seen: dict[str, int] = {}
        for i, d in enumerate(self.devices):
            if d.backend == "adb" and d.serial != "auto":
                if d.serial in seen:
                    raise ValueError(f"devices[{seen[d.serial]}] and devices[{i}] both use the phone {d.serial!r}: "
                                     "a phone runs one device (give each its own serial, or serial: auto)")
                seen[d.serial] = i
        return self

    @field_validator("model")
    @classmethod
    def _model(cls, v):
        if not v.strip():
            raise ValueError("model must be a zoo name or an .onnx path")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        from llsim.validate import NAME_RE

        if not NAME_RE.match(v):
            raise ValueError(f"{v!r} is not a plain name (1-64 letters, digits, '.', '_', '+' or '-', starting with "
                             "a letter or digit): it names the results directory runs/<name>-seed<N>")
        return v


def rebuild_events_schema() -> None:
    """Rebuild the ``events`` union from :data:`llsim.events.EVENT_KINDS` (after a kind was registered)."""
    global DynamicsEvent
    DynamicsEvent = events_union()
    Scenario.model_fields["events"].annotation = list[DynamicsEvent]
    Scenario.model_rebuild(force=True)


def _hint(err: dict) -> str:
    t = err["type"]
    if t == "extra_forbidden":
        return "unknown field (a typo?); remove or rename it"
    if t == "missing":
        return "required field is missing; add it"
    if t == "finite_number":
        return "must be a finite number (not NaN or infinity)"
    return err["msg"].removeprefix("Value error, ")


def _clean_loc(err: dict) -> tuple:
    """The field path of a pydantic error, without union tags (network and event kinds)."""
    from llsim.network.config import _KINDS

    loc = list(err["loc"])
    out = []
    for k, x in enumerate(loc):
        if isinstance(x, str) and (x.startswith("function-") or x in _KINDS and k > 0 and loc[k - 1] == "network"
                                   or x in EVENT_KINDS and k > 1 and loc[k - 2] == "events"):
            continue
        out.append(x)
    if err["type"] == "invalid_network_kind":
        out.append("kind")
    return tuple(out)


def _loc(err: dict) -> str:
    from llsim.validate import fmt_loc

    return fmt_loc(_clean_loc(err))


def apply_overrides(data: dict, sets: list[str], ov=None) -> dict:
    """Apply ``--set path=value`` items (``a.b[3].c`` or ``a.b.3.c``) to the raw mapping; ``ov``
    (:class:`llsim.validate.Overrides`) records which field each one wrote."""
    from llsim.validate import Overrides, apply_set

    ov = ov if ov is not None else Overrides()
    for item in sets or []:
        apply_set(data, item, ov)
    return data


def read_scenario_data(name_or_path: str | Path) -> tuple[dict, Path]:
    p = Path(name_or_path)
    if not p.exists() and p.suffix not in (".yaml", ".yml"):
        cand = SCENARIO_DIR / f"{name_or_path}.yaml"
        if cand.exists():
            p = cand
    if not p.exists():
        raise LLSimError(f"{p}: no such scenario file (give a path or a name from scenarios/)")
    if not p.is_file():
        raise LLSimError(f"{p}: is a directory, not a scenario file")
    from llsim.validate import load_yaml

    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise LLSimError(f"{p}: cannot be read as a text file ({getattr(e, 'strerror', None) or e})") from None
    data = load_yaml(text, str(p))
    if not isinstance(data, dict):
        raise LLSimError(f"{p}: expected a mapping of fields (model, devices, network, ...) at the top level")
    return data, p


def load_scenario(name_or_path: str | Path, sets: list[str] | None = None, seed: int | None = None) -> Scenario:
    from llsim.validate import Overrides

    data, p = read_scenario_data(name_or_path)
    ov = Overrides()
    data = apply_overrides(data, sets or [], ov)
    if seed is not None:
        data["seed"] = seed
        ov.items.append((("seed",), f"--seed {seed}"))
    return validate_scenario(data, p, ov)


def validate_scenario(data: dict, path: Path | None = None, overrides=None) -> Scenario:
    """A :class:`Scenario` from a raw mapping; every problem (schema, then references across fields and
    files) is reported in one :class:`LLSimError`, each naming the file and field or the ``--set``."""
    from llsim.validate import check_scenario, report

    where = str(path) if path else "scenario"
    try:
        sc = Scenario.model_validate(data)
    except ValidationError as e:
        raise LLSimError(report(where, [(_clean_loc(err), _hint(err)) for err in e.errors()], overrides)) from None
    sc.path = path
    problems = check_scenario(sc)
    if problems:
        raise LLSimError(report(where, problems, overrides))
    return sc


def dump_resolved(sc: Scenario) -> dict:
    return sc.model_dump(mode="json", exclude={"path"})
