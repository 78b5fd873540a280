"""Allocator quality: ``llsim bench allocator [--check] [--write] [--random N --seed S]``.

Every instance is planned by every strategy; each plan is run through the simulator with the same
seed and every RTT at its mean (``network.rtt_sampling: expected``, so the comparison carries no
sampling noise); the score is the simulated metric of the instance's objective (mean ms per
decode token for ``latency``, tokens/s for ``throughput``).

Instances: ``scenarios/bench/*.yaml`` by default, or, with ``--random N --seed S``, N instances
drawn by :func:`llsim.bench.instances.random_scenario` (clusters, networks, models, workloads
the allocator never saw). For the milp plan the bench also runs the scenario as ``llsim run``
would, with random RTTs, to show how far the expected-RTT figures are from a sampled run.

Writes ``results/allocator_quality.latest.csv`` (``--write``: the committed reference
``results/allocator_quality.csv``; random instances: ``results/allocator_random.latest.csv``)
with one row per (instance, strategy). ``--check`` fails (exit 1) when, on any instance, ``milp``
is worse than a feasible peer by more than 0.5 %, more than 1 % from an exact ``oracle``, more
than 2 % worse than the committed reference (bench instances), or when milp's predicted figure
is off the simulated one by more than 10 % at the median or 15 % at worst.
"""
from __future__ import annotations

import csv
import math
import statistics
import sys
import time
from pathlib import Path

from llsim.judge.compare import compare
from llsim import registry
from llsim.scenario import SCENARIO_DIR, Scenario, load_scenario, validate_scenario

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "results" / "allocator_quality.csv"
BENCH_DIR = SCENARIO_DIR / "bench"
STRATEGIES = registry.names(judged_only=True)  # the strategies of `llsim allocate`, in the registry's order
BASELINES = [s.name for s in registry.peers()]
TOL_BASELINE, TOL_ORACLE, TOL_REGRESSION = 0.005, 0.01, 0.02
TOL_PRED_MEDIAN, TOL_PRED_MAX = 0.10, 0.15
FIELDS = ["instance", "objective", "devices", "in_flight", "strategy", "feasible", "stages", "predicted_ms_per_token",
          "simulated_ms_per_token", "predicted_tokens_per_s", "tokens_per_s", "bound_ms_per_token",
          "bound_tokens_per_s", "random_rtt_ms_per_token", "random_rtt_tokens_per_s", "ratio_to_best_baseline",
          "ratio_to_oracle", "solve_time_s", "note"]


def _fmt(x, nd=4):
    return "" if x is None else f"{x:.{nd}f}"


def run_instance(sc: Scenario, random_rtt: bool = False) -> list[dict]:
    obj = sc.allocation.objective
    judged, names, pb = compare(sc, list(STRATEGIES), obj, expected_rtt=True)
    score = {j.result.strategy: j.score(obj) for j in judged}
    base = [score[b] for b in BASELINES if score.get(b) is not None]
    best_base = min(base) if base else None
    orc = score.get("oracle")
    sampled = {}
    if random_rtt:  # the milp plan as `llsim run` runs it: RTTs drawn from the distribution
        from llsim.judge.run import simulate

        m = next(j for j in judged if j.result.strategy == "milp")
        if m.feasible:
            res, _, _ = simulate(sc, m.result.plan, timeline=False)
            if not res.error:
                sampled = {"ms": res.metrics["token_latency_ms"]["mean"] or res.metrics["ttft_ms"],
                           "tps": res.metrics["tokens_per_s"]}
    rows = []
    for j in judged:
        r, p, s = j.result, j.result.prediction, score[j.result.strategy]
        rows.append({
            "instance": sc.name, "objective": obj, "devices": len(names), "in_flight": pb.in_flight,
            "strategy": r.strategy, "feasible": int(j.feasible),
            "stages": " ".join(f"{st.device}:{st.start_module}-{st.end_module}" for st in r.plan.stages) if r.plan else "",
            "predicted_ms_per_token": _fmt(p.evaluated_latency_s * 1e3 if p and p.evaluated_latency_s else None),
            "simulated_ms_per_token": _fmt(j.simulated_token_latency_ms),
            "predicted_tokens_per_s": _fmt(p.evaluated_tokens_per_s if p else None),
            "tokens_per_s": _fmt(j.simulated_tokens_per_s),
            "bound_ms_per_token": _fmt(p.latency_s * 1e3 if p else None),
            "bound_tokens_per_s": _fmt(p.tokens_per_s if p else None),
            "random_rtt_ms_per_token": _fmt(sampled.get("ms")) if r.strategy == "milp" else "",
            "random_rtt_tokens_per_s": _fmt(sampled.get("tps")) if r.strategy == "milp" else "",
            # ratios of scores (lower is better): < 1 means better than the best baseline / the oracle
            "ratio_to_best_baseline": _fmt(s / best_base if s is not None and best_base else None),
            "ratio_to_oracle": _fmt(s / orc if s is not None and orc else None),
            "solve_time_s": _fmt(r.solve_time_s),
            "note": (r.error or j.sim_error or "")[:160].replace("\n", " "),
        })
    return rows


