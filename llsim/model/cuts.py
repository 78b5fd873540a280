"""Cut points and modules of an ONNX graph.

Vocabulary:

* **free** tensors: initializers, Constant outputs and everything computed from them alone (weight
  transposes, DequantizeLinear of int8 weights). They never cross a cut: each segment that needs
  one carries its own copy (a tied embedding is therefore held by the first and the last segment).
* **main** tensors: the activation path. A tensor is main when it is a float graph input, the
  output of a *heavy* node (one reading a float/int8 weight of >= ``HEAVY_NUMEL`` elements), or is
  computed from a main tensor through anything but a Shape/Size op. Masks, rotary tables, ALiBi
  biases and position ids are *side* tensors: small, computed from the inputs, shared by all blocks.
* A cut between two executed nodes is **valid** when every tensor crossing it has a known shape and
  a tensor type, and exactly one main tensor crosses it (the residual stream). Side tensors that
  cross are sent directly from their producer (LinguaLinked's residual map).

KV-cache inputs and outputs (``past_key_values.*`` -> ``present.*``, :mod:`llsim.model.kv`) are
**state**, not crossing tensors: they stay on the device that runs their block, so a cut between
two readers of one state input is invalid, and they never appear among the boundary tensors.

Modules are runs of nodes between valid cuts, merged by the layer index found in their weight
names, node names or exporter metadata (``layers.3``, ``h.3``, ``layer.3``, ``blocks.3``), so a
transformer gives embedding, one module per block, and head. Without layer names every
weight-bearing run between valid cuts is a module.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field, replace

import onnx

from llsim.model.graph import BoundaryTensor, ModelGraph, Module, module_output_bytes
from llsim.model.kv import state_pairs
from llsim.model.onnx_graph import OnnxModel, dtype_size

HEAVY_NUMEL = 1024
_WEIGHT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
                 onnx.TensorProto.DOUBLE, onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT4,
                 onnx.TensorProto.UINT4}
_SHAPE_ONLY = {"Shape", "Size"}
_RANDOM = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"}
_LAYER = re.compile(r"(?:^|[^A-Za-z0-9])(?:layers?|h|blocks?|decoder_layers|encoder_layer)[._/](\d+)(?![0-9])", re.I)


@dataclass
class CutAnalysis:
    om: OnnxModel
    exec_nodes: list[int]  # indices into proto.graph.node of non-free nodes, in order
    free_tensors: set[str]
    free_nodes: set[int]
    main: set[str]
    producer_pos: dict[str, int]  # tensor -> exec position (-1: graph input)
    consumer_pos: dict[str, list[int]]  # tensor -> exec positions of consumers
    valid_cuts: list[int]  # exec positions p: cut between exec node p-1 and p
    module_starts: list[int]  # exec positions where modules start (first is 0)
    module_names: list[str]
    module_kinds: list[str]
    state: dict[str, str] = field(default_factory=dict)  # KV-cache input -> the output that replaces it


def _has_subgraph(n: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute)


def _subgraph_refs(g: onnx.GraphProto) -> set[str]:
    local = {i.name for i in g.input} | {t.name for t in g.initializer}
    refs: set[str] = set()
    for n in g.node:
        local.update(n.output)
    for n in g.node:
        for x in n.input:
            if x and x not in local:
                refs.add(x)
        for a in n.attribute:
            for sg in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                refs |= {x for x in _subgraph_refs(sg) if x not in local}
    return refs


def node_inputs(n: onnx.NodeProto) -> list[str]:
    """The node's inputs, including outer-scope tensors its If/Loop/Scan bodies read."""
    ins = [x for x in n.input if x]
    if _has_subgraph(n):
        for a in n.attribute:
            for sg in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                ins += sorted(_subgraph_refs(sg) - set(ins))
    return ins


def _layer_of(om: OnnxModel, idx: int) -> int | None:
    """Layer index of a node: exporter scope metadata first (the torch exporters record the module
    path), then the node name, then its weights' names (least reliable: exporters deduplicate equal
    initializers across layers)."""
    n = om.nodes[idx]
    for prop in n.metadata_props:
        if "name_scopes" in prop.key or prop.key == "namespace":
            m = _LAYER.search(prop.value)
            return int(m.group(1)) if m else None
    m = _LAYER.search(n.name or "")
    if m:
        return int(m.group(1))
    for name in list(n.input):
        if name in om.initializers:
            m = _LAYER.search(name)
            if m:
                return int(m.group(1))
    return None


