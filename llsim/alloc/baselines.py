"""The peers' allocation strategies, implemented as their sources describe them.

Each takes an :class:`llsim.alloc.problem.AllocProblem` and returns a :class:`Plan` built only
from what that system looks at (sources: ``../shared/reference/peers.md`` and
``lingualinked.md``). They are then priced by llsim's model and judged by the simulator like
every other strategy; a plan that overflows a phone's memory is reported infeasible.

``uniform`` (:func:`llsim.alloc.plan.uniform_plan`; every strategy is named in :mod:`llsim.registry`)
    Even split of the modules in device order (header first when pinned).
``memory`` (exo's ring memory-weighted partitioning; llama.cpp RPC splits the same way)
    Devices sorted by memory (descending, ties by index); each takes a contiguous share of the
    modules proportional to its available RAM (largest remainder, at least one each). Compute
    and links are ignored.
``lingualinked``
    LinguaLinked's optimiser: minimise sum_j F_j / S_i x_ij (FLOPs of the module at the prompt
    length over the device's FLOP/s, measured on its largest module) plus, for every pair of
    devices that exchange tensors, ping latency + bytes / bandwidth; each module on one device,
    the header holds module 0, contiguous ranges, weights within 0.7 x available RAM (no KV
    cache), device order fixed. With order and contiguity fixed their binary quadratic program
    is solved exactly here by dynamic programming over the boundaries (devices may be skipped).
``halda`` (prima.cpp)
    Minimise k x sum_m (a_m w_m + c_m) with sum_m w_m = W layers per cycle and RAM bounds; the
    communication term is zero in their code. llsim rings are single-cycle (k = 1), so this is
    the total per-layer compute time: layers go to the fastest devices up to their memory
    (optimal for this integer program); devices given one layer are dropped and it is re-solved.
    Device order is the given order (header first).
``pipeedge``
    Dynamic programming over (module boundary, position in the ordered device list) minimising
    the bottleneck stage, max(compute, bytes out / min(bandwidth of the two devices)), within
    memory; devices may be skipped. Order: the given one (header first).
``greedy``
    Devices ordered fastest first (header first when pinned); each gets a contiguous share of
    the modules proportional to its speed, capped by its memory, the excess passed on.
"""
from __future__ import annotations

import math

import numpy as np

from llsim.alloc.plan import Plan, StagePlan, header_first, plan_from_backpointers, uniform_plan
from llsim.alloc.problem import AllocProblem

LINGUALINKED_RAM_FRACTION = 0.7


def _order(pb: AllocProblem, order: list[int]) -> list[int]:
    return header_first(order, pb.header)


def _plan(order: list[int], counts: list[int], name: str) -> Plan:
    stages, a = [], 0
    for d, c in zip(order, counts):
        if c > 0:
            stages.append(StagePlan(d, a, a + c - 1))
            a += c
    return Plan(tuple(stages), name)


def _largest_remainder(weights: list[float], total: int, minimum: int = 1) -> list[int]:
    k = len(weights)
    if total < k * minimum:
        weights, k = weights[:total], total
    W = sum(weights)
    raw = [minimum + (total - k * minimum) * w / W for w in weights]
    counts = [math.floor(r) for r in raw]
    rest = total - sum(counts)
    for i in sorted(range(k), key=lambda i: (-(raw[i] - counts[i]), i))[:rest]:
        counts[i] += 1
    return counts


def _ordered_dp(pb: AllocProblem, order: list[int], name: str, fits, first, step) -> Plan:
    """Best contiguous plan over an ordered device list (devices may be skipped; order[0] starts).

    ``fits(d, a, b)``: may device d hold modules a..b (monotone: False for every larger b once
    False); ``first(d, bs)``: costs of the first stage 0..b for an array of ends; ``step(cost,
    prev, d, a, bs)``: costs after appending stage (d, a, b) behind device ``prev``, for an array
    of ends ``bs``. Falls back to the uniform split when nothing fits.
    """
    n = pb.n_modules
    ends = np.arange(n)

    def reach(d: int, a: int) -> np.ndarray:  # the ends b >= a that device d can hold from a
        hi = a
        while hi < n and fits(d, a, hi):
            hi += 1
        return ends[a:hi]

    best: dict[tuple[int, int], tuple[float, tuple | None, tuple]] = {}  # (position, next module)
    h = order[0]
    bs = reach(h, 0)
    for b, c in zip(bs, first(h, bs) if len(bs) else []):
        best[(0, int(b) + 1)] = (float(c), None, (h, 0, int(b)))
    for a in range(1, n):
        for i in range(len(order)):
            if (i, a) not in best:
                continue
            cost, prev = best[(i, a)][0], order[i]
            for j in range(i + 1, len(order)):
                d = order[j]
                bs = reach(d, a)
                if not len(bs):
                    continue
                for b, c in zip(bs.tolist(), step(cost, prev, d, a, bs).tolist()):
                    key = (j, b + 1)
                    if key not in best or c < best[key][0] - 1e-15:
                        best[key] = (c, (i, a), (d, a, b))
    done = [(v[0], k) for k, v in best.items() if k[1] == n]
    if not done:
        return Plan(uniform_plan(n, _order(pb, list(range(pb.n_devices)))).stages, name)
    return plan_from_backpointers(best, min(done)[1], name)


