"""Worker overhead: a stage through a local worker vs the same segment run in this process.

For each case the same segment file runs (1 intra-op thread, default graph optimisations, as the
worker opens it) in two ways, in interleaved rounds (each round: every case both ways):

* **in-process**: ``session.run`` here, timed around the call;
* **through the worker**: ``WorkerClient.submit(...).result()`` timed at the coordinator: framing,
  loopback TCP both ways, the worker's queue and executor thread, the reply, the client's reader thread.

The figure is the difference of the medians (and of the p90 of the worker side against the in-process
median, the worst case a pipeline sees). Target: <= 0.3 ms + 5% of the in-process time.

Two columns split it: ``protocol`` = round trip - the worker's own ``compute_s`` (framing, loopback
both ways, thread wake-ups), and the worker's ``compute_s`` against ``in-process paced``: the same
in-process runs with 1 ms pauses between them, the rhythm in which a worker serves stages (back to
back, in-process runs keep caches and the core's predictors warm; a pipeline stage does not).
"""
from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROUNDS = 8
RUNS = 40
PAUSE_S = 0.001  # "paced": in-process runs 1 ms apart, the rhythm of a stage served by a worker


@dataclass
class Case:
    name: str
    seg_dir: Path
    segment: int
    feeds_fn: object  # step -> feeds (for the in-process run: everything; for the worker: without kept state)
    reply: list
    kv: bool = False
    reduce: dict | None = None


def _segments(tmp: Path):
    from llsim.model.load import onnx_bundle
    from llsim.model.segment import split_model

    out = {}
    for name, kv, bounds in (("tiny-gpt2", False, None), ("small-gpt2", False, [0, 3, 7, 10]),
                             ("small-llama", True, [0, 2, 6, 8]), ("small-bloom", False, [0, 7, 8])):
        b = onnx_bundle(name, seq_len=8, kv_cache=kv)
        bounds = bounds or [0, b.graph.n_modules]
        d = tmp / f"{name}{'-kv' if kv else ''}"
        split_model(b.om, b.cuts, b.graph, bounds, d, b.proto)
        out[(name, kv)] = d
    return out


def _inputs(plan: dict, seg: int, seq: int, past: int, rng) -> dict:
    s = plan["segments"][seg]
    feeds = {}
    for i in s["inputs"]:
        shape = list(i["shape"])
        if i["name"] == "input_ids":
            feeds[i["name"]] = rng.integers(0, 100, (1, seq)).astype(np.int64)
        elif i["name"] == "attention_mask":
            feeds[i["name"]] = np.ones((1, past + seq), np.int64)
        elif len(shape) == 3:  # hidden state [1, S, H]
            feeds[i["name"]] = rng.standard_normal((1, seq, shape[2])).astype(np.float32)
        elif len(shape) == 4 and shape[2] == shape[3]:  # mask / ALiBi [1, h, S, T] (S == T at the binding)
            feeds[i["name"]] = np.zeros((1, shape[1], seq, past + seq), np.float32)
        elif len(shape) == 4:  # rotary table [1, 1, S, head_dim]
            feeds[i["name"]] = rng.standard_normal((1, shape[1], seq, shape[3])).astype(np.float32)
        else:
            raise ValueError(f"bench: no generator for input {i['name']} {shape}")
    return feeds


