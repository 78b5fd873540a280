"""Failover at the client/runner level: a worker killed mid-run, one that stops answering (SIGSTOP: no
heartbeats), one whose executor wedges while it still heartbeats (a deadline), two failures in a row,
and losing every worker. Each is detected within a bounded time with a typed error; generation resumes
on re-cut segments loaded on the survivors from the last completed token, with every (request, token)
exactly once and the whole model's greedy tokens."""
from __future__ import annotations

import signal
import time
from collections import Counter

import numpy as np
import pytest

from llsim.hil.errors import WorkerLost
from llsim.hil.launcher import WorkerPool
from llsim.hil.runner import GreedyRunner, deploy, even_replan, greedy_reference
from llsim.model.builder import build_model
from llsim.model.load import onnx_bundle
from llsim.model.segment import split_model
from llsim.model.zoo import get_config

NEW = 10
HB, PATIENCE = 0.1, 5


def _setup(name, kv, tmp_path, n):
    b = onnx_bundle(name, seq_len=6, kv_cache=kv)
    m = b.graph.n_modules
    bounds = b.graph.even_boundaries(n)
    split_model(b.om, b.cuts, b.graph, bounds, tmp_path / "d0", b.proto)
    cfg = get_config(name)
    rng = np.random.default_rng(m)
    prompts = {f"r{i}": [int(x) for x in rng.integers(0, cfg.vocab, 5)] for i in range(3)}
    refs = {r: greedy_reference(build_model(cfg), p, NEW) for r, p in prompts.items()}
    return b, prompts, refs


def _exactly_once(g, prompts):
    c = Counter((e.request, e.position) for e in g.events)
    assert set(c) == {(r, i) for r in prompts for i in range(NEW)}
    assert max(c.values()) == 1


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("mode", ["kv_cache", "recompute"])
@pytest.mark.parametrize("how", ["killed", "stopped"])
def test_worker_lost_mid_run_fails_over_and_resumes_exactly(name, mode, how, tmp_path):
    b, prompts, refs = _setup(name, mode == "kv_cache", tmp_path, 3)
    with WorkerPool.start(3, heartbeat_s=HB, patience=PATIENCE) as pool:
        dep = deploy(tmp_path / "d0", list(pool.workers), tag="d0")
        hit = {}

        def on_token(ev):  # mid-run: after request r1's 4th token, the middle worker goes
            if not hit and ev.request == "r1" and ev.position == 3:
                hit["t"] = time.monotonic()
                pool.kill(1, signal.SIGKILL if how == "killed" else signal.SIGSTOP)

        run = GreedyRunner(dep, mode, replan=even_replan(b, tmp_path / "replans"), on_token=on_token)
        g = run.generate(prompts, NEW, concurrency=2)
        assert g.tokens == refs
        _exactly_once(g, prompts)
        assert len(g.failovers) == 1
        f = g.failovers[0]
        assert f.failed == ["local-1"] and f.error_type == ("WorkerDied" if how == "killed" else "WorkerHung")
        bound = 1.5 if how == "killed" else HB * PATIENCE + 1.0  # + scheduling on a busy host
        assert f.detected_at - hit["t"] < bound
        assert len(f.boundaries) == 3  # re-cut into 2 segments for the 2 survivors
        after = {e.deployment for e in g.events if e.deployment != "d0"}
        assert after == {f.new}
        if mode == "kv_cache":  # each request resumed with a prefill of its whole context on the new cut
            first = {}
            for s in g.stages:
                if s.deployment == f.new:
                    first.setdefault(s.request, s)
            assert all(s.kind == "prefill" and s.seq_len == len(prompts[r]) + s.position for r, s in first.items())


def test_a_wedged_worker_that_still_heartbeats_misses_its_deadline(tmp_path):
    """The executor of worker 1 stalls after 12 runs (fault injection) while heartbeats go on: the stage's
    deadline (slack x the predicted time of it and the stages before it) catches it."""
    b, prompts, refs = _setup("tiny-bloom", True, tmp_path, 3)
    with WorkerPool.start(3, heartbeat_s=HB, patience=PATIENCE,
                          extra_args_per_worker={1: ["--fault-stall-after", "12"]}) as pool:
        dep = deploy(tmp_path / "d0", list(pool.workers), tag="d0")
        predict = lambda s, kind, seq, past: 0.02  # noqa: E731
        run = GreedyRunner(dep, "kv_cache", replan=even_replan(b, tmp_path / "replans"), predict=predict, slack=5,
                           floor_s=1.0)
        t0 = time.monotonic()
        g = run.generate(prompts, NEW, concurrency=2)
        assert g.tokens == refs
        _exactly_once(g, prompts)
        assert [f.error_type for f in g.failovers] == ["DeadlineExceeded"] and g.failovers[0].failed == ["local-1"]
        assert pool.processes[1].alive()  # it was alive all along: a deadline, not a heartbeat, caught it
        assert g.failovers[0].detected_after_s < 1.0 + 5 * 0.06 + 0.5  # stage 1's deadline, not later
        assert time.monotonic() - t0 < 15


