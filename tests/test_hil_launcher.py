"""``backend: local`` workers leave no process behind: after a normal exit, an error, Ctrl-C, SIGTERM,
a failed start-up, and even when the coordinator is killed outright. Checked with /proc and os.kill."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hil_helpers import wait_gone, workers_of
from llsim.hil.errors import WorkerDied
from llsim.hil.launcher import WorkerPool

ROOT = Path(__file__).resolve().parents[1]


def test_with_block_stops_every_worker():
    with WorkerPool.start(3) as pool:
        pids = pool.pids
        tmp = Path(pool.secret_file).parent
        assert all(pool.processes[i].alive() for i in range(3))
    assert wait_gone(pids, 5) == []
    assert not tmp.exists()  # the secret is gone too


def test_an_error_in_the_block_stops_them():
    with pytest.raises(RuntimeError):
        with WorkerPool.start(2) as pool:
            pids = pool.pids
            raise RuntimeError("boom")
    assert wait_gone(pids, 5) == []


def test_a_failed_start_leaves_nothing(tmp_path):
    """Worker 1 cannot start (an impossible CPU affinity): the error names it and shows its log; the
    worker that did start is stopped."""
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no sched_setaffinity here")
    with pytest.raises(WorkerDied) as ei:
        WorkerPool.start(2, cpus=[[], [4096]])
    assert "local-1" in str(ei.value) and "cpus" in str(ei.value)
    time.sleep(0.2)
    assert workers_of(os.getpid()) == set()


SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, {root!r})
    from llsim.hil.launcher import WorkerPool
    mode = sys.argv[1]
    if mode == "no-with":
        pool = WorkerPool.start(2)
        print(json.dumps(pool.pids), flush=True)
        time.sleep(0.5)
        sys.exit(0)  # atexit stops them
    with WorkerPool.start(2) as pool:
        print(json.dumps(pool.pids), flush=True)
        if mode == "error":
            time.sleep(0.3)
            raise SystemExit("an error in the coordinator")
        while True:
            time.sleep(0.1)
""")


@pytest.mark.parametrize("mode,sig", [("wait", signal.SIGINT), ("wait", signal.SIGTERM), ("wait", signal.SIGHUP),
                                      ("error", None), ("no-with", None), ("wait", signal.SIGKILL)],
                         ids=["ctrl-c", "sigterm", "sighup", "error", "atexit", "coordinator-killed"])
def test_the_coordinator_process_leaves_no_worker_behind(mode, sig, tmp_path):
    script = tmp_path / "coord.py"
    script.write_text(SCRIPT.format(root=str(ROOT)))
    p = subprocess.Popen([sys.executable, str(script), mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        pids = json.loads(p.stdout.readline())
        assert len(pids) == 2 and wait_gone(pids, 0) == pids  # both running
        if sig is not None:
            time.sleep(0.3)
            p.send_signal(sig)
        p.wait(timeout=20)
        # killed outright, the workers notice their parent is gone (polled every 0.5 s)
        assert wait_gone(pids, 5 if sig == signal.SIGKILL else 3) == []
        if sig == signal.SIGINT:
            assert p.returncode != 0
        if sig in (signal.SIGTERM, signal.SIGHUP):
            assert p.returncode == -sig  # the signal still takes its usual course once the workers are stopped
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_stop_is_idempotent_and_kills_a_stuck_worker():
    pool = WorkerPool.start(1)
    pid = pool.pids[0]
    os.kill(pid, signal.SIGSTOP)
    pool.stop(grace_s=0.5)
    pool.stop()
    assert wait_gone([pid], 3) == []
