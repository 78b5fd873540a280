"""Figures of one run (``llsim plot RUN_DIR``) and of runs side by side (``llsim plot compare``),
drawn from the run directories' files through :func:`llsim.results.load`."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from llsim.errors import LLSimError
from llsim.plot.style import GREY, OKABE_ITO, colour, fig_legend_top, legend_above, new_figure, paper_style, save
from llsim.results.reader import Run, load

NICE = [0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600]
GANTT_EVENTS = 12  # per device: executions shown by default when a run has more (a window in its middle)


def nice_bin(span_s: float, bins: int = 40) -> float:
    want = span_s / bins if span_s > 0 else 1.0
    return next((b for b in NICE if b >= want), NICE[-1])


def _batch(run: Run) -> int:
    return int(((run.scenario.get("workload") or {}).get("batch")) or 1)


def throughput_series(run: Run, bin_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(bin start s, tokens/s) over the run, in bins of ``bin_s`` (the last one as long as it lasted)."""
    t = run.tokens["time_s"].to_numpy()
    if t.size == 0:
        return np.array([]), np.array([])
    end = float(t.max())
    n = max(1, math.ceil(end / bin_s - 1e-9))
    edges = np.arange(n + 1) * bin_s
    counts, _ = np.histogram(np.minimum(t, edges[-1]), bins=edges)
    widths = np.diff(edges)
    widths[-1] = max(end - edges[-2], 1e-9)  # the last bin ends with the last token
    return edges[:-1], counts * _batch(run) / widths


def _device_names(run: Run) -> list[str]:
    return list(run.devices["name"]) if not run.devices.empty else [d["name"] for d in run.manifest.get("devices", [])]


def _event_label(ev: dict, names: list[str]) -> str:
    d = ev.get("device")
    dev = names[d] if isinstance(d, int) and 0 <= d < len(names) else d
    k = ev.get("kind")
    what = {"throttle": f"throttle to {ev.get('factor', 0):.0%}" if ev.get("factor") is not None else "throttle",
            "background": f"background load {ev.get('share', 0):.0%}", "rssi": f"RSSI {ev.get('rssi_dbm')} dBm",
            "leave": "leaves", "join": "joins"}.get(k, k)
    return f"{dev}: {what}" if dev is not None else str(what)