def _structural_layers(sigs: list[tuple | None]) -> list[int | None]:
    """Blocks of a graph without layer names: the period k at which the signatures (sorted op types of
    weight-reading nodes) of the weight-bearing runs repeat, at least twice, over the longest stretch;
    runs in that stretch get block ids, the rest None (embedding before, head after)."""
    heavy = [i for i, s in enumerate(sigs) if s is not None]
    hs = [sigs[i] for i in heavy]
    best = None
    for k in range(1, len(hs) // 2 + 1):
        i = 0
        while i + k < len(hs):
            if hs[i] != hs[i + k]:
                i += 1
                continue
            j = i
            while j + k < len(hs) and hs[j] == hs[j + k]:
                j += 1
            reps = (j - i + k) // k
            if reps >= 2 and (best is None or reps * k > best[2] * best[1]):
                best = (i, k, reps)  # most runs covered wins; ties keep the smaller period
            i = j + 1
    out: list[int | None] = [None] * len(sigs)
    if best is None:
        return out
    start, k, reps = best
    for b in range(reps):
        for r in range(k):
            out[heavy[start + b * k + r]] = b
    return out


def analyse_cuts(om: OnnxModel) -> CutAnalysis:
    nodes = om.nodes
    inits = om.initializers
    # free tensors/nodes: constant subgraphs
    free_t = set(inits)
    free_n: set[int] = set()
    for i, n in enumerate(nodes):
        ins = node_inputs(n)
        if n.op_type in _RANDOM or _has_subgraph(n):
            continue
        if n.op_type == "Constant" or (ins and all(x in free_t for x in ins)):
            free_n.add(i)
            free_t.update(o for o in n.output if o)
    # tensors computed from free ones only and large: weights (incl. dequantized ones)
    heavy_weights = {
        name for name in free_t
        if name in om.tensors and om.tensors[name].shape is not None
        and om.tensors[name].elem_type in _WEIGHT_TYPES
        and _numel(om.tensors[name].shape) >= HEAVY_NUMEL
    }
    exec_nodes = [i for i in range(len(nodes)) if i not in free_n]
    producer: dict[str, int] = {}
    for name in om.input_names:
        producer[name] = -1
    state = {sp.input: sp.output for sp in state_pairs(om.proto)}
    main: set[str] = {n for n in om.input_names if n not in state and om.tensors[n].elem_type in _WEIGHT_TYPES - {
        onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT4, onnx.TensorProto.UINT4}}
    consumers: dict[str, list[int]] = defaultdict(list)
    for p, idx in enumerate(exec_nodes):
        n = nodes[idx]
        ins = node_inputs(n)
        for x in ins:
            if x not in free_t:
                consumers[x].append(p)
        is_main = n.op_type not in _SHAPE_ONLY and (
            any(x in heavy_weights for x in ins) or any(x in main for x in ins))
        for o in n.output:
            if o:
                producer[o] = p
                if is_main:
                    main.add(o)
    n_exec = len(exec_nodes)
    # sweep: how many (main, any) tensors cross each cut p (1..n_exec-1), and whether all are passable
    d_main = [0] * (n_exec + 2)
    d_bad = [0] * (n_exec + 2)
    for t, cons in consumers.items():
        if t not in producer:
            continue
        if t in state:  # state stays with its readers: no cut between the first and the last of them
            lo, hi = min(cons) + 1, max(cons)
            if hi >= lo:
                d_bad[lo] += 1
                d_bad[hi + 1] -= 1
            continue
        lo, hi = producer[t] + 1, max(cons)  # crosses cut p for lo <= p <= hi
        if hi < lo:
            continue
        lo = max(lo, 1)
        info = om.tensors.get(t)
        passable = info is not None and info.shape is not None
        if t in main:
            d_main[lo] += 1
            d_main[hi + 1] -= 1
        if not passable:
            d_bad[lo] += 1
            d_bad[hi + 1] -= 1
    valid = []
    cm = cb = 0
    for p in range(1, n_exec):
        cm += d_main[p]
        cb += d_bad[p]
        if cm == 1 and cb == 0:
            valid.append(p)
    # runs between valid cuts, grouped by layer index
    bounds = [0] + valid + [n_exec]
    runs = [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
    run_layer: list[int | None] = []
    run_heavy: list[bool] = []
    run_sig: list[tuple | None] = []
    for a, b in runs:
        pos = range(a, b)
        layers = [lay for lay in (_layer_of(om, exec_nodes[p]) for p in pos) if lay is not None]
        run_layer.append(max(set(layers), key=layers.count) if layers else None)
        heavy_ops = [nodes[exec_nodes[p]].op_type for p in pos
                     if any(x in heavy_weights for x in nodes[exec_nodes[p]].input)]
        run_heavy.append(bool(heavy_ops))
        run_sig.append(tuple(sorted(heavy_ops)) if heavy_ops else None)
    if not any(x is not None for x in run_layer):
        run_layer = _structural_layers(run_sig)
    run_keys: list[object] = []
    for (a, b), lay, has_w in zip(runs, run_layer, run_heavy):
        pos = range(a, b)
        if lay is not None:
            run_keys.append(("L", lay))
        elif has_w:
            run_keys.append(("X", len(run_keys)))
        else:  # weightless glue: on the activation path it belongs to what follows, else to what precedes
            on_path = any(o in main and max(consumers.get(o, [-1])) >= b for p in pos for o in nodes[exec_nodes[p]].output)
            run_keys.append("next" if on_path else "prev")
    any_layer = any(isinstance(k, tuple) and k[0] == "L" for k in run_keys)
    for i in range(len(run_keys) - 1, -1, -1):  # resolve "next" glue right to left
        if run_keys[i] == "next":
            run_keys[i] = run_keys[i + 1] if i + 1 < len(run_keys) else "prev"
    for i, k in enumerate(run_keys):  # then "prev" glue left to right
        if k == "prev":
            run_keys[i] = run_keys[i - 1] if i > 0 else None
    first_real = next((k for k in run_keys if k is not None), ("X", 0))
    run_keys = [first_real if k is None else k for k in run_keys]
    starts: list[int] = []
    keys: list[object] = []
    for (a, _), key in zip(runs, run_keys):
        if keys and (key == keys[-1] or (any_layer and key[0] == "X" and keys[-1][0] == "X")):
            continue  # same block, or consecutive non-layer runs (final norm + head) form one module
        starts.append(a)
        keys.append(key)
    names, kinds = [], []
    n_mod = len(starts)
    for i, key in enumerate(keys):
        if key is not None and key[0] == "L":
            names.append(f"block.{key[1]}"); kinds.append("block")
        elif i == 0 and n_mod > 1:
            names.append("embedding"); kinds.append("embedding")
        elif i == n_mod - 1 and n_mod > 1:
            names.append("head"); kinds.append("head")
        else:
            names.append(f"part.{i}"); kinds.append("other")
    if n_mod == 1:
        names, kinds = ["model"], ["other"]
    return CutAnalysis(om, exec_nodes, free_t, free_n, main, producer, dict(consumers), valid, starts, names, kinds,
                       state)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def free_closure(ca: CutAnalysis, exec_positions: range) -> list[int]:
    """Free nodes (in original order) needed by the exec nodes at ``exec_positions``."""
    nodes = ca.om.nodes
    prod_free: dict[str, int] = {}
    for i in ca.free_nodes:
        for o in nodes[i].output:
            prod_free[o] = i
    need: set[int] = set()
    stack = [x for p in exec_positions for x in node_inputs(nodes[ca.exec_nodes[p]]) if x in prod_free]
    while stack:
        t = stack.pop()
        i = prod_free[t]
        if i in need:
            continue
        need.add(i)
        stack.extend(x for x in node_inputs(nodes[i]) if x in prod_free)
    return sorted(need)


def _as_deployed(om: OnnxModel, ca: CutAnalysis, i: int):
    """Node i's cost with constant-ness marked and inputs computed from weights (a transposed or
    dequantized weight) counted as weight bytes, which is what they are once the runtime folds them."""
    c = om.costs[i]
    if i in ca.free_nodes:
        return replace(c, const=True)
    moved = sum(om.tensors[x].nbytes for x in om.nodes[i].input
                if x and x in ca.free_tensors and x not in om.initializers and x in om.tensors)
    if moved:
        return replace(c, bytes_in=max(0, c.bytes_in - moved), param_bytes=c.param_bytes + moved)
    return c


def _kv_bytes_per_token(om: OnnxModel, ca: CutAnalysis, mod_of_pos: list[int]) -> dict[int, int]:
    """Per module: bytes of its KV-cache state per cached token (the state inputs' bytes with their
    cached axis set to 1), for models with a cache."""
    out: dict[int, int] = {}
    if not ca.state:
        return out
    for sp in state_pairs(om.proto):
        info = om.tensors.get(sp.input)
        cons = ca.consumer_pos.get(sp.input)
        if info is None or info.shape is None or not cons:
            continue
        shape = list(info.shape)
        if sp.axis < len(shape):
            shape[sp.axis] = 1
        n = 1
        for d in shape:
            n *= int(d)
        mi = mod_of_pos[min(cons)]
        out[mi] = out.get(mi, 0) + n * dtype_size(info.elem_type)
    return out


def model_graph_from_onnx(om: OnnxModel, ca: CutAnalysis | None = None) -> ModelGraph:
    ca = ca or analyse_cuts(om)
    n_exec = len(ca.exec_nodes)
    starts = ca.module_starts
    ends = starts[1:] + [n_exec]
    mod_of_pos = [0] * n_exec
    for mi, (a, b) in enumerate(zip(starts, ends)):
        for p in range(a, b):
            mod_of_pos[p] = mi
    n_mod = len(starts)
    tensors: list[BoundaryTensor] = []
    state_out = set(ca.state.values())
    for t, cons in sorted(ca.consumer_pos.items(), key=lambda kv: (ca.producer_pos.get(kv[0], -1), kv[0])):
        if t not in ca.producer_pos or t in ca.state or t in state_out:
            continue
        pp = ca.producer_pos[t]
        pm = -1 if pp < 0 else mod_of_pos[pp]
        cms = sorted({mod_of_pos[c] for c in cons if mod_of_pos[c] > pm or pm < 0})
        if pm < 0:
            cms = [c for c in cms if c > 0]
        if not cms:
            continue
        info = om.tensors.get(t)
        tensors.append(BoundaryTensor(t, pm, tuple(cms), info.nbytes if info else 0,
                                      tuple(info.shape) if info and info.shape else (), info.dtype if info else "?",
                                      t in ca.main))
    for t in om.output_names:
        if t in state_out:
            continue
        if t in ca.producer_pos and ca.producer_pos[t] >= 0:
            info = om.tensors.get(t)
            tensors.append(BoundaryTensor(t, mod_of_pos[ca.producer_pos[t]], (n_mod,), info.nbytes if info else 0,
                                          tuple(info.shape) if info and info.shape else (),
                                          info.dtype if info else "?", True))
    outb = module_output_bytes(n_mod, tensors)
    kv_tok = _kv_bytes_per_token(om, ca, mod_of_pos)
    modules = []
    used_params_total: set[str] = set()
    for mi, (a, b) in enumerate(zip(starts, ends)):
        pos = range(a, b)
        node_idx = sorted(set(ca.exec_nodes[p] for p in pos) | set(free_closure(ca, pos)))
        params: set[str] = set()
        for i in node_idx:
            params.update(x for x in om.nodes[i].input if x in om.initializers)
        params = {x for x in params if _numel(om.initializers[x].shape) > 1}
        used_params_total |= params
        ops = [_as_deployed(om, ca, i) for i in node_idx if om.nodes[i].op_type != "Constant"]
        modules.append(Module(mi, ca.module_names[mi], ca.module_kinds[mi],
                              sum(_numel(om.initializers[x].shape) for x in params),
                              sum(om.initializers[x].nbytes for x in params),
                              float(sum(o.flops for o in ops)), outb[mi], kv_tok.get(mi, 0), ops, (a, b)))
    total = sum(_numel(om.initializers[x].shape) for x in used_params_total)
    hidden = None
    mains = [t for t in tensors if t.main and t.producer == 0 and len(t.shape) >= 2]
    if mains:
        hidden = int(mains[0].shape[-1])
    unique_b = sum(om.initializers[x].nbytes for x in used_params_total)
    return ModelGraph(om.name, "onnx", "onnx", om.batch, om.seq_len, 0, modules, tensors, total, unique_b, None, hidden)
