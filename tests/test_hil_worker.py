"""The worker's semantics through the client: runs, KV state kept and dropped, forwarding between workers
(sequential and residual routes, a worker holding two segments), early inputs, one execution at a time,
measured times, heartbeats with RSS and temperature, deadlines and patience."""
from __future__ import annotations

import json
import signal
import time

import numpy as np
import onnxruntime as ort
import pytest

from llsim.hil.client import Forward, plan_segment_specs
from llsim.hil.errors import BadInput, DeadlineExceeded, Dropped, InputsTimeout, WorkerDied, WorkerHung
from llsim.hil.launcher import WorkerPool
from llsim.hil.local import LocalNode
from llsim.model.load import onnx_bundle
from llsim.model.segment import empty_state, run_full, split_model


@pytest.fixture(scope="module")
def pool():
    p = WorkerPool.start(3, heartbeat_s=0.1, patience=30)
    yield p
    p.stop()


@pytest.fixture(scope="module")
def kv_segments(tmp_path_factory):
    """tiny-llama with a cache, 4 segments: the side tensors (mask, rotary tables) take residual routes."""
    d = tmp_path_factory.mktemp("kv")
    b = onnx_bundle("tiny-llama", seq_len=5, kv_cache=True)
    split_model(b.om, b.cuts, b.graph, [0, 1, 2, 4, 5], d, b.proto)
    return d, json.loads((d / "plan.json").read_text()), b


def _ort(path):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def test_a_stage_computes_what_onnxruntime_computes_here_and_reports_its_times(pool, kv_segments):
    d, plan, _ = kv_segments
    w = pool.workers[0]
    spec = plan_segment_specs(d, "a")[0]
    info = w.load([spec])["a0"]
    assert info["sha256"] == spec.sha256 and info["load_s"] > 0
    ids = np.arange(7, dtype=np.int64)[None] % 200
    feeds = {"input_ids": ids, "attention_mask": np.ones((1, 7), np.int64)}
    names = [o["name"] for o in plan["segments"][0]["outputs"]]
    r = w.submit("q", 0, "a0", feeds, reply=names).result(timeout=10)
    for n, ref in zip(names, _ort(d / "segment_0.onnx").run(names, feeds)):
        np.testing.assert_array_equal(r.outputs[n], ref)
    assert r.compute_s > 0 and r.queue_s >= 0 and r.wait_s >= 0
    assert r.bytes_in == sum(a.nbytes for a in feeds.values())
    assert r.bytes_out == sum(r.outputs[n].nbytes for n in names)
    assert r.elapsed_s >= r.compute_s
    w.unload(["a0"])


def _chain(plan, nodes, keys, rid, step, feeds, state_fresh, reply_tail=("logits",)):
    """Submit every segment of one step: real->real routes forwarded by the workers, the rest fed here."""
    futs = []
    for s, seg in enumerate(plan["segments"]):
        node = nodes[s]
        direct = {i["name"]: feeds[i["name"]] for i in seg["inputs"] if i["from"] == "input"}
        expect = [i["name"] for i in seg["inputs"] if i["from"] != "input"]
        if state_fresh:
            direct.update({st["input"]: empty_state(st, 1) for st in seg["state"]})
        fw, reply = {}, []
        for o in seg["outputs"]:
            for dst in o["to"]:
                if node.address and nodes[dst].address:
                    fw.setdefault(dst, []).append(o["name"])
                elif o["name"] not in reply:
                    reply.append(o["name"])
        if s == len(plan["segments"]) - 1:
            reply += list(reply_tail)
        forward = [Forward(nodes[k].address, keys[k], tuple(v)) for k, v in fw.items()]
        futs.append(node.submit(rid, step, keys[s], direct, expect=expect, forward=forward, reply=reply))
    results = []
    for s, f in enumerate(futs):
        r = f.result(timeout=20)
        results.append(r)
        for o in plan["segments"][s]["outputs"]:
            for dst in o["to"]:
                if not (nodes[s].address and nodes[dst].address):
                    nodes[dst].feed(rid, step, keys[dst], {o["name"]: r.outputs[o["name"]]})
    return results


