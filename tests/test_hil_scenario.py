"""Scenarios with real nodes (``backend: local``): the simulator drives real onnxruntime workers.

Independent expectation: onnxruntime's greedy generation with the whole model (``greedy_reference``)
gives the token ids each request must get, whatever the mix of real and simulated nodes, the cut,
the mode, the concurrency, and whether a worker was lost on the way. Cuts and prompts are drawn
from seeds (3 stages at random boundaries)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hil_helpers import pid_gone, wait_gone, workers_of
from llsim.cluster import expand_devices
from llsim.errors import LLSimError
from llsim.hil.runner import greedy_reference
from llsim.judge.hil import HilRuntime, add_measured_sessions, draw_prompts
from llsim.judge.run import make_plan, run_to_dir
from llsim.model.builder import build_model
from llsim.model.zoo import get_config
from llsim.scenario import Scenario
from llsim.sim.engine import Simulation

ROOT = Path(__file__).resolve().parents[1]
PHONES = ["snapdragon-8gen2", "kirin-990", "tensor-g3"]
_REFS: dict = {}
_MODELS: dict = {}


def scenario(model: str, mode: str, backends: list[str], seed: int, *, requests=3, concurrency=2, new=6,
             prompt=5, balancer=None, events=(), stages=None, network=None) -> Scenario:
    cfg = get_config(model)
    n_mod = cfg.layers + 2
    rng = np.random.default_rng(zlib.crc32(f"{model}{mode}{backends}{seed}".encode()))
    if stages is None:
        k = len(backends)
        cut = [0] + sorted(rng.choice(np.arange(1, n_mod), size=k - 1, replace=False).tolist()) + [n_mod]
        order = rng.permutation(k).tolist()
        stages = [{"device": order[i], "start_module": cut[i], "end_module": cut[i + 1] - 1} for i in range(k)]
    devices = [{"profile": "host", "threads": 1, "backend": "local"} if b == "local" else
               {"profile": PHONES[i % len(PHONES)], "threads": 4} for i, b in enumerate(backends)]
    doc = {"name": "hil-test", "model": model, "seed": seed, "devices": devices,
           "network": network or {"kind": "infrastructure", "standard": "ac", "width_mhz": 80},
           "allocation": {"strategy": "explicit", "stages": stages},
           "workload": {"prompt_tokens": prompt, "new_tokens": new, "requests": requests,
                        "concurrency": concurrency, "mode": mode},
           "balancer": balancer or {"enabled": False}, "events": list(events)}
    return Scenario.model_validate(doc)


def reference(sc: Scenario) -> dict[int, list[int]]:
    cfg = get_config(sc.model)
    kv = sc.workload.mode == "kv_cache"
    out = {}
    for r, p in enumerate(draw_prompts(sc, cfg.vocab)):
        key = (sc.model, kv, tuple(p), sc.workload.new_tokens)
        if key not in _REFS:
            if (sc.model, kv) not in _MODELS:  # built once: the builder is seeded, the weights are the run's
                import onnxruntime as ort

                proto = build_model(cfg, kv_cache=kv)
                so = ort.SessionOptions()
                so.log_severity_level = 3
                so.intra_op_num_threads = 1
                _MODELS[(sc.model, kv)] = (proto, ort.InferenceSession(proto.SerializeToString(), so,
                                                                       providers=["CPUExecutionProvider"]))
            proto, sess = _MODELS[(sc.model, kv)]
            _REFS[key] = greedy_reference(proto, p, sc.workload.new_tokens, session=sess)
        out[r] = _REFS[key]
    return out


def check_tokens(tokens: pd.DataFrame | list[dict], sc: Scenario) -> None:
    t = pd.DataFrame(tokens)
    c = Counter(zip(t["request"], t["token"]))
    w = sc.workload
    assert set(c) == {(r, i) for r in range(w.requests) for i in range(w.new_tokens)}, "a token is missing"
    assert max(c.values()) == 1, "a token was recorded twice"
    got = {r: g.sort_values("token")["token_id"].tolist() for r, g in t.groupby("request")}
    assert got == reference(sc)


def worker_pids(hil_json: dict) -> list[int]:
    return [w["pid"] for w in hil_json["workers"]]


def _cases():
    """Every tiny family in all four (mode, layout) combinations; the small ones in two (slow)."""
    out = []
    for f in ("bloom", "gpt2", "llama"):
        for mode in ("kv_cache", "recompute"):
            for layout in ("all-real", "mixed"):
                out.append(pytest.param(f"tiny-{f}", mode, layout, id=f"tiny-{f}-{mode}-{layout}"))
        for mode, layout in (("kv_cache", "mixed"), ("recompute", "all-real")):
            out.append(pytest.param(f"small-{f}", mode, layout, id=f"small-{f}-{mode}-{layout}",
                                    marks=[pytest.mark.slow]))
    return out


@pytest.mark.parametrize("model, mode, layout", _cases())
def test_a_scenarios_tokens_are_the_whole_models(model, mode, layout, tmp_path):
    backends = ["local"] * 3 if layout == "all-real" else ["sim", "local", "sim"]
    sc = scenario(model, mode, backends, seed=len(model) + len(layout))
    res, devices, plan = run_to_dir(sc, tmp_path / "run")
    assert res.metrics["stop_reason"] == "completed", res.metrics
    tokens = pd.read_csv(tmp_path / "run" / "tokens.csv")
    check_tokens(tokens, sc)
    import json

    info = json.loads((tmp_path / "run" / "hil.json").read_text())
    assert wait_gone(worker_pids(info)) == [], "a worker outlived the run"
    fid = pd.read_csv(tmp_path / "run" / "fidelity.csv")
    comp = fid[fid["what"] == "compute"]
    real = {d.name for d in devices if d.backend == "local"}
    assert set(comp["device"]) == real  # one row group per real device, none for simulated ones
    kinds = {"prefill", "decode"} if mode == "kv_cache" else {"prefill", "recompute"}
    assert set(comp["kind"]) == kinds
    assert (comp["measured_ms"] > 0).all() and (comp["predicted_ms"] > 0).all()
    # the simulation took the workers' measured compute: real devices' busy time is the sum of it
    busy = pd.read_csv(tmp_path / "run" / "devices.csv").set_index("name")["busy_s"]
    for name in real:
        rows = comp[comp["device"] == name]
        assert busy[name] == pytest.approx((rows["measured_ms"] * rows["n"]).sum() / 1e3, rel=1e-6)


@pytest.mark.parametrize("model, mode, layout", [("tiny-llama", "kv_cache", "all-real"),
                                                 ("tiny-bloom", "recompute", "mixed")])
def test_the_realtime_clock_paces_the_simulation_and_keeps_the_tokens_exact(model, mode, layout, tmp_path):
    backends = ["local"] * 3 if layout == "all-real" else ["sim", "local", "local"]
    sc = scenario(model, mode, backends, seed=7, requests=3, new=6)
    sc = sc.model_copy(update={"hil": sc.hil.model_copy(update={"clock": "realtime"})})
    res, devices, _ = run_to_dir(sc, tmp_path / "run")
    m = res.metrics
    assert m["stop_reason"] == "completed", m.get("error")
    check_tokens(res.tokens, sc)
    assert m["sim_time_s"] <= m["wall_time_s"] + 0.01  # simulated time never runs ahead of the wall clock
    assert m["sim_time_s"] >= 0.5 * m["wall_time_s"] - 0.05  # ... and follows it
    assert m["realtime_lag_max_ms"] >= m["realtime_lag_mean_ms"] >= 0
    fid = pd.read_csv(tmp_path / "run" / "fidelity.csv")
    assert (fid[fid["what"] == "compute"]["measured_ms"] > 0).all()


def test_all_simulated_with_real_tensors_gives_the_same_tokens_and_the_same_times(tmp_path):
    """hil.tensors on an all-simulated scenario: the whole model's tokens, and exactly the simulated
    run's timing (the data plane only adds the data)."""
    sc = scenario("tiny-llama", "kv_cache", ["sim", "sim", "sim"], seed=5)
    plain, _, _ = run_to_dir(sc, tmp_path / "plain")
    sc_t = sc.model_copy(update={"hil": sc.hil.model_copy(update={"tensors": True})})
    real, _, _ = run_to_dir(sc_t, tmp_path / "tensors")
    check_tokens(real.tokens, sc_t)
    assert [(t["request"], t["token"], t["time_s"]) for t in real.tokens] == \
           [(t["request"], t["token"], t["time_s"]) for t in plain.tokens]