def _score(row: dict) -> float | None:
    if not row["feasible"] or row["feasible"] == "0":
        return None
    if row["objective"] == "latency":
        return float(row["simulated_ms_per_token"])
    return 1.0 / float(row["tokens_per_s"])


def prediction_error(row: dict) -> float | None:
    """milp's predicted figure of its objective relative to the simulated one (None if not both)."""
    key = ("predicted_ms_per_token", "simulated_ms_per_token") if row["objective"] == "latency" else \
        ("predicted_tokens_per_s", "tokens_per_s")
    a, b = row.get(key[0]), row.get(key[1])
    if not a or not b or float(b) == 0:
        return None
    return float(a) / float(b) - 1.0


def check(rows: list[dict], reference: list[dict] | None) -> list[str]:
    problems = []
    by = {}
    for r in rows:
        by.setdefault(r["instance"], {})[r["strategy"]] = r
    ref = {}
    for r in reference or []:
        ref.setdefault(r["instance"], {})[r["strategy"]] = r
    errors = []
    for inst, rs in by.items():
        m = _score(rs["milp"]) if "milp" in rs else None
        feasible_any = any(_score(r) is not None for r in rs.values())
        if m is None:
            if feasible_any:
                problems.append(f"{inst}: milp has no feasible simulated plan ({rs.get('milp', {}).get('note', '')})")
            continue
        for b in BASELINES:
            s = _score(rs[b]) if b in rs else None
            if s is not None and m > s * (1 + TOL_BASELINE):
                problems.append(f"{inst}: milp {m:.4g} is {100 * (m / s - 1):.2f}% worse than {b} {s:.4g} "
                                f"(limit {100 * TOL_BASELINE:.1f}%)")
        o = _score(rs["oracle"]) if "oracle" in rs else None
        if o is not None and m > o * (1 + TOL_ORACLE):
            problems.append(f"{inst}: milp {m:.4g} is {100 * (m / o - 1):.2f}% from the oracle {o:.4g}")
        r0 = ref.get(inst, {}).get("milp")
        if r0 is not None and _score(r0) is not None and m > _score(r0) * (1 + TOL_REGRESSION):
            problems.append(f"{inst}: milp {m:.4g} regressed {100 * (m / _score(r0) - 1):.2f}% against the "
                            f"reference {_score(r0):.4g}")
        e = prediction_error(rs["milp"])
        if e is not None:
            errors.append((abs(e), inst))
    if errors:
        med = statistics.median(e for e, _ in errors)
        worst = max(errors)
        if med > TOL_PRED_MEDIAN:
            problems.append(f"milp's predictions are {100 * med:.1f}% off the simulation at the median "
                            f"(limit {100 * TOL_PRED_MEDIAN:.0f}%)")
        if worst[0] > TOL_PRED_MAX:
            problems.append(f"{worst[1]}: milp's prediction is {100 * worst[0]:.1f}% off the simulation "
                            f"(limit {100 * TOL_PRED_MAX:.0f}%)")
    return problems


def instance_names() -> list[str]:
    return [p.stem for p in sorted(BENCH_DIR.glob("*.yaml"))]


def _instances(random: int | None, seed: int, only: str | None) -> list[Scenario]:
    if random:
        from llsim.bench.instances import random_scenario

        return [validate_scenario(random_scenario(seed, k)) for k in range(random)]
    paths = sorted(BENCH_DIR.glob("*.yaml"))
    if only:
        keep = {x.strip() for x in only.split(",")}
        paths = [p for p in paths if p.stem in keep]
    return [load_scenario(p) for p in paths]


