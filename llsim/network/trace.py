"""Measured network traces: CSV loading and exact integration of piecewise-constant throughput.

A trace CSV has a header line with (at least) the columns ``time_s``, ``throughput_mbps`` and
``rtt_ms``; further columns are ignored, blank lines and lines starting with ``#`` are skipped.
Row i's throughput and RTT hold on ``[time_s[i], time_s[i+1])``; ``time_s`` must be strictly
increasing and >= 0, throughput and RTT >= 0. Before the first row's time the first row applies.

After the last row the trace either **holds** the last row's values forever (``on_end="hold"``,
the default) or **loops** (``on_end="loop"``): the period is ``time_s[-1] - time_s[0]``, the last
row only marks the end of the period (its values are not used) and time
``time_s[0] + period`` maps back to row 0.

A transfer of B bits starting at t0 on a share ``f`` of the trace throughput ends at the first t
with ``integral_{t0}^{t} f * thr(u) du = B``; :meth:`Trace.finish_time` computes it exactly,
segment by segment (the simulator uses the same breakpoints, so both agree).
"""
from __future__ import annotations

import bisect
import csv
import math
from dataclasses import dataclass
from pathlib import Path

from llsim.errors import LLSimError

REQUIRED_COLUMNS = ("time_s", "throughput_mbps", "rtt_ms")
#: Tolerance (s) for deciding that a time is at a breakpoint.
EPS = 1e-9
#: Physical bounds of a row: rows at least 1 ms apart (a measured trace samples far slower; each
#: breakpoint is an event of the simulation), throughput up to 1 Tb/s, RTT up to a minute.
MIN_STEP_S = 1e-3
MAX_MBPS = 1e6
MAX_RTT_MS = 60_000.0


@dataclass(frozen=True)
class Trace:
    """A loaded trace; times in seconds, throughput in bit/s, RTT in seconds."""

    path: str
    times: tuple[float, ...]
    throughput_bps: tuple[float, ...]
    rtt_s: tuple[float, ...]
    on_end: str = "hold"

    def __post_init__(self) -> None:
        if self.on_end not in ("hold", "loop"):
            raise LLSimError(f"trace {self.path}: on_end must be 'hold' or 'loop', not {self.on_end!r}")
        if self.on_end == "loop":
            if len(self.times) < 2:
                raise LLSimError(f"trace {self.path}: looping needs at least two rows (the last one ends the period)")
            if not any(v > 0 for v in self.throughput_bps[:-1]):
                raise LLSimError(f"trace {self.path}: throughput is 0 over the whole loop: no transfer could finish")
        elif self.throughput_bps[-1] <= 0:
            raise LLSimError(
                f"trace {self.path}: the last row's throughput is 0 and the trace holds it (on_end: hold): "
                "a transfer still running then could never finish; end with a positive throughput or loop"
            )

    @property
    def period(self) -> float:
        return self.times[-1] - self.times[0]

    def _locate(self, t: float) -> tuple[int, float]:
        """(row in force at time ``t``, time that row's segment ends: ``inf`` if never).

        Times within :data:`EPS` before a breakpoint count as at it, so the row and the next
        breakpoint are always consistent despite float rounding in the looping arithmetic.
        """
        times = self.times
        t0 = times[0]
        if t < t0 - EPS:
            return 0, t0
        if self.on_end == "hold":
            i = max(bisect.bisect_right(times, t + EPS) - 1, 0)
            return i, (times[i + 1] if i + 1 < len(times) else math.inf)
        period = self.period
        base = t0 + math.floor((t - t0) / period) * period
        for _ in range(3):
            i = max(bisect.bisect_right(times, t - base + t0 + EPS) - 1, 0)
            if i < len(times) - 1:
                return i, base + (times[i + 1] - t0)
            base += period  # t is (within EPS of) the end of this period: next period's row 0
        raise AssertionError("unreachable")

    def throughput_at(self, t: float) -> float:
        """Throughput (bit/s) in force at time ``t``."""
        return self.throughput_bps[self._locate(t)[0]]

    def rtt_at(self, t: float) -> float:
        """RTT (s) in force at time ``t``."""
        return self.rtt_s[self._locate(t)[0]]

    def next_breakpoint(self, t: float) -> float:
        """End of the segment in force at ``t``: the next time the throughput may change (``inf`` if never)."""
        return self._locate(t)[1]

    def finish_time(self, t_start: float, bits: float, share: float = 1.0) -> float:
        """Time at which ``bits`` sent from ``t_start`` at ``share`` x throughput have all left."""
        if bits <= 0:
            return t_start
        t, left = t_start, float(bits)
        for _ in range(10_000_000):
            rate = share * self.throughput_at(t)
            nxt = self.next_breakpoint(t)
            if rate > 0 and t + left / rate <= nxt:
                return t + left / rate
            if nxt == math.inf:
                break
            left -= rate * (nxt - t)
            t = nxt
        raise LLSimError(f"trace {self.path}: a transfer of {bits:g} bits never finishes")


