"""What a real coordinator can measure, and nothing else.

* **Stage executions.** Each phone reports how long it took to run its segment for a step; the
  coordinator knows the step's shape and the cost model, so it knows what the time *should* have
  been. The ratio observed / expected, smoothed with an exponential time constant, is the phone's
  slowdown (1 = as profiled, 2 = half speed: throttling, background load).
* **Heartbeats.** Every phone sends one every ``heartbeat_s``; each carries the phone's current
  Wi-Fi link rate (Android: ``WifiInfo.getLinkSpeed``), so a fading signal is seen as a lower rate.
  A phone whose heartbeats stop for ``misses x heartbeat_s`` is declared gone.

The simulator feeds a :class:`Monitor` from its events; it never reads the simulator's ground truth
(speed factors, event list). A real coordinator would feed the same calls from phone reports.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class _Ratio:
    value: float = 1.0
    t: float | None = None
    samples: int = 0


@dataclass
class Snapshot:
    """The monitor's view at time ``t`` (what the policy decides on)."""

    t: float
    slowdown: dict[int, float]  # device -> smoothed observed/expected stage time (trusted ones only)
    recent: dict[int, float]  # the same with a short time constant (smoothing_s / 6): is it still so now?
    samples: dict[int, int]
    link_mbps: dict[int, float]  # device -> last reported Wi-Fi link rate
    alive: dict[int, bool]  # device -> answering heartbeats
    alive_since: dict[int, float]  # device -> time its current run of heartbeats began


@dataclass
class Monitor:
    devices: int
    smoothing_s: float = 3.0
    heartbeat_s: float = 0.5
    misses: int = 3
    min_samples: int = 5
    ratios: list[_Ratio] = field(default_factory=list)
    fast: list[_Ratio] = field(default_factory=list)
    last_beat: dict[int, float] = field(default_factory=dict)
    first_beat: dict[int, float] = field(default_factory=dict)
    link_mbps: dict[int, float] = field(default_factory=dict)

    def __post_init__(self):
        if not self.ratios:
            self.ratios = [_Ratio() for _ in range(self.devices)]
            self.fast = [_Ratio() for _ in range(self.devices)]

    # ---- observations ------------------------------------------------------------------------
    def stage_time(self, device: int, t: float, observed_s: float, expected_s: float) -> None:
        """A phone ran its segment in ``observed_s``; the cost model said ``expected_s``."""
        if expected_s <= 0:
            return
        self._smooth(self.ratios[device], t, observed_s / expected_s)
        self._smooth(self.fast[device], t, observed_s / expected_s, self.smoothing_s / 6)

    def _smooth(self, r: _Ratio, t: float, x: float, tau: float | None = None) -> None:
        if r.t is None:
            r.value = x
        else:
            a = 1.0 - math.exp(-max(t - r.t, 0.0) / (tau or self.smoothing_s))
            # at least 1/(samples+1) weight while few samples exist (a fast start, then the time constant)
            a = max(a, 1.0 / (r.samples + 1)) if r.samples < self.min_samples else a
            r.value += a * (x - r.value)
        r.t = t
        r.samples += 1

    def heartbeat(self, device: int, t: float, link_mbps: float | None = None) -> None:
        prev = self.last_beat.get(device)
        if prev is None or t - prev > self.heartbeat_s * self.misses:
            self.first_beat[device] = t  # a new run of heartbeats (a join or a return)
        self.last_beat[device] = t
        if link_mbps is not None:
            self.link_mbps[device] = link_mbps

    # ---- the view ------------------------------------------------------------------------------
    def alive(self, device: int, t: float) -> bool:
        last = self.last_beat.get(device)
        return last is not None and t - last <= self.heartbeat_s * self.misses

    def snapshot(self, t: float) -> Snapshot:
        slow = {d: r.value for d, r in enumerate(self.ratios) if r.samples >= self.min_samples}
        recent = {d: self.fast[d].value for d in slow}
        alive = {d: self.alive(d, t) for d in range(self.devices)}
        return Snapshot(t, slow, recent, {d: r.samples for d, r in enumerate(self.ratios)}, dict(self.link_mbps), alive,
                        {d: self.first_beat[d] for d in self.first_beat if alive[d]})
