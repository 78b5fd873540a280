"""Build a runnable ONNX model of a zoo transformer with seeded random weights.

The graph is a plain opset-17 decoder (no custom ops): ``input_ids [batch, seq] (int64) -> logits
[batch, seq, vocab]``, no KV cache (every call recomputes the whole sequence, as LinguaLinked
does). Node for node it follows :mod:`llsim.model.analytic`.

``kv_cache=True`` builds the same decoder (the same weights for the same seed) with a KV cache, in
the Hugging Face convention: inputs ``input_ids [batch, seq]``, ``attention_mask [batch, past+seq]``
(int64, 0 = padding) and per block ``past_key_values.{i}.key`` / ``.value`` ``[batch, kv_heads,
past, head_dim]``; outputs ``logits`` and ``present.{i}.key`` / ``.value`` ``[batch, kv_heads,
past+seq, head_dim]`` (the cached and the new keys concatenated). Positions start at ``past``. A
prefill feeds an empty past (``past = 0``); a decode step feeds one token and the previous
``present`` tensors. The block ops follow the analytical graph at ``past_len > 0``. Initializer names follow the Hugging
Face convention of each family (``h.3.mlp...``, ``model.layers.3...``), which is also what
:mod:`llsim.model.cuts` uses to group nodes into blocks in any exported model.

Same config + seed -> byte-identical file.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from llsim.model.zoo import ModelConfig

OPSET = 17
NEG = -1e9  # additive mask value (finite: keeps fp32 softmax NaN-free)


class _G:
    def __init__(self, cfg: ModelConfig, seed: int):
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.inits: list = []
        self.k = 0

    def w(self, name: str, shape, scale: float | None = None, value: float | None = None) -> str:
        if value is not None:
            arr = np.full(shape, value, dtype=np.float32)
        else:
            std = scale if scale is not None else 1.0 / math.sqrt(shape[0])
            arr = (self.rng.standard_normal(shape) * std).astype(np.float32)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def const(self, value, dtype=np.float32) -> str:
        self.k += 1
        name = f"const_{self.k}"
        arr = np.asarray(value, dtype=dtype)
        self.nodes.append(helper.make_node("Constant", [], [name], name=f"Constant_{self.k}",
                                           value=numpy_helper.from_array(arr, name)))
        return name

    def op(self, op_type: str, inputs, prefix: str, n_out: int = 1, **attrs):
        self.k += 1
        outs = [f"{prefix}/{op_type}_{self.k}" + (f"_{i}" if n_out > 1 else "") for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=f"{prefix}/{op_type}_{self.k}", **attrs))
        return outs if n_out > 1 else outs[0]


def _gelu_tanh(g: _G, x: str, p: str) -> str:
    x2 = g.op("Mul", [x, x], p)
    x3 = g.op("Mul", [x2, x], p)
    c = g.op("Mul", [x3, g.const(0.044715)], p)
    inner = g.op("Add", [x, c], p)
    s = g.op("Mul", [inner, g.const(math.sqrt(2 / math.pi))], p)
    t = g.op("Tanh", [s], p)
    t1 = g.op("Add", [t, g.const(1.0)], p)
    half = g.op("Mul", [x, g.const(0.5)], p)
    return g.op("Mul", [half, t1], p)


def _layernorm(g: _G, x: str, wname: str, p: str) -> str:
    H = g.cfg.hidden
    return g.op("LayerNormalization", [x, g.w(wname + ".weight", (H,), value=1.0), g.w(wname + ".bias", (H,), value=0.0)],
                p, axis=-1, epsilon=g.cfg.norm_eps)


def _rmsnorm(g: _G, x: str, wname: str, p: str) -> str:
    H = g.cfg.hidden
    sq = g.op("Mul", [x, x], p)
    mean = g.op("ReduceMean", [sq], p, axes=[-1], keepdims=1)
    eps = g.op("Add", [mean, g.const(g.cfg.norm_eps)], p)
    rt = g.op("Sqrt", [eps], p)
    rc = g.op("Reciprocal", [rt], p)
    y = g.op("Mul", [x, rc], p)
    return g.op("Mul", [y, g.w(wname + ".weight", (H,), value=1.0)], p)


def _heads(g: _G, x: str, n: int, p: str) -> str:
    """[B,S,n*hd] -> [B,n,S,hd]"""
    hd = g.cfg.head_dim
    r = g.op("Reshape", [x, g.const([0, 0, n, hd], np.int64)], p)
    return g.op("Transpose", [r], p, perm=[0, 2, 1, 3])


def _rope(g: _G, x: str, cos: str, sin: str, p: str) -> str:
    hd = g.cfg.head_dim
    a = g.op("Mul", [x, cos], p)
    lo = g.op("Slice", [x, g.const([0], np.int64), g.const([hd // 2], np.int64), g.const([-1], np.int64)], p)
    hi = g.op("Slice", [x, g.const([hd // 2], np.int64), g.const([hd], np.int64), g.const([-1], np.int64)], p)
    neg = g.op("Neg", [hi], p)
    rot = g.op("Concat", [neg, lo], p, axis=-1)
    b = g.op("Mul", [rot, sin], p)
    return g.op("Add", [a, b], p)


def _repeat_kv(g: _G, x: str, p: str) -> str:
    cfg = g.cfg
    rep = cfg.heads // cfg.n_kv_heads
    u = g.op("Unsqueeze", [x, g.const([2], np.int64)], p)
    e = g.op("Expand", [u, g.const([1, 1, rep, 1, 1], np.int64)], p)
    return g.op("Reshape", [e, g.const([0, cfg.heads, -1, cfg.head_dim], np.int64)], p)


def _attention(g: _G, x: str, pre: str, bias: str, cos: str | None, sin: str | None, p: str,
               kv: int | None = None) -> str:
    cfg = g.cfg
    H, nh, nkv, hd = cfg.hidden, cfg.heads, cfg.n_kv_heads, cfg.head_dim
    if cfg.family in ("bloom", "gpt2"):
        wq = g.w(f"{pre}.qkv.weight", (H, 3 * H))
        qkv = g.op("MatMul", [x, wq], p)
        qkv = g.op("Add", [qkv, g.w(f"{pre}.qkv.bias", (3 * H,), value=0.0)], p)
        q, k, v = g.op("Split", [qkv, g.const([H, H, H], np.int64)], p, n_out=3, axis=-1)
        q, k, v = (_heads(g, t, nh, p) for t in (q, k, v))
    else:
        q = g.op("MatMul", [x, g.w(f"{pre}.q_proj.weight", (H, nh * hd))], p)
        k = g.op("MatMul", [x, g.w(f"{pre}.k_proj.weight", (H, nkv * hd))], p)
        v = g.op("MatMul", [x, g.w(f"{pre}.v_proj.weight", (H, nkv * hd))], p)
        q, k, v = _heads(g, q, nh, p), _heads(g, k, nkv, p), _heads(g, v, nkv, p)
        q, k = _rope(g, q, cos, sin, p), _rope(g, k, cos, sin, p)
    if kv is not None:  # KV cache: the new keys/values appended to the cached ones, returned as present
        for t, new in (("key", k), ("value", v)):
            g.k += 1
            out = f"present.{kv}.{t}"
            g.nodes.append(helper.make_node("Concat", [f"past_key_values.{kv}.{t}", new], [out],
                                            name=f"{p}/Concat_{g.k}", axis=2))
            if t == "key":
                k = out
            else:
                v = out
    if nkv != nh:
        k, v = _repeat_kv(g, k, p), _repeat_kv(g, v, p)
    kt = g.op("Transpose", [k], p, perm=[0, 1, 3, 2])
    s = g.op("MatMul", [q, kt], p)
    s = g.op("Mul", [s, g.const(1.0 / math.sqrt(hd))], p)
    s = g.op("Add", [s, bias], p)
    a = g.op("Softmax", [s], p, axis=-1)
    c = g.op("MatMul", [a, v], p)
    c = g.op("Transpose", [c], p, perm=[0, 2, 1, 3])
    return g.op("Reshape", [c, g.const([0, 0, nh * hd], np.int64)], p)


def _block(g: _G, x: str, i: int, bias: str, cos, sin, kv: bool = False) -> str:
    cfg = g.cfg
    H, F = cfg.hidden, cfg.ffn
    if cfg.family == "llama":
        pre, p = f"model.layers.{i}", f"/model/layers.{i}"
        n = _rmsnorm(g, x, f"{pre}.input_layernorm", p)
        a = _attention(g, n, f"{pre}.self_attn", bias, cos, sin, p, i if kv else None)
        a = g.op("MatMul", [a, g.w(f"{pre}.self_attn.o_proj.weight", (H, H))], p)
        x = g.op("Add", [x, a], p)
        n = _rmsnorm(g, x, f"{pre}.post_attention_layernorm", p)
        gate = g.op("MatMul", [n, g.w(f"{pre}.mlp.gate_proj.weight", (H, F))], p)
        up = g.op("MatMul", [n, g.w(f"{pre}.mlp.up_proj.weight", (H, F))], p)
        sg = g.op("Sigmoid", [gate], p)
        silu = g.op("Mul", [gate, sg], p)
        m = g.op("Mul", [silu, up], p)
        m = g.op("MatMul", [m, g.w(f"{pre}.mlp.down_proj.weight", (F, H))], p)
        return g.op("Add", [x, m], p)
    pre = f"h.{i}" if cfg.family == "bloom" else f"transformer.h.{i}"
    p = "/" + pre
    n = _layernorm(g, x, f"{pre}.ln_1", p)
    a = _attention(g, n, f"{pre}.attn", bias, None, None, p, i if kv else None)
    a = g.op("MatMul", [a, g.w(f"{pre}.attn.dense.weight", (H, H))], p)
    a = g.op("Add", [a, g.w(f"{pre}.attn.dense.bias", (H,), value=0.0)], p)
    x = g.op("Add", [x, a], p)
    n = _layernorm(g, x, f"{pre}.ln_2", p)
    m = g.op("MatMul", [n, g.w(f"{pre}.mlp.fc_in.weight", (H, F))], p)
    m = g.op("Add", [m, g.w(f"{pre}.mlp.fc_in.bias", (F,), value=0.0)], p)
    m = _gelu_tanh(g, m, p)
    m = g.op("MatMul", [m, g.w(f"{pre}.mlp.fc_out.weight", (F, H))], p)
    m = g.op("Add", [m, g.w(f"{pre}.mlp.fc_out.bias", (H,), value=0.0)], p)
    return g.op("Add", [x, m], p)


def _alibi_slopes(n: int) -> np.ndarray:
    """BLOOM's ALiBi slopes (Press et al. 2022; HF build_alibi_tensor)."""
    closest = 2 ** math.floor(math.log2(n))
    base = 2 ** (-(2 ** -(math.log2(closest) - 3)))
    slopes = [base ** (i + 1) for i in range(closest)]
    if closest != n:
        extra = 2 ** (-(2 ** -(math.log2(2 * closest) - 3)))
        slopes += [extra ** (2 * i + 1) for i in range(min(closest, n - closest))]
    return np.asarray(slopes, dtype=np.float32)