def mark_events(ax, run: Run, end_s: float, legend: list | None = None) -> None:
    """The scenario's timed events (shaded while they last) and the balancer's rebalances (lines)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    names = _device_names(run)
    shades = [OKABE_ITO["yellow"], OKABE_ITO["sky"], OKABE_ITO["purple"], GREY]
    k = 0
    for ev in run.scenario.get("events") or []:
        if "at" not in ev:
            continue
        t0 = float(ev["at"])
        t1 = t0 + float(ev["duration_s"]) if ev.get("duration_s") else None
        c = shades[k % len(shades)]
        k += 1
        if t1 is not None or ev.get("kind") in ("throttle", "background"):
            ax.axvspan(t0, min(t1 if t1 is not None else end_s, end_s), color=c, alpha=0.25, lw=0, zorder=0)
            if legend is not None:
                legend.append((Patch(color=c, alpha=0.4, lw=0), _event_label(ev, names)))
        else:
            ax.axvline(t0, color=c, lw=1.0, ls=":", zorder=1)
            if legend is not None:
                legend.append((Line2D([], [], color=c, lw=1.0, ls=":"), _event_label(ev, names)))
    rb = run.rebalances
    if "chosen" in rb:  # every candidate is a row: the actions are the chosen plan switches
        rb = rb[(rb["chosen"] == 1) & (rb["kind"] != "stage")]
    if not rb.empty:
        for _, r in rb.iterrows():
            ax.axvline(r["time_s"], color=OKABE_ITO["black"], lw=0.8, ls="--", zorder=1)
            if r.get("actual_stall_s") == r.get("actual_stall_s") and r.get("actual_stall_s"):
                ax.axvspan(r["time_s"], r["time_s"] + r["actual_stall_s"], color=GREY, alpha=0.3, lw=0, zorder=0)
        if legend is not None:
            kinds = ", ".join(sorted(set(rb["kind"].dropna())))
            legend.append((Line2D([], [], color=OKABE_ITO["black"], lw=0.8, ls="--"), f"rebalance ({kinds})"))


# ---- one figure each -----------------------------------------------------------------------------
def fig_latency_cdf(runs: list[tuple[str, Run]]):
    """Token-latency CDFs: decode tokens (time since the previous token) and, in its own panel, the
    first token of each request (TTFT, from submission)."""
    for _, run in runs:
        if run.tokens.empty:
            raise LLSimError(f"{run.path}: the run generated no token (stop_reason: {run.metrics.get('stop_reason')})")
    fig = new_figure(3.0)
    axes = fig.subplots(2, 1)
    handles = []
    for i, (lab, run) in enumerate(runs):
        tk = run.tokens
        for ax, vals in ((axes[0], tk.loc[tk["kind"] == "decode", "latency_ms"]),
                         (axes[1], tk.loc[tk["token"] == 0, "since_submit_ms"])):
            v = np.sort(vals.dropna().to_numpy())
            if v.size == 0:
                continue
            y = np.arange(0, v.size + 1) / v.size
            h, = ax.step(np.concatenate([[v[0]], v]), y, where="post", color=colour(i), lw=1.2, ls=["-", "--", "-.", ":"][i % 4] if i else "-")
        handles.append((h, lab))
    for ax, what in ((axes[0], "decode token latency (ms)"), (axes[1], "time to first token, TTFT (ms)")):
        ax.set_xlabel(what)
        ax.set_ylabel("fraction of tokens" if ax is axes[0] else "fraction of requests")
        ax.set_ylim(0, 1.02)
        lo, hi = ax.get_xlim()
        data = [line.get_xdata() for line in ax.get_lines()]
        vals = np.concatenate(data) if data else np.array([])
        vals = vals[vals > 0]
        if vals.size and vals.max() / vals.min() > 20:
            ax.set_xscale("log")
    if len(runs) > 1:
        fig_legend_top(fig, [h for h, _ in handles], [lab for _, lab in handles], ncol=min(len(runs), 3))
    else:
        axes[0].set_title(f"{runs[0][0]}: token latency", loc="left")
    return fig


def fig_throughput(runs: list[tuple[str, Run]], bin_s: float | None = None):
    """Tokens/s over time in fixed bins, the scenario's events shaded, rebalances as dashed lines."""
    end = max(float(r.tokens["time_s"].max()) if not r.tokens.empty else 0.0 for _, r in runs)
    if end <= 0:
        raise LLSimError(f"{runs[0][1].path}: no token was generated: no tokens/s over time")
    fig = new_figure(2.4)
    ax = fig.subplots()
    b = bin_s or nice_bin(end)
    legend = []
    for i, (lab, run) in enumerate(runs):
        x, y = throughput_series(run, b)
        if x.size == 0:
            continue
        last = float(run.tokens["time_s"].max())
        h, = ax.step(np.append(x, last), np.append(y, y[-1]), where="post", color=colour(i),
                     ls=["-", "--", "-.", ":"][i % 4])
        legend.append((h, lab))
    seen = set()
    extra = []
    for _, run in runs:  # the same events once (runs compared usually share their scenario's events)
        key = str(run.scenario.get("events"))
        if key in seen and run.rebalances.empty:
            continue
        seen.add(key)
        mark_events(ax, run, end, extra)
    uniq = {}
    for h, lab in extra:
        uniq.setdefault(lab, h)
    legend += [(h, lab) for lab, h in uniq.items()]
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel(f"tokens/s ({b:g} s bins)")
    ax.set_xlim(0, end)
    ax.set_ylim(bottom=0)
    if len(legend) > 1 or len(runs) > 1:
        legend_above(ax, [h for h, _ in legend], [lab for _, lab in legend], ncol=2)
    else:
        ax.set_title(f"{runs[0][0]}: tokens/s", loc="left")
    return fig


def gantt_window(tl, per_device: int = GANTT_EVENTS) -> tuple[float, float]:
    """The whole run when it is short, else a window from its middle with about ``per_device``
    executions on each device that computes."""
    c = tl[tl["kind"] == "compute"].sort_values("start_s")
    if c.empty:
        return 0.0, 1.0
    n = per_device * max(1, c["device"].nunique())
    if len(c) <= n:
        return float(c["start_s"].min()), float(c["end_s"].max())
    mid = len(c) // 2
    return float(c["start_s"].iloc[mid]), float(c["end_s"].iloc[mid + n - 1])


