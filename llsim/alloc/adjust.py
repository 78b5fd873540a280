"""An allocation problem re-priced as observed: devices slowed down, links scaled, devices gone.

Used by the balancer (its re-plans) and by the initial plan of a scenario whose devices join later.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from llsim.alloc.problem import AllocProblem, View


def adjusted_problem(pb: AllocProblem, slowdown: dict[int, float], link_scale: dict[int, float],
                     alive: set[int] | None = None) -> AllocProblem:
    """``pb`` re-priced: device d's compute x slowdown[d], its per-byte link costs x link_scale[d];
    devices not ``alive`` get no memory (no stage fits them). Devices so changed become their own
    types in the MILP (their keys change)."""
    D = pb.n_devices
    f = np.array([slowdown.get(d, 1.0) for d in range(D)])
    ls = np.array([link_scale.get(d, 1.0) for d in range(D)])
    alive = set(range(D)) if alive is None else alive

    def view(v: View) -> View:
        links = dataclasses.replace(v.links, out=tuple(o * s for o, s in zip(v.links.out, ls)),
                                    inb=tuple(i * s for i, s in zip(v.links.inb, ls)))
        return View(v.compute * f[:, None], v.tensors, links, v.steps)

    budget = np.array([pb.budget[d] if d in alive else 0.0 for d in range(D)])
    keys = [(*k, round(float(f[d]), 4), round(float(ls[d]), 4), d in alive) for d, k in enumerate(pb.device_keys)]
    steps = [(c * f[:, None], t) for c, t in pb.step_costs] if pb.step_costs else pb.step_costs
    meta = dict(pb.meta)
    if "prefill_seconds" in meta:  # what the peers' baselines measure, also as observed
        meta["prefill_seconds"] = np.asarray(meta["prefill_seconds"]) * f[:, None]
        meta["layer_seconds"] = {d: s * f[d] for d, s in meta["layer_seconds"].items()}
    header = pb.header if pb.header is None or pb.header in alive else None
    return dataclasses.replace(pb, lat=view(pb.lat), thr=view(pb.thr), overhead=pb.overhead * f, budget=budget,
                               device_keys=keys, step_costs=steps, header=header, meta=meta)