@pytest.mark.parametrize("layout", ["ring of 3", "one worker holds two segments", "in-process in the middle"])
def test_ring_with_residual_routes_decodes_like_the_whole_model(pool, kv_segments, layout):
    d, plan, b = kv_segments
    assert plan["residual"], "the cut should give residual routes"
    w = pool.workers
    nodes = {"ring of 3": [w[0], w[1], w[2], w[0]], "one worker holds two segments": [w[0], w[1], w[1], w[2]],
             "in-process in the middle": [w[0], LocalNode(), w[1], w[2]]}[layout]
    tag = layout.replace(" ", "")[:6]
    specs = plan_segment_specs(d, f"{tag}/")
    keys = [sp.key for sp in specs]
    for node in {id(n): n for n in nodes}.values():
        node.load([sp for sp, n in zip(specs, nodes) if n is node])
    full = _ort_full(b)
    prompt = [5, 17, 99, 3, 250, 8]
    seq, tokens, ref = list(prompt), [], []
    past = None
    for step in range(6):
        ids = seq if step == 0 else seq[-1:]
        feeds = {"input_ids": np.asarray([ids], np.int64), "attention_mask": np.ones((1, len(seq)), np.int64)}
        res = _chain(plan, nodes, keys, "ring", step, feeds, step == 0)
        tokens.append(int(np.argmax(res[-1].outputs["logits"][0, -1])))
        fo, past = full(feeds, past)
        ref.append(int(np.argmax(fo[0, -1])))
        np.testing.assert_allclose(res[-1].outputs["logits"], fo, atol=1e-5)
        seq.append(tokens[-1])
    assert tokens == ref
    for node in {id(n): n for n in nodes}.values():
        node.drop("ring")
        node.unload([k for k, n in zip(keys, nodes) if n is node])
        if isinstance(node, LocalNode):
            node.close()


def _ort_full(bundle):
    sess = ort.InferenceSession(bundle.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    pasts = [i for i in sess.get_inputs() if i.name.startswith("past")]

    def run(feeds, past):
        if past is None:
            past = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32) for i in pasts}
        outs = sess.run(None, {**feeds, **past})
        names = [o.name for o in sess.get_outputs()]
        return outs[0], {n.replace("present", "past_key_values"): v for n, v in zip(names[1:], outs[1:])}
    return run


def test_state_is_kept_per_request_and_dropped_when_told(pool, kv_segments):
    d, plan, _ = kv_segments
    w = pool.workers[1]
    spec = plan_segment_specs(d, "st")[1]
    w.load([spec])
    seg = plan["segments"][1]
    rng = np.random.default_rng(0)
    ins = {i["name"]: rng.standard_normal(i["shape"]).astype(np.float32) for i in seg["inputs"]}
    fresh = {st["input"]: empty_state(st, 1) for st in seg["state"]}
    for rid in ("a", "b"):
        w.submit(rid, 0, "st1", {**ins, **fresh}, reply=[]).result(timeout=10)
    kv_bytes = sum(int(np.prod(st["shape"][:2] + [5] + st["shape"][3:])) * 4 for st in seg["state"])
    assert w.status()["state_bytes"] == 2 * kv_bytes
    assert w.status()["state_requests"] == 2
    r = w.drop("a")
    assert r["state_bytes_freed"] == kv_bytes and w.status()["state_bytes"] == kv_bytes
    with pytest.raises(BadInput, match="no KV state"):
        w.submit("a", 1, "st1", ins, reply=[]).result(timeout=10)
    w.drop("b")
    assert w.status()["state_bytes"] == 0
    w.unload(["st1"])