def _number(raw: str, path: Path, line: int, column: str) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise LLSimError(f"{path}: line {line}, column {column}: {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise LLSimError(f"{path}: line {line}, column {column}: {raw!r} is not a finite number")
    return value


def load_trace(path: str | Path, on_end: str = "hold") -> Trace:
    """Read a trace CSV (see the module docstring); errors name the file, line and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise LLSimError(f"network trace file not found: {path}") from None
    except UnicodeDecodeError:
        raise LLSimError(f"{path}: not a text CSV file (not UTF-8)") from None
    except OSError as exc:
        raise LLSimError(f"cannot read network trace {path}: {exc.strerror or exc}") from None
    lines = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise LLSimError(f"{path}: the trace is empty; expected a header with columns {', '.join(REQUIRED_COLUMNS)}")
    header_line, header_text = lines[0]
    header = [h.strip() for h in next(csv.reader([header_text]))]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise LLSimError(
            f"{path}: line {header_line}: missing column(s) {', '.join(missing)} in the header "
            f"(found: {', '.join(header)}); expected {', '.join(REQUIRED_COLUMNS)}"
        )
    idx = {c: header.index(c) for c in REQUIRED_COLUMNS}
    times: list[float] = []
    thr: list[float] = []
    rtt: list[float] = []
    for line_no, row_text in lines[1:]:
        row = next(csv.reader([row_text]))
        values = {}
        for col, j in idx.items():
            if j >= len(row) or not row[j].strip():
                raise LLSimError(f"{path}: line {line_no}, column {col}: value missing")
            values[col] = _number(row[j].strip(), path, line_no, col)
        t, mbps, rtt_ms = values["time_s"], values["throughput_mbps"], values["rtt_ms"]
        if t < 0:
            raise LLSimError(f"{path}: line {line_no}, column time_s: {t:g} is negative")
        if times and t <= times[-1]:
            raise LLSimError(
                f"{path}: line {line_no}, column time_s: {t:g} is not after the previous row's {times[-1]:g}; "
                "times must be strictly increasing"
            )
        if times and t - times[-1] < MIN_STEP_S:
            raise LLSimError(f"{path}: line {line_no}, column time_s: {t:g} is {t - times[-1]:.3g} s after the "
                             f"previous row; rows must be at least {MIN_STEP_S * 1e3:g} ms apart")
        if t > 1e9:
            raise LLSimError(f"{path}: line {line_no}, column time_s: {t:g} s is beyond 1e9 s")
        for col, v, hi in (("throughput_mbps", mbps, MAX_MBPS), ("rtt_ms", rtt_ms, MAX_RTT_MS)):
            if v < 0:
                raise LLSimError(f"{path}: line {line_no}, column {col}: {v:g} is negative")
            if v > hi:
                raise LLSimError(f"{path}: line {line_no}, column {col}: {v:g} is above {hi:g}")
        times.append(t)
        thr.append(mbps * 1e6)
        rtt.append(rtt_ms / 1e3)
    if not times:
        raise LLSimError(f"{path}: the trace has a header but no data rows")
    return Trace(str(path), tuple(times), tuple(thr), tuple(rtt), on_end)
