"""One link model per network kind (llsim.network.links): the planner's separable prices come from
it without any simpy environment, and they are what the simulated network then takes for a lone
transfer (independent check: the simpy run of llsim.network.wifi.Network)."""
from __future__ import annotations

import numpy as np
import pytest
import simpy

from llsim.network import links as L
from llsim.network.planning import link_costs, make_network
from llsim.network.wifi import Network


def _configs(rng):
    quiet = {"power_save": {"enabled": False}, "rtt_sampling": "expected", "loss_rate": 0.0}
    yield {"kind": "fixed", "goodput_mbps": float(rng.uniform(5, 500)), "rtt_ms": float(rng.uniform(0.5, 20)),
           "ap_relay": bool(rng.integers(2))}
    std = str(rng.choice(["n", "ac", "ax"]))
    yield {"kind": "infrastructure", "standard": std, "width_mhz": 40 if std == "n" else 80, **quiet}
    yield {"kind": "wifi_direct", "ap_device": 0, **quiet}


def _stations(rng, n):
    return [L.StationSpec(f"p{i}", rssi_dbm=float(rng.uniform(-75, -35)), streams=int(rng.integers(1, 3)))
            for i in range(n)]


def test_every_kind_has_a_link_model():
    from llsim.network.config import NetworkConfig  # the schema's union of kinds
    import typing

    kinds = {a.model_fields["kind"].default for a in typing.get_args(typing.get_args(NetworkConfig)[0])}
    assert kinds == set(L.KINDS)


@pytest.mark.parametrize("seed", range(4))
def test_planning_needs_no_simpy_and_prices_a_lone_transfer_as_simulated(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 6))
    stations = _stations(rng, n)
    for cfg in _configs(rng):
        with monkeypatch.context() as m:  # planning must not build a simulation
            m.setattr(simpy.Environment, "__init__", lambda *a, **k: (_ for _ in ()).throw(AssertionError("simpy")))
            model = make_network(cfg, stations)
            costs = link_costs(model, 1)
        assert isinstance(model, L.KINDS[cfg["kind"]])
        src, dst = (int(x) for x in rng.choice(n, 2, replace=False))
        nbytes = int(rng.integers(1_000, 5_000_000))
        env = simpy.Environment()
        net = Network(env, cfg, stations, np.random.default_rng(0))
        ev = net.transfer(src, dst, nbytes)
        env.run()
        rec = ev.value
        # the separable form prices the lone transfer within its stated error (exact where every pair
        # sees the same contention: fixed, and infrastructure's two hops)
        sent = rec.duration - costs.one_way_s
        priced = costs.transfer_s(src, dst, nbytes) - costs.one_way_s
        assert abs(priced - sent) <= (costs.separable_error + 1e-9) * sent, cfg["kind"]
        if cfg["kind"] != "wifi_direct":
            assert costs.separable_error < 1e-12 and priced == pytest.approx(sent, rel=1e-9)
        assert net.expected_transfer_s(src, dst, nbytes) == pytest.approx(rec.duration, rel=1e-9)


def test_trace_kind_prices_from_its_trace(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("time_s,throughput_mbps,rtt_ms\n0,80,4\n10,40,8\n")
    model = make_network({"kind": "trace", "trace": str(p)}, [L.StationSpec("a"), L.StationSpec("b")])
    c = link_costs(model, 1)
    assert c.out[0] == pytest.approx(8.0 / 80e6) and c.one_way_s == pytest.approx(0.002)
