"""Scenarios with ``backend: adb`` nodes, on stand-in phones through the real adb server and adbutils
(no mock of either): llsim's real worker is deployed to each phone, started by Termux's RUN_COMMAND,
reached through ``adb forward``, fed segment files pushed on demand; tensors go phone to phone over
the stand-ins' Wi-Fi when the workers reach each other, else through this host.

Independent expectation: onnxruntime's greedy generation with the whole model (``greedy_reference``,
via tests/test_hil_scenario.py's ``check_tokens``). Every test checks that nothing is left: no
worker process, no adb forward, no secret file on a phone."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from hil_helpers import pid_gone, wait_gone
from llsim.adb.fakephone import FakePhone, Knobs
from llsim.cluster import expand_devices
from llsim.errors import LLSimError
from llsim.judge.hil import HilRuntime
from llsim.judge.run import make_plan, run_to_dir
from llsim.scenario import Scenario
from llsim.sim.engine import Simulation
from test_adb import Phones, _free_port, adb_server, client  # noqa: F401  (fixtures)
from test_hil_scenario import check_tokens
from tests.conftest import ROOT, run_cli

STANDIN_WORKER = ROOT / "tests" / "hil_standin_worker.py"


@pytest.fixture
def phones(client):  # noqa: F811
    ps = Phones(client)
    yield ps
    ps.close()


def doc(model: str, mode: str, devices: list[dict], stages: list[tuple[int, int, int]], *, requests=2, new=4,
        prompt=5, concurrency=2, balancer=None, hil=None, seed=3) -> dict:
    return {"name": "adb-test", "model": model, "seed": seed, "devices": devices,
            "allocation": {"strategy": "explicit",
                           "stages": [{"device": d, "start_module": a, "end_module": b} for d, a, b in stages]},
            "workload": {"prompt_tokens": prompt, "new_tokens": new, "requests": requests,
                         "concurrency": concurrency, "mode": mode},
            "balancer": balancer or {"enabled": False}, "hil": {"heartbeat_s": 0.5, **(hil or {})}}


def phone(serial: str, profile: str = "kirin-990") -> dict:
    return {"profile": profile, "backend": "adb", "serial": serial, "threads": 1}


def leftovers(client, phs) -> list[str]:  # noqa: F811
    """What a run left on the phones and the adb server: worker processes, forwards, secret files."""
    out = []
    for ph in phs:
        if wait_gone(ph.host_pids(), 10):
            out.append(f"{ph.serial}: processes {ph.host_pids()}")
        secrets = [p for p in ph.fs.root.rglob("*") if p.name.startswith((".s-", "secret-"))]
        if secrets:
            out.append(f"{ph.serial}: secrets {secrets}")
    fw = [f for f in client.forward_list() if f.serial in {ph.serial for ph in phs}]
    if fw:
        out.append(f"forwards {fw}")
    return out


# ---- tokens --------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("mode, wifi", [("kv_cache", True), ("recompute", False)],
                         ids=["kv_cache-phone-to-phone", "recompute-via-host"])
def test_two_phones_and_a_simulated_node_generate_the_whole_models_tokens(mode, wifi, phones, client, tmp_path):  # noqa: F811
    """Phone A -> phone B -> simulated tail. With both on the Wi-Fi, A's worker sends B its tensors
    itself; with B off the Wi-Fi, they go through this host. Run twice: the second run pushes
    nothing (the worker and every segment file are on the phones with the same sha256)."""
    a = phones.add("kirin-990")
    # B off the Wi-Fi also hides its thermal zones and battery from Termux's programs: no temperature, and
    # the battery level comes from `dumpsys battery` over adb instead
    b = phones.add("helio-g85", wifi=wifi) if wifi else phones.add("helio-g85", wifi=False, battery_level=64,
                                                                   thermal_readable=False, battery_readable=False)
    sc = Scenario.model_validate(doc("tiny-gpt2", mode, [phone(a.serial), {"profile": "snapdragon-8gen2", "threads": 1},
                                                         phone("auto", "helio-g85")],
                                     [(0, 0, 1), (2, 2, 3), (1, 4, 4)]))
    for k in range(2 if mode == "kv_cache" else 1):
        out = tmp_path / f"run{k}"
        res, devices, _ = run_to_dir(sc, out)
        assert res.metrics["stop_reason"] == "completed", res.metrics.get("error")
        check_tokens(pd.read_csv(out / "tokens.csv"), sc)
        info = json.loads((out / "hil.json").read_text())
        adb = {w["device"]: w["worker"]["adb"] for w in info["workers"]}
        assert {w["backend"] for w in info["workers"]} == {"adb"}
        assert adb["kirin-990-0"]["serial"] == a.serial and adb["helio-g85-0"]["serial"] == b.serial  # auto: B
        assert {x["method"] for x in adb.values()} == {"run-command"}
        links = pd.read_csv(out / "links.csv").set_index(["src", "dst"])["tensor_path"]
        assert links[(0, 2)] == ("phone-to-phone" if wifi else "via-host")  # A -> B
        assert links[(2, 1)] == "via-host"  # B -> the simulated tail
        if wifi:
            assert adb["kirin-990-0"]["reaches"] == {"helio-g85-0": f"{b.wifi_ip}:7071"}
        else:
            assert adb["kirin-990-0"]["reaches"] == {} and "helio-g85-0" in adb["kirin-990-0"]["via_host"]
        if k == 0:
            assert all(x["pushed"] == ["worker.py"] and x.get("segments_pushed") for x in adb.values())
        else:  # the same files: nothing pushed
            assert all(x["skipped"] == ["worker.py"] and not x.get("segments_pushed") and x["segments_skipped"]
                       for x in adb.values())
        # telemetry from the phones' heartbeats: the stand-in's battery and hottest thermal zone
        dv = pd.read_csv(out / "devices.csv").set_index("name")
        assert dv.loc["kirin-990-0", "battery_pct_first"] == 85
        hottest = max(int((a.fs.host(f"/sys/class/thermal/thermal_zone{i}/temp")).read_text()) for i in range(8)
                      if a.fs.exists(f"/sys/class/thermal/thermal_zone{i}/temp")) / 1000
        assert dv.loc["kirin-990-0", "temp_c_max"] == pytest.approx(hottest)
        assert dv.loc["kirin-990-0", "telemetry_samples"] >= 1
        assert pd.isna(dv.loc["snapdragon-8gen2-0", "temp_c_max"]) and pd.isna(dv.loc["snapdragon-8gen2-0",
                                                                                      "battery_pct_first"])
        if wifi:
            assert dv.loc["helio-g85-0", "battery_pct_first"] == 85
        else:
            assert pd.isna(dv.loc["helio-g85-0", "temp_c_max"])
            assert dv.loc["helio-g85-0", "battery_pct_first"] == 64 and dv.loc["helio-g85-0", "battery_pct_last"] == 64
        trace = json.loads((out / "timeline.json").read_text())["traceEvents"]
        temps = [e for e in trace if e["ph"] == "C" and e["name"] == "temp C kirin-990-0 (real)"]
        assert temps and temps[0]["args"]["temp"] == pytest.approx(hottest)
        assert all(0 <= e["ts"] <= res.metrics["sim_time_s"] * 1e6 + 1 for e in temps), (temps, res.metrics["sim_time_s"])
        assert leftovers(client, [a, b]) == []


# ---- a phone lost mid-run ------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("how", ["unplugged", "worker-killed"])
def test_a_phone_lost_mid_run_fails_over_and_every_token_is_exact_and_once(how, phones, client):  # noqa: F811
    """Three phones and the balancer; the middle phone is unplugged (or its worker killed) after a few
    stages: the run fails over to the others, every (request, token) once and exact, and the event
    says what happened to the phone."""
    ps = [phones.add(p) for p in ("kirin-990", "helio-g85", "tensor-g3")]
    sc = Scenario.model_validate(doc(
        "tiny-gpt2", "kv_cache", [phone(p.serial, p.profile.name) for p in ps], [(0, 0, 1), (1, 2, 3), (2, 4, 4)],
        requests=3, new=6, hil={"heartbeat_s": 0.25, "deadline_floor_s": 3.0},
        balancer={"enabled": True, "heartbeat_s": 0.05, "heartbeat_misses": 3, "interval_s": 0.05,
                  "strategy": "milp"}))
    devices = expand_devices(sc)
    plan = make_plan(sc, devices)
    done = {}
    with HilRuntime(sc, devices) as rt:
        backend = rt.started[0].info["backend"]

        def hook(run):
            if not done and run.request == 1 and run.step == 2 and run.stage == 0:
                done["pid"] = rt.executors[1].info["pid"]  # a stand-in's worker is a process of this host
                if how == "unplugged":
                    ps[1].unplug()
                else:
                    os.kill(done["pid"], signal.SIGKILL)

        rt.plane.on_stage = hook
        res = Simulation(sc, devices, plan, timeline=False, hil=rt.nodes).run()
        lost = list(rt.nodes.lost)
    assert done, "the hook never ran"
    assert res.metrics["stop_reason"] == "completed", (res.metrics.get("error"), lost)
    # the phone is lost (a second stage in flight to it, e.g. another request's forward, may report it again)
    assert {x["device"] for x in lost} == {1}, lost
    if how == "unplugged":
        assert f"the phone {ps[1].serial} is offline" in lost[0]["reason"] or "is gone" in lost[0]["reason"], lost
        notes = backend.clients[1].info["adb"].get("cleanup", [])
        assert any("may still run" in n for n in notes), notes  # what was left there is said
    else:
        assert pid_gone(done["pid"])
    assert any(r["kind"] == "failover" for r in res.rebalances)
    assert all(1 not in [s["device"] for s in p["stages"]] for p in res.metrics["plans"][1:])
    check_tokens(res.tokens, sc)
    ps[1].replug() if how == "unplugged" else None
    assert leftovers(client, [ps[0], ps[2]]) == []


# ---- refusals: one line, exit 2, nothing left running --------------------------------------------
def _scenario_file(tmp_path, d: dict) -> Path:
    f = tmp_path / "sc.yaml"
    f.write_text(yaml.safe_dump(d))
    return f


def _run(tmp_path, d, capsys) -> tuple[int, str]:
    code, out, err = run_cli(["run", _scenario_file(tmp_path, d), "--out", tmp_path / "run"], capsys)
    return code, err.strip()


def test_no_adb_server_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(_free_port()))
    code, err = _run(tmp_path, doc("tiny-gpt2", "kv_cache", [phone("auto"), {"profile": "kirin-990", "threads": 1}],
                                   [(0, 0, 2), (1, 3, 4)]), capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "no adb server answers" in err and "start-server" in err, err


def test_phone_port_in_use_one_line_exit_2_and_the_first_phone_undone(phones, client, tmp_path, capsys):  # noqa: F811
    from llsim.adb.deploy import deploy

    a, b = phones.add("kirin-990"), phones.add("helio-g85")
    with deploy(b.serial, STANDIN_WORKER, secret=b"x" * 32):  # B's port 7071 is taken (an earlier run's worker)
        held = set(b.host_pids())
        code, err = _run(tmp_path, doc("tiny-gpt2", "kv_cache", [phone(a.serial), phone(b.serial, "helio-g85")],
                                       [(0, 0, 2), (1, 3, 4)]), capsys)
        assert code == 2 and len(err.splitlines()) == 1, err
        assert f"{b.serial}: port 7071 is already in use on the phone" in err, err
        assert set(b.host_pids()) == held  # B's own worker untouched
        assert leftovers(client, [a]) == []  # A was deployed first: undone
    assert leftovers(client, [a, b]) == []


def test_phone_unplugged_during_deployment_one_line_exit_2(phones, client, tmp_path, capsys):  # noqa: F811
    a = phones.add("kirin-990")
    b = phones.add("helio-g85", unplug_after_push_bytes=20_000)  # mid-way through the worker's 70 kB
    code, err = _run(tmp_path, doc("tiny-gpt2", "kv_cache", [phone(a.serial), phone(b.serial, "helio-g85")],
                                   [(0, 0, 2), (1, 3, 4)]), capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"{b.serial}: the phone stopped answering while pushing worker.py" in err and "offline" in err, err
    assert leftovers(client, [a, b]) == []


@pytest.mark.parametrize("case", ["missing", "unauthorized", "offline", "no-free-phone"])
def test_phones_that_cannot_run_are_refused_before_anything_starts(case, phones, client, tmp_path, capsys):  # noqa: F811
    a = phones.add("kirin-990")
    devs = [phone(a.serial), phone("auto", "helio-g85")]
    if case == "missing":
        devs[1] = phone("127.0.0.1:1", "helio-g85")
        want = "device helio-g85-0 (backend: adb): no phone '127.0.0.1:1' on the adb server"
    elif case == "unauthorized":
        b = phones.add("helio-g85", state="unauthorized", unauthorized=True)
        devs[1] = phone(b.serial, "helio-g85")
        want = f"{b.serial} is unauthorized: unlock the phone and accept 'Allow USB debugging?'"
    elif case == "offline":
        b = phones.add("helio-g85")
        b.unplug()
        from test_adb import _wait_state

        _wait_state(client, b.serial, "offline")
        devs[1] = phone(b.serial, "helio-g85")
        want = f"{b.serial} is offline: replug the cable"
    else:  # the only phone is named by device 0: serial: auto finds none free
        want = "device helio-g85-0 (backend: adb, serial: auto): no free phone in state 'device'"
    code, err = _run(tmp_path, doc("tiny-gpt2", "kv_cache", devs, [(0, 0, 2), (1, 3, 4)]), capsys)
    assert code == 2 and len(err.splitlines()) == 1 and want in err, err
    assert leftovers(client, phones.phones) == [] and not a.procs


@pytest.mark.parametrize("devices, message", [
    ([{"profile": "kirin-990", "serial": "abc"}], "serial 'abc' names an Android phone: it needs backend: adb"),
    ([{"profile": "kirin-990", "backend": "local", "serial": "abc"}], "it needs backend: adb"),
    ([{"profile": "kirin-990", "backend": "adb"}], "backend: adb needs serial: SERIAL"),
    ([{"profile": "kirin-990", "backend": "adb", "serial": "S1"}, {"profile": "helio-g85", "backend": "adb",
                                                                   "serial": "S1"}],
     "devices[0] and devices[1] both use the phone 'S1'"),
    ([{"profile": "kirin-990", "backend": "adb", "serial": "S1", "count": 2}], "one phone is one device"),
])
def test_serial_mistakes_are_one_line_errors(devices, message, tmp_path, capsys):
    d = doc("tiny-gpt2", "kv_cache", devices + [{"profile": "tensor-g3"}], [(len(devices), 0, 4)])
    code, err = _run(tmp_path, d, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert "sc.yaml" in err  # the file is named


# ---- llsim fidelity on adb nodes --------------------------------------------------------------------
@pytest.mark.slow
def test_fidelity_on_the_shipped_adb_scenario(phones, client, tmp_path, capsys):  # noqa: F811
    """`llsim fidelity scenarios/hil/phones-adb.yaml` (the README's worked example: two phones by serial:
    auto and a simulated one) on two stand-ins: both runs complete, the real stages are the phones'."""
    a, b = phones.add("kirin-990"), phones.add("helio-g85")
    code, out, err = run_cli(["fidelity", ROOT / "scenarios" / "hil" / "phones-adb.yaml", "--out", tmp_path / "fid",
                              "--json"], capsys)
    assert code == 0, err
    rep = json.loads(out)
    assert rep["real_devices"] == ["kirin-990-0", "helio-g85-0"]
    assert rep["stop_reason"] == {"simulated": "completed", "real": "completed"}
    lat = next(r for r in rep["metrics"] if r["metric"] == "per-token latency ms (mean)")
    assert lat["simulated"] > 0 and lat["real"] > 0 and lat["error_pct"] is not None
    assert {s["device"] for s in rep["stages"]} == {"kirin-990-0", "helio-g85-0"}
    fid = pd.read_csv(tmp_path / "fid" / "fidelity.csv")
    assert set(fid[fid["what"] == "compute"]["device"]) == {"kirin-990-0", "helio-g85-0"}
    assert (fid[fid["what"] == "compute"]["measured_ms"] > 0).all()
    sc = Scenario.model_validate(yaml.safe_load((ROOT / "scenarios" / "hil" / "phones-adb.yaml").read_text()))
    check_tokens(pd.read_csv(tmp_path / "fid" / "tokens.csv"), sc)
    links = pd.read_csv(tmp_path / "fid" / "links.csv").set_index(["src", "dst"])["tensor_path"]
    assert links[(0, 1)] == "phone-to-phone"
    assert leftovers(client, [a, b]) == []


