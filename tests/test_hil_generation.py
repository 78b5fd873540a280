"""Exact greedy generation across real workers: the token ids of onnxruntime's greedy generation with
the whole model, for each zoo family (tiny and small), in recompute and kv_cache mode, with every
segment on a real worker (2-4 segments on 2-3 local workers, residual routes as plan.json gives them)
and with some segments executed in-process by the coordinator (what simulated nodes do in mixed runs)."""
from __future__ import annotations

import zlib

import numpy as np
import pytest

from llsim.errors import LLSimError
from llsim.hil.launcher import WorkerPool
from llsim.hil.local import LocalNode
from llsim.hil.runner import GreedyRunner, deploy, greedy_reference
from llsim.model.builder import build_model
from llsim.model.load import onnx_bundle
from llsim.model.segment import split_model
from llsim.model.zoo import get_config

FAMILIES = ["bloom", "gpt2", "llama"]
NEW = 8


@pytest.fixture(scope="module")
def pool():
    p = WorkerPool.start(3, heartbeat_s=0.1, patience=50)
    yield p
    p.stop()


_REFS: dict = {}
_CASES: dict = {}


def _reference(name: str, prompts: dict) -> dict:
    """Whole-model greedy tokens; the cache model's equal the recompute model's (checked here)."""
    key = (name, tuple(map(tuple, prompts.values())))
    if key not in _REFS:
        cfg = get_config(name)
        rec = {r: greedy_reference(build_model(cfg), p, NEW) for r, p in prompts.items()}
        kv = {r: greedy_reference(build_model(cfg, kv_cache=True), p, NEW) for r, p in prompts.items()}
        assert rec == kv, f"{name}: the cache model's greedy tokens differ from the recompute model's"
        _REFS[key] = rec
    return _REFS[key]


def _case(name: str, kv: bool, tmp_path, n_workers: int):
    key = (name, kv, n_workers)
    if key not in _CASES:
        _CASES[key] = _make_case(name, kv, tmp_path, n_workers)
    b, seg_dir, plan, prompts, seed = _CASES[key]
    return b, seg_dir, plan, prompts, np.random.default_rng(seed)


def _make_case(name: str, kv: bool, tmp_path, n_workers: int):
    """A seeded cut into 3-4 segments with residual routes, and two prompts of 3-8 random tokens."""
    rng = np.random.default_rng(zlib.crc32(f"{name}{kv}{n_workers}".encode()))
    b = onnx_bundle(name, seq_len=6, kv_cache=kv)
    n = b.graph.n_modules
    while True:  # 3..4 segments, two of them holding blocks (so side tensors take residual routes)
        k = int(rng.integers(3, min(4, n - 1) + 1))
        bounds = [0] + sorted(rng.choice(np.arange(1, n), size=k - 1, replace=False).tolist()) + [n]
        if b.graph.dependency_maps(bounds).residual:
            break
    res = split_model(b.om, b.cuts, b.graph, bounds, tmp_path / "segs", b.proto)
    assert res.plan["residual"], bounds
    cfg = get_config(name)
    prompts = {f"req{i}": [int(x) for x in rng.integers(0, cfg.vocab, int(rng.integers(3, 9)))] for i in range(2)}
    return b, tmp_path / "segs", res.plan, prompts, int(rng.integers(0, 2**31))


def _nodes(pool, n_seg: int, n_workers: int, rng, local: set[int] = frozenset()):
    """Segment i -> a worker (round robin over n_workers, so one may hold two) or in-process."""
    start = int(rng.integers(0, 3))
    nodes = [pool.workers[(start + i) % n_workers] for i in range(n_seg)]
    locals_ = {}
    for i in local:
        nodes[i] = locals_.setdefault("coordinator", LocalNode())
    return nodes


def _run(pool, name, mode, kv_model, tmp_path, n_workers=3, local=frozenset()):
    b, seg_dir, plan, prompts, rng = _case(name, kv_model, tmp_path, n_workers)
    nodes = _nodes(pool, len(plan["segments"]), n_workers, rng, local)
    dep = deploy(seg_dir, nodes, tag=f"{tmp_path.name}")  # a new id per test: nothing left from the last one
    try:
        g = GreedyRunner(dep, mode).generate(prompts, NEW, concurrency=2)
    finally:
        dep.unload()
        for n in dep.unique_nodes():
            if isinstance(n, LocalNode):
                n.close()
    assert g.tokens == _reference(name, prompts), (name, mode, plan["boundaries"])
    assert sorted((e.request, e.position) for e in g.events) == sorted(
        (r, i) for r in prompts for i in range(NEW))
    return g


def _params(size):
    return [pytest.param(f"{size}-{f}", marks=[pytest.mark.slow] if size == "small" else [], id=f"{size}-{f}")
            for f in FAMILIES]


@pytest.mark.parametrize("name", _params("tiny") + _params("small"))
@pytest.mark.parametrize("mode", ["recompute", "kv_cache"])
def test_all_real_chain_generates_the_whole_models_tokens(pool, name, mode, tmp_path):
    g = _run(pool, name, mode, mode == "kv_cache", tmp_path)
    kinds = {s.kind for s in g.stages}
    assert kinds == ({"prefill", "decode"} if mode == "kv_cache" else {"prefill", "recompute"})
    if mode == "kv_cache":  # decode steps fed one token each
        assert {s.seq_len for s in g.stages if s.kind == "decode"} == {1}


@pytest.mark.parametrize("name", _params("tiny") + _params("small"))
def test_two_workers_and_a_kv_model_in_recompute_mode(pool, name, tmp_path):
    """A cache model run in recompute mode (empty past each step, nothing kept) on 2 workers."""
    _run(pool, name, "recompute", True, tmp_path, n_workers=2)


@pytest.mark.parametrize("name", _params("tiny") + _params("small"))
@pytest.mark.parametrize("mode", ["recompute", "kv_cache"])
@pytest.mark.parametrize("local", [{0}, {1}, "last"], ids=["header-in-process", "middle-in-process",
                                                          "tail-in-process"])
def test_mixed_chain_with_segments_run_by_the_coordinator(pool, name, mode, local, tmp_path):
    b, seg_dir, plan, prompts, rng = _case(name, mode == "kv_cache", tmp_path, 3)
    n = len(plan["segments"])
    _run(pool, name, mode, mode == "kv_cache", tmp_path, local={n - 1} if local == "last" else local)


def test_kv_cache_mode_on_recompute_segments_is_a_clear_error(pool, tmp_path):
    b = onnx_bundle("tiny-gpt2", seq_len=4)
    split_model(b.om, b.cuts, b.graph, [0, 2, 5], tmp_path, b.proto)
    dep = deploy(tmp_path, pool.workers[:2], tag="nokv")
    try:
        with pytest.raises(LLSimError, match="recompute mode only"):
            GreedyRunner(dep, "kv_cache")
    finally:
        dep.unload()


def test_in_process_only_chain_is_exact(tmp_path):
    """No worker at all: every segment in-process (an all-simulated run's tensors)."""
    b = onnx_bundle("tiny-llama", seq_len=5, kv_cache=True)
    split_model(b.om, b.cuts, b.graph, [0, 1, 3, 5], tmp_path, b.proto)
    node = LocalNode()
    try:
        dep = deploy(tmp_path, [node, node, node], tag="inproc")
        prompts = {"a": [1, 2, 3], "b": [200, 100]}
        g = GreedyRunner(dep, "kv_cache").generate(prompts, NEW, concurrency=2)
        assert g.tokens == _reference("tiny-llama", prompts)
    finally:
        node.close()
