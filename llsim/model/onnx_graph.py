"""Ingest any ONNX model: load, bind symbolic dims, infer shapes, cost every node.

Works without materialising weights: initializer shapes come from the protobuf header, and external
data is not read. Shapes come from ONNX shape inference (with data propagation) on a copy whose
symbolic input dims are bound; where inference leaves a tensor unknown (exporter-specific
Shape/Gather/Slice subgraphs, contrib ops) and the weights are loadable, onnxruntime runs once on
random inputs to read the missing shapes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from llsim.errors import LLSimError
from llsim.model.graph import OpCost
from llsim.model.opcount import node_flops, op_class

_DTYPE = {v: np.dtype(helper.tensor_dtype_to_np_dtype(v)) for v in (
    TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.INT8, TensorProto.UINT8,
    TensorProto.INT16, TensorProto.UINT16, TensorProto.INT32, TensorProto.UINT32, TensorProto.INT64,
    TensorProto.UINT64, TensorProto.BOOL)}
_BF16 = TensorProto.BFLOAT16


def dtype_name(elem_type: int) -> str:
    if elem_type == _BF16:
        return "bfloat16"
    return _DTYPE[elem_type].name if elem_type in _DTYPE else f"type{elem_type}"


def dtype_size(elem_type: int) -> int:
    if elem_type == _BF16:
        return 2
    return _DTYPE[elem_type].itemsize if elem_type in _DTYPE else 4


@dataclass
class TensorInfo:
    shape: tuple[int, ...] | None  # None = unknown
    elem_type: int

    @property
    def nbytes(self) -> int:
        if self.shape is None:
            return 0
        return int(np.prod(self.shape, dtype=np.int64)) * dtype_size(self.elem_type)

    @property
    def dtype(self) -> str:
        return dtype_name(self.elem_type)


@dataclass
class OnnxModel:
    """A loaded ONNX model bound to (batch, seq_len) with shapes and per-node costs."""

    path: Path | None
    proto: onnx.ModelProto  # as loaded (external data possibly not loaded)
    batch: int
    seq_len: int
    dims: dict[str, int]  # symbolic dim name -> bound value
    tensors: dict[str, TensorInfo]
    initializers: dict[str, TensorInfo]
    const_values: dict[str, np.ndarray] = field(default_factory=dict)
    costs: list[OpCost] = field(default_factory=list)  # one per node of proto.graph.node
    weights_loaded: bool = True
    run_error: str | None = None  # why onnxruntime could not run it to find shapes (they stay unknown)

    @property
    def name(self) -> str:
        return self.path.stem if self.path else (self.proto.graph.name or "model")

    @property
    def nodes(self):
        return self.proto.graph.node

    @property
    def input_names(self) -> list[str]:
        inits = set(self.initializers)
        return [i.name for i in self.proto.graph.input if i.name not in inits]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.proto.graph.output]


_BATCH = re.compile(r"batch|^b$|^n$|^bs$|^s0$", re.I)
_SEQ = re.compile(r"seq|sequence|len|tokens|^s$|^t$|^s1$", re.I)


def bind_dims(graph: onnx.GraphProto, batch: int, seq_len: int, overrides: dict[str, int] | None = None) -> dict[str, int]:
    """Map each symbolic input dim to a value: names mentioning batch -> batch, sequence -> seq_len;
    otherwise the first symbolic axis of an input is the batch and the next one the sequence."""
    overrides = dict(overrides or {})
    out: dict[str, int] = {}
    inits = {i.name for i in graph.initializer}
    for inp in graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        sym_pos = 0
        for d in dims:
            if not d.HasField("dim_param") or not d.dim_param:
                if not d.HasField("dim_value"):
                    sym_pos += 1
                continue
            p = d.dim_param
            if p in overrides:
                out[p] = overrides[p]
            elif p not in out:
                if _BATCH.search(p) and not _SEQ.search(p):
                    out[p] = batch
                elif _SEQ.search(p):
                    out[p] = seq_len
                else:
                    out[p] = batch if sym_pos == 0 else seq_len
            sym_pos += 1
    return out


def _shape_of(vi_type, dims: dict[str, int]) -> tuple[int, ...] | None:
    if not vi_type.HasField("tensor_type"):
        return None
    tt = vi_type.tensor_type
    if not tt.HasField("shape"):
        return None
    shp = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            shp.append(int(d.dim_value))
        elif d.dim_param and d.dim_param in dims:
            shp.append(dims[d.dim_param])
        else:
            return None
    return tuple(shp)


def load_proto(path: str | Path, load_weights: bool = False) -> onnx.ModelProto:
    p = Path(path)
    if not p.exists():
        raise LLSimError(f"{p}: no such file")
    if p.is_dir():
        raise LLSimError(f"{p}: is a directory, expected an .onnx file")
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # protobuf DecodeError, truncated file, ...
        raise LLSimError(f"{p}: not a readable ONNX model (truncated or not ONNX): {type(e).__name__}") from None
    if not proto.graph.node:
        raise LLSimError(f"{p}: not a readable ONNX model (no graph nodes; is it an ONNX file?)")
    if load_weights and _has_external(proto):
        try:
            from onnx.external_data_helper import load_external_data_for_model
            load_external_data_for_model(proto, str(p.parent))
        except Exception as e:
            raise LLSimError(f"{p}: cannot read its external weight data: {e}") from None
    return proto


def _has_external(proto: onnx.ModelProto) -> bool:
    return any(t.data_location == TensorProto.EXTERNAL for t in proto.graph.initializer)


def _const_node_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    vals = {}
    for n in graph.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value":
                    vals[n.output[0]] = onnx.numpy_helper.to_array(a.t)
    return vals


def analyse(proto: onnx.ModelProto, batch: int = 1, seq_len: int = 128, path: Path | None = None,
            dim_overrides: dict[str, int] | None = None,
            input_shapes: dict[str, tuple[int, ...]] | None = None) -> OnnxModel:
    """``input_shapes`` binds inputs to concrete shapes directly (e.g. a segment file whose inputs
    declare no shape, analysed for the tensors it is actually fed)."""
    g = proto.graph
    if batch < 1 or seq_len < 1:
        raise LLSimError(f"batch ({batch}) and seq-len ({seq_len}) must be >= 1")
    dims = bind_dims(g, batch, seq_len, dim_overrides)
    inits = {t.name: TensorInfo(tuple(int(d) for d in t.dims), t.data_type) for t in g.initializer}
    # bound copy for inference: no stale value_info, inputs with concrete dims, no weight data
    bound = onnx.ModelProto()
    bound.CopyFrom(proto)
    del bound.graph.value_info[:]
    for t in bound.graph.initializer:  # shape inference needs only dims
        t.ClearField("raw_data"); t.ClearField("float_data"); t.ClearField("int64_data")
        t.ClearField("int32_data"); t.ClearField("double_data"); t.ClearField("external_data")
        t.data_location = TensorProto.DEFAULT
    input_shapes = dict(input_shapes or {})
    for inp in bound.graph.input:
        if inp.name in input_shapes:
            shp = inp.type.tensor_type.shape
            shp.Clear()
            for v in input_shapes[inp.name]:
                shp.dim.add().dim_value = int(v)
            continue
        for d in inp.type.tensor_type.shape.dim:
            if d.dim_param in dims:
                v = dims[d.dim_param]
                d.Clear()
                d.dim_value = v
    tensors: dict[str, TensorInfo] = dict(inits)
    for inp in bound.graph.input:
        if inp.name not in inits:
            tensors[inp.name] = TensorInfo(_shape_of(inp.type, dims), inp.type.tensor_type.elem_type)
    try:
        inferred = onnx.shape_inference.infer_shapes(bound, check_type=False, strict_mode=False, data_prop=True)
        vis = list(inferred.graph.value_info) + list(inferred.graph.output)
    except Exception:
        vis = []
    for vi in vis:
        if vi.type.HasField("tensor_type"):
            tensors[vi.name] = TensorInfo(_shape_of(vi.type, dims), vi.type.tensor_type.elem_type)
    consts = _const_node_values(g)
    for name, arr in consts.items():
        et = helper.np_dtype_to_tensor_dtype(arr.dtype)
        tensors[name] = TensorInfo(tuple(arr.shape), et)
    missing = [o for n in g.node for o in n.output if o and (o not in tensors or tensors[o].shape is None)]
    weights_loaded = not _has_external(proto)
    if missing:
        feeds = None
        if input_shapes:
            feeds = {i.name: np.zeros(input_shapes[i.name], dtype=helper.tensor_dtype_to_np_dtype(
                i.type.tensor_type.elem_type)) for i in g.input if i.name in input_shapes}
        run_error = _fill_shapes_by_running(proto, path, tensors, missing, dims, feeds)
    else:
        run_error = None
    m = OnnxModel(path, proto, batch, seq_len, dims, tensors, inits, consts, weights_loaded=weights_loaded,
                  run_error=run_error)
    m.costs = [node_cost(m, n) for n in g.node]
    return m


def random_inputs(proto: onnx.ModelProto, dims: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Plausible random inputs: token ids below the vocabulary, masks of ones, N(0,1) floats."""
    rng = np.random.default_rng(seed)
    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    vocab: dict[str, int] = {}
    for n in g.node:  # ids feeding a Gather on a table -> vocabulary size
        if n.op_type == "Gather" and len(n.input) > 1 and n.input[0] in inits:
            vocab.setdefault(n.input[1], int(inits[n.input[0]].dims[0]))
    feeds = {}
    for inp in g.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        shape = _shape_of(inp.type, dims)
        if shape is None:
            raise LLSimError(f"input '{inp.name}' has a dimension that cannot be bound; pass it explicitly")
        dt = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        lname = inp.name.lower()
        if np.issubdtype(dt, np.floating):
            feeds[inp.name] = rng.standard_normal(shape).astype(dt)
        elif dt == np.bool_:
            feeds[inp.name] = np.ones(shape, dtype=bool)
        elif "mask" in lname:
            feeds[inp.name] = np.ones(shape, dtype=dt)
        elif "position" in lname:
            feeds[inp.name] = np.broadcast_to(np.arange(shape[-1], dtype=dt), shape).copy()
        elif "type" in lname:
            feeds[inp.name] = np.zeros(shape, dtype=dt)
        else:
            hi = vocab.get(inp.name, 100)
            feeds[inp.name] = rng.integers(0, hi, size=shape).astype(dt)
    return feeds


