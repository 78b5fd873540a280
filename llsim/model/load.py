"""Resolve a MODEL argument (zoo name or .onnx path) to graphs and ONNX files: one entry point."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from llsim.errors import LLSimError
from llsim.model.analytic import analytic_graph
from llsim.model.cuts import CutAnalysis, analyse_cuts, model_graph_from_onnx
from llsim.model.graph import ModelGraph
from llsim.model.kv import has_kv_cache, kv_dim_overrides, require_kv_cache
from llsim.model.onnx_graph import OnnxModel, analyse, load_proto
from llsim.model.zoo import ZOO, get_config


def is_onnx_path(model: str) -> bool:
    return model.lower().endswith(".onnx") or Path(model).exists() or "/" in model


def model_graph(model: str, seq_len: int = 128, batch: int = 1, past_len: int = 0,
                weight_dtype: str = "fp32") -> ModelGraph:
    """Module graph at a binding: analytical for zoo names (instant; weights of ``weight_dtype``),
    ingested for ONNX files (their own weights)."""
    if seq_len < 1 or batch < 1:
        raise LLSimError(f"--seq-len ({seq_len}) and --batch ({batch}) must be >= 1")
    if not is_onnx_path(model):
        return analytic_graph(get_config(model), seq_len, batch, past_len, weight_dtype)
    om = analyse(load_proto(model), batch, seq_len, Path(model))
    return model_graph_from_onnx(om)


@dataclass
class OnnxBundle:
    proto: onnx.ModelProto  # with weights
    om: OnnxModel
    cuts: CutAnalysis
    graph: ModelGraph


def onnx_bundle(model: str, seq_len: int = 16, batch: int = 1, seed: int = 0, kv_cache: bool = False,
                past_len: int = 0) -> OnnxBundle:
    """A runnable ONNX model with its analysis: zoo models are built (random weights, ``seed``).

    ``kv_cache``: the model with past/present key-value tensors (zoo models are built so; an ONNX
    file must have them, else a clear error: it runs in recompute mode only), analysed at a step of
    ``seq_len`` new tokens after ``past_len`` cached ones."""
    if past_len < 0:
        raise LLSimError(f"past_len ({past_len}) must be >= 0")
    if is_onnx_path(model):
        path = Path(model)
        proto = load_proto(path, load_weights=True)
        if kv_cache:
            require_kv_cache(proto, str(path))
    else:
        from llsim.model.builder import build_model
        cfg = get_config(model)
        params = getattr(cfg, "published_params", None) or (
            cfg.layers * 12 * cfg.hidden * cfg.hidden + cfg.vocab * cfg.hidden)  # blocks + embedding
        if params * 4 > 1.9e9:  # fp32 weights inside one protobuf, whose limit is 2 GB
            raise LLSimError(f"{model} is too large to materialise as ONNX here ({params * 4 / 1e9:.1f} GB of fp32 "
                             "weights; one ONNX protobuf holds at most 2 GB): use a tiny-* or small-* zoo model, "
                             "or pass your own .onnx file (external weights)")
        path = None
        proto = build_model(cfg, seed, kv_cache=kv_cache)
    overrides = kv_dim_overrides(proto, batch, seq_len, past_len) if has_kv_cache(proto) else None
    om = analyse(proto, batch, seq_len, path, dim_overrides=overrides)
    if path is None:
        om.path = None
        proto.graph.name = model
    ca = analyse_cuts(om)
    return OnnxBundle(proto, om, ca, model_graph_from_onnx(om, ca))


def zoo_names() -> list[str]:
    return list(ZOO)
