"""Cut an ONNX model into runnable segment files and run them as a chain.

``split_model`` writes one ONNX file per segment plus ``plan.json``:

* ``segments[i].inputs``: each tensor the segment receives, with the segment it comes from
  (``"from": k``; graph inputs come from the header, segment 0, or are fed directly to segment 0),
* ``sequential`` / ``residual``: LinguaLinked's dependency maps (i -> i+1, and i -> k >= i+2 sent
  directly from the producer, never relayed),
* module ranges and the byte size of every route at the analysed (batch, seq_len),
* for a model with a KV cache (``"kv_cache": true``), ``segments[i].state``: the past -> present
  pairs of the blocks the segment runs. They are inputs and outputs of the segment file but not
  routes: the device running the segment keeps them between steps.

``run_chain`` executes the segments in order with onnxruntime, feeding each only what the plan's
maps route to it; ``verify`` compares that with the full model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from llsim.errors import LLSimError
from llsim.model.cuts import CutAnalysis, free_closure, node_inputs
from llsim.model.graph import ModelGraph
from llsim.model.kv import state_pairs
from llsim.model.onnx_graph import OnnxModel, random_inputs

PLAN_VERSION = 1


@dataclass
class SplitResult:
    out_dir: Path
    plan: dict
    files: list[Path]


def _segment_proto(om: OnnxModel, ca: CutAnalysis, full: onnx.ModelProto, a: int, b: int, inputs: list[str],
                   outputs: list[str], name: str) -> onnx.ModelProto:
    g = full.graph
    pos = range(a, b)
    idx = sorted(set(ca.exec_nodes[p] for p in pos) | set(free_closure(ca, pos)))
    nodes = [g.node[i] for i in idx]
    used = {x for n in nodes for x in node_inputs(n)}
    inits = [t for t in g.initializer if t.name in used]
    def vi(n):
        info = om.tensors[n]
        return helper.make_tensor_value_info(n, info.elem_type, None)
    graph = helper.make_graph(nodes, name, [vi(x) for x in inputs], [vi(x) for x in outputs], initializer=inits)
    m = helper.make_model(graph, opset_imports=list(full.opset_import), ir_version=full.ir_version,
                          producer_name="llsim-split")
    m.functions.extend(full.functions)
    return m


def segment_io(om: OnnxModel, ca: CutAnalysis, boundaries: list[int]):
    """Per segment: (exec range, input names, output names)."""
    starts = ca.module_starts
    n_exec = len(ca.exec_nodes)
    mod_start = starts + [n_exec]
    segs = []
    outputs = set(om.output_names)
    n_seg = len(boundaries) - 1
    seg_of_pos = [0] * n_exec
    ranges = []
    for s in range(n_seg):
        a, b = mod_start[boundaries[s]], mod_start[boundaries[s + 1]]
        ranges.append((a, b))
        for p in range(a, b):
            seg_of_pos[p] = s
    for s, (a, b) in enumerate(ranges):
        ins, outs = [], []
        seen = set()
        for p in range(a, b):
            for x in node_inputs(om.nodes[ca.exec_nodes[p]]):
                if x in ca.free_tensors or x in seen:
                    continue
                pp = ca.producer_pos.get(x)
                if pp is None or pp < a:
                    seen.add(x)
                    ins.append(x)
        for p in range(a, b):
            for o in om.nodes[ca.exec_nodes[p]].output:
                if not o:
                    continue
                later = any(seg_of_pos[c] > s for c in ca.consumer_pos.get(o, []))
                if later or o in outputs:
                    outs.append(o)
        segs.append(((a, b), ins, outs))
    return segs, seg_of_pos


def segment_protos(om: OnnxModel, ca: CutAnalysis, mg: ModelGraph, boundaries: list[int],
                   full: onnx.ModelProto | None = None) -> list[tuple[onnx.ModelProto, list[str], list[str]]]:
    """In-memory segment models with their input and output names (no files)."""
    b = mg.check_boundaries(boundaries)
    full = full if full is not None else om.proto
    segs, _ = segment_io(om, ca, b)
    return [(_segment_proto(om, ca, full, a, e, ins, outs, f"{om.name}_seg{s}"), ins, outs)
            for s, ((a, e), ins, outs) in enumerate(segs)]


def segment_feeds(full: onnx.ModelProto, segs, feeds: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Inputs of every segment for one graph input, by running the segments in order."""
    have = dict(feeds)
    out = []
    for proto, ins, outs in segs:
        x = {k: have[k] for k in ins}
        out.append(x)
        vals = _session(proto.SerializeToString()).run(outs, x)
        have.update(zip(outs, vals))
    return out


