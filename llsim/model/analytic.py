"""Analytical module graph of a zoo transformer, from its config alone.

Every quantity is a closed-form function of the config and of (batch, seq_len, past_len), so a
7B-class model is analysed in milliseconds without allocating a single weight. The op sequence is
the one :mod:`llsim.model.builder` writes to ONNX (one op here per ONNX node there, same FLOP
conventions as :mod:`llsim.model.opcount`), which lets the tests check the two against each other.

``past_len > 0`` describes a KV-cache decode step: ``seq_len`` new tokens attend to
``past_len + seq_len`` positions; the cached K/V are read and the new ones concatenated.
"""
from __future__ import annotations

from llsim.model.graph import BoundaryTensor, ModelGraph, Module, OpCost, module_output_bytes
from llsim.model.zoo import ModelConfig

ACT = 4  # activations are fp32
WEIGHT_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}


class _Ops:
    """Collects the ops of one module."""

    def __init__(self, wbytes: int):
        self.ops: list[OpCost] = []
        self.params = 0
        self.wb = wbytes

    def add(self, name, op_type, cls, flops, numel_in, numel_out, params=0, dims=None, reads=None, const=False):
        """``params``: weights this op owns (counted in the module); ``reads``: weight elements it reads
        (default ``params``; a tied head reads a table owned by another op); ``const``: folded by the runtime."""
        self.params += params
        wread = params if reads is None else reads
        self.ops.append(OpCost(name, op_type, cls, float(flops), int(numel_in * ACT), int(numel_out * ACT),
                               int(wread * self.wb), dims if dims is not None else (int(numel_out),), const))

    def matmul(self, name, batch, m, k, n, bias=False):
        """MatMul [batch, m, k] x weight [k, n], plus an optional bias Add."""
        self.add(name, "MatMul", "matmul", 2 * batch * m * k * n, batch * m * k, batch * m * n,
                 params=k * n, dims=(batch, m, k, n))
        if bias:
            self.add(name + "_bias", "Add", "elementwise", batch * m * n, batch * m * n, batch * m * n, params=n)

    def ew(self, name, op_type, numel, n_inputs=1, params=0):
        self.add(name, op_type, "elementwise", numel, numel * n_inputs, numel, params=params)

    def move(self, name, op_type, numel, cls="gather"):
        self.add(name, op_type, cls, 0, numel, numel)

    def layernorm(self, name, rows, h):
        self.add(name, "LayerNormalization", "norm", 8 * rows * h, rows * h, rows * h, params=2 * h)

    def rmsnorm(self, name, rows, h):
        n = rows * h
        self.ew(name + "_sq", "Mul", n, 2)
        self.add(name + "_mean", "ReduceMean", "reduce", n, n, rows)
        self.ew(name + "_eps", "Add", rows)
        self.ew(name + "_sqrt", "Sqrt", rows)
        self.ew(name + "_rcp", "Reciprocal", rows)
        self.ew(name + "_scale", "Mul", n, 2)
        self.ew(name + "_w", "Mul", n, 1, params=h)


def _gelu_tanh(o: _Ops, name: str, n: int):
    for i, op in enumerate(["Mul", "Mul", "Mul", "Add", "Mul", "Tanh", "Add", "Mul", "Mul"]):
        o.ew(f"{name}_{i}", op, n, 2 if op in ("Mul", "Add") else 1)


