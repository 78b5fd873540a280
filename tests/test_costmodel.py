"""Cost model, fit and profiler against independent expectations (hand arithmetic, synthetic truth)."""
import math

import numpy as np
import onnx
import pytest
import yaml

from llsim.device.costmodel import CostModel
from llsim.device.fit import nnls_relative
from llsim.device.profile import DeviceProfile, load_profile
from llsim.errors import LLSimError
from llsim.model.graph import Module, OpCost

from conftest import run_cli

BASE = {
    "name": "toy", "kind": "phone", "device": "Toy", "soc": "ToySoC",
    "cpu": [{"name": "big", "cores": 4, "freq_ghz": 2.0}],
    "memory": {"ram_total_gb": 8, "ram_available_gb": 4, "source": "assumed"},
    "compute": {"default_threads": 1, "source": "synthetic", "threads": {1: {
        "classes": {
            "matmul": {"overhead_us": 10, "gflops": 10, "gbps": 0, "weight_gbps": 5},
            "elementwise": {"overhead_us": 2, "gflops": 0, "gbps": 4},
        },
        "run_overhead_us": 100, "fused_scale": {"matmul": 1.0, "other": 0.5}, "fused_op_overhead_us": 1.0}}},
    "thermal": {"sustained_speed": 0.6, "time_to_throttle_s": 120, "source": "assumed"},
    "network": {"wifi_standard": "ax", "spatial_streams": 2, "source": "spec"},
    "provenance": {"kind": "calibrated", "sources": ["synthetic"], "method": "by hand"},
}


