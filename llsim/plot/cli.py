"""``llsim plot``: ``llsim plot RUN_DIR``, ``llsim plot compare RUN_DIR RUN_DIR...``,
``llsim plot sweep DIR --x PATH --y METRIC [--hue PATH]``, ``llsim plot figures`` (the paper set).

``plot`` takes a run directory or a sub-command as its first word, so it parses its own arguments
(argparse sub-commands cannot also take a path there)."""
from __future__ import annotations

import argparse
import sys

SUBS = ("compare", "sweep", "figures")


def add_parser(sub) -> None:
    m = sub.add_parser("plot", add_help=False, prefix_chars="\x00", help="figures of a run (RUN_DIR), of runs compared (compare), of a "
                       "sweep (sweep) or the paper set (figures)")
    m.add_argument("words", nargs=argparse.REMAINDER)
    m.set_defaults(fn=cmd_plot)


def _formats(text: str) -> tuple[str, ...]:
    from llsim.errors import LLSimError

    f = tuple(x.strip().lower() for x in text.split(",") if x.strip())
    bad = [x for x in f if x not in ("png", "pdf", "svg")]
    if bad or not f:
        raise LLSimError(f"--format '{text}': use png, pdf or svg (comma-separated)")
    return f


def _window(text: str | None):
    from llsim.errors import LLSimError

    if not text:
        return None
    try:
        a, b = (float(x) for x in text.split(":"))
    except ValueError:
        raise LLSimError(f"--window '{text}': expected START:END in simulated seconds, e.g. 10:12") from None
    if b <= a:
        raise LLSimError(f"--window '{text}': END must be after START")
    return a, b


def parsers():
    from llsim.cli.parser import _Parser

    run = _Parser(prog="llsim plot", description="Figures of one run: token-latency CDFs (TTFT apart), tokens/s "
                  "over time with events and rebalances, a Gantt chart of compute and transfers, memory against "
                  "each budget, link airtime. Sub-commands: llsim plot compare|sweep|figures -h")
    run.add_argument("run_dir")
    run.add_argument("--out", help="directory for the figures (default RUN_DIR/figures)")
    run.add_argument("--format", default="png", help="png, pdf, svg (comma-separated)")
    run.add_argument("--window", help="Gantt chart: START:END in simulated seconds (default: the whole run, or "
                     "about 12 executions per device from its middle)")
    cmp_ = _Parser(prog="llsim plot compare", description="Runs overlaid: latency CDFs and tokens/s over time "
                   "(e.g. the balancer on and off)")
    cmp_.add_argument("run_dirs", nargs="+")
    cmp_.add_argument("--labels", help="comma-separated labels, one per run (default: the directories' names)")
    cmp_.add_argument("--out", default=".", help="directory for the figures (default: here)")
    cmp_.add_argument("--format", default="png")
    sw = _Parser(prog="llsim plot sweep", description="A metric of a sweep against a swept parameter: mean over "
                 "seeds, error bars of one standard deviation")
    sw.add_argument("sweep_dir")
    sw.add_argument("--x", required=True, help="a swept path, e.g. workload.concurrency")
    sw.add_argument("--y", required=True, help="a metric of metrics.json, e.g. tokens_per_s, ttft_ms, "
                    "token_latency_ms.p99")
    sw.add_argument("--hue", help="a swept path drawn as one line each")
    sw.add_argument("--where", action="append", default=[], metavar="PATH=VALUE",
                    help="keep only the points with this value (repeatable)")
    sw.add_argument("--out", help="figure file without suffix (default DIR/figures/<y>_vs_<x>)")
    sw.add_argument("--format", default="png")
    sw.add_argument("--logy", action="store_true")
    fg = _Parser(prog="llsim plot figures", description="The paper-style set from the bench result files and "
                 "sweeps in a results directory (make figures runs them first)")
    fg.add_argument("--results", default=None, help="results directory (default: the repository's results/)")
    fg.add_argument("--out", default=None, help="default RESULTS/figures")
    fg.add_argument("--format", default="png,pdf")
    fg.add_argument("--sweeps", default=None, help="directory of the figures' sweeps (default: the repository's "
                    "runs/figures)")
    fg.add_argument("--only", help="comma-separated figure names")
    return {"run": run, "compare": cmp_, "sweep": sw, "figures": fg}


def cmd_plot(args) -> int:
    words = list(args.words)
    ps = parsers()
    if not words:
        ps["run"].error("give a run directory, or one of: compare, sweep, figures")
    if words[0] in ("-h", "--help"):
        ps["run"].print_help()
        print("\nsub-commands: llsim plot compare RUN_DIR RUN_DIR... | llsim plot sweep DIR --x PATH --y METRIC "
              "[--hue PATH] | llsim plot figures")
        return 0
    which = words[0] if words[0] in SUBS else "run"
    a = ps[which].parse_args(words[1:] if which != "run" else words)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    if which == "run":
        from llsim.plot.run import plot_run

        paths = plot_run(a.run_dir, a.out, _formats(a.format), _window(a.window), log=log)
    elif which == "compare":
        from llsim.plot.run import plot_compare

        labels = [x.strip() for x in a.labels.split(",")] if a.labels else None
        paths = plot_compare(a.run_dirs, a.out, labels, _formats(a.format))
    elif which == "sweep":
        from llsim.plot.sweep import plot_sweep

        paths = plot_sweep(a.sweep_dir, a.x, a.y, a.hue, a.where, a.out, _formats(a.format), logy=a.logy, log=log)
    else:
        from llsim.plot.paper import make_figures

        only = [x.strip() for x in a.only.split(",")] if a.only else None
        paths = make_figures(a.results, a.out, _formats(a.format), only=only, sweeps=a.sweeps, log=log)
    for p in paths:
        print(p)
    return 0