def _session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def measure(rounds: int = ROUNDS, runs: int = RUNS, log=print):
    import json

    from llsim.hil.client import plan_segment_specs
    from llsim.hil.launcher import WorkerPool

    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, WorkerPool.start(1, heartbeat_s=0.5) as pool:
        dirs = _segments(Path(tmp))
        w = pool.workers[0]
        cases = []
        # (label, model dir key, segment, seq, past, reply outputs?, reduce)
        spec_list = [
            ("tiny-gpt2 whole model, 8 tokens, logits back", ("tiny-gpt2", False), 0, 8, 0, True, None),
            ("tiny-gpt2 whole model, 8 tokens, token id back", ("tiny-gpt2", False), 0, 8, 0, True,
             {"logits": "argmax_last"}),
            ("small-gpt2 blocks 2-5, 1 token", ("small-gpt2", False), 1, 1, 0, True, None),
            ("small-gpt2 blocks 2-5, 32 tokens", ("small-gpt2", False), 1, 32, 0, True, None),
            ("small-llama blocks 1-4, KV decode (past 32, kept on the worker)", ("small-llama", True), 1, 1, 32,
             True, None),
            ("small-bloom head, 16 tokens, 384 KB of logits back", ("small-bloom", False), 1, 16, 0, True, None),
        ]
        for label, key, seg, seq, past, _, reduce in spec_list:
            d = dirs[key]
            plan = json.loads((d / "plan.json").read_text())
            spec = plan_segment_specs(d, f"{key[0]}{key[1]}/")[seg]
            w.load([spec])
            sess = _session(Path(spec.path))
            states = plan["segments"][seg].get("state", [])
            # per run: a decode step's cache (and mask) is one token longer than the last one's
            feeds = [_inputs(plan, seg, seq, past + (k if states else 0), rng) for k in range(runs)]
            past_t = {}
            for st in states:
                shape = list(st["shape"])
                shape[0], shape[st["axis"]] = 1, past
                past_t[st["input"]] = rng.standard_normal(shape).astype(np.float32)
            outs = [o["name"] for o in plan["segments"][seg]["outputs"]]
            cases.append(dict(label=label, key=spec.key, sess=sess, feeds=feeds, past=past_t, states=states,
                              outs=outs, reduce=reduce, inproc=[], paced=[], worker=[], compute=[], proto=[],
                              bytes=(0, 0)))

        def run_inproc(c, pause_s=0.0):
            st = dict(c["past"])
            ts = []
            names = c["outs"] + [s["output"] for s in c["states"]]
            for k in range(runs):
                x = {**c["feeds"][k], **st}
                if pause_s:
                    time.sleep(pause_s)
                t0 = time.perf_counter()
                vals = c["sess"].run(names, x)
                ts.append(time.perf_counter() - t0)
                if c["states"]:  # a decode step: the cache grows by one token, as on the worker
                    st = {s["input"]: v for s, v in zip(c["states"], vals[len(c["outs"]):])}
            return ts

        def run_worker(c, r):
            ts, comp, proto = [], [], []
            rid = f"bench{r}"
            w.drop(rid)
            for k in range(runs):
                x = dict(c["feeds"][k])
                if c["states"] and k == 0:
                    x.update(c["past"])  # the first step brings the cache, later ones use the kept one
                t0 = time.perf_counter()
                res = w.submit(rid, k, c["key"], x, reply=c["outs"], reduce=c["reduce"]).result(timeout=60)
                ts.append(time.perf_counter() - t0)
                comp.append(res.compute_s)
                proto.append(ts[-1] - res.compute_s)
                c["bytes"] = (res.bytes_in, res.bytes_out)
            w.drop(rid)
            k0 = 1 if c["states"] else 0
            return ts[k0:], comp[k0:], proto[k0:]

        for c in cases:  # warm-up
            run_inproc(c)
            run_worker(c, -1)
        for r in range(rounds):
            for c in cases:
                a = run_inproc(c)
                paced = run_inproc(c, PAUSE_S)
                b, comp, proto = run_worker(c, r)
                c["inproc"].append(statistics.median(a[1:] if c["states"] else a))
                c["paced"].append(statistics.median(paced[1:] if c["states"] else paced))
                c["worker"].append((statistics.median(b), float(np.percentile(b, 90))))
                c["compute"].append(statistics.median(comp))
                c["proto"].append(statistics.median(proto))
        for c in cases:
            inproc = min(c["inproc"])
            wmed = min(x[0] for x in c["worker"])
            wp90 = min(x[1] for x in c["worker"])
            comp = min(c["compute"])
            target = 0.3e-3 + 0.05 * inproc
            rows.append({"case": c["label"], "inproc_ms": inproc * 1e3, "paced_ms": min(c["paced"]) * 1e3,
                         "protocol_ms": min(c["proto"]) * 1e3, "worker_compute_ms": comp * 1e3,
                         "round_trip_ms": wmed * 1e3, "round_trip_p90_ms": wp90 * 1e3,
                         "overhead_ms": (wmed - inproc) * 1e3, "overhead_p90_ms": (wp90 - inproc) * 1e3,
                         "target_ms": target * 1e3, "met": wmed - inproc <= target,
                         "bytes_in": c["bytes"][0], "bytes_out": c["bytes"][1]})
    return rows


def main() -> int:
    from rich.console import Console
    from rich.table import Table

    import onnxruntime as ort

    console = Console(width=200)
    t0 = time.perf_counter()
    rows = measure()
    t = Table(title=f"worker overhead: a stage through a local worker vs in-process (onnxruntime {ort.__version__}, "
                    f"1 thread, medians; min over {ROUNDS} interleaved rounds of {RUNS} runs)")
    for c in ("case", "in-process ms", "in-process paced ms", "worker compute ms", "round trip ms",
              "protocol ms", "overhead ms", "p90 overhead ms", "target ms", "met", "bytes in", "bytes out"):
        t.add_column(c, justify="left" if c == "case" else "right")
    for r in rows:
        t.add_row(r["case"], f"{r['inproc_ms']:.3f}", f"{r['paced_ms']:.3f}", f"{r['worker_compute_ms']:.3f}",
                  f"{r['round_trip_ms']:.3f}", f"{r['protocol_ms']:.3f}", f"{r['overhead_ms']:+.3f}",
                  f"{r['overhead_p90_ms']:+.3f}", f"{r['target_ms']:.3f}", "yes" if r["met"] else "NO",
                  f"{r['bytes_in']:,}", f"{r['bytes_out']:,}")
    console.print(t)
    worst = max(rows, key=lambda r: r["overhead_ms"] - r["target_ms"])
    console.print(f"overhead (median round trip - median in-process): {min(r['overhead_ms'] for r in rows):.3f} .. "
                  f"{max(r['overhead_ms'] for r in rows):.3f} ms, of which protocol (round trip - the worker's own "
                  f"compute) {min(r['protocol_ms'] for r in rows):.3f} .. {max(r['protocol_ms'] for r in rows):.3f} ms; "
                  f"target 0.3 ms + 5%: met in {sum(r['met'] for r in rows)}/{len(rows)} cases (farthest: "
                  f"{worst['case']}, {worst['overhead_ms'] - worst['target_ms']:+.3f} ms); "
                  f"bench took {time.perf_counter() - t0:.0f} s")
    return 0