def test_inputs_may_arrive_before_their_stage_is_submitted(pool, kv_segments):
    d, plan, _ = kv_segments
    w = pool.workers[2]
    w.load([plan_segment_specs(d, "early")[1]])
    seg = plan["segments"][1]
    rng = np.random.default_rng(4)
    ins = {i["name"]: rng.standard_normal(i["shape"]).astype(np.float32) for i in seg["inputs"]}
    fresh = {st["input"]: empty_state(st, 1) for st in seg["state"]}
    w.feed("e", 0, "early1", ins)  # all of them, before the submit
    r = w.submit("e", 0, "early1", fresh, expect=list(ins), reply=[seg["outputs"][0]["name"]]).result(timeout=10)
    ref = _ort(d / seg["file"]).run([seg["outputs"][0]["name"]], {**ins, **fresh})[0]
    np.testing.assert_array_equal(r.outputs[seg["outputs"][0]["name"]], ref)
    assert r.bytes_in == sum(a.nbytes for a in ins.values()) + sum(a.nbytes for a in fresh.values())
    w.drop("e")
    w.unload(["early1"])


def test_one_execution_at_a_time(pool, tmp_path):
    b = onnx_bundle("small-gpt2", seq_len=64)
    split_model(b.om, b.cuts, b.graph, [0, b.graph.n_modules], tmp_path, b.proto)
    w = pool.workers[0]
    w.load(plan_segment_specs(tmp_path, "big"))
    ids = np.ones((1, 64), np.int64)
    futs = [w.submit(f"c{i}", 0, "big0", {"input_ids": ids}, reply=[]) for i in range(6)]
    rs = sorted((f.result(timeout=60) for f in futs), key=lambda r: r.t_start)
    for a, b_ in zip(rs, rs[1:]):
        assert b_.t_start >= a.t_end  # never two session.run at once
    assert max(r.queue_s for r in rs) > 0.5 * sum(r.compute_s for r in rs[:-1])  # the last waited for the others
    w.unload(["big0"])


def test_heartbeats_carry_rss_and_temperature(tmp_path):
    zone = tmp_path / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("41500\n")
    (zone / "type").write_text("cpu-big\n")
    with WorkerPool.start(1, heartbeat_s=0.05, extra_args=["--thermal-root", str(tmp_path / "thermal")]) as p:
        w = p.workers[0]
        time.sleep(0.4)
        h = w.health
        assert h.heartbeats >= 3 and h.alive
        rss = int(open(f"/proc/{p.pids[0]}/statm").read().split()[1]) * 4096
        assert 0.5 * rss < h.rss_bytes < 2 * rss
        assert h.temp_c == {"cpu-big": 41.5} and h.temp_max_c == 41.5


def test_a_stage_whose_inputs_never_come(pool, kv_segments):
    """The worker answers inputs_timeout after the stage's pending timeout; with a shorter deadline the
    client raises DeadlineExceeded first. Either way the worker stays alive and the caller is free."""
    d, plan, _ = kv_segments
    w = pool.workers[1]
    w.load([plan_segment_specs(d, "never")[1]])
    seg = plan["segments"][1]
    expect = [i["name"] for i in seg["inputs"]]
    fresh = {st["input"]: empty_state(st, 1) for st in seg["state"]}
    t0 = time.monotonic()
    with pytest.raises(InputsTimeout, match="did not arrive"):
        w.submit("n1", 0, "never1", fresh, expect=expect, pending_timeout_s=0.3).result(timeout=10)
    assert time.monotonic() - t0 < 3
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="deadline"):
        w.submit("n2", 0, "never1", fresh, expect=expect, predicted_s=0.05, slack=2, floor_s=0.1).result(timeout=10)
    assert time.monotonic() - t0 < 2
    assert w.alive and w.ping() < 1
    # its stage waits on the worker until dropped: the drop answers it
    f = w.submit("n3", 0, "never1", fresh, expect=expect)
    w.drop("n3")
    with pytest.raises(Dropped):
        f.result(timeout=5)
    w.drop("n2")
    w.unload(["never1"])


