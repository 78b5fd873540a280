"""The balancer on random dynamics it was not tuned on: ``python -m llsim.bench.balancer_random``.

Two generators (seeded; the same ``--seed`` gives the same cases):

* **bursts**: ``balance-bursts`` with a random seed, burst rate (0.005-0.03 per s per phone), share of
  the cores taken (0.3-0.8) and mean burst length (log-uniform 5-60 s);
* **joins**: ``balance-join`` with a random seed, joining phone (any profile but the host) and join
  time (5-60 s).

Each case runs with the balancer on and off (a join also with the phone present from the start, the
ideal). Printed per case and summarised with the worst case: on / off tokens/s (bursts, joins) and
the share of the ideal gain realised after a join, ``(on - off) / (ideal - off)`` of the tokens/s
from the join to the end (as ``llsim bench balancer``; none when the phone from the start gains
less than 2%: nothing to realise).
"""
from __future__ import annotations

import argparse
import math

import numpy as np

PROFILES = ["snapdragon-8gen2", "tensor-g3", "kirin-990", "kirin-810", "exynos-1380", "helio-g85"]


def burst_cases(rng, n: int) -> list[list[str]]:
    out = []
    for _ in range(n):
        out.append([f"seed={int(rng.integers(1, 10**6))}", f"events.0.rate_per_s={rng.uniform(0.005, 0.03):.4f}",
                    f"events.0.share={rng.uniform(0.3, 0.8):.2f}",
                    f"events.0.mean_duration_s={math.exp(rng.uniform(math.log(5), math.log(60))):.1f}",
                    "workload.requests=40"])
    return out


def join_cases(rng, n: int) -> list[list[str]]:
    out = []
    for _ in range(n):
        out.append([f"seed={int(rng.integers(1, 10**6))}", f"devices.3.profile={PROFILES[int(rng.integers(len(PROFILES)))]}",
                    f"events.0.at={rng.uniform(5, 60):.1f}", "events.0.device=3"])
    return out


def run(n: int, seed: int) -> list[dict]:
    from llsim.bench.balancer import _run, _window, exactly_once
    from llsim.cli.tables import note

    rng = np.random.default_rng(seed)
    rows = []
    for kind, base, cases in (("bursts", "balance-bursts", burst_cases(rng, n)),
                              ("join", "balance-join", join_cases(rng, n))):
        for i, sets in enumerate(cases, 1):
            note(f"balancer_random: {kind} {i}/{n}")
            sc, on = _run(base, sets)
            _, off = _run(base, sets + ["balancer.enabled=false"])
            row = {"kind": kind, "case": " ".join(sets), "on_tps": on.metrics["tokens_per_s"],
                   "off_tps": off.metrics["tokens_per_s"], "gain": on.metrics["tokens_per_s"] / off.metrics["tokens_per_s"],
                   "rebalances": on.metrics.get("rebalances", 0), "exactly_once": exactly_once(on, sc)}
            if kind == "join":  # the ideal: the same case with the phone present from the start
                t0 = sc.events[0].at
                _, ideal = _run(base, sets + ["devices.3.absent=false", "events=[]", "balancer.enabled=false"])
                r_on, r_off, r_id = _window(on, t0, None), _window(off, t0, None), _window(ideal, t0, None)
                row.update(join_on=r_on, join_off=r_off, join_ideal=r_id,
                           join_share=(r_on - r_off) / (r_id - r_off) if r_id > r_off * 1.02 else None)
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m llsim.bench.balancer_random")
    ap.add_argument("--n", type=int, default=6, help="cases per generator")
    ap.add_argument("--seed", type=int, default=20)
    a = ap.parse_args(argv)
    from llsim.bench.output import save_rows

    rows = run(a.n, a.seed)
    for r in rows:
        js = f" join share {r['join_share']:.2f}" if r.get("join_share") is not None else ""
        print(f"{r['kind']:6s} on/off x{r['gain']:.3f} ({r['on_tps']:.2f}/{r['off_tps']:.2f} tok/s) "
              f"{r['rebalances']} rebalances, exactly once {r['exactly_once']}{js}  [{r['case']}]")
    for kind in ("bursts", "join"):
        g = sorted(r["gain"] for r in rows if r["kind"] == kind)
        print(f"{kind}: on/off worst x{g[0]:.3f}, median x{g[len(g) // 2]:.3f}, best x{g[-1]:.3f} over {len(g)} cases")
    sh = sorted(r["join_share"] for r in rows if r.get("join_share") is not None)
    if sh:
        print(f"join share of the ideal gain: worst {sh[0]:.2f}, median {sh[len(sh) // 2]:.2f} over {len(sh)} cases")
    print(f"all exactly once: {all(r['exactly_once'] for r in rows)}")
    print(f"wrote {save_rows('balancer_random', rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