def split_model(om: OnnxModel, ca: CutAnalysis, mg: ModelGraph, boundaries: list[int], out_dir: str | Path,
                full: onnx.ModelProto | None = None) -> SplitResult:
    b = mg.check_boundaries(boundaries)
    if len(b) > 2 and not ca.valid_cuts:
        raise LLSimError(f"{om.name} cannot be cut: no position in its graph where a single activation tensor "
                         "crosses (every candidate cut has several activation tensors or tensors of unknown shape)")
    full = full if full is not None else om.proto
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    segs, seg_of_pos = segment_io(om, ca, b)
    maps = mg.dependency_maps(b)
    state_out = {o: i for i, o in ca.state.items()}
    axis = {sp.input: sp.axis for sp in state_pairs(om.proto)}
    graph_inputs = [x for x in om.input_names if x not in ca.state]
    graph_outputs = [x for x in om.output_names if x not in state_out]
    files, seg_meta = [], []
    for s, ((a, e), ins, outs) in enumerate(segs):
        proto = _segment_proto(om, ca, full, a, e, ins, outs, f"{om.name}_seg{s}")
        f = out / f"segment_{s}.onnx"
        onnx.save_model(proto, str(f))
        files.append(f)
        state = []
        for x in ins:
            if x in ca.state:
                if ca.state[x] not in outs:
                    raise LLSimError(f"{om.name}: KV-cache input {x} is read in segment {s} but its output "
                                     f"{ca.state[x]} is computed elsewhere: this model cannot keep its cache per segment")
                info = om.tensors[x]
                state.append({"input": x, "output": ca.state[x], "dtype": info.dtype,
                              "shape": list(info.shape or ()), "axis": axis[x]})
        stray = [x for x in outs if x in state_out and state_out[x] not in ins]
        if stray:
            raise LLSimError(f"{om.name}: KV-cache output {stray[0]} is computed in segment {s} but its input "
                             f"{state_out[stray[0]]} is read elsewhere: this model cannot keep its cache per segment")
        ins = [x for x in ins if x not in ca.state]
        outs = [x for x in outs if x not in state_out]
        inputs = []
        for x in ins:
            pp = ca.producer_pos.get(x, -1)
            src = "input" if (pp < 0 and s == 0) else (0 if pp < 0 else seg_of_pos[pp])
            info = om.tensors[x]
            inputs.append({"name": x, "from": src, "dtype": info.dtype, "shape": list(info.shape or ()),
                           "bytes": info.nbytes})
        outputs = []
        for x in outs:
            dsts = sorted({seg_of_pos[c] for c in ca.consumer_pos.get(x, []) if seg_of_pos[c] > s})
            info = om.tensors[x]
            outputs.append({"name": x, "to": dsts, "graph_output": x in graph_outputs, "dtype": info.dtype,
                            "shape": list(info.shape or ()), "bytes": info.nbytes})
        seg_meta.append({"index": s, "file": f.name, "modules": [b[s], b[s + 1]],
                         "module_names": [m.name for m in mg.modules[b[s]:b[s + 1]]],
                         "inputs": inputs, "outputs": outputs})
        if ca.state:
            seg_meta[-1]["state"] = state
    route = lambda r: {"name": r.name, "src": r.src_segment, "dst": r.dst_segment, "bytes": r.nbytes}  # noqa: E731
    plan = {
        "version": PLAN_VERSION,
        "model": om.name,
        "source": str(om.path) if om.path else None,
        "batch": om.batch,
        "seq_len": om.seq_len,
        "graph_inputs": graph_inputs,
        "graph_outputs": graph_outputs,
        "modules": [{"index": m.index, "name": m.name, "kind": m.kind, "params": m.params, "flops": m.flops,
                     "output_bytes": m.output_bytes} for m in mg.modules],
        "boundaries": b,
        "segments": seg_meta,
        "sequential": [route(r) for r in maps.sequential],
        "residual": [route(r) for r in maps.residual],
    }
    if ca.state:
        plan["kv_cache"] = True
    _check_plan_consistency(plan)
    (out / "plan.json").write_text(json.dumps(plan, indent=2, allow_nan=False) + "\n")
    return SplitResult(out, plan, files)