# ---- Ctrl-C and SIGTERM during a run -------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_during_a_run_undoes_every_deployment(sig, phones, client, adb_server, tmp_path):  # noqa: F811
    """`llsim run` (another process, the same adb server) with two phones, interrupted mid-run: both
    workers stopped, forwards removed, secrets deleted."""
    a, b = phones.add("kirin-990"), phones.add("helio-g85")
    f = _scenario_file(tmp_path, doc("small-gpt2", "recompute", [phone(a.serial), phone(b.serial, "helio-g85")],
                                     [(0, 0, 4), (1, 5, 9)], requests=40, new=60, prompt=60))
    p = subprocess.Popen([sys.executable, "-m", "llsim", "run", str(f), "--out", str(tmp_path / "run")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT, env=adb_server["env"])
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end and p.poll() is None and not (
                (tmp_path / "run" / "manifest.json").exists() and a.host_pids() and b.host_pids()):
            time.sleep(0.1)
        assert p.poll() is None, p.stderr.read().decode()
        assert a.host_pids() and b.host_pids() and client.forward_list()
        time.sleep(1.0)  # mid-run
        p.send_signal(sig)
        p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert leftovers(client, [a, b]) == []
    if sig == signal.SIGTERM:
        assert p.returncode == -signal.SIGTERM


# ---- the stand-in's programs do not outlive a killed test run ---------------------------------------
_HOLDER = """
import sys, time
from llsim.adb.fakephone import FakePhone
ph = FakePhone("kirin-990").start()
ph.fs.put("/data/local/tmp/sleep.py", "import time; time.sleep(600)", mode=0o644)
ph.run_shell("am startservice --user 0 -n com.termux/com.termux.app.RunCommandService -a com.termux.RUN_COMMAND "
             "--es com.termux.RUN_COMMAND_PATH /data/data/com.termux/files/usr/bin/python "
             "--esa com.termux.RUN_COMMAND_ARGUMENTS /data/local/tmp/sleep.py")
end = time.monotonic() + 20
while not ph.host_pids() and time.monotonic() < end:
    time.sleep(0.05)
print(ph.host_pids()[0], flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_the_stand_ins_programs_do_not_outlive_a_killed_test_run(sig, tmp_path):
    p = subprocess.Popen([sys.executable, "-c", _HOLDER], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        line = p.stdout.readline().decode().strip()
        assert line.isdigit(), p.stderr.read().decode() if p.poll() is not None else line
        child = int(line)
        assert not pid_gone(child)
        p.send_signal(sig)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert wait_gone([child], 5) == [], "the stand-in's program outlived the process that ran the phone"


# ---- llsim profile adb -------------------------------------------------------------------------------
def test_worker_bench_times_a_segment_and_pulls_back_onnxruntimes_node_profile(tmp_path):
    """The worker's ``bench`` (the profiler's executor on a device), against a local worker: per-run
    times, per-node kernel times of every run for a profiled load, refusals that leave it serving."""
    import numpy as np
    from onnx import TensorProto, helper

    from llsim.filehash import sha256_file
    from llsim.hil.client import SegmentSpec
    from llsim.hil.errors import RemoteError
    from llsim.hil.launcher import WorkerPool

    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
                           helper.make_node("Relu", ["y"], ["z"], name="relu")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4, 32])],
                          [helper.make_tensor("w", TensorProto.FLOAT, [64, 32], np.ones(64 * 32, np.float32))])
    f = tmp_path / "g.onnx"
    f.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString())
    x = {"x": np.ones((4, 64), np.float32)}
    with WorkerPool.start(1, heartbeat_s=0.5) as pool:
        w = pool.workers[0]
        assert w.has("bench")
        w.load([SegmentSpec("p", str(f), sha256_file(f), 1, optimize=False, profile=True),
                SegmentSpec("t", str(f), sha256_file(f), 1)])
        r = w.bench("p", x, runs=4, warmup=2, evict=False)
        assert len(r["times_s"]) == 4 and all(t > 0 for t in r["times_s"])
        assert set(r["nodes"]) == {"mm", "relu"} and all(len(v) == 6 for v in r["nodes"].values())  # warm-up too
        r = w.bench("t", x, runs=3, warmup=0, rounds=2)
        assert len(r["times_s"]) == 6 and "nodes" not in r
        for bad, code in (({"segment": "nope"}, "unknown_segment"), ({"runs": 0}, "bad_request"),
                          ({"warmup": -1}, "bad_request")):
            kw = {"runs": 2, "warmup": 0, **bad}
            with pytest.raises(RemoteError) as e:
                w.bench(kw.pop("segment", "t"), x, **kw)
            assert e.value.code == code
        with pytest.raises(RemoteError) as e:
            w.bench("t", {"x": np.ones((4, 63), np.float32)}, runs=1, warmup=0)
        assert e.value.code == "bad_input"
        with pytest.raises(RemoteError) as e:
            w.bench("t", {}, runs=1, warmup=0)
        assert e.value.code == "missing_input"
        assert w.ping() > 0  # still serving


@pytest.mark.slow
@pytest.mark.serial  # compares a profile and a held-out measurement taken minutes apart
def test_profile_adb_on_a_stand_in_predicts_held_out_segments_as_well_as_profile_host(phones, client, tmp_path,  # noqa: F811
                                                                                       capsys):
    """`llsim profile adb` on a stand-in (whose worker runs on this host) and `llsim profile host`, the
    same quick sweep in the same sitting; both profiles predict the same held-out segments (models
    not in the fit) timed on this host: the phone's profile errs about as little as the host's."""
    from llsim.device.accuracy import HOLDOUT, measure_holdout, predict, summary
    from llsim.device.profile import load_profile
    from llsim.device.profiler import profile_host

    ph = phones.add("kirin-990")
    code, out, err = run_cli(["profile", "adb", ph.serial, "--out", tmp_path / "phone.yaml", "--threads", "1",
                              "--quick", "--runs", "4"], capsys)
    assert code == 0, err
    prof = load_profile(tmp_path / "phone.yaml")
    kirin = load_profile("kirin-990")  # what the stand-in says it is
    assert (prof.kind, prof.device, prof.soc) == ("phone", kirin.device, kirin.soc)
    assert sorted((c.cores, c.freq_ghz) for c in prof.cpu) == sorted(
        (sum(k.cores for k in kirin.cpu if k.freq_ghz == f), f) for f in {k.freq_ghz for k in kirin.cpu})
    assert prof.memory.ram_total_gb == pytest.approx(kirin.memory.ram_total_gb, abs=0.01)
    assert prof.provenance.kind == "measured" and prof.provenance.tool == "llsim profile adb"
    samples = pd.read_csv(tmp_path / prof.provenance.samples)
    assert {"op", "segment"} <= set(samples["kind"]) and (samples["seconds"] > 0).all()
    assert not ph.fs.exists("/data/local/tmp/llsim/profile")  # the pushed graphs are deleted
    host, _ = profile_host(tmp_path / "host.yaml", [1], runs=4, quick=True, log=lambda m: None)
    measured = measure_holdout([1], models=[HOLDOUT[0], HOLDOUT[2]], seqs=(8, 48), rounds=2)
    e_phone, e_host = summary(predict(measured, prof)), summary(predict(measured, host))
    print(f"held-out median APE: profile adb {e_phone['median_ape']:.1%} (max {e_phone['max_ape']:.1%}), "
          f"profile host {e_host['median_ape']:.1%} (max {e_host['max_ape']:.1%}), {e_phone['n']} segments")
    # a sanity bound only (timings on a shared VM move by tens of percent between minutes): a profile whose
    # units, identity or fit were wrong would be off by far more; the comparison itself is `llsim bench profile_adb`
    assert e_phone["median_ape"] <= max(3 * e_host["median_ape"], e_host["median_ape"] + 0.25), (e_phone, e_host)
    assert leftovers(client, [ph]) == []
