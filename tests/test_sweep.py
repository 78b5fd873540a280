"""llsim sweep: grid expansion, deterministic point names, resuming after an interruption,
failures recorded per point, the local process pool and the Ray backend giving the same table."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from llsim.errors import LLSimError
from llsim.sweep import WALL_COLUMNS, expand, parse_axis, parse_seeds, point_name, run_sweep, split_values

ROOT = Path(__file__).resolve().parents[1]
TINY = """
name: tiny
model: tiny-bloom
seed: 1
devices:
  - {profile: snapdragon-8gen2, threads: 4}
  - {profile: kirin-990, threads: 4}
network: {kind: infrastructure, standard: ac, width_mhz: 80}
allocation: {strategy: uniform}
workload: {prompt_tokens: 8, new_tokens: 4, requests: 3, concurrency: 2, mode: kv_cache}
"""
GRID = ["workload.concurrency=1,2", "workload.new_tokens=3,4"]  # 2 x 2 points, x 2 seeds below


@pytest.fixture
def tiny(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY)
    return p


def comparable(table: pd.DataFrame) -> pd.DataFrame:
    """A sweep table without what differs between two runs of the same point (wall-clock times)."""
    return table.drop(columns=[c for c in table.columns if c.split(".")[-1] in WALL_COLUMNS]).reset_index(drop=True)


# ---- the grid ------------------------------------------------------------------------------------
def test_values_split_at_top_level_commas_only():
    assert split_values("1,2,3") == ["1", "2", "3"]
    assert split_values("[1, 2],[3],{a: 1, b: 2}") == ["[1, 2]", "[3]", "{a: 1, b: 2}"]
    assert split_values("'a,b',\"c,d\",e") == ["'a,b'", '"c,d"', "e"]
    assert parse_axis("devices.0.count=1, 2") == ("devices.0.count", ["1", "2"])
    for bad in ("workload.concurrency", "x=", "x=1,,2", "=1,2", "x=1,1"):
        with pytest.raises(LLSimError):
            parse_axis(bad)


def test_seeds():
    assert parse_seeds("1-5") == [1, 2, 3, 4, 5]
    assert parse_seeds("3") == [3]
    assert parse_seeds("1-3,10,2") == [1, 2, 3, 10]
    assert parse_seeds(None) is None
    for bad in ("a", "5-1", "1-", ""):
        with pytest.raises(LLSimError, match="--seeds"):
            parse_seeds(bad)


def test_grid_and_zip_expand_to_every_combination():
    g = [("a", ["1", "2", "3"]), ("b", ["x", "y"])]
    z = [("c", ["10", "20"]), ("d", ["p", "q"])]
    pts = expand(g, z, [1, 2])
    assert len(pts) == 3 * 2 * 2 * 2
    combos = {(tuple(p.assign), p.seed) for p in pts}
    assert len(combos) == len(pts)
    for p in pts:  # zipped paths move together
        v = dict(p.assign)
        assert (v["c"], v["d"]) in {("10", "p"), ("20", "q")}
    with pytest.raises(LLSimError, match="as many values"):
        expand(g, [("c", ["1", "2"]), ("d", ["1"])], [1])
    with pytest.raises(LLSimError, match="given twice"):
        expand([("a", ["1"]), ("a", ["2"])], [], [1])


def test_point_names_are_deterministic_unique_and_safe():
    rng = random.Random(7)
    alphabet = "abc.:/ {}[],=-_0123456789xyz'\"\u00e9"
    seen = {}
    for _ in range(3000):
        assign = [(f"p{rng.randrange(4)}.f{rng.randrange(3)}",
                   "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 12)))) for _ in range(rng.randrange(1, 4))]
        seed = rng.randrange(5)
        name = point_name(assign, seed)
        assert name == point_name(list(assign), seed)  # the same command, the same name
        assert "/" not in name and not name.startswith(".") and len(name) < 200
        key = json.dumps([assign, seed])
        assert seen.setdefault(name, key) == key, "two different points share a name"


# ---- running -------------------------------------------------------------------------------------
def _dirs(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "points").iterdir())


def test_sweep_interrupted_and_resumed_ends_with_every_point_once(tiny, tmp_path):
    out = tmp_path / "sw"
    state = {"n": 0}

    def stop_after_three(info, done, total):
        state["n"] += 1
        if state["n"] == 3:
            raise KeyboardInterrupt

    r1 = run_sweep(str(tiny), GRID, seeds="1-2", out=out, progress=stop_after_three)
    assert r1.interrupted and r1.ran == 3 and len(r1.table) == 3
    first = {n: (out / "points" / n / "point.json").read_text() for n in _dirs(out)}
    # a point killed mid-write leaves only a temporary directory
    junk = out / "points" / ".tmp-killed-point-xyz"
    junk.mkdir()
    (junk / "tokens.csv").write_text("request,tok")
    r2 = run_sweep(str(tiny), GRID, seeds="1-2", out=out)
    assert not r2.interrupted and r2.skipped == 3 and r2.ran == 5
    names = _dirs(out)
    assert len(names) == 8 == len(set(names)) and not junk.exists()
    for n, text in first.items():  # what was done is not redone
        assert (out / "points" / n / "point.json").read_text() == text
    t = r2.table
    assert len(t) == 8 and not t.duplicated(["workload.concurrency", "workload.new_tokens", "seed"]).any()
    assert set(t["seed"]) == {1, 2} and (t["status"] == "ok").all()
    assert str(t["workload.concurrency"].dtype) == "Int64"
    assert (t["tokens_generated"] == t["workload.new_tokens"] * 3).all()
    # the table on disk is load_sweep's, and an uninterrupted sweep gives the same one
    from llsim.results import load_sweep

    pd.testing.assert_frame_equal(comparable(load_sweep(out)), comparable(t))
    fresh = run_sweep(str(tiny), GRID, seeds="1-2", out=tmp_path / "fresh")
    pd.testing.assert_frame_equal(comparable(fresh.table).drop(columns="run_dir"),
                                  comparable(t).drop(columns="run_dir"))
    # a point is a normal run directory
    from llsim.results import load

    run = load(out / t["run_dir"].iloc[0])
    assert len(run.tokens) == int(t["tokens_generated"].iloc[0])
    # and running it again does nothing
    r3 = run_sweep(str(tiny), GRID, seeds="1-2", out=out)
    assert r3.ran == 0 and r3.skipped == 8


def test_failing_points_are_recorded_and_the_sweep_goes_on(tiny, tmp_path, monkeypatch):
    out = tmp_path / "sw"
    # concurrency 0 does not validate; 64 GB of RAM needed per phone for 1 GB available does not fit
    grid = ["workload.concurrency=1,0", "devices.0.ram_available_gb=8,0.00001"]
    r = run_sweep(str(tiny), grid, out=out)
    t = r.table
    assert len(t) == 4 and r.ran == 4
    ok = t[t["status"] == "ok"]
    assert len(ok) == 1 and ok["workload.concurrency"].iloc[0] == 1
    bad = t[t["status"] == "failed"]
    assert len(bad) == 3 and bad["error"].notna().all()
    assert bad["error"].str.contains("concurrency").sum() == 2
    assert bad["error"].str.contains("fit|budget|memory", regex=True).any()
    for rd in bad["run_dir"]:
        text = (out / rd / "error.txt").read_text()
        assert text.strip() and json.loads((out / rd / "point.json").read_text())["status"] == "failed"
    # failures stay done when resuming, unless asked to run them again
    assert run_sweep(str(tiny), grid, out=out).ran == 0
    assert run_sweep(str(tiny), grid, out=out, retry_failed=True).ran == 3
    # a bug inside one point (not a user error) is recorded with its traceback; the others run
    import llsim.judge.run as simrun

    real = simrun.run_to_dir

    def flaky(sc, out_, **kw):
        if sc.workload.new_tokens == 3:
            raise RuntimeError("boom")
        return real(sc, out_, **kw)

    monkeypatch.setattr(simrun, "run_to_dir", flaky)
    r = run_sweep(str(tiny), ["workload.new_tokens=3,4"], out=tmp_path / "sw2")
    t = r.table
    assert list(t["status"]) == ["failed", "ok"]
    assert "RuntimeError: boom" in t["error"].iloc[0]
    assert "Traceback" in (tmp_path / "sw2" / t["run_dir"].iloc[0] / "error.txt").read_text()


def test_sweep_user_errors(tiny, tmp_path):
    with pytest.raises(LLSimError, match="no point of the sweep is a valid scenario.*concurency"):
        run_sweep(str(tiny), ["workload.concurency=1,2"], out=tmp_path / "a")
    with pytest.raises(LLSimError, match="--jobs"):
        run_sweep(str(tiny), GRID, out=tmp_path / "b", jobs=0)
    run_sweep(str(tiny), ["workload.concurrency=1"], out=tmp_path / "c")
    tiny.write_text(TINY.replace("new_tokens: 4", "new_tokens: 5"))  # the scenario changed since
    with pytest.raises(LLSimError, match="another version of the scenario"):
        run_sweep(str(tiny), ["workload.concurrency=1"], out=tmp_path / "c")
    with pytest.raises(LLSimError, match="other --set"):
        tiny.write_text(TINY)
        run_sweep(str(tiny), ["workload.concurrency=1"], out=tmp_path / "d")
        run_sweep(str(tiny), ["workload.concurrency=1"], out=tmp_path / "d", sets=["workload.requests=2"])


@pytest.mark.slow
def test_cli_json_stdout_is_json_only(tiny, tmp_path):
    """Progress goes to stderr; stdout is one JSON document (also with --jobs 2)."""
    out = tmp_path / "sw"
    p = subprocess.run([sys.executable, "-m", "llsim", "sweep", str(tiny), "--grid", "workload.concurrency=1,2",
                        "--seeds", "1-2", "--json", "--out", str(out), "--jobs", "2"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["points"] == 4 and doc["done"] == 4 and doc["failed"] == 0 and len(doc["rows"]) == 4
    assert "sweep: 4/4" in p.stderr
    # a user error: one line on stderr, exit code 2
    p = subprocess.run([sys.executable, "-m", "llsim", "sweep", str(tiny), "--grid", "workload.concurrency",
                        "--out", str(out)], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 2 and p.stdout == "" and len(p.stderr.strip().splitlines()) == 1


def _children(pid: int) -> list[int]:
    p = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(x) for x in p.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    st = Path(f"/proc/{pid}/stat")
    return not (st.exists() and st.read_text().split()[2] == "Z")


@pytest.mark.slow
def test_ctrl_c_on_a_parallel_sweep_then_resume(tiny, tmp_path):
    """SIGINT to `llsim sweep --jobs 2`: exit 130, no worker left, only complete points kept; the same
    command then finishes the sweep. --jobs 2 gives the table of --jobs 1."""
    out = tmp_path / "sw"
    cmd = [sys.executable, "-m", "llsim", "sweep", str(tiny), "--grid", "workload.concurrency=1,2",
           "--grid", "workload.new_tokens=3,4,5,6,7,8", "--seeds", "1-3", "--jobs", "2", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.time() + 120
    workers: set[int] = set()
    while time.time() < deadline:
        workers |= set(_children(proc.pid))
        done = list((out / "points").glob("*/point.json")) if (out / "points").exists() else []
        if len(done) >= 2:
            break
        time.sleep(0.05)
    workers |= set(_children(proc.pid))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    time.sleep(0.5)
    assert workers and not [w for w in workers if _alive(w)], "a worker process outlived the sweep"
    kept = list((out / "points").iterdir())
    assert all((p / "point.json").is_file() or p.name.startswith(".tmp-") for p in kept)
    p = subprocess.run(cmd + ["--json"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["done"] == 36 and doc["skipped"] >= 2 and doc["ran"] + doc["skipped"] == 36
    names = [q.name for q in (out / "points").iterdir()]
    assert len(names) == 36 and not [n for n in names if n.startswith(".")]
    one = run_sweep(str(tiny), ["workload.concurrency=1,2", "workload.new_tokens=3,4,5,6,7,8"], seeds="1-3",
                    out=tmp_path / "serial")
    from llsim.results import load_sweep

    pd.testing.assert_frame_equal(comparable(load_sweep(out)), comparable(one.table))


def _ray_processes() -> set[int]:
    p = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True)
    out = set()
    for line in p.stdout.splitlines():
        pid, _, args = line.strip().partition(" ")
        if any(k in args for k in ("raylet", "gcs_server", "ray::", "default_worker.py", "dashboard")) and \
                "ray" in args:
            out.add(int(pid))
    return out


@pytest.mark.slow
def test_ray_backend_gives_the_local_table(tiny, tmp_path):
    if os.environ.get("CI"):
        import ray  # noqa: F401  (CI installs the extra: a missing Ray is a failure there, not a skip)
    ray = pytest.importorskip("ray")
    local = run_sweep(str(tiny), GRID, seeds="1-2", out=tmp_path / "local")
    before = _ray_processes()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        remote = run_sweep(str(tiny), GRID, seeds="1-2", out=tmp_path / "ray", backend="ray")
    finally:
        ray.shutdown()
    assert remote.ran == 8 and len(remote.table) == 8
    pd.testing.assert_frame_equal(comparable(remote.table), comparable(local.table))
    # the points are normal run directories, written by this process from the files the tasks sent
    from llsim.results import load

    for rd in remote.table["run_dir"]:
        assert len(load(tmp_path / "ray" / rd).tokens) > 0
    deadline = time.time() + 20
    while time.time() < deadline and _ray_processes() - before:
        time.sleep(0.5)
    assert not (_ray_processes() - before), "Ray processes left after ray.shutdown()"
    # the command starts its own local instance and stops it; its stdout is the JSON document only
    p = subprocess.run([sys.executable, "-m", "llsim", "sweep", str(tiny), "--grid", "workload.concurrency=1,2",
                        "--backend", "ray", "--jobs", "2", "--json", "--out", str(tmp_path / "ray-cli")],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["done"] == 2
    deadline = time.time() + 20
    while time.time() < deadline and _ray_processes() - before:
        time.sleep(0.5)
    assert not (_ray_processes() - before), "Ray processes left after llsim sweep --backend ray"
