"""Allocator solve time over cluster sizes: ``llsim bench solve_time`` (part of ``make bench``).

Instances: a Llama-2-7B-shaped model (hidden 4096) with L = modules - 2 blocks in fp16, so it
must be spread over several phones, on D phones drawn (seeded) from the six shipped phone
profiles with one of three signal strengths each, on one 802.11ax access point. Both
objectives; three seeds per size; the MILP's default time limit (30 s) and gap (1e-6). Two
times: one exact solve of the model, and the whole ``milp`` strategy (the baselines' upper bound,
the fewest-stages tie-break MILP, power-save rounds with one request in flight, the selection).
"""
from __future__ import annotations

import dataclasses
import statistics
import time

import numpy as np

SIZES = [(4, 24), (8, 32), (16, 48), (32, 64), (64, 80)]
PHONES = ["snapdragon-8gen2", "tensor-g3", "kirin-990", "exynos-1380", "kirin-810", "helio-g85"]


def instance(D: int, n: int, seed: int, objective: str, rssi=(-50.0, -62.0, -70.0), wifi=("ax", 80),
             concurrency: int | None = None):
    from llsim.model.zoo import ZOO, get_config
    from llsim.scenario import validate_scenario
    from llsim.sim.cluster import expand_devices
    from llsim.alloc.problem import build_problem

    name = f"bench-llama-{n - 2}l"
    if name not in ZOO:
        ZOO[name] = dataclasses.replace(get_config("llama-2-7b"), name=name, layers=n - 2, published_params=None)
    rng = np.random.default_rng(seed)
    devices = [{"profile": PHONES[int(rng.integers(len(PHONES)))], "threads": 4,
                "rssi_dbm": float(rng.choice(list(rssi)))} for _ in range(D)]
    sc = validate_scenario({
        "name": f"solve-{D}x{n}-{seed}", "model": name, "weight_dtype": "fp16", "seed": seed, "devices": devices,
        "network": {"kind": "infrastructure", "standard": wifi[0], "width_mhz": wifi[1]},
        "allocation": {"strategy": "milp", "objective": objective},
        "workload": {"prompt_tokens": 64, "new_tokens": 32, "requests": 16,
                     "concurrency": concurrency or (1 if objective == "latency" else 8)},
    })
    devs = expand_devices(sc)
    return build_problem(sc, devs, objective)


def run(sizes=SIZES, seeds=(1, 2, 3)) -> list[dict]:
    from llsim.alloc import milp

    rows = []
    for D, n in sizes:
        for objective in ("latency", "throughput"):
            times, once, gaps, statuses, types = [], [], [], [], []
            for seed in seeds:
                pb = instance(D, n, seed, objective)
                if pb.memory_need() > pb.budget.sum():
                    continue
                t0 = time.perf_counter()
                r1 = milp.solve_once(pb, objective)  # one exact solve of the model, nothing around it
                once.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                milp.solve(pb)  # the milp strategy: + fewest-stages tie-break, power-save rounds, selection
                times.append(time.perf_counter() - t0)
                gaps.append(r1.gap if r1.gap is not None else float("nan"))
                statuses.append(r1.status)
                types.append(len({(k, d == pb.header) for d, k in enumerate(pb.device_keys)}))
            rows.append({"devices": D, "modules": n, "objective": objective, "runs": len(times),
                         "median_s": statistics.median(times) if times else None,
                         "once_median_s": statistics.median(once) if once else None,
                         "max_s": max(times) if times else None,
                         "max_gap": max(gaps) if gaps else None, "types": max(types) if types else None,
                         "status": ",".join(sorted(set(statuses)))})
    return rows


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="allocator (milp) solve time: Llama-7B-shaped fp16, phones from the shipped profiles, 3 seeds")
    for c in ("devices x modules", "objective", "device types", "one exact solve: median s", "gap", "status",
              "milp strategy: median s", "max s"):
        t.add_column(c, justify="right")
    from llsim.bench.output import save_rows

    rows = run()
    out = save_rows("solve_time", rows)
    for r in rows:
        t.add_row(f"{r['devices']}x{r['modules']}", r["objective"], str(r["types"]),
                  f"{r['once_median_s']:.3f}" if r["once_median_s"] is not None else "-",
                  f"{r['max_gap']:.1e}" if r["max_gap"] is not None else "-", r["status"],
                  f"{r['median_s']:.3f}" if r["median_s"] is not None else "-",
                  f"{r['max_s']:.3f}" if r["max_s"] is not None else "-")
    Console(width=160).print(t)
    print(f"wrote {out}")
