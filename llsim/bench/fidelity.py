"""HIL fidelity bench: per-token latency simulated vs with real workers (`llsim bench fidelity`).

For each scenario of ``scenarios/hil/fid-*.yaml`` (three families, tiny and small, 2-4 local
workers, recompute and kv_cache, 1 and 2 requests in flight, Wi-Fi, Wi-Fi Direct and fast fixed
links), :func:`llsim.judge.fidelity.compare` runs it simulated and with its real workers on the
same plan and seed. The host is profiled first, in the same sitting (``llsim profile host
--threads 1,2``, about a minute), and the real devices use that profile, so the simulation
predicts the workers with what this host measured minutes before (``--shipped-profile``: the
committed ``device_profiles/host.yaml`` instead).

Prints one row per scenario (simulated and real ms per token, the error, the terms that carry it)
and the median and worst absolute error; writes ``results/fidelity.csv``. Target: median <= 5%,
max <= 10%. Run it on a quiet machine: the workers' compute is measured.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "results" / "fidelity.csv"
FIGURE_CSV = ROOT / "results" / "hil_fidelity.csv"  # long form for `llsim plot figures` (scenario, metric, ...)


def scenarios() -> list[Path]:
    return sorted((ROOT / "scenarios" / "hil").glob("fid-*.yaml"))


def _network(sc) -> str:
    n = sc.network
    if n.kind == "fixed":
        return f"fixed {n.goodput_mbps:g} Mb/s"
    return f"{n.kind} {getattr(n, 'standard', '')}".strip()


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    from llsim.cli.tables import fit_table
    from llsim.judge.fidelity import compare, latency_error, summary
    from llsim.results.writer import write_csv
    from llsim.scenario import load_scenario

    argv = list(sys.argv[1:] if argv is None else argv)
    shipped = "--shipped-profile" in argv
    con = Console()
    tmp = Path(tempfile.mkdtemp(prefix="llsim-fidelity-"))
    profile = "host"
    if not shipped:
        from llsim.device.profiler import profile_host

        prof_path = tmp / "host-now.yaml"
        _, took = profile_host(prof_path, [1, 2], log=lambda m: print(m, file=sys.stderr, flush=True))
        print(f"host profiled in {took:.0f} s", file=sys.stderr)
        profile = str(prof_path)
    reports, rows = [], []
    for f in scenarios():
        raw = load_scenario(f)
        sets = [f"devices[{i}].profile={profile}" for i, d in enumerate(raw.devices) if d.backend != "sim"]
        sc = load_scenario(f, sets)
        print(f"fidelity: {sc.name} ...", file=sys.stderr, flush=True)
        rep = compare(sc, tmp / sc.name, timeline=False)
        reports.append(rep)
        lat = {r["metric"]: r for r in rep["metrics"]}
        t = rep["terms"]
        w = sc.workload
        rows.append({"scenario": sc.name, "model": sc.model, "mode": w.mode, "in_flight": w.concurrency,
                     "real_workers": len(rep["real_devices"]), "devices": rep["devices"], "network": _network(sc),
                     "sim_ms_per_token": lat["per-token latency ms (mean)"]["simulated"],
                     "real_ms_per_token": lat["per-token latency ms (mean)"]["real"],
                     "error_pct": latency_error(rep),
                     "ttft_error_pct": lat["TTFT ms (mean)"]["error_pct"],
                     "tokens_per_s_error_pct": lat["tokens/s"]["error_pct"],
                     "compute_term_pct": t["compute_pct"], "queueing_term_pct": t["queueing_pct"],
                     "transfer_term_pct": t["transfer_pct"], "overhead_ms_per_token": t["overhead_ms"],
                     "profile": "shipped" if shipped else "same sitting"})
    s = summary(reports)
    f = lambda v, nd=2: "-" if v is None else f"{v:.{nd}f}"  # noqa: E731
    p = lambda v: "-" if v is None else f"{v:+.1f}%"  # noqa: E731
    con.print(fit_table([("scenario", "key"), ("real", "num"), ("sim ms", "num"), ("real ms", "num"),
                         ("error", "num"), ("compute", "num"), ("queue", "num"), ("ovh ms", "num")],
                        [[r["scenario"].removeprefix("fid-"), f"{r['real_workers']}/{r['devices']}",
                          f(r["sim_ms_per_token"]), f(r["real_ms_per_token"]), p(r["error_pct"]),
                          p(r["compute_term_pct"]), p(r["queueing_term_pct"]), f(r["overhead_ms_per_token"])]
                         for r in rows], con.width,
                        title="per-token latency (ms), simulated vs real workers; error = sim vs real, split into "
                              "compute and queueing; ovh: the workers' protocol overhead per token (in neither)"))
    con.print(f"median |error| {f(s['median_abs_error_pct'], 1)}%, worst {f(s['max_abs_error_pct'], 1)}% over "
              f"{s['scenarios']} scenarios (target: median <= 5%, max <= 10%); "
              f"host profile: {'shipped' if shipped else 'measured in this sitting'}")
    write_csv(OUT, rows)
    long = [{"scenario": r["scenario"].removeprefix("fid-"), "metric": label, "simulated": m["simulated"],
             "measured": m["real"]}
            for r, rep in zip(rows, reports) for m in rep["metrics"]
            for label in [{"per-token latency ms (mean)": "ms per token", "TTFT ms (mean)": "TTFT ms",
                           "tokens/s": "tokens/s"}.get(m["metric"])] if label]
    write_csv(FIGURE_CSV, long)
    con.print(f"wrote {OUT.relative_to(ROOT)}, {FIGURE_CSV.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