def _attention(o: _Ops, cfg: ModelConfig, B: int, S: int, P: int):
    """Everything between the block's first norm and the output projection (shared by families)."""
    H, nh, hd, nkv = cfg.hidden, cfg.heads, cfg.head_dim, cfg.n_kv_heads
    T = P + S
    rows = B * S
    if cfg.family in ("bloom", "gpt2"):
        o.matmul("qkv", 1, rows, H, 3 * H, bias=True)
        o.move("qkv_split", "Split", rows * 3 * H)
        for t in ("q", "k", "v"):
            o.move(f"{t}_reshape", "Reshape", rows * H, "shape")
            o.move(f"{t}_transpose", "Transpose", rows * H)
    else:
        o.matmul("q_proj", 1, rows, H, nh * hd)
        o.matmul("k_proj", 1, rows, H, nkv * hd)
        o.matmul("v_proj", 1, rows, H, nkv * hd)
        for t, heads in (("q", nh), ("k", nkv), ("v", nkv)):
            o.move(f"{t}_reshape", "Reshape", rows * heads * hd, "shape")
            o.move(f"{t}_transpose", "Transpose", rows * heads * hd)
        for t, heads in (("q", nh), ("k", nkv)):  # rotary: x*cos + rotate_half(x)*sin
            n = B * heads * S * hd
            o.ew(f"{t}_rope_cos", "Mul", n, 2)
            o.move(f"{t}_rope_lo", "Slice", n // 2)
            o.move(f"{t}_rope_hi", "Slice", n // 2)
            o.ew(f"{t}_rope_neg", "Neg", n // 2)
            o.move(f"{t}_rope_cat", "Concat", n)
            o.ew(f"{t}_rope_sin", "Mul", n, 2)
            o.ew(f"{t}_rope_add", "Add", n, 2)
    if P > 0:  # KV cache: append the new K/V to the cached ones
        for t in ("k", "v"):
            o.move(f"{t}_cache_cat", "Concat", B * nkv * T * hd)
    if nkv != nh:  # grouped KV heads: repeat K/V to all query heads
        for t in ("k", "v"):
            o.move(f"{t}_unsq", "Unsqueeze", B * nkv * T * hd, "shape")
            o.move(f"{t}_expand", "Expand", B * nh * T * hd)
            o.move(f"{t}_rep", "Reshape", B * nh * T * hd, "shape")
    o.move("k_t", "Transpose", B * nh * T * hd)
    n_scores = B * nh * S * T
    o.add("scores", "MatMul", "matmul", 2 * B * nh * S * hd * T, B * nh * S * hd + B * nh * hd * T, n_scores,
          dims=(B * nh, S, hd, T))
    o.ew("scale", "Mul", n_scores, 1)
    o.ew("bias", "Add", n_scores, 2)
    o.add("softmax", "Softmax", "softmax", 5 * n_scores, n_scores, n_scores)
    o.add("context", "MatMul", "matmul", 2 * B * nh * S * T * hd, n_scores + B * nh * T * hd, B * nh * S * hd,
          dims=(B * nh, S, T, hd))
    o.move("ctx_transpose", "Transpose", B * S * nh * hd)
    o.move("ctx_reshape", "Reshape", B * S * nh * hd, "shape")


def _block(cfg: ModelConfig, B: int, S: int, P: int, wb: int) -> _Ops:
    H, F = cfg.hidden, cfg.ffn
    rows = B * S
    o = _Ops(wb)
    if cfg.family == "llama":
        o.rmsnorm("input_norm", rows, H)
        _attention(o, cfg, B, S, P)
        o.matmul("o_proj", 1, rows, cfg.heads * cfg.head_dim, H)
        o.ew("attn_residual", "Add", rows * H, 2)
        o.rmsnorm("post_norm", rows, H)
        o.matmul("gate_proj", 1, rows, H, F)
        o.matmul("up_proj", 1, rows, H, F)
        o.ew("silu_sigmoid", "Sigmoid", rows * F)
        o.ew("silu_mul", "Mul", rows * F, 2)
        o.ew("gate_mul", "Mul", rows * F, 2)
        o.matmul("down_proj", 1, rows, F, H)
        o.ew("mlp_residual", "Add", rows * H, 2)
    else:
        o.layernorm("ln_1", rows, H)
        _attention(o, cfg, B, S, P)
        o.matmul("attn_out", 1, rows, H, H, bias=True)
        o.ew("attn_residual", "Add", rows * H, 2)
        o.layernorm("ln_2", rows, H)
        o.matmul("fc_in", 1, rows, H, F, bias=True)
        _gelu_tanh(o, "gelu", rows * F)
        o.matmul("fc_out", 1, rows, F, H, bias=True)
        o.ew("mlp_residual", "Add", rows * H, 2)
    return o


def _embedding(cfg: ModelConfig, B: int, S: int, P: int, wb: int) -> tuple[_Ops, list[tuple[str, tuple, str]]]:
    """Token embedding (+ positions) and the side tensors shared by all blocks."""
    H, V, nh, hd = cfg.hidden, cfg.vocab, cfg.heads, cfg.head_dim
    T = P + S
    o = _Ops(wb)
    o.add("wte", "Gather", "gather", 0, B * S * H, B * S * H, params=V * H)  # reads B*S rows of the table
    o.move("seq_shape", "Shape", 0, "shape")
    o.move("seq_len", "Gather", 0)
    o.move("positions", "Range", S, "shape")
    if cfg.family == "gpt2":
        o.add("wpe", "Gather", "gather", 0, S * H, S * H, params=cfg.max_positions * H)
        o.ew("pos_add", "Add", B * S * H, 2)
    if cfg.family == "bloom":
        o.layernorm("word_embeddings_layernorm", B * S, H)
    # causal mask [1,1,S,T]: key position j is masked for query i when j > i + P
    o.move("key_positions", "Range", T, "shape")
    o.move("q_unsq", "Unsqueeze", S, "shape")
    o.move("k_unsq", "Unsqueeze", T, "shape")
    o.ew("mask_cmp", "Greater", S * T, 2)
    o.ew("mask_where", "Where", S * T, 2)
    side = []
    if cfg.family == "bloom":  # ALiBi bias per head added to the mask: [1, nh, S, T]
        o.move("key_pos_f", "Cast", T, "shape")
        o.ew("alibi", "Mul", nh * T, 2)
        o.ew("alibi_mask", "Add", nh * S * T, 2)
        o.move("attn_bias", "Unsqueeze", nh * S * T, "shape")
        side.append(("attn_bias", (1, nh, S, T), "float32"))
    else:
        o.move("attn_bias", "Unsqueeze", S * T, "shape")
        side.append(("attn_bias", (1, 1, S, T), "float32"))
    if cfg.family == "llama":  # rotary tables [1,1,S,hd]
        o.move("pos_f", "Cast", S, "shape")
        o.ew("freqs", "Mul", S * hd // 2, 2)
        o.move("freqs_cat", "Concat", S * hd)
        o.ew("cos", "Cos", S * hd)
        o.ew("sin", "Sin", S * hd)
        o.move("cos_unsq", "Unsqueeze", S * hd, "shape")
        o.move("sin_unsq", "Unsqueeze", S * hd, "shape")
        side += [("rope_cos", (1, 1, S, hd), "float32"), ("rope_sin", (1, 1, S, hd), "float32")]
    return o, side


def _head(cfg: ModelConfig, B: int, S: int, wb: int) -> _Ops:
    H, V = cfg.hidden, cfg.vocab
    o = _Ops(wb)
    if cfg.family == "llama":
        o.rmsnorm("norm", B * S, H)
    else:
        o.layernorm("ln_f", B * S, H)
    if cfg.tied_embeddings:
        # the head multiplies by the (shared) embedding table: held in memory here too
        o.add("lm_head_t", "Transpose", "gather", 0, 0, 0, params=V * H, dims=(V * H,), const=True)
        o.add("lm_head", "MatMul", "matmul", 2 * B * S * H * V, B * S * H, B * S * V, reads=V * H,
              dims=(1, B * S, H, V))
    else:
        o.matmul("lm_head", 1, B * S, H, V)
    return o


def analytic_graph(cfg: ModelConfig, seq_len: int = 128, batch: int = 1, past_len: int = 0,
                   weight_dtype: str = "fp32") -> ModelGraph:
    B, S, P = int(batch), int(seq_len), int(past_len)
    wb = WEIGHT_BYTES[weight_dtype]
    H, L = cfg.hidden, cfg.layers
    emb, side = _embedding(cfg, B, S, P, wb)
    parts = [("embedding", "embedding", emb)]
    parts += [(f"block.{i}", "block", _block(cfg, B, S, P, wb)) for i in range(L)]
    parts.append(("head", "head", _head(cfg, B, S, wb)))
    n = len(parts)
    tensors: list[BoundaryTensor] = []
    for i in range(n - 1):  # the residual stream, module i -> i+1
        tensors.append(BoundaryTensor(f"hidden.{i}", i, (i + 1,), B * S * H * ACT, (B, S, H), "float32", True))
    for name, shape, dtype in side:
        nb = 1
        for d in shape:
            nb *= d
        tensors.append(BoundaryTensor(name, 0, tuple(range(1, L + 1)), nb * ACT, shape, dtype, False))
    tensors.append(BoundaryTensor("logits", n - 1, (n,), B * S * cfg.vocab * ACT, (B, S, cfg.vocab), "float32", True))
    outb = module_output_bytes(n, tensors)
    kv_tok = 2 * cfg.n_kv_heads * cfg.head_dim * ACT * B
    modules = []
    for i, (name, kind, o) in enumerate(parts):
        modules.append(Module(i, name, kind, o.params, o.params * wb, float(sum(op.flops for op in o.ops)),
                              outb[i], kv_tok if kind == "block" else 0, o.ops))
    unique = sum(m.params for m in modules)
    if cfg.tied_embeddings:
        unique -= cfg.vocab * H
    return ModelGraph(cfg.name, cfg.family, "analytic", B, S, P, modules, tensors, unique, unique * wb, cfg.vocab, H)
