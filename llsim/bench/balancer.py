"""Load-balancing gain: ``llsim bench balancer`` (part of ``make bench``).

For each dynamics scenario in ``scenarios/balance-*.yaml``, the same run (same seed) with the
balancer on and off:

* tokens/s over the whole run, and over the **degraded window** (from the first event to its end,
  or to the end of the run when the slowdown persists): the gain the paper's 1.29-1.32x is about;
* **recovery time**: from the slowdown until the windowed tokens/s (5 s windows) first reaches 90%
  of the best static plan for the degraded cluster (the allocator's plan for phones that are that
  slow from the start, simulated without events);
* rebalances taken, requests completed / submitted, steps retried, and whether every request's
  every token was generated exactly once;
* a phone **joining**: the share of the ideal gain over the remaining time that the balancer
  realises, ``(on - off) / (ideal - off)`` of the tokens/s from the join to the end, the ideal
  being the same scenario with that phone present from the start (its tokens/s over the same
  remaining work);
* a phone **leaving**: the stall of the failover (predicted and actual, rebalances.csv).

Targets (issue 20) are printed after the table, each met or not.
"""
from __future__ import annotations

from llsim.scenario import BackgroundEvent, JoinEvent, LeaveEvent, ThrottleEvent, load_scenario

SCENARIOS = ["balance-throttle", "balance-background", "balance-bursts", "balance-fading", "balance-leave-rejoin",
             "balance-noisy-stable", "balance-join", "balance-lone-throttle"]
TARGET = 1.3
#: per scenario, what issue 20 asks of it (checked after the table)
TARGETS = {"balance-throttle": ("gain (degraded)", 1.3), "balance-background": ("gain (degraded)", 1.3),
           "balance-bursts": ("gain", 1.10), "balance-fading": ("gain", 1.3),
           "balance-leave-rejoin": ("failover stall s", 10.0), "balance-noisy-stable": ("rebalances", 0),
           "balance-join": ("join share", 0.8), "balance-lone-throttle": ("recovery to 80% s", 15.0)}


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


def exactly_once(res, sc) -> bool:
    """Every request completed and each of its tokens generated once (none lost, none twice)."""
    w = sc.workload
    keys = [(t["request"], t["token"]) for t in res.tokens]
    return (res.metrics["requests_completed"] == w.requests and len(keys) == len(set(keys)) == w.requests * w.new_tokens)


def _entry(sc, device) -> tuple[int, int]:
    """(device index, the entry of the scenario's device list that expands to it) of a device reference."""
    from llsim.cluster import expand_devices

    devs = expand_devices(sc)
    idx = device if isinstance(device, int) else next(d.index for d in devs if d.name == device)
    k = 0
    for i, spec in enumerate(sc.devices):
        if k <= idx < k + spec.count:
            return idx, i
        k += spec.count
    raise ValueError(device)


def _joins(sc):
    """(time, device list entry) of the first join of a device marked absent at the start, if any."""
    for e in sc.events:
        if isinstance(e, JoinEvent):
            _, entry = _entry(sc, e.device)
            if sc.devices[entry].absent and sc.devices[entry].count == 1:
                return e.at, entry
    return None


def _join_share(sc, on, off) -> dict:
    t0, entry = _joins(sc)
    _, ideal = _run(sc.name if sc.path is None else str(sc.path),
                    [f"devices.{entry}.absent=false", "events=[]", "balancer.enabled=false"])
    r_on, r_off, r_ideal = _window(on, t0, None), _window(off, t0, None), _window(ideal, t0, None)
    return {"join_on": r_on, "join_off": r_off, "join_ideal": r_ideal,
            "join_share": (r_on - r_off) / (r_ideal - r_off) if r_ideal > r_off else None}


def run() -> list[dict]:
    rows = []
    from llsim.cli.tables import note
    from llsim.sim.dynamics import taken

    for k, name in enumerate(SCENARIOS, 1):
        note(f"bench balancer: {k}/{len(SCENARIOS)} {name} (balancer on, then off)")
        sc, on = _run(name, [])
        _, off = _run(name, ["balancer.enabled=false"])
        acts = taken(on.rebalances)
        row = {"scenario": name, "on_tps": on.metrics["tokens_per_s"], "off_tps": off.metrics["tokens_per_s"],
               "rebalances": on.metrics.get("rebalances", 0),
               "completed_on": f"{on.metrics['requests_completed']}/{on.metrics['requests_submitted']}",
               "completed_off": f"{off.metrics['requests_completed']}/{off.metrics['requests_submitted']}",
               "retried": on.metrics.get("retried_steps", 0), "stop_off": off.metrics["stop_reason"],
               "exactly_once": exactly_once(on, sc), "evaluations": on.metrics.get("balancer_evaluations", 0),
               "staged": on.metrics.get("balancer_staged", 0)}
        stalls = [r["actual_stall_s"] for r in acts if r["kind"] == "failover"]
        if any(isinstance(e, LeaveEvent) for e in sc.events):
            row["failover_stall_s"] = max(stalls) if stalls else None
        deg = _degraded(sc)
        if deg:
            t0, t1, dev, f = deg
            row["deg_on"], row["deg_off"] = _window(on, t0, t1), _window(off, t0, t1)
            best = best_static(sc, dev, f)
            row["best_static_tps"] = best
            row["recovery_s"] = recovery_s(on, t0, t1, 0.9 * best)
            row["recovery_80_s"] = recovery_s(on, t0, t1, 0.8 * best)
        if _joins(sc):
            row.update(_join_share(sc, on, off))
        rows.append(row)
    return rows


def verdicts(rows: list[dict]) -> list[tuple[str, str, bool]]:
    """(scenario, what was measured against its target, met) for each scenario issue 20 names."""
    out = []
    for r in rows:
        name = r["scenario"]
        ok_once = r["exactly_once"]
        out.append((name, "every request completes, every token once" if ok_once else "requests lost or duplicated",
                    ok_once))
        what, target = TARGETS.get(name, (None, None))
        if what == "gain (degraded)":
            g = r["deg_on"] / r["deg_off"]
            out.append((name, f"degraded-window gain x{g:.2f} (target >= x{target})", g >= target))
        elif what == "gain":
            g = r["on_tps"] / r["off_tps"]
            out.append((name, f"gain x{g:.2f} (target >= x{target})", g >= target))
        elif what == "failover stall s":
            s = r.get("failover_stall_s")
            out.append((name, f"failover stall {s:.1f} s (target <= {target:g} s)" if s is not None else
                        "no failover", s is not None and s <= target))
        elif what == "rebalances":
            out.append((name, f"{r['rebalances']} rebalances (target 0)", r["rebalances"] == 0))
        elif what == "join share":
            sh = r.get("join_share")
            out.append((name, f"{sh:.0%} of the ideal gain after the join (target >= {target:.0%})" if sh is not None
                        else "no gain to realise", sh is not None and sh >= target))
        elif what == "recovery to 80% s":
            rec = r.get("recovery_80_s")
            out.append((name, (f"within 20% of the best degraded plan after {rec:.1f} s" if rec is not None else
                               "never within 20% of the best degraded plan") + f" (target <= {target:g} s)",
                        rec is not None and rec <= target))
    return out


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
    for name, what, met in verdicts(rows):
        print(f"{name}: {what}: {'met' if met else 'NOT met'}")
    print(f"wrote {out}")
    return 0