def _profile(tmp_path, data=BASE, name="toy.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return load_profile(p)


def _op(cls, flops=0.0, bytes_in=0, bytes_out=0, param=0, const=False, op_type="X"):
    return OpCost("op", op_type, cls, flops, bytes_in, bytes_out, param, (), const)


def test_op_latency_is_hand_arithmetic(tmp_path):
    cm = CostModel(_profile(tmp_path))
    # 1e9 flops at 10 GFLOP/s = 0.1 s; 5e8 weight bytes at 5 GB/s = 0.1 s; +10 us
    assert cm.op_seconds(_op("matmul", flops=1e9, param=5e8), 1) == pytest.approx(0.2 + 10e-6)
    # elementwise: 4e9 bytes at 4 GB/s = 1 s, +2 us
    assert cm.op_seconds(_op("elementwise", bytes_in=2e9, bytes_out=2e9), 1) == pytest.approx(1 + 2e-6)


def test_narrow_gemm_term_is_flops_over_sqrt_rows(tmp_path):
    data = _set(BASE, "compute.threads.1.classes.matmul.narrow_gflops", 20)
    cm = CostModel(_profile(tmp_path, data, "narrow.yaml"))
    plain = CostModel(_profile(tmp_path))

    def mm(rows):
        return OpCost("mm", "MatMul", "matmul", 2.0 * rows * 1000 * 1000, 0, 0, 0, (1, rows, 1000, 1000))

    for rows in (1, 4, 16, 256):
        extra = mm(rows).flops / math.sqrt(rows) / 20e9  # the narrow-GEMM charge, by hand
        assert cm.op_seconds(mm(rows), 1) - plain.op_seconds(mm(rows), 1) == pytest.approx(extra, rel=1e-9)
    # per FLOP, a 4-row GEMM pays twice the narrow charge of a 16-row one
    per_flop = lambda r: (cm.op_seconds(mm(r), 1) - plain.op_seconds(mm(r), 1)) / mm(r).flops  # noqa: E731
    assert per_flop(4) == pytest.approx(2 * per_flop(16))


def test_segment_uses_fused_calibration_and_skips_folded_ops(tmp_path):
    cm = CostModel(_profile(tmp_path))
    ops = [_op("matmul", flops=1e9), _op("elementwise", bytes_in=4e9), _op("matmul", flops=1e12, const=True)]
    m = Module(0, "m", "block", 0, 0, 0.0, 0, 0, ops)
    # run 100 us + matmul work 0.1 s x 1.0 + elementwise work 1 s x 0.5 + 2 ops x 1 us; the const op is folded
    assert cm.segment_seconds([m], 1) == pytest.approx(100e-6 + 0.1 + 0.5 + 2e-6)


def test_throttling_speed_scales_work_not_overheads(tmp_path):
    cm = CostModel(_profile(tmp_path), speed=0.5)
    assert cm.op_seconds(_op("elementwise", bytes_in=4e9), 1) == pytest.approx(2 + 2e-6)


def test_unknown_class_falls_back_once_never_zero(tmp_path):
    cm = CostModel(_profile(tmp_path))
    with pytest.warns(UserWarning, match="no coefficients for op class 'softmax'") as rec:
        a = cm.op_seconds(_op("softmax", bytes_in=4e9), 1)
        b = cm.op_seconds(_op("softmax", bytes_in=4e9), 1)
    assert len([r for r in rec if "softmax" in str(r.message)]) == 1
    assert a == b == pytest.approx(1 + 2e-6)  # the documented fallback: elementwise
    assert math.isfinite(a) and a > 0


def test_unmeasured_thread_count_is_a_clear_error(tmp_path):
    cm = CostModel(_profile(tmp_path))
    with pytest.raises(LLSimError, match=r"toy.yaml.*no coefficients for 4 threads.*measured: \[1\]"):
        cm.op_seconds(_op("matmul", flops=1), 4)


def _set(d, path, value):
    import copy
    d = copy.deepcopy(d)
    cur = d
    keys = path.split(".")
    for k in keys[:-1]:
        cur = cur[int(k) if k.isdigit() and isinstance(cur, dict) and int(k) in cur else k]
    if value is KeyError:
        del cur[keys[-1]]
    else:
        cur[keys[-1]] = value
    return d


BAD = [  # (mutation, words the message must contain)
    (("memory.source", KeyError), ["memory.source", "missing"]),
    (("compute.threads.1.classes.matmul.gflops", -3), ["compute.threads.1.classes.matmul.gflops", "greater than or equal"]),
    (("compute.threads.1.classes.tensorcore", {"overhead_us": 1}), ["unknown op class 'tensorcore'"]),
    (("compute.default_threads", 8), ["default_threads 8 has no coefficients"]),
    (("provenance.sources", []), ["calibrated profile needs"]),
    (("memory.ram_availble_gb", 3), ["memory.ram_availble_gb", "unknown field"]),
    (("memory.ram_available_gb", 99), ["exceeds ram_total_gb"]),
    (("thermal.sustained_speed", 0), ["thermal.sustained_speed"]),
]


@pytest.mark.parametrize("mutation,words", BAD)
def test_bad_profiles_name_file_and_field(tmp_path, mutation, words):
    data = _set(BASE, *mutation)
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(LLSimError) as e:
        load_profile(p)
    msg = str(e.value)
    assert "bad.yaml" in msg
    for w in words:
        assert w in msg


def test_unknown_profile_name_and_bad_yaml(tmp_path):
    with pytest.raises(LLSimError, match="unknown device profile 'nokia-3310'"):
        load_profile("nokia-3310")
    p = tmp_path / "broken.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(LLSimError, match="broken.yaml.*not valid YAML"):
        load_profile(p)


def test_nnls_recovers_known_coefficients_and_stays_nonnegative():
    rng = np.random.default_rng(0)
    # op sizes span decades, as real ones do (log-uniform), so the fixed overhead is identifiable
    X = np.column_stack([np.ones(200), 10 ** rng.uniform(4, 9, 200), 10 ** rng.uniform(3, 8, 200)])
    truth = np.array([5e-6, 1 / 50e9, 1 / 20e9])
    y = X @ truth * rng.uniform(0.98, 1.02, 200)
    b = nnls_relative(X, y)
    np.testing.assert_allclose(b, truth, rtol=0.05)
    # data that would want a negative coefficient gets 0 instead
    y2 = X[:, 1] * 1e-10 - X[:, 2] * 1e-12 + 1e-3
    assert (nnls_relative(X, y2) >= 0).all()


class SyntheticExecutor:
    """A faithful stand-in for a device: per-op kernel time from known coefficients, whole-graph time
    = the fused formula. The profiler must recover the coefficients from its samples."""

    name = "synthetic"

    def __init__(self, truth: DeviceProfile):
        self.cm = CostModel(truth)

    def describe(self):
        return {"host": "synthetic", "cpu": "synthetic", "cores": 2, "ram_total_gb": 8.0, "ram_available_gb": 6.0,
                "onnxruntime_version": "n/a", "machine": "synthetic"}

    @staticmethod
    def _graph(model, feeds):
        from llsim.model.cuts import model_graph_from_onnx
        from llsim.model.onnx_graph import analyse

        proto = onnx.load_from_string(model)
        # every symbolic input dim bound to the size fed (a KV graph's past and past+seq dims apart)
        sym = {d.dim_param: feeds[i.name].shape[k] for i in proto.graph.input if i.name in feeds
               for k, d in enumerate(i.type.tensor_type.shape.dim) if d.dim_param}
        om = analyse(proto, input_shapes={k: v.shape for k, v in feeds.items()}, dim_overrides=sym)
        return model_graph_from_onnx(om)

    def profile_nodes(self, model, feeds, threads, runs, warmup):
        ops = [op for m in self._graph(model, feeds).modules for op in m.ops]
        return {c.name: self.cm.op_seconds(c, threads) for c in ops}

    def time_runs(self, model, feeds, threads, runs, warmup):
        return self.cm.segment_seconds(self._graph(model, feeds).modules, threads)


def test_profiler_recovers_a_synthetic_device(tmp_path):
    from llsim.device.profiler import profile_host

    truth_data = _set(BASE, "compute.threads.1.classes", {
        "matmul": {"overhead_us": 8, "gflops": 40, "gbps": 30, "weight_gbps": 12, "narrow_gflops": 25},
        "elementwise": {"overhead_us": 3, "gflops": 0, "gbps": 6},
        "gather": {"overhead_us": 4, "gflops": 0, "gbps": 10},
        "norm": {"overhead_us": 5, "gflops": 20, "gbps": 0},
        "softmax": {"overhead_us": 5, "gflops": 8, "gbps": 0},
        "reduce": {"overhead_us": 3, "gflops": 0, "gbps": 6},
        "shape": {"overhead_us": 2, "gflops": 0, "gbps": 50},
    })
    truth = _profile(tmp_path, truth_data, "truth.yaml")
    prof, _ = profile_host(tmp_path / "synthetic.yaml", [1], executor=SyntheticExecutor(truth), runs=1, warmup=0,
                           log=lambda m: None, quick=True)
    got = prof.compute.threads[1].classes
    want = truth.compute.threads[1].classes
    for cls in ("matmul", "elementwise", "norm", "softmax"):
        assert got[cls].overhead_us == pytest.approx(want[cls].overhead_us, rel=0.02), cls
    assert got["matmul"].gflops == pytest.approx(40, rel=0.02)
    assert got["matmul"].weight_gbps == pytest.approx(12, rel=0.02)
    assert got["matmul"].narrow_gflops == pytest.approx(25, rel=0.02)
    assert got["elementwise"].gbps == pytest.approx(6, rel=0.02)
    tc = prof.compute.threads[1]
    assert tc.fused_scale["matmul"] == pytest.approx(1.0, rel=0.02)
    assert tc.fused_scale["other"] == pytest.approx(0.5, rel=0.02)
    assert tc.run_overhead_us == pytest.approx(100, rel=0.05)
    # the written profile reloads and names its samples file, which exists
    again = load_profile(tmp_path / "synthetic.yaml")
    assert (tmp_path / again.provenance.samples).exists()


def test_cli_profile_predict_json(tmp_path, capsys):
    p = tmp_path / "toy.yaml"
    p.write_text(yaml.safe_dump(BASE))
    with pytest.warns(UserWarning, match=r"no coefficients for op class '\w+' at 1 threads; using 'elementwise'") as rec:
        code, out, err = run_cli(["profile", "predict", p, "tiny-llama", "--seq-len", "8", "--json"], capsys)
    assert {"gather", "softmax"} <= {str(w.message).split("'")[1] for w in rec}  # the toy profile lacks them
    assert code == 0, err
    import json
    d = json.loads(out)
    assert set(d) == {"profile", "model", "seq_len", "threads", "total_ms", "modules"}
    assert d["threads"] == 1 and d["seq_len"] == 8 and len(d["modules"]) == 5
    assert d["total_ms"] > 0
    code, out, err = run_cli(["profile", "predict", p, "tiny-llama", "--threads", "4"], capsys)
    assert code == 2 and "no coefficients for 4 threads" in err


def test_interleaved_rounds_drop_a_slow_spell():
    """A host slowed for a while (calls 3-6 of 9 take 1.5x) spoils one round of several jobs; with
    interleaved rounds each job keeps an unspoilt value, where timing jobs in blocks would not."""
    from llsim.device.executor import interleaved

    truth = {"a": 1.0, "b": 2.0, "c": 3.0}
    calls = []

    def measure(job, first):
        calls.append((job, first))
        slow = 1.5 if 3 <= len(calls) <= 6 else 1.0
        return truth[job] * slow

    assert interleaved(measure, ["a", "b", "c"], 3) == [1.0, 2.0, 3.0]
    assert calls[:4] == [("a", True), ("b", True), ("c", True), ("a", False)]  # round-robin; warm-up once
    calls.clear()
    blocks = [min(measure(j, True) for _ in range(3)) for j in ("a", "b", "c")]  # the same calls, in blocks
    assert blocks[1] == 3.0  # job b was measured only inside the slow spell
    # dict results (per-op medians): the minimum per key
    seq = iter([{"x": 2.0, "y": 1.0}, {"x": 1.0, "y": 3.0}])
    assert interleaved(lambda j, f: next(seq), ["g"], 2) == [{"x": 1.0, "y": 1.0}]


def test_a_class_with_only_the_narrow_term_is_not_all_zero(tmp_path):
    data = _set(BASE, "compute.threads.1.classes.matmul", {"overhead_us": 0, "narrow_gflops": 20})
    assert _profile(tmp_path, data, "narrow-only.yaml").compute.threads[1].classes["matmul"].narrow_gflops == 20
    data = _set(BASE, "compute.threads.1.classes.matmul", {"overhead_us": 0})
    with pytest.raises(LLSimError, match="all coefficients are zero"):
        _profile(tmp_path, data, "all-zero.yaml")

def test_interleaved_median_is_the_typical_round():
    """combine="median" (whole-segment latencies): one slow round of three is dropped as by the
    minimum, but a host that is fast in only one round of three does not set the figure, which the
    minimum would (a moment faster than the runs that follow)."""
    from llsim.device.executor import interleaved

    slow_spell = iter([1.0, 1.5, 1.0])  # one disturbed round
    assert interleaved(lambda j, f: next(slow_spell), ["a"], 3, combine="median") == [1.0]
    fast_moment = iter([1.2, 0.8, 1.2])  # one unusually fast round
    assert interleaved(lambda j, f: next(fast_moment), ["a"], 3, combine="median") == [1.2]
    fast_moment = iter([1.2, 0.8, 1.2])
    assert interleaved(lambda j, f: next(fast_moment), ["a"], 3) == [0.8]
    seq = iter([{"x": 2.0}, {"x": 1.0, "y": 3.0}, {"x": 4.0, "y": 5.0}])  # per key, over the rounds that have it
    assert interleaved(lambda j, f: next(seq), ["g"], 3, combine="median") == [{"x": 2.0, "y": 4.0}]
    with pytest.raises(ValueError, match="combine"):
        interleaved(lambda j, f: 1.0, ["a"], 1, combine="mean")


def test_time_runs_is_the_median_of_all_runs(monkeypatch):
    """LocalExecutor.time_runs: the median of rounds x runs timed runs (warm-ups not timed)."""
    from llsim.device import executor as ex

    class Sess:
        def run(self, *_):
            pass

    e = ex.LocalExecutor(evict_cache=False)
    monkeypatch.setattr(e, "_session", lambda *a, **k: Sess())
    durations = iter([5.0, 1.0, 2.0, 9.0, 3.0, 4.0])  # each timed run's duration
    clock = {"t": 0.0, "start": True}

    def perf_counter():
        if clock["start"]:
            clock["start"] = False
            return clock["t"]
        clock["start"] = True
        clock["t"] += next(durations)
        return clock["t"]

    monkeypatch.setattr(ex.time, "perf_counter", perf_counter)
    assert e.time_runs(b"", {}, 1, runs=3, warmup=2, rounds=2) == 3.5  # median of 5, 1, 2, 9, 3, 4


@pytest.mark.parametrize("where", ["profiler", "worker"])
def test_cache_size_skips_sysfs_entries_without_a_size(tmp_path, monkeypatch, where):
    """sysfs lists index0..N and a plain file (uevent); an entry without a size must not end the scan
    (it did: the eviction buffer then fell back to 32 MiB whatever the cache). The same for the
    worker's own copy (it evicts between a phone's timed runs for `llsim profile adb`)."""
    from llsim.device import executor
    from llsim.hil import worker

    mod, scan = (executor, executor._cache_bytes) if where == "profiler" else (worker, worker.cache_bytes)
    (tmp_path / "uevent").write_text("")
    for i, size in enumerate(["48K", "1280K", "65536K"]):
        (tmp_path / f"index{i}").mkdir()
        (tmp_path / f"index{i}" / "size").write_text(size + "\n")
    (tmp_path / "index9").mkdir()  # no size file
    monkeypatch.setattr(mod, "CACHE_SYSFS", str(tmp_path))
    assert scan() == 64 << 20
    monkeypatch.setattr(mod, "CACHE_SYSFS", str(tmp_path / "missing"))
    assert scan() == 32 << 20
