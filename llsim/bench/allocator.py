"""Allocator quality regression: ``llsim bench allocator [--check] [--write]``.

Every instance in ``scenarios/bench/`` is planned by every strategy; each plan is run through the
simulator with the same seed and every RTT at its mean (``network.rtt_sampling: expected``, so
the comparison carries no sampling noise); the score is the simulated metric of the instance's
objective (mean ms per decode token for ``latency``, tokens/s for ``throughput``).

Writes ``results/allocator_quality.latest.csv`` (``--write``: the committed reference
``results/allocator_quality.csv``) with one row per (instance, strategy). ``--check`` fails (exit 1) when, on any instance, ``milp`` is worse
than a feasible baseline by more than 0.5 %, more than 1 % from ``oracle`` where the oracle ran,
or more than 2 % worse than the committed reference file.
"""
from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

from llsim.alloc.compare import compare
from llsim.alloc.strategies import STRATEGIES
from llsim.scenario import SCENARIO_DIR, load_scenario

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "results" / "allocator_quality.csv"
BENCH_DIR = SCENARIO_DIR / "bench"
BASELINES = [s for s in STRATEGIES if s not in ("milp", "oracle")]
TOL_BASELINE, TOL_ORACLE, TOL_REGRESSION = 0.005, 0.01, 0.02
FIELDS = ["instance", "objective", "strategy", "feasible", "stages", "predicted_ms_per_token",
          "simulated_ms_per_token", "predicted_tokens_per_s", "tokens_per_s", "ratio_to_best_baseline",
          "ratio_to_oracle", "solve_time_s", "note"]


def _fmt(x, nd=4):
    return "" if x is None else f"{x:.{nd}f}"


def run_instance(path: Path) -> list[dict]:
    sc = load_scenario(path)
    obj = sc.allocation.objective
    judged, names, pb = compare(sc, list(STRATEGIES), obj, expected_rtt=True)
    score = {j.result.strategy: j.score(obj) for j in judged}
    base = [score[b] for b in BASELINES if score.get(b) is not None]
    best_base = min(base) if base else None
    orc = score.get("oracle")
    rows = []
    for j in judged:
        r, p, s = j.result, j.result.prediction, score[j.result.strategy]
        rows.append({
            "instance": sc.name, "objective": obj, "strategy": r.strategy, "feasible": int(j.feasible),
            "stages": " ".join(f"{st.device}:{st.start_module}-{st.end_module}" for st in r.plan.stages) if r.plan else "",
            "predicted_ms_per_token": _fmt(p.latency_s * 1e3 if p else None),
            "simulated_ms_per_token": _fmt(j.simulated_token_latency_ms),
            "predicted_tokens_per_s": _fmt(p.tokens_per_s if p else None),
            "tokens_per_s": _fmt(j.simulated_tokens_per_s),
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


def check(rows: list[dict], reference: list[dict] | None) -> list[str]:
    problems = []
    by = {}
    for r in rows:
        by.setdefault(r["instance"], {})[r["strategy"]] = r
    ref = {}
    for r in reference or []:
        ref.setdefault(r["instance"], {})[r["strategy"]] = r
    for inst, rs in by.items():
        m = _score(rs["milp"]) if "milp" in rs else None
        if m is None:
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
    return problems


def instance_names() -> list[str]:
    return [p.stem for p in sorted(BENCH_DIR.glob("*.yaml"))]


def main(check_: bool = False, write: bool = False, only: str | None = None) -> int:
    paths = sorted(BENCH_DIR.glob("*.yaml"))
    if only:
        keep = {x.strip() for x in only.split(",")}
        paths = [p for p in paths if p.stem in keep]
    rows: list[dict] = []
    t_all = time.perf_counter()
    for p in paths:
        t0 = time.perf_counter()
        rs = run_instance(p)
        rows += rs
        m = next(r for r in rs if r["strategy"] == "milp")
        print(f"{p.stem:42s} milp ratio to best baseline {m['ratio_to_best_baseline'] or '-':>7s} "
              f"to oracle {m['ratio_to_oracle'] or '-':>7s}  solve {float(m['solve_time_s']):.3f}s  "
              f"({time.perf_counter() - t0:.1f}s)", flush=True)
    print(f"{len(paths)} instances, {len(rows)} plans judged in {time.perf_counter() - t_all:.1f}s")
    out = REFERENCE if write else REFERENCE.with_name("allocator_quality.latest.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out}")
    _summary(rows)
    if not check_:
        return 0
    reference = None
    if REFERENCE.exists() and out != REFERENCE:
        with REFERENCE.open() as fh:
            reference = list(csv.DictReader(fh))
    problems = check(rows, reference)
    if problems:
        print("ALLOCATOR QUALITY CHECK FAILED:", file=sys.stderr)
        for x in problems:
            print("  " + x, file=sys.stderr)
        return 1
    print(f"allocator quality check passed: milp within {100 * TOL_BASELINE:.1f}% of every baseline, "
          f"{100 * TOL_ORACLE:.0f}% of the oracle, {100 * TOL_REGRESSION:.0f}% of the reference")
    return 0


def _summary(rows: list[dict]) -> None:
    """Geometric-mean speedup of milp over each strategy (score ratio, feasible pairs only)."""
    import math

    by = {}
    for r in rows:
        by.setdefault(r["instance"], {})[r["strategy"]] = r
    print("milp vs each strategy (simulated, geometric mean over instances where both are feasible):")
    for s in STRATEGIES:
        if s == "milp":
            continue
        logs, wins, infeasible = [], 0, 0
        for rs in by.values():
            m, o = _score(rs["milp"]), _score(rs[s]) if s in rs else None
            if s in rs and o is None and rs[s]["note"] and "oracle limited" not in rs[s]["note"]:
                infeasible += 1
            if m is None or o is None:
                continue
            logs.append(math.log(o / m))
            wins += o > m * 1.005
        if logs:
            print(f"  {s:13s} x{math.exp(sum(logs) / len(logs)):.3f} on {len(logs)} instances "
                  f"(milp better by >0.5% on {wins}; {s} infeasible on {infeasible})")
