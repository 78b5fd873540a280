"""Phones over ADB, through the real adb server binary (the one adbutils bundles) and adbutils, against
llsim's stand-in phone (llsim/adb/fakephone.py). No mock of adbutils or adb.

The session runs its own adb server on a private port with HOME in a temporary directory, and kills
it by that port at the end; every test checks that nothing it started is left running.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import adbutils
import pytest

from hil_helpers import proc_argvs
from llsim.adb import protocol as P
from llsim.adb.fakephone import FakePhone, Knobs
from llsim.adb.phonefs import ROOT, SHELL, TERMUX, PhoneFS
from llsim.adb.shell import IO, Ctx, run_script
from llsim.device.profile import load_profile
from tests.conftest import ROOT as REPO, run_cli

STANDIN_WORKER = REPO / "tests" / "hil_standin_worker.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _server_pids(port: int) -> list[int]:
    """Processes of the adb server on ``port`` (``adb -L tcp:PORT fork-server server``)."""
    return [pid for pid, cmd in proc_argvs() if b"fork-server" in cmd and f"tcp:{port}".encode() in cmd]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not running
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="session")
def adb_server(tmp_path_factory):
    port = _free_port()
    home = tmp_path_factory.mktemp("adb-home")
    env = dict(os.environ, HOME=str(home), ADB_MDNS="0", ADB_MDNS_AUTO_CONNECT="0", ADB_EMU="0")
    adb = adbutils.adb_path()
    subprocess.run([adb, "-P", str(port), "start-server"], env=env, check=True, capture_output=True, timeout=60)
    mp = pytest.MonkeyPatch()
    mp.setenv("ANDROID_ADB_SERVER_PORT", str(port))
    mp.delenv("ANDROID_ADB_SERVER_HOST", raising=False)
    prev_term = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):  # the run is killed (not Ctrl-C): stop our server by its port, then die as asked
        subprocess.run([adb, "-P", str(port), "kill-server"], env=env, capture_output=True, timeout=10)
        for pid in _server_pids(port):
            os.kill(pid, signal.SIGKILL)
        signal.signal(signal.SIGTERM, prev_term if prev_term is not None else signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield {"port": port, "env": dict(env, ANDROID_ADB_SERVER_PORT=str(port)), "adb": adb}
    finally:
        signal.signal(signal.SIGTERM, prev_term if prev_term is not None else signal.SIG_DFL)
        mp.undo()
        subprocess.run([adb, "-P", str(port), "kill-server"], env=env, capture_output=True, timeout=30)
        end = time.monotonic() + 10
        while (_listening(port) or _server_pids(port)) and time.monotonic() < end:
            time.sleep(0.1)
        left = _server_pids(port)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left and not _listening(port), f"the adb server on port {port} survived kill-server"


@pytest.fixture(scope="session")
def client(adb_server):
    return adbutils.AdbClient(port=adb_server["port"])


def _wait_state(client, serial, want, timeout=20.0):
    end = time.monotonic() + timeout
    st = None
    while time.monotonic() < end:
        st = {d.serial: d.state for d in client.list()}.get(serial)
        if st == want:
            return
        time.sleep(0.1)
    raise AssertionError(f"{serial} is {st}, not {want}, after {timeout} s")


class Phones:
    """Stand-in phones registered with the session's adb server; stopped and checked at the end."""

    def __init__(self, client):
        self.client, self.phones = client, []

    def add(self, profile="kirin-990", state="device", **knobs) -> FakePhone:
        ph = FakePhone(profile, knobs=Knobs(**knobs)).start()
        self.phones.append(ph)
        msg = self.client.connect(ph.serial, timeout=10)
        assert ("failed to authenticate" if state == "unauthorized" else "connected") in msg, msg
        _wait_state(self.client, ph.serial, state)
        return ph

    def close(self):
        pids = []
        for ph in self.phones:
            pids += [p.popen.pid for p in ph.procs.values() if p.popen is not None]
            try:
                self.client.disconnect(ph.serial)
            finally:
                ph.stop()
        left = [p for p in pids if _alive(p)]
        assert not left, f"processes left running by the stand-in phones: {left}"


@pytest.fixture
def phones(client):
    ps = Phones(client)
    yield ps
    ps.close()


@pytest.fixture(scope="module")
def two_phones(client):
    ps = Phones(client)
    healthy = ps.add("kirin-990")
    bare = ps.add("helio-g85", termux=False)
    yield healthy, bare
    ps.close()


