"""``llsim sweep``: the command line of :mod:`llsim.sweep`."""
from __future__ import annotations

import json
import sys


def add_parser(sub) -> None:
    m = sub.add_parser("sweep", help="run a scenario over a grid of parameters and seeds (resumable)",
                       description="Each point is a run directory DIR/points/<name>; DIR/sweep.csv is the table "
                                   "(llsim.results.load_sweep). Run the same command again to resume.")
    m.add_argument("scenario", help="path to a scenario YAML or a name from scenarios/")
    m.add_argument("--grid", action="append", default=[], metavar="PATH=V1,V2,...",
                   help="an axis of the cartesian grid, over any scenario field (the paths of llsim run --set; "
                        "values are YAML, split at top-level commas); repeatable")
    m.add_argument("--zip", action="append", default=[], metavar="PATH=V1,V2,...",
                   help="paired values: every --zip path takes its i-th value together (one more axis)")
    m.add_argument("--seeds", help="seeds of every point: 1-5, 1,3,7 (default: the scenario's seed)")
    m.add_argument("--set", action="append", default=[], metavar="path.to.field=value",
                   help="override a scenario field for every point (repeatable)")
    m.add_argument("--jobs", "-j", type=int, default=1, help="points run at once (local: processes; ray: CPUs of "
                   "a local Ray instance)")
    m.add_argument("--backend", choices=["local", "ray"], default="local")
    m.add_argument("--ray-address", help="ray: the cluster to join (ray.init(address=...); default: RAY_ADDRESS "
                   "or a local instance)")
    m.add_argument("--out", help="sweep directory (default runs/sweeps/<scenario name>)")
    m.add_argument("--no-timeline", action="store_true", help="write no timeline.json per point (smaller)")
    m.add_argument("--retry-failed", action="store_true", help="run the points that failed before again")
    m.add_argument("--json", action="store_true", help="print a JSON summary and the table's rows on stdout")
    m.set_defaults(fn=cmd_sweep)


def cmd_sweep(args) -> int:
    import os

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    from llsim.sweep import run_sweep

    err = Console(stderr=True)
    address = args.ray_address or os.environ.get("RAY_ADDRESS")
    prog = Progress(TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[failed]}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=True,
                    disable=not err.is_terminal)
    state = {"task": None, "failed": 0}

    def progress(info, done, total):
        state["failed"] += info["status"] != "ok"
        failed = f"{state['failed']} failed" if state["failed"] else ""
        if state["task"] is None:
            state["task"] = prog.add_task("sweep", total=total, completed=done, failed=failed)
        prog.update(state["task"], completed=done, failed=failed)
        if not err.is_terminal:  # a log, not a bar
            msg = f"sweep: {done}/{total} {info['name']}: {info['status']} ({info['wall_s']:.1f} s)"
            if info["status"] != "ok":
                msg += f": {(info.get('error') or '').splitlines()[0][:200]}"
            print(msg, file=sys.stderr, flush=True)

    with prog:
        res = run_sweep(args.scenario, args.grid, args.zip, args.seeds, args.set, args.out, jobs=args.jobs,
                        backend=args.backend, ray_address=address, timeline=not args.no_timeline,
                        retry_failed=args.retry_failed, progress=progress)
    table = res.table
    summary = {"sweep": str(res.out), "points": res.total, "ran": res.ran, "skipped": res.skipped,
               "failed": int((table["status"] != "ok").sum()) if table is not None else res.failed,
               "done": int(len(table)) if table is not None else None, "wall_s": res.wall_s,
               "interrupted": res.interrupted, "table": str(res.out / "sweep.csv")}
    if args.json:
        rows = json.loads(table.to_json(orient="records")) if table is not None else []
        print(json.dumps({**summary, "rows": rows}, indent=2))
    else:
        _print_table(table, res)
    if res.interrupted:
        print(f"llsim: interrupted: {summary['done']} of {res.total} points done; run the same command again to "
              "resume", file=sys.stderr)
        return 130
    return 0


def _print_table(table, res) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Console() if Console().is_terminal else Console(width=200)
    if table is None or table.empty:
        out.print(f"no point done in {res.out}")
        return
    params = [c for c in res.parameters if c in table]
    show = [c for c in ("tokens_per_s", "ttft_ms", "token_latency_ms.p50", "token_latency_ms.p99") if c in table]
    t = Table(title=f"sweep {res.out}: {len(table)} of {res.total} points done ({res.ran} run now, "
                    f"{res.skipped} already done) in {res.wall_s:.1f} s")
    for c in [*params, "seed", "status", *show]:
        t.add_column(c, justify="right")
    for _, r in table.iterrows():
        cells = []
        for c in [*params, "seed", "status", *show]:
            v = r[c]
            cells.append("-" if v is None or (not isinstance(v, str) and v != v) else
                         (f"{v:,.2f}" if isinstance(v, float) else str(v)))
        if r["status"] != "ok":
            cells[len(params) + 1] = f"failed: {str(r['error'])[:60]}"
        t.add_row(*cells)
    out.print(t)
    out.print(f"table: {res.out / 'sweep.csv'} (llsim.results.load_sweep('{res.out}'))")
