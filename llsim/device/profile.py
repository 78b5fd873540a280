"""Device profile: what a phone (or this host) is to llsim, as validated YAML.

A profile carries identity (SoC, CPU clusters, RAM), compute (cost-model coefficients per op class
and thread count), thermal behaviour, the Wi-Fi interface, and **provenance** for every section:
``measured`` (tool, date, host, onnxruntime version, samples file) or ``calibrated`` (public sources
and the arithmetic). Errors name the file, the field and the fix.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llsim.errors import LLSimError
from llsim.model.graph import OP_CLASSES

PROFILE_DIR = Path(__file__).resolve().parents[2] / "device_profiles"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # every number finite


#: Bounds of the cost model's terms. A throughput is 0 (the term is off) or at least MIN_RATE (1 kFLOP/s,
#: 1 kB/s: below that an op would take hours, a unit slip); very large ones mean "negligible" (calibrated
#: profiles write 1e6 GB/s for a gather's table rows, a fit may return 1e15 for a term it cannot see).
MIN_RATE = 1e-6
MAX_RATE = 1e30
MAX_US = 1e7  # 10 s per op


class Cluster(_Strict):
    name: str
    cores: int = Field(ge=1, le=1024)
    freq_ghz: float = Field(gt=0, le=10)
    core: str = ""  # e.g. Cortex-X3


class Memory(_Strict):
    ram_total_gb: float = Field(gt=0, le=4096)
    ram_available_gb: float = Field(gt=0, le=4096)
    budget_fraction: float = Field(0.7, gt=0, le=1.0)  # LinguaLinked uses 0.7 x available RAM
    source: str

    @model_validator(mode="after")
    def _avail(self):
        if self.ram_available_gb > self.ram_total_gb:
            raise ValueError("ram_available_gb exceeds ram_total_gb")
        return self

    @property
    def budget_bytes(self) -> int:
        return int(self.ram_available_gb * self.budget_fraction * 1e9)


class ClassCoef(_Strict):
    """t(op) = overhead_us + flops / (gflops * 1e9) + activation bytes / (gbps * 1e9)
    + weight bytes / (weight_gbps * 1e9) + flops / sqrt(rows) / (narrow_gflops * 1e9). A 0 throughput
    means the term is not used (weight bytes then count as activation bytes). ``rows`` is a GEMM's M;
    the last term is the inefficiency of narrow GEMMs (decode and short-prompt shapes), fitted where
    measured, 0 (off) in calibrated profiles."""

    overhead_us: float = Field(ge=0, le=MAX_US)
    gflops: float = Field(0.0, ge=0, le=MAX_RATE)
    gbps: float = Field(0.0, ge=0, le=MAX_RATE)
    weight_gbps: float = Field(0.0, ge=0, le=MAX_RATE)  # streaming weights from DRAM (decode-shaped matmuls)
    narrow_gflops: float = Field(0.0, ge=0, le=MAX_RATE)  # extra cost of few-row GEMMs: flops / sqrt(rows)

    @field_validator("gflops", "gbps", "weight_gbps", "narrow_gflops")
    @classmethod
    def _rate(cls, v):
        if 0 < v < MIN_RATE:
            raise ValueError(f"{v:g} is below {MIN_RATE:g} (1 kFLOP/s or 1 kB/s): use 0 to turn the term off")
        return v

    @model_validator(mode="after")
    def _some(self):
        if not (self.gflops or self.gbps or self.overhead_us or self.weight_gbps or self.narrow_gflops):
            raise ValueError("all coefficients are zero: the op would take no time")
        return self


class ThreadCoefs(_Strict):
    classes: dict[str, ClassCoef]
    run_overhead_us: float = Field(0.0, ge=0, le=MAX_US)  # per session.run call
    # calibration of the unfused per-op work against optimised (fused) whole-segment runs:
    # t_segment = run_overhead + sum_group fused_scale[group] * work(group) + fused_op_overhead_us * n_ops
    fused_scale: dict[str, float] = Field(default_factory=dict)
    fused_op_overhead_us: float | None = Field(None, ge=0, le=MAX_US)  # None: use each class's overhead_us

    @field_validator("classes")
    @classmethod
    def _known(cls, v):
        bad = [k for k in v if k not in OP_CLASSES]
        if bad:
            raise ValueError(f"unknown op class {bad[0]!r}; known: {', '.join(OP_CLASSES)}")
        return v

    @field_validator("fused_scale")
    @classmethod
    def _scales(cls, v):
        for k, x in v.items():
            if k not in ("matmul", "other"):
                raise ValueError(f"fused_scale key {k!r} must be 'matmul' or 'other'")
            if not isinstance(x, (int, float)) or not 0 < x <= 1e3:  # NaN fails both comparisons
                raise ValueError(f"fused_scale.{k} must be a number in (0, 1000], not {x!r}")
        return v


class Compute(_Strict):
    threads: dict[int, ThreadCoefs]
    default_threads: int = Field(ge=1, le=256)
    fallback_class: str = "elementwise"  # used (with a one-time warning) for a class missing at a thread count
    source: str

    @field_validator("threads")
    @classmethod
    def _thread_counts(cls, v):
        bad = [t for t in v if not 1 <= t <= 256]
        if bad:
            raise ValueError(f"thread count {bad[0]} must be in 1..256")
        if not v:
            raise ValueError("no thread count has coefficients")
        return v

    @model_validator(mode="after")
    def _default_measured(self):
        if self.default_threads not in self.threads:
            raise ValueError(f"default_threads {self.default_threads} has no coefficients; "
                             f"available: {sorted(self.threads)}")
        return self


class Thermal(_Strict):
    peak_speed: float = Field(1.0, gt=0, le=10)
    sustained_speed: float = Field(gt=0, le=1.0)  # fraction of peak after throttling
    time_to_throttle_s: float = Field(ge=0, le=1e6)
    source: str


class NetworkIf(_Strict):
    wifi_standard: Literal["n", "ac", "ax"]
    spatial_streams: int = Field(ge=1, le=4)
    max_width_mhz: Literal[20, 40, 80, 160] = 80
    source: str


class Provenance(_Strict):
    kind: Literal["measured", "calibrated"]
    # measured
    tool: str | None = None
    date: str | None = None
    host: str | None = None
    onnxruntime_version: str | None = None
    samples: str | None = None  # CSV beside the profile
    # calibrated
    sources: list[str] = Field(default_factory=list)
    method: str | None = None
    replace_with_measured: str | None = None  # what a user runs to replace it

    @model_validator(mode="after")
    def _complete(self):
        if self.kind == "measured":
            missing = [f for f in ("tool", "date", "host", "onnxruntime_version", "samples") if not getattr(self, f)]
            if missing:
                raise ValueError(f"a measured profile needs {', '.join(missing)}")
        else:
            if not self.sources or not self.method:
                raise ValueError("a calibrated profile needs its public 'sources' and the 'method' (arithmetic)")
        return self


class DeviceProfile(_Strict):
    name: str
    kind: Literal["phone", "host"]
    device: str  # marketing name, e.g. "Nubia Z50"
    soc: str
    cpu: list[Cluster]
    memory: Memory
    compute: Compute
    thermal: Thermal
    network: NetworkIf
    provenance: Provenance
    notes: str = ""

    @property
    def cores(self) -> int:
        return sum(c.cores for c in self.cpu)

    path: Path | None = Field(None, exclude=True)


def _fmt_loc(loc) -> str:
    return ".".join(str(x) for x in loc)


def validation_message(file: str | Path, e: ValidationError) -> str:
    """Every problem of a profile on one line, each naming its field."""
    parts = []
    for err in e.errors():
        loc = _fmt_loc(err["loc"])
        typ = err["type"]
        if typ == "extra_forbidden":
            hint = "unknown field (typo?); remove or rename it"
        elif typ == "missing":
            hint = "required field is missing; add it"
        elif typ == "finite_number":
            hint = "must be a finite number (not NaN or infinity)"
        else:
            hint = err["msg"].removeprefix("Value error, ")
        parts.append(f"field '{loc}': {hint}")
    n = len(parts)
    return (f"{n} problems: " if n > 1 else "") + f"{file}: " + "; ".join(parts)


def read_yaml(path: Path) -> dict:
    from llsim.yamlio import load_yaml

    try:
        text = path.read_text()
    except FileNotFoundError:
        raise LLSimError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise LLSimError(f"{path}: is a directory, not a YAML file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LLSimError(f"{path}: cannot be read as a text file ({getattr(e, 'strerror', None) or e})") from None
    data = load_yaml(text, str(path))
    if not isinstance(data, dict):
        raise LLSimError(f"{path}: expected a mapping of fields at the top level")
    return data


def resolve_profile_path(name_or_path: str | Path) -> Path:
    if str(name_or_path) in _REGISTERED:
        return Path(str(name_or_path))
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise LLSimError(f"{p}: no such profile file")
        return p
    cand = PROFILE_DIR / f"{name_or_path}.yaml"
    if cand.exists():
        return cand
    known = ", ".join(list_profiles()) or "none"
    raise LLSimError(f"unknown device profile '{name_or_path}': not a file and not in device_profiles/ ({known})")


_CACHE: dict[Path, DeviceProfile] = {}
_REGISTERED: dict[str, DeviceProfile] = {}  # profiles given as data (a manifest's), by the reference that named them


@contextmanager
def registered_profiles(profiles: dict[str, DeviceProfile]):
    """While active, ``load_profile(ref)`` returns ``profiles[ref]`` (``llsim run --from-manifest``)."""
    old = dict(_REGISTERED)
    _REGISTERED.update(profiles)
    try:
        yield
    finally:
        _REGISTERED.clear()
        _REGISTERED.update(old)


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    if str(name_or_path) in _REGISTERED:
        return _REGISTERED[str(name_or_path)]
    path = resolve_profile_path(name_or_path).resolve()
    if path in _CACHE:
        return _CACHE[path]
    data = read_yaml(path)
    try:
        prof = DeviceProfile.model_validate(data)
    except ValidationError as e:
        raise LLSimError(validation_message(path, e)) from None
    prof.path = path
    _CACHE[path] = prof
    return prof


def list_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def dump_profile(prof: DeviceProfile, path: Path, header: str = "") -> None:
    data = prof.model_dump(mode="json", exclude={"path"})
    text = yaml.safe_dump(data, sort_keys=False, width=110)
    path.write_text((header + "\n" if header else "") + text)
