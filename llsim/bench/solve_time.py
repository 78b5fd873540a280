"""Allocator solve time over cluster sizes: ``llsim bench solve_time`` (part of ``make bench``).

Random instances per size (D phones x n modules), drawn from a seed: a Llama-2-7B-shaped model
(hidden 4096) with n - 2 blocks in fp16, so it must be spread over several phones; each phone
drawn from the six shipped profiles with an RSSI uniform in [-70, -45] dBm; an access point or
Wi-Fi Direct, 802.11ac or ax at 40 or 80 MHz, power save on or off; 1-8 requests in flight
(two waves), 64 prompt and 32 new tokens in kv_cache mode; the latency or the throughput
objective. Three times per instance: one solve of the linear model
(:func:`llsim.alloc.milp.solve_once`: exact, or with several requests in flight within 0.5 % of
its LP bound), the whole ``milp`` strategy with its candidates judged by the linear model (as the
balancer re-plans: peers, local and order searches, the MILP, power-save rounds), and the same
judged by short simulations of the workload when several requests are in flight (as ``llsim
run`` and ``llsim allocate`` plan). Wall-clock seconds; the table gives the median and the worst
case of each size and objective.
"""
from __future__ import annotations

import dataclasses
import statistics
import time

import numpy as np

SIZES = [(4, 24), (8, 32), (16, 48), (32, 64), (64, 80)]
PHONES = ["snapdragon-8gen2", "tensor-g3", "kirin-990", "exynos-1380", "kirin-810", "helio-g85"]
TARGETS = {(8, 32): 0.5, (16, 48): 2.0}  # seconds, the whole strategy (worst case)


def _model(n: int) -> str:
    from llsim.model.zoo import ZOO, get_config

    name = f"bench-llama-{n - 2}l"
    if name not in ZOO:
        ZOO[name] = dataclasses.replace(get_config("llama-2-7b"), name=name, layers=n - 2, published_params=None)
    return name


def random_instance(D: int, n: int, seed: int, objective: str | None = None) -> dict:
    """A scenario dict: D random phones, a random network and workload, a Llama-shaped model of n modules."""
    rng = np.random.default_rng([D, n, seed])
    devices = [{"profile": PHONES[int(rng.integers(len(PHONES)))], "threads": 4,
                "rssi_dbm": round(float(rng.uniform(-70.0, -45.0)), 1)} for _ in range(D)]
    N = int(rng.integers(1, 9))
    net = {"kind": "infrastructure" if rng.random() < 0.7 else "wifi_direct",
           "standard": str(rng.choice(["ac", "ax"])), "width_mhz": int(rng.choice([40, 80]))}
    if rng.random() < 0.3:
        net["power_save"] = {"enabled": False}
    objective = objective or ("latency" if rng.random() < 0.5 else "throughput")
    return {"name": f"solve-{D}x{n}-{seed}", "model": _model(n), "weight_dtype": "fp16", "seed": seed,
            "devices": devices, "network": net, "allocation": {"strategy": "milp", "objective": objective},
            "workload": {"prompt_tokens": 64, "new_tokens": 32, "requests": 2 * N, "concurrency": N}}


def instance(D: int, n: int, seed: int, objective: str, rssi=(-50.0, -62.0, -70.0), wifi=("ax", 80),
             concurrency: int | None = None):
    """A fixed-form instance (three signal levels, one 802.11ax AP): the tests' Llama-shaped problems."""
    from llsim.alloc.problem import build_problem
    from llsim.scenario import validate_scenario
    from llsim.cluster import expand_devices

    rng = np.random.default_rng(seed)
    devices = [{"profile": PHONES[int(rng.integers(len(PHONES)))], "threads": 4,
                "rssi_dbm": float(rng.choice(list(rssi)))} for _ in range(D)]
    sc = validate_scenario({
        "name": f"solve-{D}x{n}-{seed}", "model": _model(n), "weight_dtype": "fp16", "seed": seed, "devices": devices,
        "network": {"kind": "infrastructure", "standard": wifi[0], "width_mhz": wifi[1]},
        "allocation": {"strategy": "milp", "objective": objective},
        "workload": {"prompt_tokens": 64, "new_tokens": 32, "requests": 16,
                     "concurrency": concurrency or (1 if objective == "latency" else 8)},
    })
    return build_problem(sc, expand_devices(sc), objective)


