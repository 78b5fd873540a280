"""FLOP and byte conventions per operator, shared by the ONNX counter and documented for users.

Conventions (one multiply-add = 2 FLOPs):

* MatMul / Gemm / MatMulInteger / QLinearMatMul / MatMulNBits: ``2*batch*M*K*N`` (+ ``M*N`` for a Gemm bias)
* Conv: ``2 * numel(out) * (C_in/group) * prod(kernel)``; Einsum: ``2 * prod(all index sizes)``
* elementwise ops (Add, Mul, Tanh, Where, Cast excluded, ...): ``numel(out)``
* Softmax / LogSoftmax: ``5 * numel``; LayerNormalization: ``8 * numel``;
  SimplifiedLayerNormalization / RMSNormalization: ``6 * numel``; SkipLayerNormalization ``9 * numel``
* Gelu / FastGelu / BiasGelu: ``8 * numel``; QuickGelu ``4 * numel``
* Reduce*: ``numel(input)``; QuantizeLinear / DequantizeLinear / DynamicQuantizeLinear: ``2 * numel``
* data movement and shape ops (Gather, Transpose, Concat, Slice, Expand, Reshape, Shape, Cast, ...): 0
"""
from __future__ import annotations

import math

MATMUL_OPS = {"MatMul", "Gemm", "MatMulInteger", "QLinearMatMul", "MatMulNBits", "DynamicQuantizeMatMul",
              "FusedMatMul", "MatMulIntegerToFloat", "QGemm"}
CONV_OPS = {"Conv", "ConvInteger", "QLinearConv", "ConvTranspose"}
ATTENTION_OPS = {"Attention", "MultiHeadAttention", "GroupQueryAttention", "SDPA"}
ELEMENTWISE_OPS = {
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Log", "Erf", "Tanh", "Sigmoid", "Relu", "LeakyRelu",
    "Neg", "Reciprocal", "Abs", "Where", "Max", "Min", "Sin", "Cos", "Equal", "Less", "Greater",
    "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "Xor", "Clip", "Floor", "Ceil", "Round", "Sign",
    "Mod", "HardSigmoid", "Softplus", "Elu", "Selu", "IsNaN", "IsInf", "BitShift", "PRelu", "Sum", "Mean",
    "BiasAdd", "Trilu",
}
SOFTMAX_OPS = {"Softmax": 5, "LogSoftmax": 5}
NORM_OPS = {"LayerNormalization": 8, "SimplifiedLayerNormalization": 6, "RMSNormalization": 6,
            "SkipLayerNormalization": 9, "SkipSimplifiedLayerNormalization": 7, "BatchNormalization": 4,
            "InstanceNormalization": 8, "GroupNormalization": 8}
ACTIVATION_OPS = {"Gelu": 8, "FastGelu": 8, "BiasGelu": 9, "QuickGelu": 4, "Silu": 2, "Swish": 2}
REDUCE_OPS = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ReduceSumSquare",
              "ReduceLogSumExp", "ArgMax", "ArgMin", "CumSum", "TopK"}
QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
GATHER_OPS = {"Gather", "GatherElements", "GatherND", "Transpose", "Concat", "Slice", "Expand", "Split", "Tile",
              "Pad", "ScatterND", "ScatterElements", "Resize", "DepthToSpace", "SpaceToDepth", "OneHot", "Trilu_"}
SHAPE_OPS = {"Shape", "Size", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Range", "ConstantOfShape",
             "Constant", "Cast", "CastLike", "NonZero", "EyeLike", "Dropout"}


def op_class(op_type: str) -> str:
    if op_type in MATMUL_OPS or op_type in CONV_OPS or op_type == "Einsum":
        return "matmul"
    if op_type in ATTENTION_OPS:
        return "attention"
    if op_type in SOFTMAX_OPS:
        return "softmax"
    if op_type in NORM_OPS:
        return "norm"
    if op_type in ELEMENTWISE_OPS or op_type in ACTIVATION_OPS:
        return "elementwise"
    if op_type in REDUCE_OPS:
        return "reduce"
    if op_type in QUANT_OPS:
        return "quant"
    if op_type in GATHER_OPS:
        return "gather"
    if op_type in SHAPE_OPS:
        return "shape"
    return "other"


