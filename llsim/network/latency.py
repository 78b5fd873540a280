"""Round-trip-time distribution fitted to three quantiles (median, p90, p99).

Wi-Fi RTTs have a lognormal-looking body and a much heavier tail (WiFiSeer, Pei et al.,
MobiSys 2016, 47k devices: median as low as 3 ms, p90 about 20 ms, p99 about 250 ms). One
lognormal cannot match all three quantiles, so the RTT is a monotone transform of a standard
normal Z, a *spliced lognormal*::

    RTT = median * exp(s1 * Z)                   Z <= z90
    RTT = p90    * exp(s2 * (Z - z90))           Z >  z90

with z90 = Phi^-1(0.90), z99 = Phi^-1(0.99), s1 = ln(p90/median) / z90 (the body: a lognormal
matched to median and p90) and s2 = ln(p99/p90) / (z99 - z90) (the tail: a second lognormal
slope matched to p99). Because the transform is continuous and increasing, the median, p90 and
p99 of RTT are *exactly* the configured ones; the mean has a closed form (:meth:`mean`), used by
the allocator's analytic helpers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from llsim.errors import LLSimError

Z90 = 1.2815515655446004  # Phi^-1(0.90)
Z99 = 2.3263478740408408  # Phi^-1(0.99)


def _phi(x: float) -> float:
    """Standard normal CDF."""
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


@dataclass(frozen=True)
class RttDistribution:
    """RTT in seconds with the given median, p90 and p99 (seconds)."""

    median: float
    p90: float
    p99: float

    def __post_init__(self) -> None:
        if not (0.0 < self.median < self.p90 < self.p99):
            raise LLSimError(
                f"RTT quantiles must satisfy 0 < median < p90 < p99, got median={self.median * 1e3:g} ms, "
                f"p90={self.p90 * 1e3:g} ms, p99={self.p99 * 1e3:g} ms"
            )

    @classmethod
    def from_ms(cls, median: float, p90: float, p99: float) -> "RttDistribution":
        return cls(median / 1e3, p90 / 1e3, p99 / 1e3)

    @property
    def s1(self) -> float:
        return math.log(self.p90 / self.median) / Z90

    @property
    def s2(self) -> float:
        return math.log(self.p99 / self.p90) / (Z99 - Z90)

    def from_z(self, z: np.ndarray | float) -> np.ndarray | float:
        """The transform of a standard normal draw into an RTT (seconds)."""
        z = np.asarray(z, dtype=float)
        body = self.median * np.exp(self.s1 * np.minimum(z, Z90))
        tail = self.p90 * np.exp(self.s2 * (np.maximum(z, Z90) - Z90))
        out = np.where(z <= Z90, body, tail)
        return float(out) if out.ndim == 0 else out

    def sample(self, rng: np.random.Generator, size: int | None = None) -> np.ndarray | float:
        """Draw RTTs (seconds); exactly one normal draw per RTT, so streams stay reproducible."""
        return self.from_z(rng.standard_normal(size))

    def quantile(self, q: float) -> float:
        """RTT at probability ``q``; exact for 0.5, 0.9 and 0.99."""
        if not 0.0 < q < 1.0:
            raise ValueError("q must be in (0, 1)")
        lo, hi = -40.0, 40.0  # invert Phi by bisection (no scipy)
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if _phi(mid) < q:
                lo = mid
            else:
                hi = mid
        return self.from_z(0.5 * (lo + hi))

    def mean(self) -> float:
        """E[RTT] (seconds), closed form of the two lognormal pieces."""
        s1, s2 = self.s1, self.s2
        body = self.median * math.exp(0.5 * s1 * s1) * _phi(Z90 - s1)
        tail = self.p90 * math.exp(0.5 * s2 * s2 - s2 * Z90) * (1.0 - _phi(Z90 - s2))
        return body + tail