def _check_plan_consistency(plan: dict) -> None:
    """Every non-header input of every segment is routed by exactly one map entry, and vice versa."""
    routed = {(r["name"], r["dst"]): r["src"] for r in plan["sequential"] + plan["residual"]}
    needed = {(i["name"], s["index"]): i["from"] for s in plan["segments"] for i in s["inputs"] if i["from"] != "input"}
    if routed != needed:
        missing = set(needed) - set(routed)
        extra = set(routed) - set(needed)
        raise AssertionError(f"internal: dependency maps disagree with segment inputs: missing {missing}, extra {extra}")


def _session(path_or_bytes, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 4  # failures are raised (and reported by the CLI), not logged on stderr
    return ort.InferenceSession(str(path_or_bytes) if isinstance(path_or_bytes, Path) else path_or_bytes, so,
                                providers=["CPUExecutionProvider"])


def empty_state(entry: dict, batch: int) -> np.ndarray:
    """An empty KV cache for one plan.json ``state`` entry: its shape with the cached axis 0 and the
    batch axis (0) set to ``batch``."""
    shape = list(entry["shape"])
    shape[entry["axis"]] = 0
    if shape:
        shape[0] = batch
    return np.zeros(shape, dtype=np.dtype(entry["dtype"]))


def run_chain(seg_dir: str | Path, feeds: dict[str, np.ndarray],
              state: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Run the segments of ``seg_dir`` in order, each fed only what plan.json routes to it.

    For a KV-cache plan each segment's past tensors come from ``state`` (by input name), else from
    ``feeds``, else are empty (a prefill); the present tensors are returned with the graph outputs."""
    seg_dir = Path(seg_dir)
    plan = json.loads((seg_dir / "plan.json").read_text())
    produced: dict[int, dict[str, np.ndarray]] = {}
    results: dict[str, np.ndarray] = {}
    state = state or {}
    batch = next((int(v.shape[0]) for v in feeds.values() if getattr(v, "ndim", 0)), 1)
    for seg in plan["segments"]:
        s = seg["index"]
        sess = _session(seg_dir / seg["file"])
        x = {}
        for i in seg["inputs"]:
            src = i["from"]
            if src == "input" or (src == 0 and i["name"] in feeds and i["name"] in plan["graph_inputs"]):
                x[i["name"]] = feeds[i["name"]]
            else:
                x[i["name"]] = produced[src][i["name"]]
        kv = seg.get("state", [])
        for st in kv:
            n = st["input"]
            x[n] = state[n] if n in state else feeds[n] if n in feeds else empty_state(st, batch)
        names = [o["name"] for o in seg["outputs"]] + [st["output"] for st in kv]
        vals = sess.run(names, x)
        produced[s] = dict(zip(names, vals))
        for o, v in zip(seg["outputs"], vals):
            if o["graph_output"]:
                results[o["name"]] = v
        results.update(zip([st["output"] for st in kv], vals[len(seg["outputs"]):]))
    return results


def run_full(proto_or_path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    src = proto_or_path if isinstance(proto_or_path, Path) else proto_or_path.SerializeToString()
    sess = _session(src)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def verify(om: OnnxModel, seg_dir: str | Path, full, seed: int = 0) -> float:
    """Max abs difference between the full model and the segment chain on random inputs."""
    feeds = random_inputs(om.proto, om.dims, seed)
    ref = run_full(full, feeds)
    got = run_chain(seg_dir, feeds)
    missing = set(ref) - set(got)
    if missing:
        raise LLSimError(f"segment chain did not produce graph outputs {sorted(missing)}")
    diff = 0.0
    for k, v in ref.items():
        a, b = np.asarray(v), np.asarray(got[k])
        if a.shape != b.shape:
            raise LLSimError(f"output {k}: chain shape {b.shape} != full {a.shape}")
        if a.size:
            diff = max(diff, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))))
    return diff