def fig_gantt(run: Run, window: tuple[float, float] | None = None):
    """Per device: segment executions; per link: transfers (colour = request); a window of the
    timeline (by default the whole run, or about 12 executions per device from its middle)."""
    tl = run.timeline
    if tl is None or tl.empty:
        raise LLSimError(f"{run.path}: the run has no timeline.json (made with --no-timeline): no Gantt chart")
    t0, t1 = window or gantt_window(tl)
    names = _device_names(run)
    short = {i: n for i, n in enumerate(names)}
    win = tl[(tl["end_s"] >= t0) & (tl["start_s"] <= t1)]
    comp = win[win["kind"] == "compute"]
    xfer = win[win["kind"] == "transfer"]
    order = [s["device"] for s in run.manifest.get("plan", [])] or sorted(comp["device"].dropna().unique())
    order += [d for d in sorted(comp["device"].dropna().unique()) if d not in order]
    links = []
    for _, r in xfer.drop_duplicates(["src", "dst"]).iterrows():
        links.append((r["src"], r["dst"]))
    rows = [("dev", d) for d in order] + [("link", k) for k in links]
    fig = new_figure(0.5 + 0.2 * max(3, len(rows)))
    ax = fig.subplots()
    ypos = {r: len(rows) - 1 - i for i, r in enumerate(rows)}

    def req_colour(r):
        return colour(int(r)) if r is not None and r == r else GREY

    for key, group in ((("dev", d), comp[comp["device"] == d]) for d in order):
        y = ypos[key]
        spans = list(zip(group["start_s"], group["end_s"] - group["start_s"]))
        ax.broken_barh(spans, (y - 0.38, 0.76), facecolors=[req_colour(r) for r in group["request"]], lw=0)
    for k in links:
        g = xfer[(xfer["src"] == k[0]) & (xfer["dst"] == k[1])]
        y = ypos[("link", k)]
        ax.broken_barh(list(zip(g["start_s"], g["end_s"] - g["start_s"])), (y - 0.25, 0.5),
                       facecolors=[req_colour(r) for r in g["request"]], lw=0, alpha=0.8)

    def lab(r):
        if r[0] == "dev":
            return f"{short.get(r[1], r[1])} ({r[1]})"
        s, d = r[1]
        return f"link {'AP' if s == -1 else s} \u2192 {'AP' if d == -1 else d}"

    ax.set_yticks([ypos[r] for r in rows], [lab(r) for r in rows])
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlim(t0, t1)
    ax.set_xlabel("simulated time (s)")
    ax.grid(axis="y", visible=False)
    ax.set_title(f"{run.name}: compute and transfers, colour = request", loc="left", fontsize=6.5)
    return fig


def fig_memory(run: Run):
    """Memory in use per device over time, as a share of its budget (100% = the budget)."""
    mem = run.memory
    if mem is None:
        raise LLSimError(f"{run.path}: the run has no timeline.json (made with --no-timeline): no memory plot")
    if mem.empty:
        raise LLSimError(f"{run.path}: the timeline has no memory samples (a run from before llsim recorded them)")
    fig = new_figure(2.4)
    ax = fig.subplots()
    end = float(run.tokens["time_s"].max()) if not run.tokens.empty else float(mem["time_s"].max())
    handles = []
    for i, (dev, g) in enumerate(mem.groupby("device", sort=True)):
        share = g["memory_bytes"].to_numpy() / g["budget_bytes"].to_numpy() * 100
        x = np.concatenate([[0.0], g["time_s"].to_numpy(), [end]])
        y = np.concatenate([[share[0]], share, [share[-1]]])
        h, = ax.step(x, y, where="post", color=colour(i), lw=1.1)
        name = g["name"].iloc[0]
        peak = int(run.devices.loc[run.devices["index"] == dev, "peak_memory_bytes"].max()) \
            if (run.devices["index"] == dev).any() else int(g["memory_bytes"].max())
        handles.append((h, f"{name}: peak {peak / 1e9:.2f} of {g['budget_bytes'].iloc[0] / 1e9:.2f} GB"))
    ax.axhline(100, color=OKABE_ITO["vermillion"], lw=0.9, ls="--")
    top = max(105.0, ax.get_ylim()[1])
    ax.set_ylim(0, top)
    ax.text(end, 100, "budget ", ha="right", va="bottom", fontsize=6, color=OKABE_ITO["vermillion"])
    ax.set_xlim(0, end)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("memory in use (% of budget)")
    legend_above(ax, [h for h, _ in handles], [lab for _, lab in handles], ncol=1)
    return fig