def run(sizes=SIZES, seeds: int = 20, progress=None) -> list[dict]:
    """``seeds`` instances per size (an int; a sequence counts as its length)."""
    if not isinstance(seeds, int):
        seeds = len(seeds)
    from llsim.alloc import milp
    from llsim.alloc.problem import build_problem
    from llsim.alloc.strategies import allocate_problem
    from llsim.judge.evaluate import evaluator_for
    from llsim.errors import LLSimError
    from llsim.scenario import validate_scenario
    from llsim.cluster import expand_devices

    rows = []
    for D, n in sizes:
        per: dict[str, dict[str, list]] = {}
        k = 0
        drawn = 0
        while drawn < seeds and k < 10 * seeds:
            data = random_instance(D, n, k)
            k += 1
            try:
                sc = validate_scenario(data)
                devs = expand_devices(sc)
                pb = build_problem(sc, devs)
            except LLSimError:  # a signal below the weakest MCS of its channel: redraw
                continue
            if pb.memory_need() > pb.budget.sum():
                continue
            drawn += 1
            obj = sc.allocation.objective
            acc = per.setdefault(obj, {"once": [], "model": [], "all": [], "gap": [], "inst": []})
            t0 = time.perf_counter()
            r1 = milp.solve_once(pb, obj, tol=0.0 if pb.in_flight == 1 else 0.005)
            acc["once"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()  # as the balancer re-plans: candidates judged by the linear model
            milp.solve(build_problem(sc, devs), evaluate=None)
            acc["model"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()  # as `llsim run` plans: candidates judged by short simulations
            res = allocate_problem(pb, "milp", sc, devs, evaluator_for(pb, sc, devs))
            acc["all"].append(time.perf_counter() - t0)
            acc["gap"].append(r1.gap or 0.0)
            acc["inst"].append(f"{data['name']} N={pb.in_flight}")
            if progress:
                progress(f"{D}x{n} {obj} N={pb.in_flight}: strategy {acc['all'][-1]:.2f} s "
                         f"({res.info.get('candidates')} candidates, {res.info.get('evaluated')} judged; "
                         f"{res.info.get('phase_s')})")
        for obj, acc in sorted(per.items()):
            worst = int(np.argmax(acc["all"]))
            rows.append({"devices": D, "modules": n, "objective": obj, "runs": len(acc["all"]),
                         "once_median_s": statistics.median(acc["once"]), "once_max_s": max(acc["once"]),
                         "model_median_s": statistics.median(acc["model"]), "model_max_s": max(acc["model"]),
                         "median_s": statistics.median(acc["all"]), "max_s": max(acc["all"]),
                         "max_gap": max(acc["gap"]), "worst": acc["inst"][worst],
                         "target_s": TARGETS.get((D, n))})
    return rows


def main(sizes=SIZES, seeds: int = 20) -> int:
    from llsim.cli.tables import fit_table, note, stdout_console

    from llsim.bench.output import save_rows

    rows = run(sizes, seeds, progress=note)
    out = save_rows("solve_time", rows)
    table, bad = [], []
    for r in rows:
        tgt = r["target_s"]
        table.append([f"{r['devices']}x{r['modules']}", r["objective"], str(r["runs"]),
                      f"{r['once_median_s']:.2f} / {r['once_max_s']:.2f}",
                      f"{r['model_median_s']:.2f} / {r['model_max_s']:.2f}",
                      f"{r['median_s']:.2f} / {r['max_s']:.2f}", f"<= {tgt:g}" if tgt else ""])
        if tgt and r["max_s"] > tgt:
            bad.append(f"{r['devices']}x{r['modules']} {r['objective']}: worst {r['max_s']:.2f} s > {tgt:g} s "
                       f"({r['worst']})")
    con = stdout_console()
    con.print(f"milp solve time, wall s: {seeds} random Llama-shaped fp16 instances per size (median / worst)")
    con.print(fit_table([("size", "num"), ("objective", "key"), ("n", "num"), ("one solve", "num"),
                         ("strategy, model", "num"), ("strategy, +sims", "num"), ("target", "num")], table, con.width))
    for b in bad:
        con.print("target missed: " + b)
    print(f"wrote {out}")
    return 0
