"""Weight-stripped ONNX files: the graph of a model without its weights, and a filler that restores them.

A latency measurement does not depend on the values of a model's weights, only on their shapes and
types (one exception, denormal floats, is avoided by the filler). So a foreign model (an exporter's
file, a quantized one) can be committed as its graph with every large initializer reduced to a
*shape-only stub* (dims, type and a few statistics of the original values), gzipped: a few tens of
kB instead of megabytes. :func:`load_stub` fills the stubs back with deterministic random values
(seeded by the tensor's name), so a fresh clone runs the model without the tool that made it.

Kept verbatim: every initializer of at most ``KEEP_BYTES`` bytes (shape constants, axes, scales and
zero points of quantized weights, norm epsilons) and int32/int64 tensors up to ``KEEP_INT_BYTES``
(index tables whose values matter for correctness; int8 weights are stubbed). Stubbed: the rest, with a fill rule chosen from the
original values (see :func:`_fill`).
"""
from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

KEEP_BYTES = 1024
KEEP_INT_BYTES = 64 << 10
_MARK = "llsim-stub:"


def _rule(arr: np.ndarray) -> dict:
    """How to re-create ``arr``'s values (approximately; only their statistics matter for timing)."""
    if arr.dtype == np.bool_:
        if arr.ndim >= 2 and arr.shape[-1] == arr.shape[-2] and np.array_equal(arr, np.tril(np.ones_like(arr))):
            return {"kind": "tril"}
        return {"kind": "const", "value": bool(arr.flat[0])} if (arr == arr.flat[0]).all() else {"kind": "bool"}
    a = arr.astype(np.float64)
    if (a == a.flat[0]).all():
        return {"kind": "const", "value": float(a.flat[0])}
    if np.issubdtype(arr.dtype, np.integer):
        if arr.ndim == 1 and np.array_equal(arr, np.arange(arr.size, dtype=arr.dtype)):
            return {"kind": "arange"}
        return {"kind": "uniform_int", "lo": int(a.min()), "hi": int(a.max())}
    fin = a[np.isfinite(a)]
    lo, hi = (float(fin.min()), float(fin.max())) if fin.size else (0.0, 0.0)
    return {"kind": "normal", "mean": float(fin.mean()) if fin.size else 0.0,
            "std": float(fin.std()) if fin.size else 0.0, "lo": lo, "hi": hi}


def _fill(name: str, shape: tuple[int, ...], dtype: np.dtype, rule: dict) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    k = rule["kind"]
    if k == "const":
        return np.full(shape, rule["value"], dtype=dtype)
    if k == "tril":
        return np.broadcast_to(np.tril(np.ones(shape[-2:], dtype=bool)), shape).astype(dtype)
    if k == "bool":
        return rng.random(shape) < 0.5
    if k == "arange":
        return np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)
    if k == "uniform_int":
        return rng.integers(rule["lo"], rule["hi"], size=shape, endpoint=True).astype(dtype)
    x = rng.standard_normal(shape) * rule["std"] + rule["mean"]
    x = np.clip(x, rule["lo"], rule["hi"])
    x[np.abs(x) < 1e-30] = 0.0  # no denormals: they would slow the float kernels down
    return x.astype(dtype)


def strip(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``proto`` whose large initializers are shape-only stubs (no data)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for t in out.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            raise ValueError(f"initializer {t.name}: external data; load it before stripping")
        arr = numpy_helper.to_array(t)
        limit = KEEP_INT_BYTES if arr.dtype in (np.int32, np.int64) else KEEP_BYTES
        if arr.nbytes <= limit:
            continue
        rule = _rule(arr)
        dims, dt, name = list(t.dims), t.data_type, t.name
        t.Clear()
        t.name, t.data_type = name, dt
        t.dims.extend(dims)
        t.doc_string = _MARK + json.dumps(rule, separators=(",", ":"))
    return out


def is_stub(t: TensorProto) -> bool:
    return t.doc_string.startswith(_MARK)


def restore(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Fill every stub initializer of ``proto`` in place (deterministic values) and return it."""
    for t in proto.graph.initializer:
        if not is_stub(t):
            continue
        rule = json.loads(t.doc_string[len(_MARK):])
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
        arr = _fill(t.name, tuple(int(d) for d in t.dims), dtype, rule)
        filled = numpy_helper.from_array(arr, t.name)
        t.CopyFrom(filled)
    return proto


def save_stub(proto: onnx.ModelProto, path: str | Path) -> Path:
    """Write the stripped model gzipped (``*.onnx.gz``); deterministic bytes (mtime 0)."""
    path = Path(path)
    data = strip(proto).SerializeToString()
    with open(path, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return path


def load_stub(path: str | Path, fill: bool = True) -> onnx.ModelProto:
    """A stub file back as a runnable model (``fill``) or as the bare graph (shapes only)."""
    with gzip.open(path, "rb") as f:
        proto = onnx.load_from_string(f.read())
    return restore(proto) if fill else proto
