"""Tests of llsim.network against independent expectations (published tables, hand computations)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import simpy

from llsim.errors import LLSimError
from llsim.network.fluid import Flow, FluidMedium, Rates
from llsim.network.wifi import RTT_BLOCK
from llsim.network import (
    AP,
    Network,
    RttDistribution,
    StationSpec,
    contention_factor,
    load_trace,
    mcs_rate_mbps,
    parse_network_config,
    phy_rate_mbps,
    saturation_throughput,
    select_mcs,
    solve_tau,
)

TRACES = Path(__file__).resolve().parent / "data" / "traces"

# Wireless config with no power save and a narrow RTT, for timing checks.
QUIET = {"power_save": {"enabled": False}, "rtt_ms": {"median": 2.0, "p90": 3.0, "p99": 4.0}}


def phones(n, **kw):
    return [StationSpec(f"p{i}", **kw) for i in range(n)]


def run(net, jobs):
    """jobs: list of (start_time, src, dst, nbytes); returns the TransferRecords in job order."""
    env = net.env
    out = [None] * len(jobs)

    def job(i, t, s, d, b):
        yield env.timeout(t)
        out[i] = yield net.transfer(s, d, b, tag=f"j{i}")

    for i, (t, s, d, b) in enumerate(jobs):
        env.process(job(i, t, s, d, b))
    env.run()
    return out


def make(cfg, n=4, seed=0, **kw):
    return Network(simpy.Environment(), cfg, kw.pop("stations", None) or phones(n), np.random.default_rng(seed), **kw)


# ---------------------------------------------------------------- PHY
def test_phy_rate_spot_values():
    # Published 802.11 rates (the reference sheet; IEEE 802.11-2020 tables).
    assert mcs_rate_mbps("ac", 9, 80, 1, "short") == pytest.approx(433.3, abs=0.05)
    assert mcs_rate_mbps("ac", 9, 80, 2, "short") == pytest.approx(866.7, abs=0.05)
    assert mcs_rate_mbps("ax", 11, 80, 2, "short") == pytest.approx(1201, abs=0.5)
    assert mcs_rate_mbps("ax", 11, 20, 1) == pytest.approx(143.4, abs=0.05)  # ns-3 HeMcs11_20MHz
    assert mcs_rate_mbps("n", 7, 20, 1, "long") == pytest.approx(65.0)
    assert mcs_rate_mbps("n", 7, 20, 1, "short") == pytest.approx(72.2, abs=0.05)
    assert mcs_rate_mbps("ac", 9, 160, 2, "long") == pytest.approx(1560.0)
    assert mcs_rate_mbps("a", 7) == pytest.approx(54.0)


def test_mcs_selection_uses_width_adjusted_sensitivity():
    # 80 MHz = 20 MHz sensitivity + 6 dB: MCS9 needs -51 dBm, MCS8 -53 dBm.
    assert select_mcs(-51, "ac", 80, 2) == 9
    assert select_mcs(-52, "ac", 80, 2) == 8
    assert select_mcs(-55, "ac", 80, 2) == 7  # -64 + 6 = -58 <= -55 < -53
    # 20 MHz MCS9 does not exist for 1 or 2 streams in VHT; it does for 3.
    assert select_mcs(-40, "ac", 20, 1) == 8
    assert select_mcs(-40, "ac", 20, 3) == 9
    assert select_mcs(-40, "ax", 20, 1) == 11
    assert select_mcs(-53, "ax", 20, 1) == 10
    assert phy_rate_mbps(-82, "ac", 20, 1) == pytest.approx(52 * 0.5 / 3.6)  # MCS0 at the floor


def test_rssi_below_mcs0_is_an_error_naming_the_rssi():
    with pytest.raises(LLSimError, match="-83"):
        phy_rate_mbps(-83, "ac", 20, 1)
    with pytest.raises(LLSimError, match="-80"):
        phy_rate_mbps(-80, "ac", 40, 1)  # MCS0 at 40 MHz needs -79 dBm
    with pytest.raises(LLSimError, match="far"):
        make({}, stations=[StationSpec("near"), StationSpec("far", rssi_dbm=-90)])


# ---------------------------------------------------------------- MAC
def test_bianchi_fixed_point_is_solved():
    for n in (2, 5, 50):
        tau, p = solve_tau(n)
        assert p == pytest.approx(1 - (1 - tau) ** (n - 1), rel=1e-12)
        stages = sum((2 * p) ** i for i in range(6))
        assert tau == pytest.approx(2 / (1 + 16 + p * 16 * stages), rel=1e-9)
    assert solve_tau(1) == (2 / 17, 0.0)


@pytest.mark.parametrize("n, published", [(5, 29.29), (50, 22.42)])
def test_bianchi_80211a_matches_ns3_reference(n, published):
    ns3 = saturation_throughput(n, "a", 7, ns3_reference=True).throughput_mbps
    assert ns3 == pytest.approx(published, rel=0.002)
    plain = saturation_throughput(n, "a", 7).throughput_mbps
    assert plain == pytest.approx(published, rel=0.03)


@pytest.mark.parametrize("n, published", [(5, 41.81), (50, 32.22)])
def test_bianchi_80211ax_mcs11_matches_ns3_reference(n, published):
    ns3 = saturation_throughput(n, "ax", 11, 20, 1, ns3_reference=True).throughput_mbps
    assert ns3 == pytest.approx(published, rel=0.001)
    plain = saturation_throughput(n, "ax", 11, 20, 1).throughput_mbps
    assert plain == pytest.approx(published, rel=0.035)  # plain Bianchi: +3.2 % / +2.4 %


def test_bianchi_throughput_falls_with_contenders_and_efficiency_is_ratio():
    r5 = saturation_throughput(5, "a", 7)
    r50 = saturation_throughput(50, "a", 7)
    assert r50.throughput_mbps < r5.throughput_mbps
    assert r5.efficiency == pytest.approx(r5.throughput_mbps / 54.0)
    rts = saturation_throughput(50, "a", 7, rts_cts=True)
    assert rts.throughput_mbps < r50.throughput_mbps * 1.2  # sane, RTS/CTS path runs
    assert rts.p == pytest.approx(r50.p)  # the collision probability does not depend on frame timing


def test_contention_factor_is_monotone_and_at_most_one():
    key = ("ac", 7, 80, 2, "short", False)
    vals = [contention_factor(n, *key) for n in range(1, 30)]
    assert vals[0] == 1.0
    assert all(b <= a for a, b in zip(vals, vals[1:]))
    assert 0.6 < vals[-1] < 0.9


# ---------------------------------------------------------------- fixed kind
def test_fixed_single_transfer_is_bytes_over_goodput_plus_half_rtt():
    net = make({"kind": "fixed", "goodput_mbps": 40, "rtt_ms": 12})
    (rec,) = run(net, [(0.0, 0, 1, 5_000_000)])
    assert rec.end - rec.start == pytest.approx(5_000_000 * 8 / 40e6 + 0.006, rel=1e-12)
    assert net.expected_transfer_s(0, 1, 5_000_000) == pytest.approx(1.006)


def test_fixed_ap_relay_doubles_the_airtime_part():
    net = make({"kind": "fixed", "goodput_mbps": 40, "rtt_ms": 12, "ap_relay": True})
    (rec,) = run(net, [(0.0, 0, 1, 5_000_000)])
    assert rec.duration == pytest.approx(2 * 1.0 + 0.006, rel=1e-12)
    air = {row["index"]: row["airtime_s"] for row in net.station_stats()}
    assert air[0] == pytest.approx(1.0) and air[AP] == pytest.approx(1.0)


def test_fixed_unshared_concurrent_transfers_do_not_interfere():
    net = make({"kind": "fixed", "goodput_mbps": 8, "rtt_ms": 0})
    recs = run(net, [(0.0, 0, 1, 1_000_000), (0.0, 2, 3, 1_000_000)])
    assert [r.duration for r in recs] == pytest.approx([1.0, 1.0])


def test_fixed_shared_processor_sharing_by_hand():
    # 8 Mb/s = 1 MB/s. A: 3 MB at t=0; B: 1 MB at t=1.
    # [0,1) A alone: 1 MB done. [1,3) both at 0.5 MB/s: B's 1 MB done at t=3, A has 1 MB left.
    # [3,4) A alone: done at t=4. Plus rtt/2 = 5 ms.
    net = make({"kind": "fixed", "goodput_mbps": 8, "rtt_ms": 10, "shared": True})
    a, b = run(net, [(0.0, 0, 1, 3_000_000), (1.0, 2, 3, 1_000_000)])
    assert a.end == pytest.approx(4.005, abs=1e-9)
    assert b.end == pytest.approx(3.005, abs=1e-9)
    assert net.env.now == pytest.approx(4.005, abs=1e-9)  # no superseded timeout outlives the run
    # Equal concurrent transfers each take twice as long as one alone.
    net2 = make({"kind": "fixed", "goodput_mbps": 8, "rtt_ms": 0, "shared": True})
    recs = run(net2, [(0.0, 0, 1, 1_000_000), (0.0, 2, 3, 1_000_000)])
    assert [r.duration for r in recs] == pytest.approx([2.0, 2.0])


# ---------------------------------------------------------------- infrastructure / wifi_direct
def test_infrastructure_single_transfer_time():
    # -45 dBm at 80 MHz -> MCS9; 2 streams, short GI: 866.7 Mb/s each way. Two hops, one
    # transfer: transmitters {phone, AP} -> Bianchi factor c(2).
    cfg = dict(QUIET, tcp_goodput_factor=0.65)
    net = make(cfg, stations=phones(3, rssi_dbm=-45))
    nbytes = 20_000_000
    (rec,) = run(net, [(0.0, 0, 1, nbytes)])
    c2 = contention_factor(2, "ac", 9, 80, 2, "short", False)
    single_hop_bps = 866.6667e6 * 0.65 * c2
    expected_tx = nbytes * 8 * 2 / single_hop_bps
    assert rec.transmit_s == pytest.approx(expected_tx, rel=1e-4)
    assert rec.duration == pytest.approx(rec.transmit_s + rec.latency_s, rel=1e-12)
    assert 0.001 <= rec.latency_s <= 0.002 + 1e-12  # RTT/2 within the narrow config
    assert net.goodput_bps(0, 1) == pytest.approx(single_hop_bps / 2, rel=1e-4)


def test_infrastructure_two_concurrent_transfers_each_take_about_twice_as_long():
    net = make(QUIET)
    (alone,) = run(net, [(0.0, 0, 1, 10_000_000)])
    net = make(QUIET)
    a, b = run(net, [(0.0, 0, 1, 10_000_000), (0.0, 2, 3, 10_000_000)])
    assert a.transmit_s == pytest.approx(b.transmit_s, rel=1e-9)
    ratio = a.transmit_s / alone.transmit_s
    key = ("ac", 7, 80, 2, "short", False)  # default -55 dBm -> MCS7
    assert ratio == pytest.approx(2 * contention_factor(2, *key) / contention_factor(3, *key), rel=1e-6)
    assert 2.0 <= ratio < 2.1


def test_infrastructure_staggered_start_by_hand():
    # Phone 0 -> 1 (6 MB) starts at 0, phone 2 -> 3 (2 MB) at t1. Per-byte airtime of a 2-hop
    # transfer at rate R per hop with contention c: 2 * 8 / (R c).
    key = ("ac", 7, 80, 2, "short", False)
    c2, c3 = contention_factor(2, *key), contention_factor(3, *key)
    hop_bps = 650e6 * 0.65
    alone = hop_bps * c2 / 2 / 8  # bytes/s, transmitters {0, AP}
    shared = hop_bps * c3 / 2 / 8 / 2  # each of two, transmitters {0, 2, AP}
    big, small, t1 = 6_000_000, 2_000_000, 0.05
    left_big = big - alone * t1
    t_small_done = t1 + small / shared
    left_big -= shared * (t_small_done - t1)
    t_big_done = t_small_done + left_big / alone
    net = make(QUIET)
    a, b = run(net, [(0.0, 0, 1, big), (t1, 2, 3, small)])
    assert a.end - a.latency_s == pytest.approx(t_big_done, rel=1e-9)
    assert b.end - b.latency_s == pytest.approx(t_small_done, rel=1e-9)


def test_wifi_direct_double_hop_is_about_half_of_single_hop():
    cfg = dict(QUIET, kind="wifi_direct", ap_device=0)
    net = make(cfg)
    (to_ap,) = run(net, [(0.0, 1, 0, 10_000_000)])
    net = make(cfg)
    (relayed,) = run(net, [(0.0, 1, 2, 10_000_000)])
    ratio = to_ap.transmit_s / relayed.transmit_s
    assert 0.45 <= ratio <= 0.5
    assert net.goodput_bps(1, 2) / net.goodput_bps(1, 0) == pytest.approx(ratio, rel=1e-6)
    # The hotspot phone transmitted the relayed hop.
    air = {row["index"]: row["airtime_s"] for row in net.station_stats()}
    assert air[0] == pytest.approx(air[1], rel=0.05) and air[0] > 0


def test_wifi_direct_ap_device_out_of_range():
    with pytest.raises(LLSimError, match="ap_device"):
        make({"kind": "wifi_direct", "ap_device": 7}, n=3)


def test_simulated_mean_matches_analytic_expectation():
    cfg = {"power_save": {"enabled": False}, "rtt_ms": {"median": 5, "p90": 8, "p99": 12},
           "loss_rate": 0.002, "retransmit_delay_ms": 20}
    net = make(cfg, seed=3)
    env = net.env
    durations = []

    def seq():
        for _ in range(2000):
            rec = yield net.transfer(0, 1, 1_000_000)
            durations.append(rec.duration)

    env.process(seq())
    env.run()
    expected = net.expected_transfer_s(0, 1, 1_000_000)
    assert np.mean(durations) == pytest.approx(expected, rel=0.01)
    # Without the RTT and loss parts the transmission time is exactly deterministic.
    stats = net.link_stats()[0]
    assert stats["transfers"] == 2000 and stats["bytes"] == 2_000_000_000


def test_power_save_wake_delay_only_after_idle_timeout():
    cfg = {"rtt_ms": {"median": 2, "p90": 3, "p99": 4},
           "power_save": {"enabled": True, "idle_timeout_ms": 200, "wake_delay_ms": 50}}
    net = make(cfg)
    # 0 -> 1 at t=0.1 (1 idle for 0.1 s: awake); 0 -> 2 at t=0.5 (2 idle for 0.5 s: dozing).
    a, b = run(net, [(0.1, 0, 1, 1000), (0.5, 0, 2, 1000)])
    assert a.wake_s == 0.0
    assert b.wake_s == pytest.approx(0.05)
    net = make(dict(cfg, kind="wifi_direct", ap_device=0))
    (c,) = run(net, [(1.0, 1, 0, 1000)])
    assert c.wake_s == 0.0  # the hotspot never dozes
    assert net.expected_transfer_s(0, 1, 1000, include_wake=True) - net.expected_transfer_s(0, 1, 1000) == pytest.approx(0.05)


def test_loss_adds_retransmit_delays():
    cfg = dict(QUIET, loss_rate=0.05, retransmit_delay_ms=100, packet_bytes=1000)
    net = make(cfg, seed=1)
    (rec,) = run(net, [(0.0, 0, 1, 1_000_000)])
    assert rec.retransmits > 0
    assert rec.retransmit_s == pytest.approx(rec.retransmits * 0.1)
    assert rec.duration == pytest.approx(rec.transmit_s + rec.latency_s + rec.retransmit_s, rel=1e-9)
    assert 20 <= rec.retransmits <= 80  # Binomial(1000, 0.05): mean 50, sd 6.9


# ---------------------------------------------------------------- RTT distribution
def test_rtt_quantiles_match_config():
    dist = RttDistribution.from_ms(3, 20, 250)  # WiFiSeer
    x = dist.sample(np.random.default_rng(42), 200_000)
    med, p90, p99 = np.quantile(x, [0.5, 0.9, 0.99])
    assert med == pytest.approx(0.003, rel=0.03)
    assert p90 == pytest.approx(0.020, rel=0.03)
    assert p99 == pytest.approx(0.250, rel=0.06)  # 3 standard errors of a p99 estimate
    assert dist.quantile(0.99) == pytest.approx(0.250)
    narrow = RttDistribution.from_ms(5, 8, 12)
    y = narrow.sample(np.random.default_rng(7), 200_000)
    assert np.mean(y) == pytest.approx(narrow.mean(), rel=0.005)


def test_rtt_sampling_is_seeded():
    def times(seed):
        net = make({"rtt_ms": {"median": 3, "p90": 20, "p99": 250}}, seed=seed)
        return [r.end for r in run(net, [(0.01 * i, i % 4, (i + 1) % 4, 100_000) for i in range(20)])]

    assert times(5) == times(5)
    assert times(5) != times(6)


def test_rtt_quantiles_must_be_ordered():
    with pytest.raises(LLSimError, match="rtt_ms"):
        parse_network_config({"rtt_ms": {"median": 30, "p90": 20, "p99": 250}})
    with pytest.raises(LLSimError):
        RttDistribution(0.01, 0.005, 0.1)


# ---------------------------------------------------------------- trace kind
def write(tmp_path, text, name="t.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_trace_transfer_across_a_throughput_step(tmp_path):
    # 8 Mb/s (1 MB/s) until t=2, then 16 Mb/s. 3 MB from t=0: 2 MB by t=2, 1 MB at 2 MB/s -> 2.5 s;
    # latency = RTT at the start (10 ms) / 2.
    write(tmp_path, "time_s,throughput_mbps,rtt_ms\n0,8,10\n2,16,20\n")
    net = make({"kind": "trace", "trace": "t.csv"}, base_dir=tmp_path)
    (rec,) = run(net, [(0.0, 0, 1, 3_000_000)])
    assert rec.end == pytest.approx(2.505, abs=1e-9)
    assert net.expected_transfer_s(0, 1, 3_000_000) == pytest.approx(2.505, abs=1e-9)
    (late,) = run(net, [(0.0, 1, 0, 1_000_000)])  # starts at t=2.505: 16 Mb/s, RTT 20 ms
    assert late.duration == pytest.approx(0.5 + 0.01, abs=1e-9)


def test_trace_loops_and_shares(tmp_path):
    # Period 2 s: 8 Mb/s on [0,1), nothing on [1,2). 2 MB from t=0.5: 0.5 MB by 1, 1 MB on [2,3),
    # 0.5 MB on [4,4.5).
    write(tmp_path, "time_s,throughput_mbps,rtt_ms\n0,8,0\n1,0,0\n2,99,0\n")
    net = make({"kind": "trace", "trace": str(tmp_path / "t.csv"), "on_end": "loop"})
    (rec,) = run(net, [(0.5, 0, 1, 2_000_000)])
    assert rec.end == pytest.approx(4.5, abs=1e-9)
    # Shared: two 0.5 MB transfers from t=0 split 1 MB/s -> both done at t=1.
    net = make({"kind": "trace", "trace": str(tmp_path / "t.csv"), "on_end": "loop", "shared": True})
    recs = run(net, [(0.0, 0, 1, 500_000), (0.0, 2, 3, 500_000)])
    assert [r.end for r in recs] == pytest.approx([1.0, 1.0], abs=1e-9)


def test_sample_trace_relative_to_base_dir():
    net = make({"kind": "trace", "trace": "sample_wifi.csv"}, base_dir=TRACES)
    # 80 Mb/s (10 MB/s) on [0,2), 160 on [2,3), 40 on [3,5), 120 after: 35 MB from t=0 ->
    # 20 MB by 2, 20 MB by 3 -> done at 2 + 15/20 = 2.75; + 10 ms / 2.
    (rec,) = run(net, [(0.0, 0, 1, 35_000_000)])
    assert rec.end == pytest.approx(2.755, abs=1e-9)
    trace = load_trace(TRACES / "sample_wifi.csv")
    assert trace.throughput_at(100.0) == 120e6  # holds the last row


@pytest.mark.parametrize(
    "text, match",
    [
        ("time_s,throughput_mbps\n0,8\n", r"line 1.*missing column.*rtt_ms"),
        ("time_s,throughput_mbps,rtt_ms\n0,8,1\n1,-3,1\n", r"line 3, column throughput_mbps.*negative"),
        ("time_s,throughput_mbps,rtt_ms\n0,8,1\n2,8,1\n1,8,1\n", r"line 4, column time_s.*increasing"),
        ("time_s,throughput_mbps,rtt_ms\n0,fast,1\n", r"line 2, column throughput_mbps.*not a number"),
        ("time_s,throughput_mbps,rtt_ms\n", r"no data rows"),
        ("time_s,throughput_mbps,rtt_ms\n0,8,1\n1,0,1\n", r"last row's throughput is 0"),
    ],
)
def test_bad_trace_csv_names_file_line_and_column(tmp_path, text, match):
    write(tmp_path, text, "bad_trace.csv")
    with pytest.raises(LLSimError, match=match) as err:
        make({"kind": "trace", "trace": "bad_trace.csv"}, base_dir=tmp_path)
    assert "bad_trace.csv" in str(err.value)


def test_missing_trace_file(tmp_path):
    with pytest.raises(LLSimError, match="nope.csv"):
        make({"kind": "trace", "trace": "nope.csv"}, base_dir=tmp_path)


# ---------------------------------------------------------------- config
@pytest.mark.parametrize(
    "data, match",
    [
        ({"widht_mhz": 80}, r"network\.widht_mhz: unknown key"),
        ({"power_save": {"enabeld": True}}, r"network\.power_save\.enabeld: unknown key"),
        ({"kind": "fixed", "goodput_mbps": 10, "loss_rate": 0.1}, r"network\.loss_rate: unknown key"),
        ({"kind": "fixed"}, r"network\.goodput_mbps"),
        ({"kind": "wifi-direct"}, r"network\.kind"),
        ({"standard": "n", "width_mhz": 80}, r"802\.11n"),
        ({"tcp_goodput_factor": 1.5}, r"tcp_goodput_factor"),
    ],
)
def test_config_errors_are_rejected(data, match):
    with pytest.raises(LLSimError, match=match):
        parse_network_config(data)


def test_config_defaults():
    cfg = parse_network_config(None)
    assert cfg.kind == "infrastructure" and cfg.standard == "ac" and cfg.width_mhz == 80
    assert cfg.tcp_goodput_factor == 0.65
    assert (cfg.rtt_ms.median, cfg.rtt_ms.p90, cfg.rtt_ms.p99) == (3.0, 20.0, 250.0)
    assert cfg.power_save.idle_timeout_ms == 200.0


# ---------------------------------------------------------------- accounting
def test_accounting_and_callback():
    seen = []
    net = make(QUIET, on_transfer=seen.append)
    recs = run(net, [(0.0, 0, 1, 1_000_000), (0.0, 0, 1, 2_000_000), (0.0, 2, 3, 500_000), (0.1, 1, 1, 10)])
    assert {r.tag for r in seen} == {"j0", "j1", "j2"}  # the local 1->1 transfer is not a network transfer
    assert recs[3].duration == 0.0
    links = {(row["src"], row["dst"]): row for row in net.link_stats()}
    assert links[(0, 1)]["bytes"] == 3_000_000 and links[(0, 1)]["transfers"] == 2
    assert links[(0, 1)]["total_time_s"] == pytest.approx(recs[0].duration + recs[1].duration)
    stations = {row["index"]: row for row in net.station_stats()}
    assert stations[0]["bytes_sent"] == 3_000_000 and stations[1]["bytes_received"] == 3_000_000
    assert stations[3]["bytes_received"] == 500_000
    total_air = sum(row["airtime_s"] for row in net.station_stats())
    assert total_air == pytest.approx(sum(r.airtime_s for r in recs))
    # One medium: the airtime shares of concurrent transfers never exceed the elapsed time.
    assert total_air <= max(r.end for r in recs) + 1e-9
    assert all(set(r.as_dict()) >= {"src", "dst", "nbytes", "start", "end", "tag"} for r in seen)



# ---------------------------------------------------------------- engine internals (speed work)
def test_rtt_draws_are_the_distributions_samples_bit_for_bit():
    # transfer() takes its RTTs from blocks of RTT_BLOCK draws; they must be the same bits as
    # sample() on a replica of the stream, in transfer order, across block boundaries.
    cfg = {"power_save": {"enabled": False}, "rtt_ms": {"median": 3, "p90": 20, "p99": 250}}
    net = make(cfg, seed=11)
    n = 2 * RTT_BLOCK + 17
    recs = run(net, [(0.001 * i, i % 4, (i + 1) % 4, 10_000) for i in range(n)])
    dist = RttDistribution.from_ms(3, 20, 250)
    replica = np.random.default_rng(11)
    expected = np.concatenate([0.5 * dist.sample(replica, RTT_BLOCK) for _ in range(3)])[:n].tolist()
    assert [r.latency_s for r in recs] == expected  # exact, not approx
    assert any(r.latency_s > 0.5 * dist.p90 for r in recs)  # both branches of the splice were drawn


def _ps_reference(capacity_Bps, jobs):
    """Independent processor-sharing reference: jobs (start, bytes) share capacity equally; returns finish times."""
    t, left, active, done = 0.0, {}, set(), {}
    events = sorted((s, i) for i, (s, b) in enumerate(jobs))
    k = 0
    while k < len(events) or active:
        nxt_arr = events[k][0] if k < len(events) else float("inf")
        if active:
            rate = capacity_Bps / len(active)
            i_min = min(active, key=lambda i: left[i])
            nxt_fin = t + left[i_min] / rate
        else:
            nxt_fin = float("inf")
        t_new = min(nxt_arr, nxt_fin)
        if active:
            for i in active:
                left[i] -= rate * (t_new - t)
        t = t_new
        for i in [i for i in active if left[i] <= 1e-6]:
            active.discard(i)
            done[i] = t
        while k < len(events) and events[k][0] <= t:
            _, i = events[k]
            active.add(i)
            left[i] = float(jobs[i][1])
            k += 1
    return [done[i] for i in range(len(jobs))]


def test_shared_medium_matches_an_independent_processor_sharing_reference():
    rng = np.random.default_rng(5)
    jobs = [(float(round(s, 3)), int(b)) for s, b in zip(np.sort(rng.uniform(0, 2, 40)), rng.integers(1, 400_000, 40))]
    jobs[3] = (jobs[2][0], jobs[3][1])  # two submissions at the same instant
    net = make({"kind": "fixed", "goodput_mbps": 8, "rtt_ms": 0, "shared": True})  # 1 MB/s
    recs = run(net, [(s, i % 4, (i + 1) % 4, b) for i, (s, b) in enumerate(jobs)])
    ref = _ps_reference(1e6, jobs)
    assert [r.end for r in recs] == pytest.approx(ref, rel=1e-9, abs=1e-9)
    assert net.env.now == pytest.approx(max(ref), abs=1e-9)  # no superseded timer outlives the medium
    air = sum(r.airtime_s for r in recs)
    assert air == pytest.approx(sum(b for _, b in jobs) / 1e6, rel=1e-9)  # busy exactly while bytes flow


def test_fluid_medium_with_plain_flows_matches_the_reference_plus_delay():
    # The medium on its own: plain Flow events, a rate function for a 1 MB/s shared capacity, a
    # delivery delay per flow, an empty flow; the same with each flow's `alone` rates given (the
    # medium then skips the rate function when a flow is alone): the same times either way.
    rng = np.random.default_rng(9)
    jobs = [(float(round(s, 3)), int(b)) for s, b in zip(np.sort(rng.uniform(0, 2, 30)), rng.integers(1, 300_000, 30))]
    jobs[5] = (jobs[4][0], 0)  # an empty flow, submitted with another one
    delays = [0.001 * (i % 3) for i in range(len(jobs))]

    def capacity(flows, now):
        f = len(flows)
        return Rates.of([(1e6 / f, 1.0 / f, ((0, 1.0),))] * f)

    def simulate_medium(with_alone):
        env = simpy.Environment()
        calls = []

        def rate_fn(flows, now):
            calls.append(len(flows))
            return capacity(flows, now)
        medium = FluidMedium(env, rate_fn)
        ends = [None] * len(jobs)

        def job(i, t, b):
            yield env.timeout(t)
            flow = Flow(env, b, hops=(0,), delay=delays[i], alone=capacity([None], 0) if with_alone else None)
            medium.submit(flow)
            yield flow
            ends[i] = (env.now, flow.t_out)
        for i, (t, b) in enumerate(jobs):
            env.process(job(i, t, b))
        env.run()
        return ends, calls, medium.tx_airtime[0]

    ends, calls, air = simulate_medium(False)
    ref = _ps_reference(1e6, jobs)
    assert [t_out for _, t_out in ends] == pytest.approx(ref, rel=1e-9, abs=1e-9)
    assert [end - t_out for end, t_out in ends] == pytest.approx(delays, abs=1e-12)
    assert ends[5][1] == jobs[5][0]  # the empty flow is sent at once
    assert air == pytest.approx(sum(b for _, b in jobs) / 1e6, rel=1e-9)
    ends2, calls2, air2 = simulate_medium(True)
    assert ends2 == ends and air2 == pytest.approx(air, rel=1e-12)
    assert 1 in calls and 1 not in calls2 and len(calls2) < len(calls)


def test_send_is_transfer_without_the_record():
    cfg = dict(QUIET, loss_rate=0.01, packet_bytes=1000)
    a, b = make(cfg, seed=4), make(cfg, seed=4)
    got = {}

    def jobs(net, fn, key):
        env = net.env

        def one(i):
            yield env.timeout(0.01 * i)
            v = yield fn(net)(i % 4, (i + 2) % 4, 200_000 + i)
            got.setdefault(key, []).append((env.now, v))

        for i in range(12):
            env.process(one(i))
        env.run()

    jobs(a, lambda n: n.transfer, "transfer")
    jobs(b, lambda n: n.send, "send")
    assert [t for t, _ in got["transfer"]] == [t for t, _ in got["send"]]
    assert all(v is None for _, v in got["send"]) and all(v.end == t for t, v in got["transfer"])
    assert a.link_stats() == b.link_stats() and a.station_stats() == b.station_stats()


def test_zero_byte_and_local_transfers_complete():
    net = make(QUIET)
    zero, local = run(net, [(0.5, 0, 1, 0), (0.5, 2, 2, 123)])
    assert zero.transmit_s == 0.0 and zero.end == pytest.approx(0.5 + zero.latency_s)
    assert local.duration == 0.0 and local.hops == 0


def test_transfers_are_freed_without_the_cycle_collector():
    import gc
    import weakref

    net = make(QUIET)
    env = net.env
    refs = []

    def proc():
        for i in range(5):
            ev = net.send(0, 1, 50_000)
            refs.append(weakref.ref(ev))
            yield ev

    env.process(proc())
    gc.disable()
    try:
        env.run()
        assert all(r() is None for r in refs)  # reference counting alone freed every transfer
    finally:
        gc.enable()


def test_fast_transfer_record_is_a_transfer_record():
    import inspect
    from dataclasses import fields

    from llsim.network.wifi import TransferRecord, _record

    assert [f.name for f in fields(TransferRecord)] == list(inspect.signature(_record).parameters)
    args = (1, 2, 300, 0.5, 0.75, "t", 2, 0.0, 0.1, 0.05, 0.01, 0, 0.0)
    fast, slow = _record(*args), TransferRecord(*args)
    assert fast == slow and hash(fast) == hash(slow) and fast.as_dict() == slow.as_dict()
    with pytest.raises(AttributeError):
        fast.src = 3  # still frozen
