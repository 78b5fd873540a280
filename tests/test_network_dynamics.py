"""Run-time signal changes (:meth:`llsim.network.Network.set_rssi`) against independent expectations:
a fresh network built at the new RSSI, the untouched run, and hand-computed processor sharing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import simpy

from llsim.errors import LLSimError
from llsim.network import Network, StationSpec, contention_factor, mcs_rate_mbps

TRACES = Path(__file__).resolve().parent / "data" / "traces"

# Deterministic wireless config: mean RTT and expected losses instead of draws, no power save.
DET = {"rtt_sampling": "expected", "power_save": {"enabled": False},
       "rtt_ms": {"median": 2.0, "p90": 3.0, "p99": 4.0}, "tcp_goodput_factor": 0.65}
STRONG, WEAK = -45.0, -70.0  # 802.11ac 80 MHz, 2 streams: MCS9 (866.7 Mb/s) and MCS2 (195 Mb/s)
NBYTES = 8_000_000


def make(cfg, rssi=(STRONG,) * 4) -> Network:
    stations = [StationSpec(f"p{i}", rssi_dbm=r) for i, r in enumerate(rssi)]
    return Network(simpy.Environment(), cfg, stations, np.random.default_rng(0))


def run(net, jobs, changes=()):
    """jobs: (start, src, dst, nbytes); changes: (time, station, rssi) applied by a process.
    Returns the TransferRecords in job order."""
    env = net.env
    out = [None] * len(jobs)

    def job(i, t, s, d, b):
        yield env.timeout(t)
        out[i] = yield net.transfer(s, d, b)

    def change(t, station, rssi):
        yield env.timeout(t)
        net.set_rssi(station, rssi)

    for t, station, rssi in changes:
        env.process(change(t, station, rssi))
    for i, (t, s, d, b) in enumerate(jobs):
        env.process(job(i, t, s, d, b))
    env.run()
    return out


def hop_bps(mcs, n_tx=2):
    """Goodput of one 802.11ac 80 MHz 2-stream short-GI hop at ``mcs`` with ``n_tx`` transmitters."""
    c = contention_factor(n_tx, "ac", mcs, 80, 2, "short", False)
    return mcs_rate_mbps("ac", mcs, 80, 2, "short") * 1e6 * 0.65 * c


def test_phy_of_the_two_rssis():
    net = make(DET, (STRONG, WEAK))
    assert net.station_stats()[0]["mcs"] == 9 and net.station_stats()[1]["mcs"] == 2
    assert net.phy_rate_mbps(1) == pytest.approx(195.0)


# ---------------------------------------------------------------- (a) new transfers use the new rate
@pytest.mark.parametrize("src, dst", [(0, 1), (1, 0)])  # the weakened phone receives / sends
@pytest.mark.parametrize("t_change", [0.0, 0.5])
def test_transfer_after_weakening_equals_a_fresh_network_at_that_rssi(src, dst, t_change):
    net = make(DET)
    (rec,) = run(net, [(0.5, src, dst, NBYTES)], changes=[(t_change, 1, WEAK)])
    (fresh,) = run(make(DET, (STRONG, WEAK, STRONG, STRONG)), [(0.5, src, dst, NBYTES)])
    assert rec.duration == fresh.duration
    assert rec.transmit_s == fresh.transmit_s
    # and by hand: two hops (MCS9 and MCS2), transmitters {phone, AP}
    assert rec.transmit_s == pytest.approx(8 * NBYTES * (1 / hop_bps(9) + 1 / hop_bps(2)), rel=1e-9)
    (strong,) = run(make(DET), [(0.5, src, dst, NBYTES)])
    assert rec.duration > 1.5 * strong.duration
    assert net.rssi_dbm(1) == WEAK and net.rssi_dbm(0) == STRONG
    assert net.station_stats()[1]["mcs"] == 2 and net.phy_rate_mbps(1) == pytest.approx(195.0)


def test_analytic_helpers_follow_the_change():
    net = make(DET)
    before = net.expected_transfer_s(0, 1, NBYTES)
    net.set_rssi(1, WEAK)
    fresh = make(DET, (STRONG, WEAK, STRONG, STRONG))
    assert net.goodput_bps(0, 1) == fresh.goodput_bps(0, 1)
    assert net.expected_transfer_s(0, 1, NBYTES) == fresh.expected_transfer_s(0, 1, NBYTES) > before
    assert net.goodput_bps(2, 3) == fresh.goodput_bps(2, 3)  # other phones unaffected


def test_wifi_direct_relayed_and_direct_hops_follow_the_change():
    cfg = dict(DET, kind="wifi_direct", ap_device=0)
    jobs = [(0.5, 1, 2, NBYTES), (1.5, 2, 0, NBYTES), (2.5, 0, 2, NBYTES), (3.5, 3, 1, NBYTES)]
    recs = run(make(cfg), jobs, changes=[(0.1, 2, WEAK)])
    fresh = run(make(cfg, (STRONG, STRONG, WEAK, STRONG)), jobs)
    assert [r.duration for r in recs] == [r.duration for r in fresh]
    untouched = run(make(cfg), jobs)
    assert recs[3].duration == untouched[3].duration  # 3 -> 1 does not involve phone 2
    assert all(r.duration > u.duration for r, u in zip(recs[:3], untouched[:3]))


def test_wifi_direct_group_owner_change_is_a_no_op():
    cfg = dict(DET, kind="wifi_direct", ap_device=0)
    jobs = [(0.5, 1, 2, NBYTES), (1.5, 1, 0, NBYTES), (2.5, 0, 3, NBYTES)]
    net = make(cfg)
    assert net.rssi_dbm(0) is None and net.phy_rate_mbps(0) is None
    recs = run(net, jobs, changes=[(0.1, 0, WEAK), (0.2, 0, -95.0)])  # even "out of range": no own link
    assert [r.duration for r in recs] == [r.duration for r in run(make(cfg), jobs)]
    assert net.rssi_dbm(0) is None and net.phy_rate_mbps(0) is None


# ---------------------------------------------------------------- (b) in-flight transfers keep their rate
def test_transfer_in_flight_during_the_change_is_unaffected():
    jobs = [(0.0, 0, 1, NBYTES)]
    (rec,) = run(make(DET), jobs, changes=[(0.01, 1, WEAK), (0.02, 0, WEAK)])
    (untouched,) = run(make(DET), jobs)
    assert rec.duration == untouched.duration and rec.transmit_s == untouched.transmit_s


def test_in_flight_transfer_keeps_its_rates_when_shares_are_recomputed():
    # A: 0 -> 1 from 0 (started at MCS9 both hops); phone 1 weakens at t1; B: 2 -> 1 from t1
    # (MCS9 up, MCS2 down). While both run, transmitters {0, 2, AP}, each flow gets half the
    # airtime at its own per-byte airtime; A finishes alone at its old rates.
    t1 = 0.02
    a_alone = hop_bps(9) / 2 / 8  # bytes/s: two MCS9 hops, {0, AP}
    a_shared = 0.5 / (8 / hop_bps(9, 3) + 8 / hop_bps(9, 3))
    b_shared = 0.5 / (8 / hop_bps(9, 3) + 8 / hop_bps(2, 3))
    b_alone = 1 / (8 / hop_bps(9) + 8 / hop_bps(2))
    a_left = NBYTES - a_alone * t1
    b_size = 2_000_000
    if b_size / b_shared < a_left / a_shared:  # B finishes first
        t_b = t1 + b_size / b_shared
        t_a = t_b + (a_left - a_shared * (t_b - t1)) / a_alone
    else:
        t_a = t1 + a_left / a_shared
        t_b = t_a + (b_size - b_shared * (t_a - t1)) / b_alone
    net = make(DET)
    a, b = run(net, [(0.0, 0, 1, NBYTES), (t1, 2, 1, b_size)], changes=[(t1, 1, WEAK)])
    assert a.end - a.latency_s == pytest.approx(t_a, rel=1e-9)
    assert b.end - b.latency_s == pytest.approx(t_b, rel=1e-9)


def test_no_stale_rate_for_a_recycled_hops_tuple():
    # The rate caches are keyed by id() of a transfer's hops tuple. After each change the in-flight
    # transfers' old hops tuples get fresh cache entries when the shares are recomputed, and are
    # dropped when those transfers end; the next batch's new hops tuples (for the same number of
    # transmitters) must never pick those entries up, whatever addresses they are allocated at.
    # (Without the safeguard, CPython's tuple free list hands the old addresses out again.)
    pairs = [(s, d) for s in range(4) for d in range(4) if s != d]

    def batch(net, nbytes):
        return [net.transfer(s, d, nbytes + 1000 * k) for k, (s, d) in enumerate(pairs)]

    fresh = {}
    for rssi in (STRONG, WEAK):
        f = make(DET, (STRONG, rssi, STRONG, STRONG))
        evs = batch(f, 200_000)
        f.env.run()
        fresh[rssi] = [e.value.duration for e in evs]
    net = make(DET)
    env = net.env
    seen = []

    def proc():
        for i in range(20):
            new = WEAK if i % 2 == 0 else STRONG
            evs = batch(net, 400_000)  # at the old RSSI
            yield env.timeout(1e-4)
            net.set_rssi(1, new)
            yield env.all_of(evs)
            del evs
            yield env.timeout(0.01)
            evs = batch(net, 200_000)  # at the new one
            yield env.all_of(evs)
            seen.append(([e.value.duration for e in evs], fresh[new]))
            del evs
            yield env.timeout(0.01)

    env.process(proc())
    env.run()
    assert len(seen) == 20
    for got, want in seen:  # (start times differ from the fresh run's: float rounding of end - start)
        assert got == pytest.approx(want, rel=1e-9)


# ---------------------------------------------------------------- (c) out of range
def test_out_of_range_raises_naming_the_device_and_changes_nothing():
    net = make(DET)
    with pytest.raises(LLSimError, match=r"'p2'.*-95"):
        net.set_rssi(2, -95.0)
    assert net.rssi_dbm(2) == STRONG and net.station_stats()[2]["mcs"] == 9
    (rec,) = run(net, [(0.0, 0, 2, NBYTES)])
    (untouched,) = run(make(DET), [(0.0, 0, 2, NBYTES)])
    assert rec.duration == untouched.duration


def test_bad_station_index_or_nan():
    net = make(DET)
    with pytest.raises(ValueError):
        net.set_rssi(4, STRONG)
    with pytest.raises(ValueError):
        net.set_rssi(1, float("nan"))


# ---------------------------------------------------------------- (d) back to the original
def test_setting_the_rssi_back_restores_the_original_timing_exactly():
    net = make(DET)
    jobs = [(0.0, 0, 1, NBYTES), (1.0, 0, 1, NBYTES), (2.0, 0, 1, NBYTES)]
    first, weak, last = run(net, jobs, changes=[(0.5, 1, WEAK), (1.5, 1, STRONG)])
    untouched = run(make(DET), jobs)
    assert last.end == untouched[2].end and last.transmit_s == untouched[2].transmit_s
    assert first.end == untouched[0].end
    assert weak.duration > 1.5 * first.duration
    assert net.rssi_dbm(1) == STRONG and net.station_stats()[1]["mcs"] == 9


def test_same_mcs_change_keeps_the_timing():
    net = make(DET)
    jobs = [(0.0, 0, 1, NBYTES), (1.0, 0, 1, NBYTES)]
    recs = run(net, jobs, changes=[(0.5, 1, -46.0)])  # still >= -51 dBm: MCS9
    assert [r.end for r in recs] == [r.end for r in run(make(DET), jobs)]
    assert net.rssi_dbm(1) == -46.0 and net.station_stats()[1]["mcs"] == 9


# ---------------------------------------------------------------- (e) non-wireless kinds
def test_fixed_and_trace_networks_raise():
    fixed = Network(simpy.Environment(), {"kind": "fixed", "goodput_mbps": 100}, [StationSpec("a"), StationSpec("b")])
    trace = Network(simpy.Environment(), {"kind": "trace", "trace": str(TRACES / "sample_wifi.csv")},
                    [StationSpec("a"), StationSpec("b")])
    for net in (fixed, trace):
        with pytest.raises(LLSimError, match="set_rssi needs a wireless network"):
            net.set_rssi(0, -60.0)
        assert net.rssi_dbm(0) is None