@pytest.mark.parametrize("how", ["killed", "stopped"])
def test_a_lost_worker_fails_every_call_in_bounded_time(how, tmp_path):
    b = onnx_bundle("tiny-gpt2", seq_len=4)
    split_model(b.om, b.cuts, b.graph, [0, 2, 5], tmp_path, b.proto)
    specs = plan_segment_specs(tmp_path, "x")
    with WorkerPool.start(1, heartbeat_s=0.1, patience=5) as p:
        w = p.workers[0]
        w.load(specs[1:])
        seg = json.loads((tmp_path / "plan.json").read_text())["segments"][1]
        futs = [w.submit(f"r{i}", 0, "x1", expect=[i["name"] for i in seg["inputs"]]) for i in range(3)]
        t0 = time.monotonic()
        p.kill(0, signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        for f in futs:
            with pytest.raises(WorkerDied if how == "killed" else WorkerHung):
                f.result(timeout=5)
        took = time.monotonic() - t0
        assert took < (1.0 if how == "killed" else 0.5 + 1.0)  # patience 5 x 0.1 s, + scheduling on a busy host
        assert not w.alive
        with pytest.raises(WorkerDied if how == "killed" else WorkerHung):  # later calls fail at once
            w.submit("late", 0, "x1", expect=["a"]).result(timeout=1)


def test_affinity_is_applied_where_available(tmp_path):
    import os

    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no sched_setaffinity here")
    with WorkerPool.start(1, cpus=[[0]]) as p:
        assert p.workers[0].info["cpus"] == [0]
        assert sorted(os.sched_getaffinity(p.pids[0])) == [0]
        assert p.workers[0].configure(cpus=sorted(os.sched_getaffinity(0)))["cpus"] == sorted(os.sched_getaffinity(0))


def test_full_model_on_one_worker_matches(pool, tmp_path):
    b = onnx_bundle("tiny-bloom", seq_len=4)
    split_model(b.om, b.cuts, b.graph, [0, 5], tmp_path, b.proto)
    w = pool.workers[2]
    w.load(plan_segment_specs(tmp_path, "whole"))
    ids = np.asarray([[1, 2, 3, 4, 5, 6, 7]], np.int64)
    r = w.submit("w", 0, "whole0", {"input_ids": ids}, reply=["logits"], reduce={"logits": "argmax_last"})
    ref = run_full(b.proto, {"input_ids": ids})["logits"]
    out = r.result(timeout=10).outputs["logits"]
    assert out.dtype == np.int64 and out.tolist() == [int(np.argmax(ref[0, -1]))]
    w.unload(["whole0"])


def test_a_refused_fed_input_fails_its_stage_not_the_connection(pool, kv_segments):
    d, plan, _ = kv_segments
    w = pool.workers[0]
    w.load([plan_segment_specs(d, "fed")[1]])
    seg = plan["segments"][1]
    name = seg["inputs"][0]["name"]
    fresh = {st["input"]: empty_state(st, 1) for st in seg["state"]}
    f = w.submit("fd", 0, "fed1", fresh, expect=[i["name"] for i in seg["inputs"]])
    w.feed("fd", 0, "fed1", {name: np.zeros((1, 2, 3), np.int64)})  # the wrong dtype
    with pytest.raises(BadInput, match="must be float32"):
        f.result(timeout=5)
    assert w.alive and w.ping() < 1
    w.drop("fd")
    w.unload(["fed1"])


def test_sessions_open_with_the_pools_thread_count(tmp_path):
    b = onnx_bundle("tiny-gpt2", seq_len=4)
    split_model(b.om, b.cuts, b.graph, [0, 2, 5], tmp_path, b.proto)
    specs = plan_segment_specs(tmp_path, "t")
    with WorkerPool.start(1, threads=2) as p:
        loaded = p.workers[0].load(specs[:1])
        assert loaded["t0"]["threads"] == 2
        from dataclasses import replace

        assert p.workers[0].load([replace(specs[1], threads=1)])["t1"]["threads"] == 1
