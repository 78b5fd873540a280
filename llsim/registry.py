"""The one registry of allocation strategies: name -> strategy, its description, whether it is
exact, and what it needs.

Every place that picks a strategy by name asks here: the scenario schema (``allocation.strategy``
and ``balancer.strategy``), the initial plan of ``llsim run`` (:func:`llsim.judge.run.make_plan`),
``llsim allocate`` and its help, the allocator bench, and the balancer's full re-plans (through
:func:`llsim.alloc.strategies.allocate_problem`).

A strategy's implementation is named as ``"module:function"`` and imported on first use, so the
schema can validate a name without importing the allocator (this module sits below everything).
What the function takes is its ``kind``:

``order``   ``f(n_modules, device_order) -> Plan``: needs only the module count and the device
            order (the header first when one is pinned).
``plan``    ``f(problem) -> Plan``: an :class:`llsim.alloc.problem.AllocProblem` in, a plan out.
``solver``  ``f(problem, scenario, evaluate) -> AllocResult``: reads the scenario's allocation
            settings (time limit, gap) and may judge candidates with ``evaluate``.
``stages``  ``f(stages, device_names) -> Plan``: the scenario's ``allocation.stages``, verbatim
            (only as ``allocation.strategy``; never judged nor used to re-plan).

Adding a strategy: write its function and :func:`register` it here (or from your own code before
the scenario is loaded).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

KINDS = {
    "order": "the module count and the device order",
    "plan": "the allocation problem (costs, bytes, budgets, links)",
    "solver": "the allocation problem and the scenario's allocation settings",
    "stages": "allocation.stages",
}


@dataclass(frozen=True)
class Strategy:
    name: str
    target: str | Callable  # "module:function" or the function
    kind: str  # a key of KINDS
    description: str
    exact: bool = False  # optimal under llsim's model of the scenario
    peer: bool = False  # a peer system's strategy: an incumbent of the MILP search and a bench baseline

    @property
    def needs(self) -> str:
        return KINDS[self.kind]

    @property
    def judged(self) -> bool:
        """Planned from an allocation problem, so `llsim allocate` can judge it and the balancer re-plan with it."""
        return self.kind != "stages"

    @property
    def fn(self) -> Callable:
        if callable(self.target):
            return self.target
        mod, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(mod), attr)


_REGISTRY: dict[str, Strategy] = {}


def register(name: str, target: str | Callable, kind: str, description: str, exact: bool = False,
             peer: bool = False) -> Strategy:
    if kind not in KINDS:
        raise ValueError(f"strategy kind {kind!r}: use one of {', '.join(KINDS)}")
    if name in _REGISTRY or name == "all":
        raise ValueError(f"strategy {name!r} is already registered" if name != "all" else "'all' is reserved")
    s = Strategy(name, target, kind, description, exact, peer)
    _REGISTRY[name] = s
    return s


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def get(name: str) -> Strategy | None:
    return _REGISTRY.get(name)


def names(judged_only: bool = False) -> tuple[str, ...]:
    """Registered names in registration order (``judged_only``: those planned from a problem)."""
    return tuple(n for n, s in _REGISTRY.items() if s.judged or not judged_only)


def peers() -> tuple[Strategy, ...]:
    return tuple(s for s in _REGISTRY.values() if s.peer)


def unknown(name: str, judged_only: bool = False, extra: str = "") -> str:
    """The message for an unknown name: what was given and every known one."""
    return f"unknown strategy '{name}'; use one of {', '.join(names(judged_only))}{extra}"


# ---- the shipped strategies (the peers' in the order the MILP search seeds its incumbents) -------
register("milp", "llsim.alloc.strategies:solve_milp", "solver",
         "llsim's allocator: MILP over contiguous ring stages, best candidates judged by the finer evaluation",
         exact=True)
register("oracle", "llsim.alloc.strategies:solve_oracle", "solver",
         "exact oracle of the model: DP (linear model) or branch and bound (power-save wake-ups)", exact=True)
register("uniform", "llsim.alloc.plan:uniform_plan", "order",
         "even layer split in device order (header first when pinned)", peer=True)
register("memory", "llsim.alloc.baselines:memory", "plan",
         "exo / llama.cpp RPC: contiguous shares proportional to available RAM", peer=True)
register("lingualinked", "llsim.alloc.baselines:lingualinked", "plan",
         "LinguaLinked's optimiser: FLOPs / FLOP/s plus ping + bytes / bandwidth, fixed order", peer=True)
register("halda", "llsim.alloc.baselines:halda", "plan",
         "prima.cpp's Halda: layers to the fastest devices up to their memory", peer=True)
register("pipeedge", "llsim.alloc.baselines:pipeedge", "plan",
         "PipeEdge: DP minimising the bottleneck stage within memory", peer=True)
register("greedy", "llsim.alloc.baselines:greedy", "plan",
         "fastest devices first, shares proportional to speed capped by memory, the excess passed on", peer=True)
register("explicit", "llsim.alloc.plan:explicit_plan", "stages",
         "the stages given in allocation.stages, verbatim")