def main(check_: bool = False, write: bool = False, only: str | None = None, random: int | None = None,
         seed: int = 1) -> int:
    instances = _instances(random, seed, only)
    rows: list[dict] = []
    t_all = time.perf_counter()
    for sc in instances:
        t0 = time.perf_counter()
        rs = run_instance(sc, random_rtt=bool(random))
        rows += rs
        m = next(r for r in rs if r["strategy"] == "milp")
        print(f"{sc.name:34.34s} vs best peer {m['ratio_to_best_baseline'] or '-':>6s} "
              f"vs oracle {m['ratio_to_oracle'] or '-':>6s} solve {float(m['solve_time_s']):.2f}s "
              f"({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
    print(f"{len(instances)} instances, {len(rows)} plans judged in {time.perf_counter() - t_all:.1f}s")
    if random:
        out = REFERENCE.with_name("allocator_random.latest.csv")
    else:
        out = REFERENCE if write else REFERENCE.with_name("allocator_quality.latest.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out}")
    summary(rows)
    if not check_:
        return 0
    reference = None
    if not random and REFERENCE.exists() and out != REFERENCE:
        with REFERENCE.open() as fh:
            reference = list(csv.DictReader(fh))
    problems = check(rows, reference)
    if problems:
        print("ALLOCATOR QUALITY CHECK FAILED:", file=sys.stderr)
        for x in problems:
            print("  " + x, file=sys.stderr)
        return 1
    print(f"allocator quality check passed: milp within {100 * TOL_BASELINE:.1f}% of every peer and "
          f"{100 * TOL_ORACLE:.0f}% of the oracle" + ("" if random else f", {100 * TOL_REGRESSION:.0f}% of the reference")
          + f"; predictions within {100 * TOL_PRED_MEDIAN:.0f}% (median) / {100 * TOL_PRED_MAX:.0f}% (worst)")
    return 0


def summary(rows: list[dict]) -> None:
    """Per strategy: geometric-mean speedup of milp (score ratio, both feasible), its worst case and
    the count of instances where milp is better by > 0.5 %; then milp's prediction errors."""
    by = {}
    for r in rows:
        by.setdefault(r["instance"], {})[r["strategy"]] = r
    print("milp vs each strategy (simulated; geometric mean and worst over instances where both are feasible):")
    for s in STRATEGIES:
        if s == "milp":
            continue
        logs, wins, infeasible, worst = [], 0, 0, None
        for inst, rs in by.items():
            m, o = _score(rs["milp"]), _score(rs[s]) if s in rs else None
            if s in rs and o is None and rs[s]["note"] and "oracle limited" not in rs[s]["note"] \
                    and "skipped" not in rs[s]["note"]:
                infeasible += 1
            if m is None or o is None:
                continue
            logs.append(math.log(o / m))
            wins += o > m * 1.005
            if worst is None or m / o > worst[0]:
                worst = (m / o, inst)
        if logs:
            print(f"  {s:13s} x{math.exp(sum(logs) / len(logs)):.3f} on {len(logs):3d} (milp better by >0.5% on "
                  f"{wins}; {s} infeasible on {infeasible}); worst milp/{s} {worst[0]:.4f} ({worst[1]})")
    errs = [(prediction_error(rs["milp"]), inst) for inst, rs in by.items() if "milp" in rs]
    errs = [(e, i) for e, i in errs if e is not None]
    if errs:
        a = sorted(abs(e) for e, _ in errs)
        worst = max(errs, key=lambda x: abs(x[0]))
        print(f"milp predicted vs simulated ({len(errs)} instances): median |error| {100 * statistics.median(a):.2f}%, "
              f"worst {100 * worst[0]:+.2f}% ({worst[1]})")
    samp = []
    for inst, rs in by.items():
        m = rs.get("milp", {})
        k = "random_rtt_ms_per_token" if m.get("objective") == "latency" else "random_rtt_tokens_per_s"
        ref = "simulated_ms_per_token" if m.get("objective") == "latency" else "tokens_per_s"
        if m.get(k) and m.get(ref):
            samp.append(float(m[k]) / float(m[ref]) - 1.0)
    if samp:
        print(f"milp with random RTTs (as llsim run) vs RTTs at their mean: median {100 * statistics.median(samp):+.1f}%, "
              f"range {100 * min(samp):+.1f}% to {100 * max(samp):+.1f}%")