def fig_airtime(run: Run):
    """Per link with traffic: its airtime as a share of the simulated time (labels: bytes moved)."""
    lk = run.links
    lk = lk[lk["transfers"] > 0] if not lk.empty else lk
    if lk.empty:
        raise LLSimError(f"{run.path}: no link carried a transfer (one phone runs the whole model): no airtime plot")
    sim = float(run.metrics.get("sim_time_s") or 0) or float(run.tokens["time_s"].max())
    lk = lk.assign(share=lk["airtime_s"] / sim * 100).sort_values("share")
    fig = new_figure(0.7 + 0.32 * max(2, len(lk)))
    ax = fig.subplots()
    y = np.arange(len(lk))
    ax.barh(y, lk["share"], color=OKABE_ITO["blue"], height=0.6)
    for yi, (s, b) in enumerate(zip(lk["share"], lk["bytes"])):
        ax.text(s, yi, f" {b / 1e6:.1f} MB" if b >= 1e5 else f" {b / 1e3:.1f} kB", va="center", fontsize=6)
    ax.set_yticks(y, [f"{a} \u2192\n{b}" for a, b in zip(lk["src_name"], lk["dst_name"])], fontsize=6)
    ax.set_xlabel("airtime (% of simulated time)")
    ax.set_xlim(0, max(lk["share"].max() * 1.35, 1e-3))
    ax.grid(axis="y", visible=False)
    ax.set_title(f"{run.name}: {sim:.1f} s simulated", loc="left")
    return fig


# ---- commands ------------------------------------------------------------------------------------
def plot_run(run_dir: str | Path, out: str | Path | None = None, formats=("png",),
             window: tuple[float, float] | None = None, log=print) -> list[Path]:
    """Every figure of one run into ``out`` (default RUN_DIR/figures); a figure the run cannot give
    (no timeline, no link used) is skipped with a note."""
    run = load(run_dir)
    out = Path(out) if out else Path(run_dir) / "figures"
    label = run.name
    written = []
    makers = [("latency_cdf", lambda: fig_latency_cdf([(label, run)])),
              ("tokens_per_s", lambda: fig_throughput([(label, run)])),
              ("gantt", lambda: fig_gantt(run, window)), ("memory", lambda: fig_memory(run)),
              ("airtime", lambda: fig_airtime(run))]
    notes = []
    with paper_style():
        for name, make in makers:
            try:
                fig = make()
            except LLSimError as e:
                notes.append(f"{name}: {e}")
                log(f"skipped {name}: {e}")
                continue
            written += save(fig, out / name, formats)
    if not written:
        raise LLSimError(f"nothing to plot ({notes[0]})")
    return written


def compare_labels(runs: list[Run], given: list[str] | None) -> list[str]:
    if given:
        if len(given) != len(runs):
            raise LLSimError(f"--labels: {len(given)} labels for {len(runs)} runs")
        return given
    names = [r.path.name for r in runs]
    return names if len(set(names)) == len(names) else [str(r.path) for r in runs]


def plot_compare(run_dirs: list[str | Path], out: str | Path, labels: list[str] | None = None,
                 formats=("png",)) -> list[Path]:
    if len(run_dirs) < 2:
        raise LLSimError("llsim plot compare: give two or more run directories")
    runs = [load(d) for d in run_dirs]
    labs = compare_labels(runs, labels)
    pairs = list(zip(labs, runs))
    out = Path(out)
    with paper_style():
        return save(fig_latency_cdf(pairs), out / "compare_latency_cdf", formats) + \
            save(fig_throughput(pairs), out / "compare_tokens_per_s", formats)
