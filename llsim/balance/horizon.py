"""How long the current condition will last, learned from what the monitor saw (pure code).

The balancer pays for a change with what it saves while the change is useful: until the work ends
(a closed workload knows the tokens it still has to generate) or until the condition it answers
ends, whichever comes first. :class:`Episodes` learns the second from the monitor's snapshots.

Each phone is, for each signal, in one of two states:

* ``speed``: *off* while its smoothed slowdown (observed / profiled stage time) deviates from 1 by
  more than ``threshold``, back *on* (nominal) when it is within ``threshold / 2`` (hysteresis, as
  the balancer's triggers);
* ``link``: *off* while its reported link rate is below its nominal rate by more than
  ``threshold`` (nominal / rate - 1 > threshold), *on* under ``threshold / 2``;
* ``presence``: *on* while it answers heartbeats, *off* while it does not.

An episode is a run of one state. Episodes of one kind (signal, state) are pooled over phones: "how
long did past deviations of this kind last". The expected remaining time of an ongoing episode is
the maximum-likelihood fit of an exponential (memoryless) duration to everything seen of that kind:
the completed episodes and the ongoing ones (censored at their current age),

    mean duration = (sum of completed durations + sum of ongoing ages) / (number completed)

and, the exponential being memoryless, that is also the expected remaining time of an ongoing
episode. No completed episode of the kind: unknown (infinite; the work left bounds the payback).
An episode that has lasted longer than the ones seen raises the estimate as it goes on (its age is
in the sum). The condition a decision answers is that of the phones that triggered it; it ends
when the first of their episodes ends: the expected minimum of exponentials, ``1 / sum(1 / m_i)``.

The same history gives each phone's ``risk`` (how often it slowed down or left), which the standby
replicas use to choose whose modules to copy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

SIGNALS = ("speed", "link", "presence")


def expected_useful(m: float, w: float, b: float = 0.0) -> float:
    """Expected seconds a change is useful when it starts after ``b`` seconds (a staging), the work
    ends after ``w`` and the condition it answers after an exponential time of mean ``m``:
    ``E[max(0, min(T, w) - b)] = m exp(-b/m) (1 - exp(-(w - b)/m))`` (``w - b`` if ``m`` is infinite)."""
    if w <= b:
        return 0.0
    if not math.isfinite(m):
        return w - b
    if m <= 0:
        return 0.0
    if not math.isfinite(w):
        return m * math.exp(-b / m)
    return m * math.exp(-b / m) * -math.expm1(-(w - b) / m)


def ends_within(m: float, w: float) -> float:
    """Probability that a condition of exponential duration (mean ``m``) ends within ``w`` seconds."""
    if not math.isfinite(m):
        return 0.0
    if m <= 0 or not math.isfinite(w):
        return 1.0
    return -math.expm1(-w / m)


@dataclass
class Episodes:
    threshold: float = 0.2
    state: dict[tuple[str, int], tuple[bool, float]] = field(default_factory=dict)  # (signal, d) -> (off, since)
    completed: dict[tuple[str, bool], list[float]] = field(default_factory=dict)  # (signal, off) -> durations
    starts: dict[int, int] = field(default_factory=dict)  # device -> off episodes begun (any signal)

    def _set(self, key: tuple[str, int], off: bool, t: float) -> None:
        cur = self.state.get(key)
        if cur is None:
            self.state[key] = (off, t)
            return
        if cur[0] == off:
            return
        self.completed.setdefault((key[0], cur[0]), []).append(max(t - cur[1], 0.0))
        self.state[key] = (off, t)
        if off:
            self.starts[key[1]] = self.starts.get(key[1], 0) + 1

    def _classify(self, key: tuple[str, int], dev: float) -> bool:
        """Hysteresis: off above ``threshold``, on below half of it, unchanged in between."""
        cur = self.state.get(key)
        if abs(dev) > self.threshold:
            return True
        if abs(dev) < self.threshold / 2 or cur is None:
            return False
        return cur[0]

    def observe(self, t: float, slowdown: dict[int, float], link_dev: dict[int, float],
                alive: dict[int, bool]) -> None:
        """One snapshot: ``slowdown[d]`` (1 = as profiled), ``link_dev[d]`` = nominal / rate - 1,
        ``alive[d]``."""
        for d, r in slowdown.items():
            key = ("speed", d)
            self._set(key, self._classify(key, r - 1.0), t)
        for d, x in link_dev.items():
            key = ("link", d)
            self._set(key, self._classify(key, x), t)
        for d, a in alive.items():
            self._set(("presence", d), not a, t)

    def is_off(self, signal: str, d: int) -> bool:
        s = self.state.get((signal, d))
        return bool(s and s[0])

    def mean_duration(self, signal: str, off: bool, t: float) -> float:
        """The exponential fit's mean for episodes of (signal, state); ``inf`` if none ended yet."""
        done = self.completed.get((signal, off), [])
        if not done:
            return math.inf
        ongoing = sum(t - since for (sig, _), (o, since) in self.state.items() if sig == signal and o == off)
        return (sum(done) + ongoing) / len(done)

    def remaining(self, signal: str, d: int, t: float) -> float:
        """Expected remaining seconds of device ``d``'s current ``signal`` episode."""
        s = self.state.get((signal, d))
        return math.inf if s is None else self.mean_duration(signal, s[0], t)

    def condition_remaining(self, keys: list[tuple[str, int]], t: float) -> float:
        """Expected time until the first of these episodes ends (the condition a decision answers)."""
        rate = 0.0
        for sig, d in keys:
            m = self.remaining(sig, d, t)
            if m <= 0:
                return 0.0
            rate += 0.0 if math.isinf(m) else 1.0 / m
        return math.inf if rate == 0 else 1.0 / rate

    def risk(self, d: int) -> float:
        """How likely phone ``d`` is to slow down or leave: 1 + the off episodes it had."""
        return 1.0 + self.starts.get(d, 0)
