"""`llsim fidelity SCENARIO`: the scenario simulated and with its real nodes, and the errors."""
from __future__ import annotations

import json
from pathlib import Path

from llsim.cli.parser import _Parser  # noqa: F401 - the subcommand uses the project's parser class
from llsim.cli.tables import fit_table, stdout_console


def _f(v, nd=3) -> str:
    return "-" if v is None else f"{v:,.{nd}f}"


def _pct(v) -> str:
    return "-" if v is None else f"{v:+.1f}%"


def cmd_fidelity(args) -> int:
    from llsim.judge.fidelity import compare
    from llsim.results.outdir import prepare_run_dir
    from llsim.scenario import load_scenario

    sc = load_scenario(args.scenario, args.set, args.seed)
    out = Path(args.out or f"runs/{sc.name}-seed{sc.seed}-hil")
    prepare_run_dir(out, args.force)
    rep = compare(sc, out)
    if args.json:
        print(json.dumps(rep, allow_nan=False, default=str))
        return 0
    con = stdout_console()
    w = con.width
    con.print(fit_table([("metric", "key"), ("simulated", "num"), ("real (HIL)", "num"), ("sim error", "num")],
                        [[r["metric"], _f(r["simulated"]), _f(r["real"]), _pct(r["error_pct"])] for r in rep["metrics"]],
                        w, title=f"{sc.name}: simulated vs real nodes ({', '.join(rep['real_devices'])})"))
    t = rep["terms"]
    con.print(fit_table([("term (per token)", "key"), ("ms", "num"), ("% of real latency", "num")],
                        [["compute (predicted - measured)", _f(t["compute_ms"]), _pct(t["compute_pct"])],
                         ["queueing (the rest)", _f(t["queueing_ms"]), _pct(t["queueing_pct"])],
                         ["transfer (model - real)" if rep["shape"] == "none" else "transfer (both: link model)",
                          _f(t["transfer_ms"]), _pct(t["transfer_pct"])],
                         ["worker overhead (in neither run)", _f(t["overhead_ms"]), _pct(t["overhead_pct"])]],
                        w, title="where the per-token latency error comes from"))
    con.print(fit_table([("device", "key"), ("stage", "num"), ("kind", "key"), ("runs", "num"),
                         ("predicted ms", "num"), ("measured ms", "num"), ("error", "num")],
                        [[s["device"], str(s["stage"]), s["kind"], str(s["n"]), _f(s["predicted_ms"]),
                          _f(s["measured_ms"]), _pct(s["error_pct"])] for s in rep["stages"]],
                        w, title="real stages: the cost model's compute vs the worker's (fidelity.csv)"))
    con.print(f"results of the real run in {out}/ (fidelity.csv, hil.json, timeline.json)")
    return 0


def add_parser(sub) -> None:
    m = sub.add_parser("fidelity", help="run a scenario simulated and with its real nodes (backend: local or adb); "
                       "print both and the errors")
    m.add_argument("scenario", help="path to a scenario YAML or a name from scenarios/")
    m.add_argument("--out", help="results directory of the real run (default runs/<name>-seed<N>-hil)")
    m.add_argument("--force", action="store_true", help="clear --out first if it holds a previous run")
    m.add_argument("--json", action="store_true")
    m.add_argument("--seed", type=int)
    m.add_argument("--set", action="append", default=[], metavar="path.to.field=value")
    m.set_defaults(fn=cmd_fidelity)