@pytest.mark.parametrize("how, clock", [("killed", "virtual"), ("stopped", "virtual"), ("killed", "realtime")])
def test_a_worker_lost_mid_run_fails_over_and_every_token_is_exact_and_once(how, clock, tmp_path):
    """Three real workers, the balancer on; the middle stage's worker is SIGKILLed (or SIGSTOPped: it
    stops answering) after a few stages: the run fails over to the survivors and completes."""
    sc = scenario("tiny-gpt2", "kv_cache", ["local"] * 3, seed=11, requests=4, new=8,
                  balancer={"enabled": True, "heartbeat_s": 0.05, "heartbeat_misses": 3, "interval_s": 0.05,
                            "strategy": "milp"},
                  stages=[{"device": 0, "start_module": 0, "end_module": 1},
                          {"device": 1, "start_module": 2, "end_module": 3},
                          {"device": 2, "start_module": 4, "end_module": 4}])
    sc = sc.model_copy(update={"hil": sc.hil.model_copy(update={"heartbeat_s": 0.1, "deadline_floor_s": 2.0,
                                                                "clock": clock})})
    devices = expand_devices(sc)
    plan = make_plan(sc, devices)
    victim = {}
    with HilRuntime(sc, devices) as rt:
        pids = [p for st in rt.started for p in st.pids.values()]

        def hook(run):
            if not victim and run.request == 1 and run.step == 3 and run.stage == 0:
                victim["pid"] = rt.started[0].pids[1]
                rt.kill(1, signal.SIGKILL if how == "killed" else signal.SIGSTOP)

        rt.plane.on_stage = hook
        t0 = time.monotonic()
        res = Simulation(sc, devices, plan, timeline=False, hil=rt.nodes, clock=rt.clock).run()
        took = time.monotonic() - t0
        lost = list(rt.nodes.lost)
        add_measured_sessions(rt, res)
    if how == "stopped":
        os.kill(victim["pid"], signal.SIGKILL) if not pid_gone(victim["pid"]) else None
    assert wait_gone(pids) == []
    assert victim, "the hook never ran"
    assert res.metrics["stop_reason"] == "completed", (res.metrics.get("error"), lost)
    assert [x["device"] for x in lost] == [1]
    from llsim.sim.dynamics import taken

    fo = [r for r in taken(res.rebalances) if r["kind"] == "failover"]
    assert fo and all(r["measured_session_s"] > 0 for r in fo)  # the survivors really loaded the new cut
    assert all(1 not in [s["device"] for s in p["stages"]] for p in res.metrics["plans"][1:])
    check_tokens(res.tokens, sc)
    assert took < 30, f"the coordinator took {took:.1f} s"


