"""The host-memory estimate that validation checks before a run (:func:`llsim.validate.host_memory_estimate`)
against the peak RSS of real runs, and the check itself."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

CHILD = """
import json, sys
from llsim.scenario import load_scenario
from llsim.validate import host_memory_estimate
from llsim.judge.run import simulate
sc = load_scenario(sys.argv[1], sys.argv[2:])
est, _ = host_memory_estimate(sc, sum(d.count for d in sc.devices))
res = simulate(sc)[0]
assert res.metrics["stop_reason"] == "completed"
# VmHWM: this process's peak RSS (ru_maxrss would include the forking parent's peak on Linux)
hwm = next(int(ln.split()[1]) * 1024 for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
print(json.dumps({"est": est, "rss": hwm}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS from /proc (Linux)")
@pytest.mark.parametrize("scenario,sets", [
    ("demo", ["workload.requests=400", "workload.new_tokens=64"]),  # many tokens: token rows, timeline
    ("demo", ["workload.requests=4", "workload.new_tokens=400", "workload.mode=recompute"]),  # a graph per step
    ("cluster-32", ["workload.requests=32"]),  # many stages
    ("demo", ["devices[1].count=200", "allocation.strategy=uniform", "workload.requests=8"]),  # many devices
])
def test_host_memory_estimate_is_within_2x_of_the_peak_rss(scenario, sets):
    r = subprocess.run([sys.executable, "-c", CHILD, scenario, *sets], capture_output=True, text=True, cwd=ROOT,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert 0.5 <= m["est"] / m["rss"] <= 2.0, m


def test_a_scenario_larger_than_this_host_is_refused_before_any_work(monkeypatch):
    from llsim.errors import LLSimError
    from llsim.scenario import load_scenario

    monkeypatch.setenv("LLSIM_HOST_MEMORY_GB", "16")
    sc = load_scenario("demo", ["workload.requests=100000"])  # 3.2 M tokens: about 2 GB
    assert sc.workload.requests == 100000
    with pytest.raises(LLSimError, match=r"needs about \d+\.\d GB of host memory \(token rows"):
        load_scenario("demo", ["workload.requests=100000000"])
