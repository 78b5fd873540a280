"""The one step-cost provider: what a generation step costs, for the allocator's problem
(:mod:`llsim.alloc.problem`, the MILP, the oracle) and the simulator (:mod:`llsim.sim.engine`) alike.

- **Step shape** (:func:`step_shape`): (new tokens S, cached tokens P) of generation step k.
- **Graph per step shape** (:class:`StepGraphs`): the model graph of a step shape, built once.
- **KV-cache interpolation** (:func:`kv_anchors`, :func:`affine`): a decode step's ops have FLOPs
  and bytes affine in the cache length P and the cost model is linear in them, so every cost and
  byte count of a decode step is exactly affine in P between two anchors.
- **Per-stage seconds**: :func:`stage_seconds` is one session.run over a stage's modules (what the
  simulator charges); :func:`module_seconds` is the (devices, modules) matrix of the linear model
  (the allocator adds the run overhead once per stage). Both come from the device's cost model.
- **Route bytes**: :func:`stage_routes` (bytes per (source stage, destination stage) of a plan) and
  :func:`tensor_groups` (bytes per (producer module, consumer modules), the allocator's view).
- **Stage memory**: :func:`module_activation_bytes` (a module's activation buffer: the larger of
  the prefill's and the last step's), :func:`kv_bytes_per_token`, weights (``param_bytes``).
- **Token bytes** (:data:`TOKEN_BYTES`, :func:`token_bytes`): the sampled token ids sent back from
  the tail to the header.

Inputs are duck-typed (a scenario's ``model``, ``weight_dtype`` and ``workload``; a device's
``cost`` and ``threads``), so this module sits below the scenario, the allocator and the simulator.
"""
from __future__ import annotations

from llsim.errors import LLSimError

TOKEN_BYTES = 4  # one int32 token id per sequence of the batch


def token_bytes(batch: int) -> int:
    """Bytes of the token message tail -> header: one id per sequence."""
    return TOKEN_BYTES * batch


def step_shape(mode: str, prompt_tokens: int, step: int) -> tuple[int, int]:
    """(new tokens S, cached tokens P) of generation step ``step`` (0 = prefill)."""
    if mode == "kv_cache":
        return (prompt_tokens, 0) if step == 0 else (1, prompt_tokens + step - 1)
    return (prompt_tokens + step, 0)


def reprefill_shape(prompt_tokens: int, step: int) -> tuple[int, int]:
    """The step shape that rebuilds a request's lost KV cache at ``step``: its whole context again,
    nothing cached (the recompute shape of that step)."""
    return step_shape("recompute", prompt_tokens, step)


def kv_anchors(prompt_tokens: int) -> tuple[int, int]:
    """The two cache lengths from which every decode step is interpolated (kv_cache mode)."""
    return prompt_tokens, prompt_tokens + 1


def affine(a, b, k):
    """The value at ``k`` of the affine function that is ``a`` at 0 and ``b`` at 1."""
    return a + k * (b - a)


class StepGraphs:
    """Model graphs per step shape (S, P), built on first use; ``cache`` may be shared across plans."""

    def __init__(self, sc, cache: dict | None = None):
        self.model, self.batch, self.dtype = sc.model, sc.workload.batch, sc.weight_dtype
        self.cache = {} if cache is None else cache

    def __call__(self, S: int, P: int):
        key = (S, P)
        g = self.cache.get(key)
        if g is None:
            from llsim.model.analytic import analytic_graph
            from llsim.model.load import is_onnx_path, model_graph
            from llsim.model.zoo import get_config

            if is_onnx_path(self.model):
                if P:
                    raise LLSimError("workload.mode: kv_cache needs a zoo model (an ONNX file without KV-cache "
                                     "inputs is simulated in recompute mode); set workload.mode: recompute")
                g = model_graph(self.model, S, self.batch)
            else:
                g = analytic_graph(get_config(self.model), S, self.batch, P, self.dtype)
            self.cache[key] = g
        return g


def stage_seconds(device, graph, start: int, end: int) -> float:
    """One session.run of modules start..end of ``graph`` on ``device`` (its threads and speed)."""
    return device.cost.segment_seconds(graph.modules[start:end + 1], device.threads)


def module_seconds(graph, devices):
    """(devices, modules) seconds of the linear model, computed once per distinct (profile, threads, speed)."""
    import numpy as np

    rows, memo = [], {}
    for d in devices:
        key = (id(d.profile), d.threads, d.cost.speed)
        if key not in memo:
            memo[key] = np.array([d.cost.module_seconds(m, d.threads) for m in graph.modules])
        rows.append(memo[key])
    return np.vstack(rows)


def stage_routes(graph, boundaries) -> list[list[tuple[int, int]]]:
    """Per source stage: (destination stage, bytes) of every tensor it sends, sequential and residual."""
    maps = graph.dependency_maps(boundaries)
    agg: dict[tuple[int, int], int] = {}
    for r in maps.sequential + maps.residual:
        agg[(r.src_segment, r.dst_segment)] = agg.get((r.src_segment, r.dst_segment), 0) + r.nbytes
    routes: list[list[tuple[int, int]]] = [[] for _ in range(len(boundaries) - 1)]
    for (s, dst), nb in sorted(agg.items()):
        routes[s].append((dst, nb))
    return routes


def tensor_groups(graph) -> dict[tuple[int, tuple[int, ...]], tuple[float, tuple[str, ...]]]:
    """(producer module, consumer modules) -> (bytes, tensor names): every tensor between modules."""
    n = graph.n_modules
    out: dict = {}
    for t in graph.tensors:
        cons = tuple(c for c in t.consumers if c < n)
        if not cons:
            continue
        key = (t.producer, cons)
        b, names = out.get(key, (0.0, ()))
        out[key] = (b + t.nbytes, names + (t.name,))
    return out


def module_activation_bytes(prefill, last) -> list[int]:
    """Per module: its activation buffer, the larger of the prefill's and the last step's graph."""
    return [max(a.activation_bytes, b.activation_bytes) for a, b in zip(prefill.modules, last.modules)]


def kv_bytes_per_token(modules, mode: str) -> list[int]:
    """Per module: KV-cache bytes per cached token (0 in recompute mode)."""
    return [m.kv_bytes_per_token if mode == "kv_cache" else 0 for m in modules]
