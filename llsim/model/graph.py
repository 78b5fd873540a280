"""The model graph every other part of llsim consumes.

A :class:`ModelGraph` is an ordered list of :class:`Module` (embedding, one per transformer block,
final norm + head, or whatever the cut analysis found in a user's ONNX file) evaluated at one
(batch, seq_len, past_len) binding, plus the :class:`BoundaryTensor` s that cross module
boundaries. It is produced by two independent paths:

* :mod:`llsim.model.analytic`: from a zoo config alone (instant, no weights), and
* :mod:`llsim.model.onnx_graph` + :mod:`llsim.model.cuts`: from a real ONNX file.

Segment boundaries are module indices ``[0, b1, ..., n_modules]``; :meth:`ModelGraph.dependency_maps`
derives LinguaLinked's sequential map (segment i -> i+1) and residual map (segment i -> k >= i+2,
sent directly from the producer, never relayed).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

from llsim.errors import LLSimError

#: Cost classes used by the cost model (:mod:`llsim.device`). Every op maps to exactly one.
OP_CLASSES = ("matmul", "attention", "elementwise", "norm", "softmax", "reduce", "gather", "shape", "quant", "other")


@dataclass(frozen=True)
class OpCost:
    """One operator's work at a bound shape.

    ``dims`` describes the shape the cost model needs: for matmul-like ops ``(batch, M, K, N)``,
    for everything else ``(numel_out,)``.
    """

    name: str
    op_type: str
    op_class: str
    flops: float
    bytes_in: int  # activation bytes read (weights excluded)
    bytes_out: int  # bytes written
    param_bytes: int  # weight bytes read
    dims: tuple[int, ...] = ()
    const: bool = False  # computed from weights alone: folded away by an optimising runtime


@dataclass
class Module:
    index: int
    name: str
    kind: str  # "embedding" | "block" | "head" | "other"
    params: int  # parameter count the module needs in memory (a tied weight counts in each user)
    param_bytes: int
    flops: float
    output_bytes: int  # bytes of all tensors crossing the boundary right after this module
    kv_bytes_per_token: int = 0  # KV-cache bytes per cached token (whole batch)
    ops: list[OpCost] = field(default_factory=list)
    node_range: tuple[int, int] | None = None  # [start, end) in the ONNX node order, when from ONNX

    @property
    def activation_bytes(self) -> int:
        """Peak-ish working set of activations: the largest single op input+output."""
        return max((op.bytes_in + op.bytes_out for op in self.ops), default=0)


@dataclass(frozen=True)
class BoundaryTensor:
    """A tensor produced in one module (or a graph input, producer -1) and used in later modules."""

    name: str
    producer: int  # module index, -1 for a graph input (held by the header, segment 0)
    consumers: tuple[int, ...]  # module indices (> producer), sorted; len(modules) means "graph output"
    nbytes: int
    shape: tuple[int, ...]
    dtype: str
    main: bool  # on the residual stream (hidden state) rather than a small shared side tensor


@dataclass(frozen=True)
class TensorRoute:
    name: str
    src_segment: int
    dst_segment: int
    nbytes: int
    shape: tuple[int, ...]
    dtype: str


@dataclass
class DependencyMaps:
    boundaries: list[int]
    sequential: list[TensorRoute]  # dst == src + 1
    residual: list[TensorRoute]  # dst >= src + 2, sent directly

    def inputs_of(self, seg: int) -> list[TensorRoute]:
        return [r for r in self.sequential + self.residual if r.dst_segment == seg]

    def outputs_of(self, seg: int) -> list[TensorRoute]:
        return [r for r in self.sequential + self.residual if r.src_segment == seg]

    def bytes_between(self, src: int, dst: int) -> int:
        return sum(r.nbytes for r in self.sequential + self.residual if r.src_segment == src and r.dst_segment == dst)


@dataclass
class ModelGraph:
    name: str
    family: str
    source: str  # "analytic" | "onnx"
    batch: int
    seq_len: int
    past_len: int
    modules: list[Module]
    tensors: list[BoundaryTensor]
    total_params: int  # unique parameters (tied weights once)
    unique_param_bytes: int = 0  # weight bytes with tied weights once (sum over modules counts them per user)
    vocab_size: int | None = None
    hidden_size: int | None = None

    @property
    def n_modules(self) -> int:
        return len(self.modules)

    @property
    def total_flops(self) -> float:
        return float(sum(m.flops for m in self.modules))

    @property
    def total_param_bytes(self) -> int:
        return sum(m.param_bytes for m in self.modules)

    # ---- segmentation -------------------------------------------------------------------
    def check_boundaries(self, boundaries: Sequence[int]) -> list[int]:
        """Validate ``[0, b1, ..., n]`` (strictly increasing module indices) and return it as a list."""
        b = [int(x) for x in boundaries]
        n = self.n_modules
        if len(b) < 2 or b[0] != 0 or b[-1] != n:
            raise LLSimError(
                f"segment boundaries {b} must start at 0 and end at the number of modules ({n}) of {self.name}"
            )
        for lo, hi in zip(b, b[1:]):
            if hi <= lo:
                raise LLSimError(f"segment boundaries {b} must be strictly increasing (each segment needs >= 1 module)")
        return b

    def even_boundaries(self, n_segments: int) -> list[int]:
        n = self.n_modules
        if not 1 <= n_segments <= n:
            raise LLSimError(f"--segments {n_segments} is out of range: {self.name} has {n} modules, so 1..{n}")
        return [round(i * n / n_segments) for i in range(n_segments + 1)]

    def segment_of(self, boundaries: Sequence[int], module: int) -> int:
        for s, (lo, hi) in enumerate(zip(boundaries, boundaries[1:])):
            if lo <= module < hi:
                return s
        return len(boundaries) - 1  # graph output

    def dependency_maps(self, boundaries: Sequence[int]) -> DependencyMaps:
        b = self.check_boundaries(boundaries)
        n_seg = len(b) - 1
        seq: list[TensorRoute] = []
        res: list[TensorRoute] = []
        for t in self.tensors:
            src = 0 if t.producer < 0 else self.segment_of(b, t.producer)
            dsts = sorted({self.segment_of(b, c) for c in t.consumers if c < self.n_modules})
            for dst in dsts:
                if dst <= src or dst >= n_seg:
                    continue
                r = TensorRoute(t.name, src, dst, t.nbytes, t.shape, t.dtype)
                (seq if dst == src + 1 else res).append(r)
        return DependencyMaps(b, seq, res)

    def crossing_bytes(self, boundary: int) -> int:
        """Bytes of all tensors live across the boundary right after module ``boundary - 1``."""
        return sum(
            t.nbytes
            for t in self.tensors
            if t.producer < boundary and any(c >= boundary for c in t.consumers if c < self.n_modules)
        )

    def to_summary(self) -> dict:
        return {
            "model": self.name,
            "seq_len": self.seq_len,
            "batch": self.batch,
            "modules": [
                {
                    "index": m.index,
                    "name": m.name,
                    "params": m.params,
                    "flops": m.flops,
                    "output_bytes": m.output_bytes,
                }
                for m in self.modules
            ],
            "total_params": self.total_params,
            "total_flops": self.total_flops,
        }


def module_output_bytes(n_modules: int, tensors: Iterable[BoundaryTensor]) -> list[int]:
    """Bytes crossing each module's output boundary (what leaves module i for modules > i)."""
    out = [0] * n_modules
    tensors = list(tensors)
    for i in range(n_modules):
        b = i + 1
        out[i] = sum(
            t.nbytes for t in tensors if t.producer < b and any(c >= b for c in t.consumers)
        )
    return out