def _expected_clusters(profile):
    by = {}
    for c in load_profile(profile).cpu:
        by[round(c.freq_ghz, 3)] = by.get(round(c.freq_ghz, 3), 0) + c.cores
    return [{"cores": n, "max_ghz": f} for f, n in sorted(by.items())]


# ---- llsim devices -------------------------------------------------------------------------------
def test_devices_json_and_table(two_phones, capsys):
    import numpy
    import onnxruntime

    healthy, bare = two_phones
    code, out, err = run_cli(["devices", "--json"], capsys)
    assert code == 0
    rows = {r["serial"]: r for r in json.loads(out)}  # stdout is JSON only
    for ph in two_phones:
        r = rows[ph.serial]
        prof = load_profile(ph.profile.name)
        assert r["state"] == "device"
        assert r["model"] == prof.device and r["soc"] == prof.soc
        assert r["clusters"] == _expected_clusters(ph.profile.name)
        assert abs(r["ram_total_gb"] - prof.memory.ram_total_gb) < 0.01
        assert abs(r["ram_available_gb"] - prof.memory.ram_available_gb) < 0.01
        assert r["android"] == "13" and r["sdk"] == 33 and r["stand_in"]
    h, b = rows[healthy.serial], rows[bare.serial]
    assert h["termux"] and h["termux_checked"] and h["termux_start"] == "run-command"
    assert h["onnxruntime"] == onnxruntime.__version__ and h["numpy"] == numpy.__version__  # this host's Python
    assert b["termux"] is False and b["onnxruntime"] is None
    code, out, err = run_cli(["devices"], capsys)
    assert code == 0
    assert healthy.serial in out and bare.serial in out and "missing" in out and f"ORT {onnxruntime.__version__}" in out
    assert max(len(line) for line in out.splitlines()) <= 80


def test_devices_older_android_falls_back_to_board_platform(phones, capsys):
    ph = phones.add("exynos-1380", android="11")  # ro.soc.* exist from API 31 only
    code, out, _ = run_cli(["devices", "--json", "--no-probe"], capsys)
    r = {r["serial"]: r for r in json.loads(out)}[ph.serial]
    assert r["sdk"] == 30 and r["soc"] == ph.props["ro.board.platform"] and "ro.soc.model" not in ph.props
    assert r["termux_checked"] is False