@pytest.mark.parametrize("edit, message", [
    ({"events": [{"kind": "throttle", "at": 1, "device": 1, "factor": 0.5}]}, "a simulated dynamic"),
    ({"events": [{"kind": "noise", "sigma": 0.1}]}, "a simulated dynamic"),
    ({"workload": {"batch": 2}}, "real nodes run batch 1"),
    ({"weight_dtype": "int8"}, "fp32 weights"),
    ({"devices": {1: {"affinity": [4095]}}}, "affinity CPU 4095 is not available on this host"),
    ({"workload": {"prompt_tokens": 100, "new_tokens": 40}}, "positions of tiny-gpt2"),
])
def test_what_a_real_node_cannot_do_is_refused_before_any_worker_starts(edit, message, tmp_path):
    sc = scenario("tiny-gpt2", "kv_cache", ["sim", "local", "sim"], seed=1)
    doc = sc.model_dump(exclude={"path"})
    for k, v in edit.items():
        if k == "devices":  # {index: fields}
            for i, fields in v.items():
                doc["devices"][i].update(fields)
        else:
            doc[k] = {**doc[k], **v} if isinstance(v, dict) else v
    bad = Scenario.model_validate(doc)
    before = workers_of(os.getpid())
    with pytest.raises(LLSimError, match=message):
        run_to_dir(bad, tmp_path / "run")
    assert workers_of(os.getpid()) == before


def test_a_user_onnx_file_without_kv_inputs_runs_recompute_only(tmp_path):
    import onnx

    f = tmp_path / "plain.onnx"
    onnx.save_model(build_model(get_config("tiny-gpt2")), str(f))
    sc = scenario("tiny-gpt2", "kv_cache", ["sim", "local"], seed=1, requests=1, new=3,
                  stages=[{"device": 0, "start_module": 0, "end_module": 2},
                          {"device": 1, "start_module": 3, "end_module": 4}])
    sc = sc.model_copy(update={"model": str(f)})
    with pytest.raises(LLSimError, match="recompute"):
        run_to_dir(sc, tmp_path / "kv")
    ok = sc.model_copy(update={"workload": sc.workload.model_copy(update={"mode": "recompute"})})
    res, _, _ = run_to_dir(ok, tmp_path / "rec")
    prompt = draw_prompts(ok, get_config("tiny-gpt2").vocab)[0]
    assert [t["token_id"] for t in res.tokens] == greedy_reference(build_model(get_config("tiny-gpt2")), prompt, 3)


