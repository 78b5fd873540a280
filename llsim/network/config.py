"""The ``network:`` section of a scenario: pydantic v2 models, one per ``kind``.

Every model forbids unknown keys, so a typo (``widht_mhz``) is an error, not a silent default.
``kind`` selects the model and defaults to ``infrastructure`` when omitted::

    network:
      kind: infrastructure        # infrastructure | wifi_direct | fixed | trace
      standard: ac                # n | ac | ax
      width_mhz: 80
      streams: 2
      default_rssi_dbm: -55
      tcp_goodput_factor: 0.65
      rtt_ms: {median: 3, p90: 20, p99: 250}
      loss_rate: 0.0
      retransmit_delay_ms: 200
      power_save: {enabled: true, idle_timeout_ms: 200, wake_delay_ms: 51.2}

Defaults and their sources (``/work/shared/reference/wifi-and-phones.md`` unless stated):

* ``standard: ac``, ``width_mhz: 80``, ``streams: 2``: an "AC867-class" phone (802.11ac,
  80 MHz, 2 spatial streams, 866.7 Mb/s at MCS9), the client class the reference measures.
* ``default_rssi_dbm: -55``: Android's ``WifiManager`` shows full signal bars from -55 dBm
  (its MAX_RSSI), i.e. a phone in the same room as the access point. At 80 MHz this is MCS7
  (sensitivity -64 + 6 = -58 dBm), 650 Mb/s with 2 streams.
* ``guard_interval: short``: the guard interval of the published peak rates (433.3 / 866.7 /
  1201 Mb/s).
* ``tcp_goodput_factor: 0.65``: TCP goodput / PHY rate of one client alone, low end of the
  65-70 % measured for an ideal client. The MCS drop with distance is modelled separately (RSSI
  -> MCS) and contention by Bianchi, so the factor keeps only MAC/PHY overhead, TCP/IP headers and
  TCP ACK airtime. Use 0.33-0.5 to emulate a real home with neighbouring networks (the reference:
  33-50 %; an AC867 client measured 199 Mb/s, 0.23 of its 866.7 Mb/s).
* ``rtt_ms: {median: 3, p90: 20, p99: 250}``: WiFiSeer (Pei et al., MobiSys 2016, 47k devices),
  the only source giving three quantiles of one distribution. (A home LLM cluster under load
  measured 4.9-54 ms: that range sits between this median and p99.) The RTT is the latency of
  a small message (handshake RTT); the serialisation of a tensor is modelled separately.
* ``loss_rate: 0``: the 802.11 MAC retransmits lost frames itself, so TCP-visible loss on a
  good link is near zero; ``retransmit_delay_ms: 200``: Linux's (and so Android's) minimum TCP
  retransmission timeout TCP_RTO_MIN = 200 ms. ``packet_bytes: 1448``: TCP MSS of a 1500-byte
  MTU with timestamps.
* ``power_save``: Android leaves active mode after about 200 ms idle (the reference's "active-mode
  timer about 200 ms"); a frame for a dozing phone waits at the AP for the next beacon's TIM:
  on average half the default beacon interval of 100 TU = 102.4 ms, so ``wake_delay_ms: 51.2``.
  Enabled by default because phones in a pipeline idle between tokens; note that WiFiSeer's
  measured RTTs may already include some of it.

``fixed`` is deterministic (no sampling) and used by tests and the allocator's idealised cases;
``trace`` replays a measured CSV (see :mod:`llsim.network.trace`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError, model_validator

from llsim.errors import LLSimError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # every number finite


class RttQuantiles(_Strict):
    """RTT distribution in milliseconds, given by three quantiles (WiFiSeer defaults)."""

    median: float = Field(3.0, gt=0, le=60_000)
    p90: float = Field(20.0, gt=0, le=60_000)
    p99: float = Field(250.0, gt=0, le=60_000)

    @model_validator(mode="after")
    def _ordered(self) -> "RttQuantiles":
        if not self.median < self.p90 < self.p99:
            raise ValueError(f"need median < p90 < p99, got {self.median:g} / {self.p90:g} / {self.p99:g} ms")
        return self


class PowerSaveConfig(_Strict):
    """802.11 power save of the phones (an access point never dozes)."""

    enabled: bool = True
    idle_timeout_ms: float = Field(200.0, ge=0, le=3.6e6)
    wake_delay_ms: float = Field(51.2, ge=0, le=60_000)


class _WirelessConfig(_Strict):
    standard: Literal["n", "ac", "ax"] = "ac"
    width_mhz: Literal[20, 40, 80, 160] = 80
    streams: int = Field(2, ge=1, le=4, description="spatial streams of a phone unless its device entry overrides it")
    guard_interval: Literal["short", "long"] = "short"
    default_rssi_dbm: float = Field(-55.0, ge=-120, le=0, description="RSSI of a phone at its AP unless its device entry overrides it")
    tcp_goodput_factor: float = Field(0.65, gt=0, le=1)
    rtt_ms: RttQuantiles = Field(default_factory=RttQuantiles)
    rtt_sampling: Literal["random", "expected"] = Field(
        "random", description="random: one RTT draw per transfer; expected: every transfer gets the mean RTT and "
        "the expected retransmission delay (no randomness; what the allocator bench judges plans with)")
    loss_rate: float = Field(0.0, ge=0, lt=1)
    retransmit_delay_ms: float = Field(200.0, ge=0, le=60_000)
    packet_bytes: int = Field(1448, ge=1, le=65_535)
    power_save: PowerSaveConfig = Field(default_factory=PowerSaveConfig)
    rts_cts: bool = False

    @model_validator(mode="after")
    def _width_fits_standard(self) -> "_WirelessConfig":
        if self.standard == "n" and self.width_mhz > 40:
            raise ValueError(f"802.11n supports 20 or 40 MHz channels, not {self.width_mhz} MHz")
        return self


class InfrastructureConfig(_WirelessConfig):
    """All phones associate with one access point (not a phone); every transfer crosses the air twice."""

    kind: Literal["infrastructure"] = "infrastructure"
    ap_streams: int = Field(4, ge=1, le=4, description="spatial streams of the access point")


class WifiDirectConfig(_WirelessConfig):
    """One phone (``ap_device``, a device index) is the hotspot / group owner."""

    kind: Literal["wifi_direct"] = "wifi_direct"
    ap_device: int = Field(0, ge=0, le=2006)


class FixedConfig(_Strict):
    """Deterministic link: each transfer takes ``relay x bytes x 8 / goodput + rtt / 2``.

    ``shared: true`` makes concurrent transfers share the goodput equally (processor sharing);
    ``ap_relay: true`` doubles the transmission part (AP double hop).
    """

    kind: Literal["fixed"] = "fixed"
    goodput_mbps: float = Field(gt=0, le=1e9)  # idealised links for analytic checks may be very fast
    rtt_ms: float = Field(0.0, ge=0, le=60_000)
    shared: bool = False
    ap_relay: bool = False


class TraceConfig(_Strict):
    """Replay a measured CSV (time_s, throughput_mbps, rtt_ms); relative paths resolve against the caller's base dir."""

    kind: Literal["trace"] = "trace"
    trace: str = Field(min_length=1)
    on_end: Literal["hold", "loop"] = "hold"
    shared: bool = False
    ap_relay: bool = False

    def resolve_path(self, base_dir: str | Path | None = None) -> Path:
        p = Path(self.trace).expanduser()
        if not p.is_absolute() and base_dir is not None:
            p = Path(base_dir) / p
        return p