def build_model(cfg: ModelConfig, seed: int = 0, kv_cache: bool = False) -> onnx.ModelProto:
    """The zoo decoder with seeded random weights; ``kv_cache`` adds past/present key-value tensors
    per block (same weights for the same seed; see the module docstring)."""
    g = _G(cfg, seed)
    H, V = cfg.hidden, cfg.vocab
    fam = cfg.family
    emb_name = {"bloom": "word_embeddings", "gpt2": "transformer.wte", "llama": "model.embed_tokens"}[fam]
    p = "/embedding"
    wte = g.w(emb_name + ".weight", (V, H), scale=0.02)
    x = g.op("Gather", [wte, "input_ids"], p, axis=0)
    shape = g.op("Shape", ["input_ids"], p)
    S = g.op("Gather", [shape, g.const(1, np.int64)], p, axis=0)
    if kv_cache:  # T = past + seq from the attention mask; positions P..T-1
        mshape = g.op("Shape", ["attention_mask"], p)
        T = g.op("Gather", [mshape, g.const(1, np.int64)], p, axis=0)
        P = g.op("Sub", [T, S], p)
        pos = g.op("Range", [P, T, g.const(1, np.int64)], p)
    else:
        T = S
        pos = g.op("Range", [g.const(0, np.int64), S, g.const(1, np.int64)], p)
    if fam == "gpt2":
        wpe = g.w("transformer.wpe.weight", (cfg.max_positions, H), scale=0.01)
        pe = g.op("Gather", [wpe, pos], p, axis=0)
        x = g.op("Add", [x, pe], p)
    if fam == "bloom":
        x = _layernorm(g, x, "word_embeddings_layernorm", p)
    kpos = g.op("Range", [g.const(0, np.int64), T, g.const(1, np.int64)], p)
    qi = g.op("Unsqueeze", [pos, g.const([1], np.int64)], p)
    kj = g.op("Unsqueeze", [kpos, g.const([0], np.int64)], p)
    future = g.op("Greater", [kj, qi], p)
    if kv_cache:  # [B, 1, S, T]: a key is masked when it is in the future or padding
        pad = g.op("Equal", ["attention_mask", g.const(0, np.int64)], p)
        pad = g.op("Unsqueeze", [pad, g.const([1, 2], np.int64)], p)
        fut = g.op("Unsqueeze", [future, g.const([0, 1], np.int64)], p)
        masked = g.op("Or", [pad, fut], p)
        mask = g.op("Where", [masked, g.const(NEG), g.const(0.0)], p)
    else:
        mask = g.op("Where", [future, g.const(NEG), g.const(0.0)], p)
    cos = sin = None
    if fam == "bloom":
        kf = g.op("Cast", [kpos], p, to=TensorProto.FLOAT)
        alibi = g.op("Mul", [g.const(_alibi_slopes(cfg.heads).reshape(-1, 1, 1)), kf], p)
        if kv_cache:
            bias = g.op("Add", [alibi, mask], p)  # [nh,1,T] + [B,1,S,T] -> [B,nh,S,T]
        else:
            ab = g.op("Add", [alibi, mask], p)
            bias = g.op("Unsqueeze", [ab, g.const([0], np.int64)], p)
    elif kv_cache:
        bias = mask
    else:
        bias = g.op("Unsqueeze", [mask, g.const([0, 1], np.int64)], p)
    if fam == "llama":
        hd = cfg.head_dim
        inv = (1.0 / cfg.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)).astype(np.float32)
        pf = g.op("Cast", [qi], p, to=TensorProto.FLOAT)
        fr = g.op("Mul", [pf, g.const(inv.reshape(1, -1))], p)
        emb = g.op("Concat", [fr, fr], p, axis=-1)
        c = g.op("Cos", [emb], p)
        s = g.op("Sin", [emb], p)
        cos = g.op("Unsqueeze", [c, g.const([0, 1], np.int64)], p)
        sin = g.op("Unsqueeze", [s, g.const([0, 1], np.int64)], p)
    for i in range(cfg.layers):
        x = _block(g, x, i, bias, cos, sin, kv_cache)
    p = "/head"
    if fam == "llama":
        x = _rmsnorm(g, x, "model.norm", p)
    else:
        x = _layernorm(g, x, "ln_f" if fam == "bloom" else "transformer.ln_f", p)
    if cfg.tied_embeddings:
        wt = g.op("Transpose", [wte], p, perm=[1, 0])
    else:
        wt = g.w("lm_head.weight", (H, V), scale=0.02)
    logits = g.op("MatMul", [x, wt], p)
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="/head/Identity_out"))
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", V])]
    if kv_cache:
        kvh, hd = cfg.n_kv_heads, cfg.head_dim
        inputs.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "past+seq"]))
        for i in range(cfg.layers):
            for t in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{t}", TensorProto.FLOAT,
                                                            ["batch", kvh, "past", hd]))
                outputs.append(helper.make_tensor_value_info(f"present.{i}.{t}", TensorProto.FLOAT,
                                                             ["batch", kvh, "past+seq", hd]))
    graph = helper.make_graph(g.nodes, cfg.name, inputs, outputs, initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="llsim",
                              ir_version=8)
    model.doc_string = (f"llsim zoo model {cfg.name} (random weights, seed {seed})"
                        + (", KV cache (past_key_values.* -> present.*)" if kv_cache else ""))
    onnx.checker.check_model(model)
    return model


def save_model(model: onnx.ModelProto, path: str | Path) -> Path:
    """Write ``model``; weights go to an external-data file when the protobuf would exceed 2 GB."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    big = model.ByteSize() > 1_800_000_000 if model.ByteSize() >= 0 else True
    if big:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data")
    else:
        onnx.save_model(model, str(path))
    return path