def test_affinity_needs_a_real_backend():
    sc = scenario("tiny-gpt2", "kv_cache", ["sim", "local", "sim"], seed=1)
    doc = sc.model_dump(exclude={"path"})
    doc["devices"][0]["affinity"] = [0]
    with pytest.raises(Exception, match="affinity pins a real worker"):
        Scenario.model_validate(doc)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_during_a_run_leaves_no_worker(sig, tmp_path):
    """`llsim run` of a long HIL scenario, interrupted once its workers run: none is left."""
    f = tmp_path / "long.yaml"
    sc = scenario("small-gpt2", "recompute", ["local", "local", "sim"], seed=2, requests=50, new=60, prompt=60)
    import yaml

    doc = sc.model_dump(mode="json", exclude={"path"})
    f.write_text(yaml.safe_dump(doc))
    p = subprocess.Popen([sys.executable, "-m", "llsim", "run", str(f), "--out", str(tmp_path / "run")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        end = time.monotonic() + 60
        while len(workers_of(p.pid)) < 2 and time.monotonic() < end and p.poll() is None:
            time.sleep(0.1)
        pids = workers_of(p.pid)
        assert len(pids) == 2, p.stderr.read().decode() if p.poll() is not None else "workers did not start"
        time.sleep(3.0)  # mid-run (after the segments were cut and loaded)
        p.send_signal(sig)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert wait_gone(pids) == [], "a worker outlived llsim run"
    if sig == signal.SIGINT:  # Ctrl-C keeps what was simulated
        assert (tmp_path / "run" / "tokens.csv").exists()


def test_llsim_fidelity_prints_json_only_and_its_errors_add_up(tmp_path):
    import json

    import yaml

    sc = scenario("tiny-gpt2", "kv_cache", ["sim", "local", "local"], seed=9, requests=2, new=5,
                  network={"kind": "fixed", "goodput_mbps": 100, "rtt_ms": 1.0})
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(sc.model_dump(mode="json", exclude={"path"})))
    p = subprocess.run([sys.executable, "-m", "llsim", "fidelity", str(f), "--out", str(tmp_path / "real"), "--json"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)  # stdout is one JSON document
    rows = {r["metric"]: r for r in rep["metrics"]}
    lat = rows["per-token latency ms (mean)"]
    assert lat["error_pct"] == pytest.approx((lat["simulated"] - lat["real"]) / lat["real"] * 100)
    t = rep["terms"]
    assert t["compute_ms"] + t["queueing_ms"] + t["transfer_ms"] == pytest.approx(lat["simulated"] - lat["real"])
    # the compute term is the real stages' predicted - measured time per decode token, from fidelity.csv
    fid = pd.read_csv(tmp_path / "real" / "fidelity.csv")
    dec = fid[(fid["what"] == "compute") & (fid["kind"] == "decode")]
    n_tok = 2 * (5 - 1)
    assert t["compute_ms"] == pytest.approx(((dec["predicted_ms"] - dec["measured_ms"]) * dec["n"]).sum() / n_tok,
                                            rel=1e-6)
    sim_only = tmp_path / "sim.yaml"
    doc = sc.model_dump(mode="json", exclude={"path"})
    for d in doc["devices"]:
        d["backend"] = "sim"
    sim_only.write_text(yaml.safe_dump(doc))
    p = subprocess.run([sys.executable, "-m", "llsim", "fidelity", str(sim_only), "--out", str(tmp_path / "x")],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "no device has a real backend" in p.stderr


@pytest.mark.parametrize("clock", ["virtual", "realtime"])
def test_unshaped_links_between_real_workers_take_their_real_time(clock, tmp_path):
    """hil.shape: none: a tensor between two real workers bypasses the link model (no row in links.csv
    for that pair); fidelity.csv lists the real transfers; the tokens stay exact."""
    sc = scenario("tiny-gpt2", "kv_cache", ["local", "local", "sim"], seed=4, requests=2, new=5,
                  stages=[{"device": 0, "start_module": 0, "end_module": 1},
                          {"device": 1, "start_module": 2, "end_module": 3},
                          {"device": 2, "start_module": 4, "end_module": 4}])
    sc = sc.model_copy(update={"hil": sc.hil.model_copy(update={"shape": "none", "clock": clock})})
    res, devices, _ = run_to_dir(sc, tmp_path / "run")
    check_tokens(res.tokens, sc)
    links = pd.read_csv(tmp_path / "run" / "links.csv")
    pairs = set(zip(links["src"], links["dst"]))
    assert (0, 1) not in pairs and (1, 2) in pairs  # real -> real bypassed; real -> simulated modelled
    fid = pd.read_csv(tmp_path / "run" / "fidelity.csv")
    lk = fid[fid["what"] == "link"]
    assert list(zip(lk["src"], lk["dst"])) == [(devices[0].name, devices[1].name)]
    assert lk["predicted_ms"].isna().all() and (lk["measured_ms"] >= 0).all()
    assert int(lk["n"].iloc[0]) == 2 * 5  # one message per step


def test_an_error_mid_run_ends_it_keeps_the_tokens_and_leaves_no_worker(tmp_path, monkeypatch):
    """A stage failing with an error that is not a lost worker (here: onnxruntime refusing an input,
    injected after 12 stages) ends the run with that error; the tokens so far are written, the
    workers are stopped."""
    from llsim.hil import plane as plane_mod
    from llsim.hil.errors import RemoteError

    real_finish = plane_mod.DataPlane.finish_stage
    calls = []

    def failing(self, p):
        calls.append(1)
        if len(calls) == 12:
            raise RemoteError("bad_input", "segment e0/1: input x has the wrong shape", "local-1")
        return real_finish(self, p)

    monkeypatch.setattr(plane_mod.DataPlane, "finish_stage", failing)
    sc = scenario("tiny-gpt2", "kv_cache", ["local", "local", "sim"], seed=3, requests=2, new=6)
    res, _, _ = run_to_dir(sc, tmp_path / "run")
    assert res.metrics["stop_reason"] == "terminal"
    assert "wrong shape" in res.error
    import json

    info = json.loads((tmp_path / "run" / "hil.json").read_text())
    assert wait_gone(worker_pids(info)) == []
    tokens = pd.read_csv(tmp_path / "run" / "tokens.csv")
    assert 0 < len(tokens) < 2 * 6
    ref = reference(sc)
    for r, g in tokens.groupby("request"):  # what was generated is the whole model's
        assert g.sort_values("token")["token_id"].tolist() == ref[r][:len(g)]


@pytest.mark.slow
def test_a_local_worker_joining_mid_run_is_taken_up_by_the_balancer(tmp_path):
    """scenarios/hil/join-local.yaml: a real worker joins two simulated phones at t=0.5 s; the balancer
    stages the weights and switches to a plan that uses it; its segments are loaded for real; exact tokens."""
    import json

    from llsim.scenario import load_scenario
    from llsim.sim.dynamics import taken

    sc = load_scenario(ROOT / "scenarios" / "hil" / "join-local.yaml")
    res, devices, _ = run_to_dir(sc, tmp_path / "run")
    assert res.metrics["stop_reason"] == "completed", res.metrics.get("error")
    check_tokens(res.tokens, sc)
    switches = [r for r in taken(res.rebalances) if r["kind"] != "terminal"]
    assert switches and switches[0]["time_s"] > 0.5
    assert "host-0" in switches[0]["new_plan"] and switches[0]["measured_session_s"] > 0
    later = [p for p in res.metrics["plans"] if p["from_s"] >= switches[0]["time_s"]]
    assert any(2 in [s["device"] for s in p["stages"]] for p in later)  # the worker runs a stage
    fid = pd.read_csv(tmp_path / "run" / "fidelity.csv")
    assert set(fid[fid["what"] == "compute"]["device"]) == {"host-0"}
    info = json.loads((tmp_path / "run" / "hil.json").read_text())
    assert wait_gone(worker_pids(info)) == []


def test_a_zoo_model_too_large_for_one_onnx_file_is_refused_before_any_worker_starts(tmp_path):
    """bloom-560m's fp32 weights (2.2 GB, its embedding alone 1 GB) exceed one ONNX protobuf: a clear error
    (it was an internal error from protobuf's serializer), and no worker started."""
    sc = scenario("tiny-gpt2", "kv_cache", ["sim", "local"], seed=1, requests=1, new=2,
                  stages=[{"device": 0, "start_module": 0, "end_module": 12},
                          {"device": 1, "start_module": 13, "end_module": 25}])
    sc = sc.model_copy(update={"model": "bloom-560m"})
    before = workers_of(os.getpid())
    with pytest.raises(LLSimError, match="too large to materialise"):
        run_to_dir(sc, tmp_path / "run")
    assert workers_of(os.getpid()) == before
