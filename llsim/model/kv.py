"""KV-cache state of an ONNX decoder: which graph inputs are cached keys/values and which outputs
replace them after a step.

A decoder exported with a cache (llsim's own ``build_model(kv_cache=True)``, Hugging Face/optimum
exports) takes per block ``past_key_values.{i}.key`` / ``.value`` (or ``past.{i}...``, ``past_key_{i}``)
and returns ``present.{i}.key`` / ``.value``. Those pairs are **state**: they stay on the device that
runs the block between steps, so they never cross a segment cut (:mod:`llsim.model.cuts`) and are not
routed between segments (:mod:`llsim.model.segment` lists them per segment under ``state``).

A pair is a float graph input whose name contains ``past`` and a graph output with the same name
where ``past_key_values`` or ``past`` is replaced by ``present``. The cached axis is the input's
symbolic dimension whose name mentions ``past`` (else its third axis, the layout of every exporter
llsim knows: ``[batch, heads, past, head_dim]``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import onnx

from llsim.errors import LLSimError

_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
_PAST = re.compile(r"past", re.I)


@dataclass(frozen=True)
class StatePair:
    input: str  # past_key_values.{i}.key
    output: str  # present.{i}.key
    axis: int  # the cached (sequence) axis
    past_dim: str | None  # the symbolic name of that axis in the graph, if any


def _present_names(name: str) -> list[str]:
    low = name.lower()
    out = []
    for pat in ("past_key_values", "past_key_value", "past"):
        i = low.find(pat)
        if i >= 0:
            out.append(name[:i] + "present" + name[i + len(pat):])
    return out


def state_pairs(proto: onnx.ModelProto) -> list[StatePair]:
    """The KV-cache (past -> present) pairs of a graph, in input order; empty for a recompute-only model."""
    g = proto.graph
    inits = {t.name for t in g.initializer}
    outs = {o.name for o in g.output}
    pairs = []
    for inp in g.input:
        if inp.name in inits or not _PAST.search(inp.name):
            continue
        tt = inp.type.tensor_type
        if tt.elem_type not in _FLOATS:
            continue
        match = next((o for o in _present_names(inp.name) if o in outs), None)
        if match is None:
            continue
        dims = list(tt.shape.dim)
        axis, name = None, None
        for a, d in enumerate(dims):
            if d.dim_param and _PAST.search(d.dim_param):
                axis, name = a, d.dim_param
                break
        if axis is None:
            axis = 2 if len(dims) == 4 or not dims else len(dims) - 2
        pairs.append(StatePair(inp.name, match, axis, name))
    return pairs


def has_kv_cache(proto: onnx.ModelProto) -> bool:
    return bool(state_pairs(proto))


def require_kv_cache(proto: onnx.ModelProto, what: str) -> list[StatePair]:
    """The pairs, or a clear error for a model without a KV cache asked to run with one."""
    pairs = state_pairs(proto)
    if not pairs:
        raise LLSimError(f"{what} has no KV-cache inputs (no past_key_values.* inputs with matching present.* "
                         "outputs), so it can run in recompute mode only: use mode: recompute, or export the "
                         "model with its cache (e.g. optimum's decoder-with-past)")
    return pairs


def kv_dim_overrides(proto: onnx.ModelProto, batch: int, seq_len: int, past_len: int) -> dict[str, int]:
    """Symbolic dims of a KV model bound consistently: the cached axis of the state inputs to
    ``past_len``; any other input dim that mentions ``past`` (the attention mask's ``past+seq``) to
    ``past_len + seq_len``. Plain batch/sequence dims are left to :func:`llsim.model.onnx_graph.bind_dims`."""
    pairs = state_pairs(proto)
    state_in = {p.input for p in pairs}
    out: dict[str, int] = {}
    for p in pairs:
        if p.past_dim:
            out[p.past_dim] = past_len
    g = proto.graph
    inits = {t.name for t in g.initializer}
    for inp in g.input:
        if inp.name in inits or inp.name in state_in:
            continue
        for d in inp.type.tensor_type.shape.dim:
            if d.dim_param and _PAST.search(d.dim_param) and d.dim_param not in out:
                out[d.dim_param] = past_len + seq_len
    return out