def memory(pb: AllocProblem) -> Plan:
    order = sorted(range(pb.n_devices), key=lambda d: (-pb.ram_available[d], d))
    order = _order(pb, order)
    counts = _largest_remainder([float(pb.ram_available[d]) for d in order], pb.n_modules)
    return _plan(order, counts, "memory")


def _speed(pb: AllocProblem) -> np.ndarray:
    """Device FLOP/s as LinguaLinked measures it: the largest module's FLOPs over its time."""
    flops = pb.meta["prefill_flops"]
    j = int(np.argmax(flops))
    return np.array([flops[j] / pb.meta["prefill_seconds"][d][j] for d in range(pb.n_devices)])


def lingualinked(pb: AllocProblem) -> Plan:
    order = _order(pb, list(range(pb.n_devices)))
    S = _speed(pb)
    F = pb.meta["prefill_flops"]
    Fpre = np.concatenate([[0.0], np.cumsum(F)])
    wpre = np.concatenate([[0.0], np.cumsum(pb.weight_bytes)])
    out_bytes = pb.meta["mean_output_bytes"]  # per module boundary, averaged over 8-128 token inputs
    head_bytes = pb.meta["mean_head_bytes"]  # header -> each later device (mask tensors)
    links = pb.meta.get("one_flow_links", pb.lat.links)  # measured pairwise: one flow
    ram = pb.ram_available * LINGUALINKED_RAM_FRACTION
    ping = 2 * links.one_way_s

    def comm(src, dst, nbytes):
        return ping + nbytes * links.per_byte(src, dst)

    h = order[0]

    def fits(d, a, b):  # weights only, within 0.7 x available RAM
        return wpre[b + 1] - wpre[a] <= ram[d]

    def step(cost, prev, d, a, bs):
        c = cost + (Fpre[bs + 1] - Fpre[a]) / S[d] + comm(prev, d, out_bytes[a - 1])
        if head_bytes and prev != h:
            c = c + comm(h, d, head_bytes)
        return c

    return _ordered_dp(pb, order, "lingualinked", fits, lambda d, bs: Fpre[bs + 1] / S[d], step)


def halda(pb: AllocProblem) -> Plan:
    n = pb.n_modules
    devices = _order(pb, list(range(pb.n_devices)))
    per_layer = pb.meta["layer_seconds"]  # a_m: one block's time on each device (decode step)
    layer_bytes = pb.meta["layer_bytes"]
    while True:
        cap = {d: int(pb.budget[d] // layer_bytes) for d in devices}
        counts = {d: 0 for d in devices}
        left = n
        for d in sorted(devices, key=lambda d: (per_layer[d], d)):
            take = min(cap[d], left)
            counts[d] = take
            left -= take
        if left > 0:  # does not fit: hand out the rest evenly (the plan will be infeasible)
            for i in range(left):
                counts[devices[i % len(devices)]] += 1
        if pb.header is not None and counts[pb.header] == 0:  # the head device holds the input layer
            counts[pb.header] = 1
            counts[max(devices, key=lambda d: counts[d])] -= 1
        ones = [d for d in devices if counts[d] == 1 and d != pb.header]  # the head device always takes part
        if not ones or len(devices) == 1:
            break
        devices = [d for d in devices if d not in ones]
    return _plan(devices, [counts[d] for d in devices], "halda")


def pipeedge(pb: AllocProblem) -> Plan:
    order = _order(pb, list(range(pb.n_devices)))
    pre = np.concatenate([np.zeros((pb.n_devices, 1)), np.cumsum(pb.thr.compute, axis=1)], axis=1)
    out_bytes = pb.meta["mean_output_bytes"]
    links = pb.meta.get("one_flow_links", pb.lat.links)  # measured pairwise: one flow

    def compute(d, a, bs):
        return pb.overhead[d] + pre[d, bs + 1] - pre[d, a]

    def step(cost, prev, d, a, bs):  # the bottleneck of compute and bytes / pair bandwidth
        return np.maximum(max(cost, out_bytes[a - 1] * links.per_byte(prev, d)), compute(d, a, bs))

    return _ordered_dp(pb, order, "pipeedge", pb.fits, lambda d, bs: compute(d, 0, bs), step)


def greedy(pb: AllocProblem) -> Plan:
    n = pb.n_modules
    speed = 1.0 / pb.lat.compute.sum(axis=1)
    order = _order(pb, sorted(range(pb.n_devices), key=lambda d: (-speed[d], d)))
    stages, a = [], 0
    remaining_speed = sum(speed[d] for d in order)
    for i, d in enumerate(order):
        if a >= n:
            break
        share = round((n - a) * speed[d] / remaining_speed) if i < len(order) - 1 else n - a
        remaining_speed -= speed[d]
        share = max(1, min(share, n - a))
        b = a + share - 1
        while b > a and not pb.fits(d, a, b):
            b -= 1
        if not pb.fits(d, a, b):
            continue
        stages.append(StagePlan(d, a, b))
        a = b + 1
    if a < n:  # memory left modules over: the last device takes them (infeasible if it cannot)
        if stages:
            last = stages.pop()
            stages.append(StagePlan(last.device, last.start_module, n - 1))
        else:
            stages.append(StagePlan(order[0], 0, n - 1))
    return Plan(tuple(stages), "greedy")