def _fill_shapes_by_running(proto, path, tensors, missing, dims, feeds=None) -> str | None:
    """Shapes inference could not derive, from one onnxruntime run; the run's error, if it failed."""
    import onnxruntime as ort

    if _has_external(proto) and path is None:
        return None
    try:
        full = load_proto(path, load_weights=True) if (path is not None and _has_external(proto)) else proto
        m = onnx.ModelProto()
        m.CopyFrom(full)
        have = {o.name for o in m.graph.output}
        for name in missing:
            if name not in have:
                m.graph.output.append(helper.make_empty_tensor_value_info(name))
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = 4  # a failure is reported by the caller, not logged on stderr
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        outs = sess.run(None, feeds if feeds is not None else random_inputs(full, dims))
        for meta, val in zip(sess.get_outputs(), outs):
            if isinstance(val, np.ndarray):
                tensors[meta.name] = TensorInfo(tuple(val.shape), helper.np_dtype_to_tensor_dtype(val.dtype))
    except LLSimError:
        raise
    except Exception as e:  # shapes stay unknown; costs of those nodes are 0 and cuts through them are invalid
        return " ".join(str(e).split())[:240]
    return None


def node_cost(m: OnnxModel, n: onnx.NodeProto) -> OpCost:
    t = m.tensors
    ins = [t[i].shape if i and i in t else None for i in n.input]
    outs = [t[o].shape if o and o in t else None for o in n.output]
    attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute if a.type in (
        onnx.AttributeProto.INT, onnx.AttributeProto.FLOAT, onnx.AttributeProto.STRING)}
    if isinstance(attrs.get("equation"), bytes):
        attrs["equation"] = attrs["equation"].decode()
    flops, dims = node_flops(n.op_type, ins, outs, attrs)
    b_in = sum(t[i].nbytes for i in n.input if i and i in t and i not in m.initializers)
    p_b = sum(m.initializers[i].nbytes for i in n.input if i in m.initializers)
    b_out = sum(t[o].nbytes for o in n.output if o and o in t)
    return OpCost(n.name or n.output[0], n.op_type, op_class(n.op_type), float(flops), int(b_in), int(b_out),
                  int(p_b), tuple(int(d) for d in dims))