def numel(shape) -> int:
    return int(math.prod(shape)) if shape is not None else 0


def matmul_dims(a: tuple, b: tuple, out: tuple) -> tuple[int, int, int, int]:
    """(batch, M, K, N) of an ONNX MatMul with numpy broadcasting semantics."""
    if len(a) == 1:
        a = (1,) + tuple(a)
    if len(b) == 1:
        b = tuple(b) + (1,)
    m, k = a[-2], a[-1]
    n = b[-1]
    batch = numel(out) // max(1, m * n) if len(out) >= 2 else 1
    return (int(batch), int(m), int(k), int(n))


def einsum_flops(equation: str, shapes: list[tuple]) -> float:
    lhs = equation.replace(" ", "").split("->")[0]
    sizes: dict[str, int] = {}
    for term, shp in zip(lhs.split(","), shapes):
        term = term.replace("...", "")
        for letter, d in zip(term[::-1], tuple(shp)[::-1]):
            sizes[letter] = int(d)
    return 2.0 * math.prod(sizes.values()) if sizes else 0.0


def node_flops(op_type: str, in_shapes: list[tuple | None], out_shapes: list[tuple | None], attrs: dict) -> tuple[float, tuple]:
    """FLOPs of one node and the ``dims`` descriptor the cost model uses."""
    out0 = out_shapes[0] if out_shapes else None
    n_out = numel(out0) if out0 is not None else 0
    if op_type in {"MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul", "MatMulIntegerToFloat",
                   "DynamicQuantizeMatMul"}:
        a = in_shapes[0]
        b = in_shapes[3] if op_type == "QLinearMatMul" else in_shapes[1]
        if a is None or b is None or out0 is None:
            return 0.0, ()
        d = matmul_dims(tuple(a), tuple(b), tuple(out0))
        return 2.0 * d[0] * d[1] * d[2] * d[3], d
    if op_type in {"Gemm", "QGemm"}:
        a = in_shapes[0]
        if a is None or out0 is None:
            return 0.0, ()
        k = a[0] if attrs.get("transA", 0) else a[1]
        m, n = out0
        f = 2.0 * m * k * n + (m * n if len(in_shapes) > 2 and in_shapes[2] is not None else 0)
        return f, (1, int(m), int(k), int(n))
    if op_type == "MatMulNBits":
        a = in_shapes[0]
        if a is None or out0 is None:
            return 0.0, ()
        k, n = int(attrs.get("K", a[-1])), int(attrs.get("N", out0[-1]))
        batch_m = numel(a) // max(1, k)
        return 2.0 * batch_m * k * n, (1, batch_m, k, n)
    if op_type in CONV_OPS:
        w = in_shapes[1] if len(in_shapes) > 1 else None
        if w is None or out0 is None:
            return 0.0, ()
        per_out = numel(w[1:])  # C_in/group * prod(kernel)
        return 2.0 * n_out * per_out, (1, n_out // max(1, w[0]), per_out, int(w[0]))
    if op_type == "Einsum":
        shapes = [s for s in in_shapes if s is not None]
        f = einsum_flops(attrs.get("equation", ""), shapes)
        return f, (n_out,)
    if op_type in ATTENTION_OPS:
        q = in_shapes[0]
        if q is None or len(q) < 3:
            return 0.0, ()
        b, s, h = q[0], q[1], q[-1]
        return 4.0 * b * s * s * h, (n_out,)
    if op_type in SOFTMAX_OPS:
        return float(SOFTMAX_OPS[op_type] * n_out), (n_out,)
    if op_type in NORM_OPS:
        return float(NORM_OPS[op_type] * n_out), (n_out,)
    if op_type in ACTIVATION_OPS:
        return float(ACTIVATION_OPS[op_type] * n_out), (n_out,)
    if op_type in ELEMENTWISE_OPS:
        return float(n_out), (n_out,)
    if op_type in REDUCE_OPS:
        a = in_shapes[0] if in_shapes else None
        return float(numel(a) if a is not None else 0), (n_out,)
    if op_type in QUANT_OPS:
        return float(2 * n_out), (n_out,)
    return 0.0, (n_out,)
