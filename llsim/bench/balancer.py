"""Load-balancing gain: ``llsim bench balancer`` (part of ``make bench``).

For each dynamics scenario in ``scenarios/balance-*.yaml``, the same run (same seed) with the
balancer on and off:

* tokens/s over the whole run, and over the **degraded window** (from the first event to its end,
  or to the end of the run when the slowdown persists): the gain the paper's 1.29-1.32x is about;
* **recovery time**: from the slowdown until the windowed tokens/s (5 s windows) first reaches 90%
  of the best static plan for the degraded cluster (the allocator's plan for phones that are that
  slow from the start, simulated without events);
* rebalances taken, requests completed / submitted, steps retried.
"""
from __future__ import annotations

from llsim.scenario import BackgroundEvent, ThrottleEvent, load_scenario

SCENARIOS = ["balance-throttle", "balance-background", "balance-bursts", "balance-fading", "balance-leave-rejoin",
             "balance-noisy-stable"]
TARGET = 1.3


def _run(name: str, sets: list[str]):
    from llsim.judge.run import simulate

    sc = load_scenario(name, sets=sets)
    res, _, _ = simulate(sc, timeline=False)
    return sc, res


def _window(res, t0: float, t1: float | None) -> float:
    toks = [t for t in res.tokens if t["time_s"] >= t0 and (t1 is None or t["time_s"] < t1)]
    if not toks:
        return 0.0
    end = t1 if t1 is not None else max(t["time_s"] for t in toks)
    return len(toks) / max(end - t0, 1e-9)


def _degraded(sc):
    """(start, end or None, speed factor per device) of a scenario's single slowdown, if it has one."""
    evs = [e for e in sc.events if isinstance(e, (ThrottleEvent, BackgroundEvent))]
    if len(evs) != 1:
        return None
    e = evs[0]
    f = e.factor if isinstance(e, ThrottleEvent) else 1.0 - e.share
    return e.at, (e.at + e.duration_s) if e.duration_s else None, e.device, f


def best_static(sc, device, factor) -> float:
    """Steady tokens/s of the allocator's plan for the cluster degraded from the start (no events)."""
    from llsim.cluster import expand_devices

    devs = expand_devices(sc)
    idx = device if isinstance(device, int) else next(d.index for d in devs if d.name == device)
    # the device list entry that expands to idx
    k, entry = 0, 0
    for i, spec in enumerate(sc.devices):
        if k <= idx < k + spec.count:
            entry = i
            break
        k += spec.count
    sets = [f"devices.{entry}.speed={sc.devices[entry].speed * factor}", "events=[]", "balancer.enabled=false"]
    _, res = _run(sc.name if sc.path is None else str(sc.path), sets)
    toks = sorted(t["time_s"] for t in res.tokens)
    lo = toks[len(toks) // 5]  # steady state: drop the first and last fifth (ramp-up and tail)
    hi = toks[4 * len(toks) // 5]
    return (4 * len(toks) // 5 - len(toks) // 5) / (hi - lo)


def recovery_s(res, t0: float, t1: float | None, target: float, window: float = 5.0) -> float | None:
    """Seconds from t0 until a window of tokens/s (sliding by 0.5 s) first reaches ``target``."""
    times = sorted(t["time_s"] for t in res.tokens)
    end = t1 if t1 is not None else times[-1]
    t = t0
    import bisect

    while t + window <= end + 1e-9:
        n = bisect.bisect_left(times, t + window) - bisect.bisect_left(times, t)
        if n / window >= target:
            return t + window - t0
        t += 0.5
    return None


def run() -> list[dict]:
    rows = []
    from llsim.cli.tables import note

    for k, name in enumerate(SCENARIOS, 1):
        note(f"bench balancer: {k}/{len(SCENARIOS)} {name} (balancer on, then off)")
        sc, on = _run(name, [])
        _, off = _run(name, ["balancer.enabled=false"])
        row = {"scenario": name, "on_tps": on.metrics["tokens_per_s"], "off_tps": off.metrics["tokens_per_s"],
               "rebalances": on.metrics.get("rebalances", 0),
               "completed_on": f"{on.metrics['requests_completed']}/{on.metrics['requests_submitted']}",
               "completed_off": f"{off.metrics['requests_completed']}/{off.metrics['requests_submitted']}",
               "retried": on.metrics.get("retried_steps", 0), "stop_off": off.metrics["stop_reason"]}
        deg = _degraded(sc)
        if deg:
            t0, t1, dev, f = deg
            row["deg_on"], row["deg_off"] = _window(on, t0, t1), _window(off, t0, t1)
            best = best_static(sc, dev, f)
            row["best_static_tps"] = best
            row["recovery_s"] = recovery_s(on, t0, t1, 0.9 * best)
        rows.append(row)
    return rows


def main() -> int:
    from llsim.cli.tables import fit_table, stdout_console

    from llsim.bench.output import save_rows

    rows = run()
    out = save_rows("balancer", rows)
    cols = [(c, "key" if c == "scenario" else "text") for c in (
        "scenario", "tokens/s on", "tokens/s off", "gain", "degraded window: on / off", "gain (degraded)",
        "recovery to 90% of best static", "rebalances", "completed on / off", "steps retried")]
    cells = []
    ok = True
    for r in rows:
        g = r["on_tps"] / r["off_tps"] if r["off_tps"] else float("inf")
        dg = (r["deg_on"] / r["deg_off"]) if r.get("deg_off") else None
        if dg is not None:
            ok &= dg >= TARGET
        rec = r.get("recovery_s")
        stalled = not r["stop_off"].startswith("completed")
        cells.append([r["scenario"], f"{r['on_tps']:.2f}", f"{r['off_tps']:.2f}" + (" until it stalled" if stalled else ""),
                  "- (off stalls)" if stalled else f"x{g:.2f}",
                  f"{r['deg_on']:.2f} / {r['deg_off']:.2f}" if "deg_on" in r else "-",
                  f"x{dg:.2f}" if dg is not None else "-",
                  (f"{rec:.1f} s (best {r['best_static_tps']:.1f} tok/s)" if rec is not None else
                   ("not reached" if "best_static_tps" in r else "-")),
                  str(r["rebalances"]), f"{r['completed_on']} / {r['completed_off']}", str(r["retried"])])
    con = stdout_console()
    con.print("runtime load balancer: the same run (same seed) with the balancer on and off")
    con.print(fit_table(cols, cells, con.width, max_word=10))
    print(f"target: gain >= x{TARGET} in the degraded window of the throttling and background-load scenarios: "
          f"{'met' if ok else 'NOT met'}")
    print(f"wrote {out}")
    return 0