def test_two_failures_in_a_row(tmp_path):
    b, prompts, refs = _setup("tiny-llama", True, tmp_path, 4)
    with WorkerPool.start(4, heartbeat_s=HB, patience=PATIENCE) as pool:
        dep = deploy(tmp_path / "d0", list(pool.workers), tag="d0")
        done = []

        def on_token(ev):
            n = len([e for e in run._gen.events])
            if n == 5 and not done:
                done.append(1)
                pool.kill(0, signal.SIGKILL)  # the header
            elif n == 17 and len(done) == 1:
                done.append(2)
                pool.kill(3, signal.SIGKILL)

        run = GreedyRunner(dep, "kv_cache", replan=even_replan(b, tmp_path / "replans"), on_token=on_token)
        g = run.generate(prompts, NEW, concurrency=3)
        assert g.tokens == refs
        _exactly_once(g, prompts)
        assert [f.failed for f in g.failovers] == [["local-0"], ["local-3"]]
        assert len(g.failovers[1].boundaries) == 3


def test_losing_every_worker_raises_with_the_tokens_so_far(tmp_path):
    b, prompts, refs = _setup("tiny-gpt2", False, tmp_path, 2)
    with WorkerPool.start(2, heartbeat_s=HB, patience=PATIENCE) as pool:
        dep = deploy(tmp_path / "d0", list(pool.workers), tag="d0")

        def on_token(ev):
            if ev.request == "r0" and ev.position == 2:
                pool.kill(0, signal.SIGKILL)
                pool.kill(1, signal.SIGKILL)

        run = GreedyRunner(dep, "recompute", replan=even_replan(b, tmp_path / "replans"), on_token=on_token)
        t0 = time.monotonic()
        with pytest.raises(WorkerLost) as ei:
            run.generate(prompts, NEW, concurrency=2)
        assert time.monotonic() - t0 < 5
        partial = ei.value.partial
        assert partial.tokens["r0"][:3] == refs["r0"][:3]
        for r, toks in partial.tokens.items():  # nothing wrong was recorded
            assert toks == refs[r][:len(toks)]


def test_without_replan_the_loss_is_raised(tmp_path):
    b, prompts, refs = _setup("tiny-gpt2", True, tmp_path, 2)
    with WorkerPool.start(2, heartbeat_s=HB, patience=PATIENCE) as pool:
        dep = deploy(tmp_path / "d0", list(pool.workers), tag="d0")
        run = GreedyRunner(dep, "kv_cache", on_token=lambda ev: ev.position == 1 and pool.kill(1, signal.SIGKILL))
        with pytest.raises(WorkerLost, match="local-1"):
            run.generate(prompts, NEW)


class _Unreachable:
    """A worker as seen through a wrong address: its coordinator link works, its peers cannot reach it."""

    def __init__(self, client):
        self._c = client
        self.address = "127.0.0.1:1"  # nothing listens there

    def __getattr__(self, name):
        return getattr(self._c, name)

    def connect_peers(self, addresses):
        return self._c.connect_peers(addresses)


def test_a_worker_its_upstream_cannot_reach_is_the_one_failed_over(tmp_path):
    """Worker 0 reports that forwarding to worker 1 failed: worker 1 is blamed (not 0), re-cut onto 0 and 2."""
    b, prompts, refs = _setup("tiny-llama", False, tmp_path, 3)
    with WorkerPool.start(3, heartbeat_s=HB, patience=PATIENCE) as pool:
        w = pool.workers
        nodes = [w[0], _Unreachable(w[1]), w[2]]
        dep = deploy(tmp_path / "d0", nodes, tag="d0")
        g = GreedyRunner(dep, "recompute", replan=even_replan(b, tmp_path / "replans")).generate(prompts, NEW,
                                                                                              concurrency=2)
        assert g.tokens == refs
        _exactly_once(g, prompts)
        assert [f.failed for f in g.failovers] == [["local-1"]] and "unreachable from local-0" in g.failovers[0].error