def _kind_of(value: Any) -> str:
    if isinstance(value, Mapping):
        return value.get("kind", "infrastructure")
    return getattr(value, "kind", "infrastructure")


#: The ``network:`` section: a union discriminated by ``kind`` (default ``infrastructure``).
#: Use it as a field type in a scenario model, or call :func:`parse_network_config`.
NetworkConfig = Annotated[
    Union[
        Annotated[InfrastructureConfig, Tag("infrastructure")],
        Annotated[WifiDirectConfig, Tag("wifi_direct")],
        Annotated[FixedConfig, Tag("fixed")],
        Annotated[TraceConfig, Tag("trace")],
    ],
    Discriminator(
        _kind_of,
        custom_error_type="invalid_network_kind",
        custom_error_message="kind must be one of infrastructure, wifi_direct, fixed, trace",
    ),
]

_KINDS = ("infrastructure", "wifi_direct", "fixed", "trace")
_ADAPTER: TypeAdapter = TypeAdapter(NetworkConfig)


def format_validation_error(exc: ValidationError, where: str = "network") -> str:
    """One line per problem, ``network.rtt_ms.p90: ...``, without pydantic's union tag in the path."""
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err["loc"] if str(x) not in _KINDS]
        field = ".".join([where, *loc]) if where else ".".join(loc)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (a typo, or not valid for this network kind)"
        parts.append(f"{field}: {msg}")
    return "; ".join(parts)


def parse_network_config(data: Mapping[str, Any] | None, where: str = "network") -> NetworkConfig:
    """Validate a ``network:`` mapping (``None`` -> all defaults); raise :class:`LLSimError` on bad input."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise LLSimError(f"{where}: expected a mapping, got {type(data).__name__}")
    if data.get("kind", "infrastructure") not in _KINDS:
        raise LLSimError(f"{where}.kind: {data.get('kind')!r} is not one of {', '.join(_KINDS)}")
    try:
        return _ADAPTER.validate_python(dict(data))
    except ValidationError as exc:
        raise LLSimError(format_validation_error(exc, where)) from None