def test_unauthorized_state_shows_and_then_authorised(phones, client, capsys):
    ph = phones.add("tensor-g3", state="unauthorized", unauthorized=True)
    code, out, _ = run_cli(["devices", "--json"], capsys)
    assert {r["serial"]: r["state"] for r in json.loads(out)}[ph.serial] == "unauthorized"
    code, out, _ = run_cli(["devices"], capsys)
    assert "unauthorized" in out
    code, out, _ = run_cli(["hil", "doctor", ph.serial], capsys)
    assert code == 1 and "FAIL  authorised" in out and "Allow" in out
    code, out, err = run_cli(["hil", "deploy", ph.serial, "--worker", STANDIN_WORKER], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "unauthorized" in err
    ph.authorize()  # the user taps "Allow"
    _wait_state(client, ph.serial, "device")


# ---- llsim hil doctor ----------------------------------------------------------------------------
def test_doctor_healthy_and_without_termux(two_phones, capsys):
    healthy, bare = two_phones
    code, out, _ = run_cli(["hil", "doctor", healthy.serial, "--json"], capsys)
    rep = json.loads(out)
    assert code == 0 and rep["ready"]
    assert {c["name"] for c in rep["checks"] if c["status"] != "ok"} == set()
    code, out, _ = run_cli(["hil", "doctor", bare.serial], capsys)
    assert code == 1
    assert "FAIL  Termux installed" in out
    assert "pkg install python python-numpy python-onnxruntime" in out and "F-Droid" in out
    assert "ok    free storage" in out  # checks that do not need Termux still run


@pytest.mark.parametrize("knobs, failing, fix", [
    ({"external_apps": False}, {"allow-external-apps", "Termux start method"}, "allow-external-apps = true"),
    ({"onnxruntime": False}, {"onnxruntime in Termux"}, "pkg install python-onnxruntime"),
    ({"numpy": False, "onnxruntime": False}, {"numpy in Termux", "onnxruntime in Termux"}, "pkg install python-numpy"),
    ({"run_command_permission": False, "termux_debuggable": True, "python": False}, {"python in Termux"},
     "pkg install python python-numpy"),
    ({"run_command_permission": False}, {"Termux start method"}, "Requires permission"),
    ({"free_gb": 0.5}, {"free storage"}, "rm -r /data/local/tmp/llsim"),
])
def test_doctor_names_each_fault_and_its_fix(phones, capsys, knobs, failing, fix):
    ph = phones.add("kirin-810", **knobs)
    code, out, _ = run_cli(["hil", "doctor", ph.serial, "--json", "--probe-timeout", "2"], capsys)
    rep = json.loads(out)
    bad = {c["name"] for c in rep["checks"] if c["status"] == "fail"}
    assert code == 1 and bad == failing, rep
    assert any(fix in c["fix"] for c in rep["checks"] if c["status"] == "fail")


def test_doctor_warnings_do_not_fail(phones, capsys):
    ph = phones.add("kirin-990", battery_level=9, charging=False, thermal_readable=False,
                    run_command_permission=False, termux_debuggable=True)
    code, out, _ = run_cli(["hil", "doctor", ph.serial, "--json"], capsys)
    rep = {c["name"]: c for c in json.loads(out)["checks"]}
    assert code == 0
    assert rep["battery"]["status"] == "warn" and "9%" in rep["battery"]["detail"]
    assert rep["thermal readable"]["status"] == "warn"
    assert rep["Termux start method"]["status"] == "ok" and "run-as" in rep["Termux start method"]["detail"]


# ---- deployment ----------------------------------------------------------------------------------
def _handshake(port: int, secret: bytes) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rwb")
        tag, nonce = f.readline().decode().split()
        assert tag == "LLSIM-STANDIN"
        f.write(hmac.new(secret.hex().encode(), nonce.encode(), hashlib.sha256).hexdigest().encode() + b"\n")
        f.flush()
        ok, pid = f.readline().decode().split()
        assert ok == "OK"
        payload = os.urandom(300_000).hex().encode() + b"\n"  # through adb's tcp: forward, both ways
        f.write(payload)
        f.flush()
        assert f.readline() == payload
        f.write(b"BYE\n")
        f.flush()
        return int(pid)


def _phone_files(ph: FakePhone, d: str) -> list[str]:
    return [n for n in ph.fs.listdir(ROOT, d)] if ph.fs.exists(d) else []


@pytest.mark.slow
def test_deploy_twice_second_push_skipped_by_digest(phones, client, tmp_path):
    from llsim.adb.deploy import deploy

    ph = phones.add("snapdragon-8gen2")
    seg = tmp_path / "segment_0.onnx"
    seg.write_bytes(random.Random(1).randbytes(2_500_000))
    secret = os.urandom(32)
    logs = []
    with deploy(ph.serial, STANDIN_WORKER, [seg], secret=secret, log=logs.append) as d:
        assert d.method == "run-command" and sorted(d.pushed) == sorted([STANDIN_WORKER.name, seg.name])
        assert d.skipped == []
        pid = _handshake(d.local_port, secret)
        assert pid in ph.host_pids()
        # the secret: 0600, owned by Termux's uid, in Termux's home; the staged copy is gone
        mode, _, _, meta = ph.fs.stat(ROOT, d.secret_path)
        assert mode & 0o777 == 0o600 and meta.uid == TERMUX
        assert not any(n.startswith(".s-") for n in _phone_files(ph, "/data/local/tmp/llsim"))
        assert not ph.fs.access(SHELL, d.secret_path, 4)  # the adb shell cannot read it
        assert ph.fs.read(ROOT, f"/data/local/tmp/llsim/{seg.name}") == seg.read_bytes()
        assert any(f.local == f"tcp:{d.local_port}" for f in client.forward_list())
    assert not _alive(pid)
    assert not ph.fs.exists(d.secret_path)
    assert not any(f.local == f"tcp:{d.local_port}" for f in client.forward_list())
    assert not any(n.startswith((".s-", "start-", "stop-")) for n in _phone_files(ph, "/data/local/tmp/llsim"))
    assert any("pushed segment_0.onnx" in m for m in logs)
    with deploy(ph.serial, STANDIN_WORKER, [seg], secret=secret) as d2:
        assert d2.pushed == [] and sorted(d2.skipped) == sorted([STANDIN_WORKER.name, seg.name])
        _handshake(d2.local_port, secret)
    seg.write_bytes(seg.read_bytes()[:-1] + b"\0")  # one byte differs: pushed again
    with deploy(ph.serial, STANDIN_WORKER, [seg], secret=secret) as d3:
        assert d3.pushed == [seg.name]
    assert ph.host_pids() == []


@pytest.mark.slow
def test_deploy_start_methods_fall_back(phones):
    from llsim.adb.deploy import deploy

    ph = phones.add("kirin-990", run_command_permission=False, termux_debuggable=True)
    secret = os.urandom(32)
    with deploy(ph.serial, STANDIN_WORKER, secret=secret) as d:
        assert d.method == "run-as" and "Requires permission" in d.tried["run-command"]
        _handshake(d.local_port, secret)
    assert ph.host_pids() == []
    ph2 = phones.add("kirin-990", external_apps=False)  # Termux ignores RUN_COMMAND; not debuggable
    asked = []

    def user(cmd_line: str):  # the person at the phone types what llsim printed
        asked.append(cmd_line)
        ph2.user_runs_in_termux(cmd_line.split("run:", 1)[1].strip())

    with deploy(ph2.serial, STANDIN_WORKER, secret=secret, start_timeout=1.5, on_manual=user) as d:
        assert d.method == "manual" and set(d.tried) == {"run-command", "run-as"}
        assert "not debuggable" in d.tried["run-as"]
        _handshake(d.local_port, secret)
    assert asked and "sh /data/local/tmp/llsim/start-" in asked[0]
    assert any("by hand" in n for n in d.cleanup_notes)  # llsim cannot stop a worker a person started


def test_deploy_interrupted_cleans_up(phones, client):
    from llsim.adb.deploy import deploy

    ph = phones.add("kirin-990")

    def ctrl_c(msg):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with deploy(ph.serial, STANDIN_WORKER, methods=["manual"], on_manual=ctrl_c, local_port=_free_port()):
            pass
    assert not client.forward_list() or not any(f.serial == ph.serial for f in client.forward_list())
    left = _phone_files(ph, "/data/local/tmp/llsim")
    assert left == [STANDIN_WORKER.name], left  # the pushed worker stays (digest cache); no secret, no scripts
    assert ph.host_pids() == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_deploy_command_ctrl_c_while_holding(phones, client, adb_server, sig):
    """Ctrl-C, or a SIGTERM (`kill`, a parent shutting down), stops the held worker and its forward."""
    ph = phones.add("kirin-990")
    p = subprocess.Popen([sys.executable, "-m", "llsim", "hil", "deploy", ph.serial, "--worker", str(STANDIN_WORKER),
                          "--hold"], env=adb_server["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [p.stdout.readline() for _ in range(3)]
        assert lines[-1].startswith("ready: 127.0.0.1:"), (lines, p.poll())
        local = int(lines[-1].split()[1].rsplit(":", 1)[1])
        assert _listening(local) and len(ph.host_pids()) == 1
        p.send_signal(sig)
        assert p.wait(30) == 130 and "interrupted" in p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert ph.host_pids() == [] and not _listening(local)
    assert not any(f.serial == ph.serial for f in client.forward_list())


def test_deploy_fails_when_no_method_works(phones, capsys):
    ph = phones.add("kirin-990", run_command_permission=False)
    code, out, err = run_cli(["hil", "deploy", ph.serial, "--worker", STANDIN_WORKER, "--method", "run-command,run-as"],
                             capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "Requires permission" in err and "not debuggable" in err and "llsim hil doctor" in err
    assert ph.host_pids() == []


def test_deploy_phone_unplugged_midway(phones, client, tmp_path, capsys):
    ph = phones.add("kirin-990", unplug_after_push_bytes=1_000_000)
    seg = tmp_path / "big.onnx"
    seg.write_bytes(os.urandom(3_000_000))
    local = _free_port()
    code, out, err = run_cli(["hil", "deploy", ph.serial, "--worker", STANDIN_WORKER, "--file", seg,
                              "--local-port", local], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert ph.serial in err and "stopped answering" in err
    assert ph.host_pids() == [] and not ph.online
    assert not any(f.local == f"tcp:{local}" for f in client.forward_list()) and not _listening(local)


def test_deploy_port_in_use(phones, tmp_path, capsys):
    from llsim.adb.deploy import deploy

    ph = phones.add("kirin-990")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        code, out, err = run_cli(["hil", "deploy", ph.serial, "--worker", STANDIN_WORKER, "--local-port",
                                  busy.getsockname()[1]], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "local port in use" in err
        code, out2, err2 = run_cli(["hil", "fake-phone", "--port", busy.getsockname()[1]], capsys)
        assert code == 2 and len(err2.strip().splitlines()) == 1 and "port in use" in err2
    assert ph.host_pids() == [] and not _phone_files(ph, "/data/local/tmp/llsim")  # nothing pushed or started
    secret = os.urandom(32)
    with deploy(ph.serial, STANDIN_WORKER, secret=secret) as d:  # a worker already holds phone port 7071
        code, out, err = run_cli(["hil", "deploy", ph.serial, "--worker", STANDIN_WORKER], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "port 7071 is already in use on the phone" in err
        assert len(ph.host_pids()) == 1
        _handshake(d.local_port, secret)
    assert ph.host_pids() == []


def test_phone_unplugged_while_deployed(phones, client):
    from llsim.adb.deploy import deploy

    ph = phones.add("kirin-990")
    secret = os.urandom(32)
    with deploy(ph.serial, STANDIN_WORKER, secret=secret) as d:
        _handshake(d.local_port, secret)
        ph.unplug()
        _wait_state(client, ph.serial, "offline", timeout=15)
    assert any("is gone" in n for n in d.cleanup_notes)  # said, not raised: the caller's results are kept
    assert not any(f.local == f"tcp:{d.local_port}" for f in client.forward_list())
    assert len(ph.host_pids()) == 1  # as on a phone, its worker outlives the cable; stopping the phone ends it


def test_protocol_garbage_does_not_kill_the_phone(phones):
    """Random, truncated and oversized messages: each drops its own connection, the phone keeps serving."""
    ph = phones.add("kirin-990")
    rng = random.Random(11)
    cmds = [P.A_CNXN, P.A_OPEN, P.A_OKAY, P.A_WRTE, P.A_CLSE, P.A_AUTH, 0x12345678]
    for _ in range(60):
        with socket.create_connection(("127.0.0.1", ph.port), timeout=5) as s:
            kind = rng.randrange(4)
            if kind == 0:
                s.sendall(rng.randbytes(rng.randrange(1, 200)))
            else:
                cmd = rng.choice(cmds)
                n = rng.choice([0, 5, 4096, 5000, 2 ** 20 + 1, 2 ** 31])
                magic = cmd ^ 0xFFFFFFFF if kind != 3 else rng.getrandbits(32)
                s.sendall(struct.pack("<6I", cmd, rng.getrandbits(32), rng.getrandbits(32), n, 0, magic)
                          + rng.randbytes(min(n, 3000)))
            s.shutdown(socket.SHUT_WR)
            s.settimeout(2)
            try:
                while s.recv(65536):
                    pass
            except (socket.timeout, ConnectionError):
                pass
    assert adbutils.AdbDevice(phones.client, ph.serial).shell("getprop ro.product.model") == "Huawei P40"


def test_no_adb_server(monkeypatch, capsys):
    port = _free_port()
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(port))
    for argv in (["devices"], ["devices", "--json"], ["hil", "deploy", "127.0.0.1:5555", "--worker", STANDIN_WORKER],
                 ["hil", "fake-phone"]):
        code, out, err = run_cli(argv, capsys)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, (argv, err)
        assert f"no adb server answers on 127.0.0.1:{port}" in err and f"-P {port} start-server" in err
    code, out, err = run_cli(["hil", "doctor", "127.0.0.1:5555"], capsys)
    assert code == 1 and "FAIL  adb server" in out and "start-server" in out
    assert not _listening(port) and not _server_pids(port)  # llsim did not start one


# ---- the protocol, through adb and adbutils -------------------------------------------------------
def test_shell_v2_exit_codes(phones, adb_server):
    ph = phones.add("helio-g85")
    d = adbutils.AdbDevice(phones.client, ph.serial)
    rng = random.Random(7)
    for n in [0, 1, 2, 127, 255] + rng.sample(range(3, 255), 5):
        assert d.shell2(f"echo before; exit {n}; echo after", v2=True).returncode == n
    r = d.shell2("echo out; echo err >&2; false", v2=True)
    assert (r.stdout, r.stderr, r.returncode) == ("out\n", "err\n", 1)
    assert d.shell2("true && exit 7 || exit 9", v2=True).returncode == 7
    assert d.shell2("nosuchcommand", v2=True).returncode == 127
    assert d.shell2("cat /data/data/com.termux/files/home/.termux/termux.properties", v2=True).returncode == 1
    cli = subprocess.run([adb_server["adb"], "-s", ph.serial, "shell", "echo", "x;", "exit", "42"],
                         env=adb_server["env"], capture_output=True, text=True, timeout=30)
    assert (cli.returncode, cli.stdout) == (42, "x\n")


def test_sync_push_pull_byte_exact(phones, adb_server, tmp_path):
    ph = phones.add("tensor-g3", max_payload=64 * 1024)
    d = adbutils.AdbDevice(phones.client, ph.serial)
    rng = random.Random(3)
    for size in (0, 1, 4095, 65536, 65537, 4_000_000 + rng.randrange(1000)):
        data = rng.randbytes(size)
        d.sync.push(data, f"/data/local/tmp/t/{size}.bin", mode=0o640)
        st = d.sync.stat(f"/data/local/tmp/t/{size}.bin")
        assert st.size == size and st.mode & 0o777 == 0o640
        assert d.sync.read_bytes(f"/data/local/tmp/t/{size}.bin") == data
        assert d.shell(f"sha256sum /data/local/tmp/t/{size}.bin").split()[0] == hashlib.sha256(data).hexdigest()
    assert {f.path for f in d.sync.list("/data/local/tmp/t")} >= {"0.bin", "65537.bin"}
    src = tmp_path / "src.bin"
    src.write_bytes(rng.randbytes(3_300_000))
    run = lambda *a: subprocess.run([adb_server["adb"], "-s", ph.serial, *a], env=adb_server["env"],  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    r = run("push", str(src), "/data/local/tmp/cli/dir/src.bin")  # fixed_push_mkdir: parents created
    assert r.returncode == 0, r.stderr
    r = run("pull", "/data/local/tmp/cli/dir/src.bin", str(tmp_path / "back.bin"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
    r = run("pull", "/data/data/com.termux/files/home/.termux/termux.properties", str(tmp_path / "x"))
    assert r.returncode != 0 and "Permission denied" in r.stderr  # the shell uid cannot read Termux's files


def test_slow_usb_link_caps_bandwidth(phones):
    ph = phones.add("kirin-990", usb_mbps=2.0)
    d = adbutils.AdbDevice(phones.client, ph.serial)
    data = os.urandom(1_500_000)
    t = time.monotonic()
    d.sync.push(data, "/data/local/tmp/slow.bin")
    elapsed = time.monotonic() - t
    assert elapsed >= 0.9 * len(data) / 2e6  # a token bucket cannot be faster than its rate
    assert d.sync.read_bytes("/data/local/tmp/slow.bin") == data


def test_unplug_and_replug(phones, client):
    ph = phones.add("kirin-990", unplug_after_s=1.0, replug_after_s=2.0)  # the knobs' timers
    _wait_state(client, ph.serial, "offline", timeout=15)
    _wait_state(client, ph.serial, "device", timeout=30)  # the adb server reconnects by itself
    assert adbutils.AdbDevice(client, ph.serial).shell("getprop ro.product.model") == "Huawei P40"


def test_fake_phone_command_registers_and_unregisters(adb_server, client):
    p = subprocess.Popen([sys.executable, "-m", "llsim", "hil", "fake-phone", "--profile", "exynos-1380",
                          "--no-termux"], env=adb_server["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        first = p.stdout.readline()
        assert first.startswith("stand-in phone 127.0.0.1:"), (first, p.stderr.read() if p.poll() else "")
        serial = first.split()[2].rstrip(":")
        assert p.stdout.readline().startswith("ready")
        _wait_state(client, serial, "device")
        assert adbutils.AdbDevice(client, serial).prop.model == "Samsung Galaxy A54 5G"
        p.send_signal(signal.SIGINT)
        assert p.wait(20) == 0
        assert serial not in {d.serial for d in client.list()}  # unregistered from adb
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


# ---- the protocol, spoken directly (independent of adb's host side) --------------------------------
class RawHost:
    def __init__(self, port, version=P.A_VERSION_MIN, maxdata=P.MAX_PAYLOAD_V1):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.checks = version < P.A_VERSION_SKIP_CHECKSUM
        self.send(P.A_CNXN, version, maxdata, b"host::features=shell_v2\0")

    def send(self, cmd, a0, a1, data=b"", check=None):
        c = sum(data) & 0xFFFFFFFF if check is None else check
        self.s.sendall(struct.pack("<6I", cmd, a0, a1, len(data), c, cmd ^ 0xFFFFFFFF) + data)

    def recv(self, timeout=5):
        self.s.settimeout(timeout)
        hdr = b""
        while len(hdr) < 24:
            d = self.s.recv(24 - len(hdr))
            if not d:
                raise EOFError
            hdr += d
        cmd, a0, a1, n, check, magic = struct.unpack("<6I", hdr)
        data = b""
        while len(data) < n:
            data += self.s.recv(n - len(data))
        assert magic == cmd ^ 0xFFFFFFFF
        return cmd, a0, a1, data, check


def test_raw_protocol_v1_checksums_payload_and_flow_control():
    with FakePhone("kirin-990") as ph:
        h = RawHost(ph.port)
        cmd, version, maxdata, banner, check = h.recv()
        assert cmd == P.A_CNXN and version == P.A_VERSION_MIN and maxdata == P.MAX_PAYLOAD_V1
        assert check == sum(banner) and banner.startswith(b"device::") and b"features=shell_v2" in banner
        blob = random.Random(5).randbytes(20_000)
        ph.fs.write(SHELL, "/data/local/tmp/blob", blob)
        h.send(P.A_OPEN, 11, 0, b"shell,v2:cat /data/local/tmp/blob /proc/cpuinfo\0")
        cmd, dev_id, host_id, _, _ = h.recv()
        assert (cmd, host_id) == (P.A_OKAY, 11)
        stream, n_wrte, msg = b"", 0, h.recv()
        while msg[0] != P.A_CLSE:
            cmd, a0, a1, data, check = msg
            assert cmd == P.A_WRTE and len(data) <= P.MAX_PAYLOAD_V1 and check == sum(data)
            n_wrte += 1
            stream += data
            try:  # one WRTE in flight: no other WRTE until our OKAY (the closing CLSE may follow)
                msg = h.recv(timeout=0.2)
                assert msg[0] == P.A_CLSE
            except socket.timeout:
                h.send(P.A_OKAY, 11, dev_id)
                msg = h.recv()
        packets, i = [], 0
        while i < len(stream):
            kind, n = struct.unpack("<BI", stream[i:i + 5])
            packets.append((kind, stream[i + 5:i + 5 + n]))
            i += 5 + n
        out = b"".join(d for k, d in packets if k == P.SHELL_STDOUT)
        assert out == blob + ph.fs.read(ROOT, "/proc/cpuinfo") and n_wrte >= 5
        assert packets[-1] == (P.SHELL_EXIT, b"\0")
        h.send(P.A_OPEN, 12, 0, b"no-such-service:\0")
        assert h.recv()[0:3] == (P.A_CLSE, 0, 12)
        h.send(P.A_OPEN, 13, 0, b"shell:echo hi\0", check=12345)  # wrong data checksum at v1: dropped
        with pytest.raises((EOFError, ConnectionError)):
            h.recv()
        h2 = RawHost(ph.port)
        h2.s.sendall(struct.pack("<6I", P.A_CNXN, 0, 0, 0, 0, 0))  # bad magic: dropped
        h2.recv()  # the answer to its first CNXN
        with pytest.raises((EOFError, ConnectionError)):
            h2.recv()
        h3 = RawHost(ph.port, version=P.A_VERSION_SKIP_CHECKSUM, maxdata=P.MAX_PAYLOAD)
        cmd, version, maxdata, _, _ = h3.recv()
        assert version == P.A_VERSION_SKIP_CHECKSUM and maxdata == P.MAX_PAYLOAD
        h3.send(P.A_OPEN, 5, 0, b"shell:echo hi\0", check=0)  # no checksum needed any more
        assert h3.recv()[0] == P.A_OKAY
        assert h3.recv()[3] == b"hi\n"


def test_raw_protocol_unauthorized_sends_tokens():
    with FakePhone("kirin-990", knobs=Knobs(unauthorized=True)) as ph:
        h = RawHost(ph.port)
        cmd, kind, _, token, _ = h.recv()
        assert (cmd, kind, len(token)) == (P.A_AUTH, P.AUTH_TOKEN, P.TOKEN_SIZE)
        h.send(P.A_AUTH, P.AUTH_SIGNATURE, 0, os.urandom(256))
        cmd, kind, _, token2, _ = h.recv()
        assert (cmd, kind) == (P.A_AUTH, P.AUTH_TOKEN) and token2 != token  # signature refused: next key
        h.send(P.A_AUTH, P.AUTH_RSAPUBLICKEY, 0, b"QAAAA... host@llsim\0")
        with pytest.raises(socket.timeout):  # the dialog is showing
            h.recv(timeout=0.3)
        ph.authorize()
        assert h.recv()[0] == P.A_CNXN


# ---- the stand-in's shell and file permissions -----------------------------------------------------
@pytest.fixture
def bare_phone():
    ph = FakePhone("kirin-990")  # not started: only its file system and shell
    yield ph
    ph.stop()


def _sh(ph, script, uid=SHELL, cwd="/"):
    ctx = Ctx(ph, uid=uid, cwd=cwd, env={"PATH": "/system/bin", "HOME": "/"}, umask=0o022, pid=ph.new_pid())
    io = IO()
    st = run_script(ctx, script, io)
    return io.out.decode(), io.err.decode(), st


def test_shell_language(bare_phone):
    ph = bare_phone
    assert _sh(ph, "echo 'a  b' \"c  $X\" d\\ e; X=1; echo $X ${X}2 \"$X\"'$X'")[0] == "a  b c   d e\n1 12 1$X\n"
    assert _sh(ph, "false; echo $?; true && echo yes || echo no; false && echo yes || echo no")[0] == "1\nyes\nno\n"
    assert _sh(ph, "echo one > /data/local/tmp/f; echo two >> /data/local/tmp/f; cat < /data/local/tmp/f")[0] == \
        "one\ntwo\n"
    assert _sh(ph, "getprop ro.product.model | grep -c Huawei")[0] == "1\n"
    assert _sh(ph, "echo $(getprop ro.build.version.sdk)x")[0] == "33x\n"
    out = _sh(ph, "ls /sys/devices/system/cpu/cpu*/cpufreq/cpuinfo_max_freq")[0].split()
    assert len(out) == load_profile("kirin-990").cores
    assert _sh(ph, "cat /nope 2>&1; echo st=$?")[0] == "cat: /nope: No such file or directory\nst=1\n"
    assert _sh(ph, "exit 3; echo not")[2] == 3
    assert _sh(ph, "echo 'unterminated")[2] == 2
    out, err, st = _sh(ph, "for x in a b; do echo $x; done")
    assert st == 2 and "not supported" in err  # said plainly, not "for: not found"


def test_permissions_as_android_has_them(bare_phone):
    ph = bare_phone
    home = "/data/data/com.termux/files/home"
    out, err, st = _sh(ph, f"cat {home}/.termux/termux.properties")
    assert st == 1 and "Permission denied" in err  # shell uid: Termux's data is private
    out, err, st = _sh(ph, f"cat {home}/.termux/termux.properties", uid=TERMUX)
    assert st == 0 and "allow-external-apps = true" in out
    ph.fs.write(SHELL, "/data/local/tmp/private", b"s", mode=0o600, umask=0)
    ph.fs.write(SHELL, "/data/local/tmp/public", b"p", mode=0o644, umask=0)
    assert _sh(ph, "cat /data/local/tmp/private", uid=TERMUX)[2] == 1   # 0600 of the shell uid
    assert _sh(ph, "cat /data/local/tmp/public", uid=TERMUX)[0] == "p"
    assert _sh(ph, "ls /data/local/tmp", uid=TERMUX)[2] == 1  # 0771: traversable, not listable
    assert _sh(ph, "echo x > /data/local/tmp/new", uid=TERMUX)[2] == 1
    assert "Permission denied" in _sh(ph, "/data/data/com.termux/files/usr/bin/python -V")[1]
    assert _sh(ph, "run-as com.termux id")[1].strip() == "run-as: package not debuggable: com.termux"
    fs = PhoneFS(ph.sandbox / "other")
    fs.put_dir("/d", SHELL, 0o700)
    fs.write(SHELL, "/d/f", b"1")
    assert fs.read(SHELL, "/d/f") == b"1" and not fs.access(TERMUX, "/d/f", 4) and fs.access(ROOT, "/d/f", 4)
