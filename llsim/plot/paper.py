"""The paper-style figures (``make figures`` -> ``results/figures/``), drawn from result files only.

Each figure reads the CSV a bench writes into ``results/`` (:mod:`llsim.bench.output`) or the
sweep directories ``make figures`` writes under ``runs/figures/`` (:func:`llsim.results.load_sweep`),
never the benches' code: after a bench changes, its command and ``llsim plot figures`` redraw it.
Each figure is written as PNG and PDF with, beside them, ``<name>.csv``: the numbers drawn.

A figure whose sources are missing is skipped with a note naming the command that makes them (the
HIL fidelity figure until its bench exists).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from llsim.errors import LLSimError
from llsim.plot.style import (DEVICE_FILLS, GREY, OKABE_ITO, STRATEGY_MARKERS, colour, fig_legend_top, label,
                              legend_above, new_figure, paper_style, plain_log, save, strategy_colour)

ROOT = Path(__file__).resolve().parents[2]
SWEEPS = "runs/figures"  # where make figures writes its sweeps (relative to the repository)
PEERS = ["uniform", "memory", "lingualinked"]
PAPER_BANDS = {1: (1.11, 1.61, "LinguaLinked paper, 1 in flight: 1.11-1.61x"),
               4: (1.73, 2.65, "LinguaLinked paper, multi-threaded: 1.73-2.65x")}


class Missing(Exception):
    """A figure's source does not exist (yet): skipped, not an error."""


@dataclass
class FigureSpec:
    name: str
    title: str
    commands: list[str]  # what makes its sources (also in the Makefile's figures target and README)
    draw: Callable  # (Sources) -> (Figure, DataFrame)


@dataclass
class Sources:
    results: Path
    sweeps: Path

    def csv(self, name: str) -> pd.DataFrame:
        p = self.results / f"{name}.csv"
        if not p.is_file():
            raise Missing(f"no {p}")
        return pd.read_csv(p)

    def sweep(self, name: str) -> pd.DataFrame:
        from llsim.results.reader import load_sweep

        d = self.sweeps / name
        if not (d / "sweep.json").is_file():
            raise Missing(f"no sweep in {d}")
        t = load_sweep(d)
        if t.empty:
            raise Missing(f"the sweep in {d} has no point done")
        t.attrs["dir"] = d
        return t


# ---- the figures ---------------------------------------------------------------------------------
def _short_scenario(name: str) -> str:
    return name.replace("lingualinked-", "").replace("bloom-", "BLOOM-")


def draw_paper_speedup(src: Sources):
    """milp's simulated speed-up over each peer on LinguaLinked-style scenarios, 1 and N in flight."""
    df = src.csv("paper")
    peers = [c.removeprefix("vs_") for c in df.columns if c.startswith("vs_")]
    settings = list(dict.fromkeys(df["setting"]))
    fig = new_figure(3.3)
    axes = fig.subplots(len(settings), 1, sharex=True, squeeze=False)[:, 0]
    scen = list(dict.fromkeys(df["scenario"]))
    width = 0.8 / max(1, len(peers))
    rows = []
    for ax, setting in zip(axes, settings):
        part = df[df["setting"] == setting]
        inflight = int(part["in_flight"].iloc[0]) if "in_flight" in part else (1 if setting.startswith("1 ") else 4)
        band = PAPER_BANDS.get(1 if inflight == 1 else 4)
        if band:
            ax.axhspan(band[0], band[1], color=GREY, alpha=0.22, lw=0, zorder=0)
        ax.axhline(1.0, color="black", lw=0.6)
        top = 1.0
        for k, peer in enumerate(peers):
            for i, s in enumerate(scen):
                v = part.loc[part["scenario"] == s, f"vs_{peer}"]
                x = i + (k - (len(peers) - 1) / 2) * width
                val = float(v.iloc[0]) if len(v) and pd.notna(v.iloc[0]) else None
                rows.append({"setting": setting, "scenario": s, "peer": peer, "speedup": val})
                if val is None:
                    ax.text(x, 1.02, "n/a", ha="center", va="bottom", fontsize=5, rotation=90)
                    continue
                ax.bar(x, val, width * 0.92, color=strategy_colour(peer), label=label(peer) if i == 0 else None,
                       zorder=2)
                ax.text(x, val, f"{val:.2f}", ha="center", va="bottom", fontsize=4.8, zorder=3)
                top = max(top, val)
        ax.set_ylim(0, max(top, band[1] if band else 0) * 1.12)
        ax.set_ylabel("speed-up of milp (x)")
        ax.set_title(f"{setting} ({'ms per token' if inflight == 1 else 'tokens/s'})", loc="left", fontsize=6.5)
        ax.grid(axis="x", visible=False)
    axes[-1].set_xticks(range(len(scen)), [_short_scenario(s) for s in scen])
    axes[-1].set_xlabel("scenario (int8 weights, recompute mode)")
    from matplotlib.patches import Patch

    h, lab = axes[0].get_legend_handles_labels()
    h.append(Patch(color=GREY, alpha=0.35, lw=0))
    lab.append("paper's range vs its baseline")
    fig_legend_top(fig, h, lab, ncol=2)
    return fig, pd.DataFrame(rows)


def _balancer_panel(ax, table: pd.DataFrame, title: str) -> list:
    from llsim.plot.run import mark_events, throughput_series
    from llsim.results.reader import load

    d = table.attrs["dir"]
    out, legend = [], []
    runs = {}
    for _, r in table.iterrows():
        if r["status"] != "ok":
            continue
        runs[bool(r["balancer.enabled"])] = load(d / r["run_dir"])
    if not runs:
        raise Missing(f"no successful point in {d}")
    end = max(float(r.tokens["time_s"].max()) for r in runs.values())
    for on, style in ((True, dict(color=OKABE_ITO["blue"], ls="-")), (False, dict(color=GREY, ls="--"))):
        if on not in runs:
            continue
        run = runs[on]
        x, y = throughput_series(run, 5.0)
        last = float(run.tokens["time_s"].max())
        h, = ax.step(np.append(x, last), np.append(y, y[-1]), where="post", lw=1.2, **style)
        legend.append((h, "balancer on" if on else "balancer off"))
        out += [{"panel": title, "balancer": on, "t_s": float(a), "tokens_per_s": float(b)} for a, b in zip(x, y)]
    ev = []
    mark_events(ax, runs.get(True) or runs[False], end, ev)
    ax.end_s = end
    ax.set_ylim(0, ax.get_ylim()[1] * 1.05)
    ax.set_ylabel("tokens/s (5 s bins)")
    ax.set_title(title, loc="left", fontsize=6.5)
    return legend + ev, out


def draw_balancer(src: Sources):
    """Tokens/s over time with the balancer on and off (same seed), throttling and background load."""
    panels = [("balance-throttle", "throttling: fastest phone to 40% at 20 s"),
              ("balance-background", "background app: 60% of its cores, 20-80 s")]
    tables = [(src.sweep(n), t) for n, t in panels]
    fig = new_figure(3.6)
    axes = fig.subplots(len(tables), 1, sharex=True)
    rows, handles = [], {}
    for ax, (table, title) in zip(axes, tables):
        leg, out = _balancer_panel(ax, table, title)
        rows += out
        for h, lab in leg:
            key = "event" if ":" in lab else lab  # one legend entry for the (panel-specific) events
            handles.setdefault(key, (h, "slowdown (shaded)" if key == "event" else lab))
    axes[-1].set_xlim(0, max(ax.end_s for ax in axes))  # (shared: the longest run of either panel)
    axes[-1].set_xlabel("simulated time (s)")
    fig_legend_top(fig, [h for h, _ in handles.values()], [lab for _, lab in handles.values()], ncol=2)
    return fig, pd.DataFrame(rows)


def draw_allocation_map(src: Sources):
    """For one scenario, each strategy's plan: which phone runs which modules in ring order (top),
    and each phone's peak memory against its budget (bottom)."""
    from llsim.results.reader import load

    t = src.sweep("allocation")
    d = t.attrs["dir"]
    plans, mem, names, n_mod, scen = [], [], None, 0, ""
    for _, r in t.iterrows():
        strat = str(r["allocation.strategy"])
        path = d / r["run_dir"]
        if r["status"] != "ok" or not (path / "manifest.json").is_file():
            plans.append((strat, None, str(r["error"])[:60], None))
            continue
        run = load(path)
        names = list(run.devices["name"])
        scen = run.name
        stages = run.manifest["plan"]
        n_mod = max(n_mod, max(s["end_module"] for s in stages) + 1)
        plans.append((strat, stages, None, run.metrics.get("tokens_per_s")))
        for _, dv in run.devices.iterrows():
            mem.append({"strategy": strat, "device": int(dv["index"]), "name": dv["name"],
                        "modules": dv["modules"] if pd.notna(dv["modules"]) else "",
                        "peak_gb": dv["peak_memory_bytes"] / 1e9, "budget_gb": dv["memory_budget_bytes"] / 1e9})
    if names is None:
        raise Missing(f"no successful point in {d}")
    fig = new_figure(4.2)
    gs = fig.add_gridspec(2, 1, height_ratios=[1.3, 1.0])
    ax = fig.add_subplot(gs[0])
    fills = {i: DEVICE_FILLS[i % len(DEVICE_FILLS)] for i in range(len(names))}
    rows = []
    for y, (strat, stages, err, tps) in enumerate(plans):
        yy = len(plans) - 1 - y
        if stages is None:
            ax.text(0, yy, f"  infeasible: {err}", va="center", fontsize=5.5)
            continue
        for k, s in enumerate(stages):
            a, b = s["start_module"], s["end_module"] + 1
            ax.barh(yy, b - a, left=a, height=0.72, color=fills[s["device"]], edgecolor="black", lw=0.4)
            if b - a >= 2:
                ax.text((a + b) / 2, yy, str(s["device"]), ha="center", va="center", fontsize=5.5)
            rows.append({"strategy": strat, "ring_position": k, "device": s["device"], "device_name": names[s["device"]],
                         "start_module": a, "end_module": b - 1, "tokens_per_s": tps})
        if tps is not None:
            ax.text(n_mod + 0.3, yy, f"{tps:.2f}", va="center", fontsize=5.5)
    ax.text(n_mod + 0.3, len(plans) - 0.35, "tok/s", va="bottom", fontsize=5.5)
    ax.set_yticks(range(len(plans)), [label(p[0]) for p in reversed(plans)])
    for tick, p in zip(ax.get_yticklabels(), reversed(plans)):
        tick.set_color(strategy_colour(p[0]) if p[0] != "greedy" else "#8a7d00")
    ax.set_xlim(0, n_mod)
    ax.set_xlabel("module, in ring order (label = phone)")
    ax.grid(False)
    ax.spines["left"].set_visible(False)
    from matplotlib.patches import Patch

    legend_above(ax, [Patch(facecolor=fills[i], edgecolor="black", lw=0.4) for i in range(len(names))],
                 [f"{i}: {n}" for i, n in enumerate(names)], ncol=2)
    # memory: one group per phone, one bar per strategy
    m = pd.DataFrame(mem)
    ax2 = fig.add_subplot(gs[1])
    strategies = [p[0] for p in plans if p[1] is not None]
    w = 0.8 / max(1, len(strategies))
    for k, strat in enumerate(strategies):
        part = m[m["strategy"] == strat].sort_values("device")
        x = part["device"].to_numpy() + (k - (len(strategies) - 1) / 2) * w
        ax2.bar(x, part["peak_gb"] / part["budget_gb"] * 100, w * 0.95, color=strategy_colour(strat),
                edgecolor="black" if strat == "greedy" else "none", lw=0.3, label=label(strat))
    ax2.axhline(100, color=OKABE_ITO["vermillion"], ls="--", lw=0.9)
    ax2.text(len(names) - 0.5, 100, "budget", ha="right", va="bottom", fontsize=5.5, color=OKABE_ITO["vermillion"])
    budgets = m.drop_duplicates("device").sort_values("device")
    ax2.set_xticks(range(len(names)), [f"{i}\n({b:.1f} GB)" for i, b in zip(budgets["device"], budgets["budget_gb"])])
    ax2.set_xlabel("phone (memory budget); colour = strategy")
    ax2.set_ylabel("peak memory (% of budget)")
    ax2.set_ylim(0, 110)
    ax2.grid(axis="x", visible=False)
    return fig, pd.concat([pd.DataFrame(rows), m.assign(kind="memory")], ignore_index=True)


def speedups(t: pd.DataFrame, x: str, metric: str = "tokens_per_s", base: str = "milp",
             higher_is_better: bool = True) -> pd.DataFrame:
    """milp's speed-up over each other strategy at each x, paired by seed: mean, s.d., seeds."""
    ok = t[t["status"] == "ok"]
    piv = ok.pivot_table(index=[x, "seed"], columns="allocation.strategy", values=metric, aggfunc="first")
    if base not in piv:
        raise Missing(f"no successful {base} point")
    rows = []
    for s in piv.columns:
        if s == base:
            continue
        r = (piv[base] / piv[s]) if higher_is_better else (piv[s] / piv[base])
        g = r.dropna().groupby(level=0)
        for xv, grp in g:
            rows.append({x: xv, "strategy": s, "mean": grp.mean(), "std": grp.std(ddof=1) if len(grp) > 1 else 0.0,
                         "seeds": len(grp)})
    return pd.DataFrame(rows)


def _speedup_figure(t: pd.DataFrame, x: str, xlabel: str, xvalues=None):
    ok = t[t["status"] == "ok"]
    strategies = [s for s in dict.fromkeys(t["allocation.strategy"])]
    fig = new_figure(3.5)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    absolute = ok.groupby([x, "allocation.strategy"])["tokens_per_s"].agg(["mean", "std", "count"]).reset_index()
    for s in strategies:
        a = absolute[absolute["allocation.strategy"] == s].sort_values(x)
        if a.empty:
            continue
        ax1.errorbar(a[x], a["mean"], yerr=a["std"].fillna(0), color=strategy_colour(s),
                     marker=STRATEGY_MARKERS.get(s, "o"), capsize=2, elinewidth=0.7, label=label(s))
    sp = speedups(t, x)
    for s in strategies:
        a = sp[sp["strategy"] == s].sort_values(x) if not sp.empty else sp
        if a.empty:
            continue
        ax2.errorbar(a[x], a["mean"], yerr=a["std"], color=strategy_colour(s), marker=STRATEGY_MARKERS.get(s, "o"),
                     capsize=2, elinewidth=0.7)
    ax2.axhline(1.0, color="black", lw=0.6)
    seeds = int(absolute["count"].max())
    ax1.set_ylabel("tokens/s")
    ax1.set_ylim(bottom=0)
    ax2.set_ylabel("speed-up of milp (x)")
    ax2.set_ylim(bottom=0)
    ax2.set_xlabel(xlabel)
    vals = sorted(absolute[x].unique())
    ax2.set_xticks(vals, [f"{v:g}".replace("-", "\u2212") for v in vals])
    fig_legend_top(fig, *ax1.get_legend_handles_labels(), ncol=4)
    ax1.set_title(f"mean \u00b1 s.d. over {seeds} seed{'s' if seeds != 1 else ''} (sampled RTTs)", loc="right",
                  fontsize=5.5, pad=1)
    data = absolute.rename(columns={"mean": "tokens_per_s_mean", "std": "tokens_per_s_std", "count": "seeds"})
    return fig, pd.concat([data.assign(kind="tokens_per_s"), sp.rename(columns={"strategy": "allocation.strategy",
                           "mean": "speedup_mean", "std": "speedup_std"}).assign(kind="speedup")], ignore_index=True)


def draw_speedup_phones(src: Sources):
    t = src.sweep("phones")
    counts = [c for c in t.columns if c.startswith("devices.") and c.endswith(".count")]
    t = t.assign(phones=t[counts].sum(axis=1).astype("int64"))
    return _speedup_figure(t, "phones", "phones (half Kirin 990, half Helio G85)")


def draw_speedup_rssi(src: Sources):
    t = src.sweep("rssi")
    return _speedup_figure(t, "network.default_rssi_dbm", "RSSI of every phone at the AP (dBm)")


def draw_costmodel(src: Sources):
    """Predicted vs measured latency of held-out optimised segments on this host (log-log)."""
    df = src.csv("costmodel_accuracy")
    fig = new_figure(3.0)
    ax = fig.subplots()
    lo = min(df["predicted_ms"].min(), df["measured_ms"].min()) * 0.7
    hi = max(df["predicted_ms"].max(), df["measured_ms"].max()) * 1.4
    xs = np.geomspace(lo, hi, 50)
    ax.fill_between(xs, xs * 0.8, xs * 1.2, color=GREY, alpha=0.15, lw=0, label="\u00b120%")
    ax.fill_between(xs, xs * 0.9, xs * 1.1, color=GREY, alpha=0.25, lw=0, label="\u00b110%")
    ax.plot(xs, xs, color="black", lw=0.6)
    models = list(dict.fromkeys(df["model"]))
    marks = {1: "o", 2: "s", 4: "^"}
    for i, mdl in enumerate(models):
        for th in sorted(df["threads"].unique()):
            part = df[(df["model"] == mdl) & (df["threads"] == th)]
            if part.empty:
                continue
            ax.scatter(part["measured_ms"], part["predicted_ms"], s=9, marker=marks.get(int(th), "D"),
                       facecolor=colour(i) if th == 1 else "none", edgecolor=colour(i), lw=0.7,
                       label=f"{mdl}, {th} thread{'s' if th > 1 else ''}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain_log(ax.xaxis)
    plain_log(ax.yaxis)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel("measured (ms)")
    ax.set_ylabel("predicted by the cost model (ms)")
    ape = (df["predicted_ms"] / df["measured_ms"] - 1).abs() * 100
    ax.text(0.03, 0.97, f"{len(df)} held-out segments\nmedian error {ape.median():.1f}%\n"
            f"p90 {ape.quantile(0.9):.1f}%, max {ape.max():.1f}%", transform=ax.transAxes, va="top", fontsize=6)
    legend_above(ax, ncol=2)
    return fig, df.assign(error_pct=(df["predicted_ms"] / df["measured_ms"] - 1) * 100)


def draw_solve_time(src: Sources):
    """milp solve time against instance size: one exact solve and the whole strategy, both objectives."""
    df = src.csv("solve_time").dropna(subset=["median_s"])
    fig = new_figure(2.7)
    ax = fig.subplots()
    obj_colour = {"latency": OKABE_ITO["blue"], "throughput": OKABE_ITO["orange"]}
    from matplotlib.lines import Line2D

    handles, labels = [], []
    for obj, part in df.groupby("objective", sort=False):
        part = part.sort_values("devices")
        c = obj_colour.get(obj, colour(2))
        ax.errorbar(part["devices"], part["median_s"], yerr=[np.zeros(len(part)), part["max_s"] - part["median_s"]],
                    color=c, marker="o", capsize=2, elinewidth=0.7)
        ax.plot(part["devices"], part["once_median_s"], color=c, marker="s", ls="--", lw=0.9, markersize=2.5)
        handles.append(Line2D([], [], color=c, lw=1.2))
        labels.append(f"{obj} objective")
    handles += [Line2D([], [], color="black", marker="o", lw=1.2), Line2D([], [], color="black", marker="s", ls="--",
                                                                         lw=0.9, markersize=2.5)]
    labels += ["milp strategy (median; bar: max)", "one exact MILP solve (median)"]
    for d_, t_, txt in ((16, 1.0, "target 1 s"), (64, 30.0, "target 30 s")):
        ax.plot([d_], [t_], marker="_", markersize=10, color=OKABE_ITO["vermillion"], mew=1.5)
        ax.annotate(txt, (d_, t_), textcoords="offset points", xytext=(-4, 3), ha="right", fontsize=5.5,
                    color=OKABE_ITO["vermillion"])
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    plain_log(ax.yaxis)
    sizes = df.drop_duplicates("devices").sort_values("devices")
    ax.set_xticks(sizes["devices"], [f"{d}\n\u00d7{m}" for d, m in zip(sizes["devices"], sizes["modules"])])
    ax.minorticks_off()
    ax.set_xlabel("phones \u00d7 modules (Llama-7B-shaped, fp16)")
    ax.set_ylabel("solve time (s)")
    ax.set_ylim(top=max(60, float(df["max_s"].max()) * 2))
    legend_above(ax, handles, labels, ncol=2)
    return fig, df


def draw_fidelity(src: Sources):
    """Simulated vs real (HIL) per scenario, from results/hil_fidelity.csv: columns scenario, metric,
    simulated, measured (one row per scenario and metric)."""
    df = src.csv("hil_fidelity")
    need = {"scenario", "metric", "simulated", "measured"}
    if not need <= set(df.columns):
        raise LLSimError(f"results/hil_fidelity.csv: expected columns {', '.join(sorted(need))}")
    metrics = list(dict.fromkeys(df["metric"]))
    fig = new_figure(1.0 + 1.4 * len(metrics))
    axes = fig.subplots(len(metrics), 1, squeeze=False)[:, 0]
    for ax, mt in zip(axes, metrics):
        part = df[df["metric"] == mt]
        x = np.arange(len(part))
        ax.bar(x - 0.2, part["simulated"], 0.38, color=OKABE_ITO["blue"], label="simulated")
        ax.bar(x + 0.2, part["measured"], 0.38, color=OKABE_ITO["orange"], label="measured (HIL)")
        for xi, (s, m) in enumerate(zip(part["simulated"], part["measured"])):
            ax.text(xi, max(s, m), f"{(s / m - 1) * 100:+.0f}%", ha="center", va="bottom", fontsize=5.5)
        ax.set_xticks(x, part["scenario"])
        ax.set_ylabel(mt)
        ax.grid(axis="x", visible=False)
    legend_above(axes[0], ncol=2)
    return fig, df


def _sweep_cmd(scenario: str, out: str, *args: str) -> str:
    return f"llsim sweep {scenario} {' '.join(args)} --jobs 2 --no-timeline --out {SWEEPS}/{out}"


FIGURES = [
    FigureSpec("paper_speedup", "speed-up of milp over the peers' strategies, LinguaLinked-style scenarios",
               ["llsim bench paper"], draw_paper_speedup),
    FigureSpec("balancer", "load balancing: tokens/s over time, balancer on vs off",
               [_sweep_cmd("balance-throttle", "balance-throttle", "--grid balancer.enabled=true,false"),
                _sweep_cmd("balance-background", "balance-background", "--grid balancer.enabled=true,false")],
               draw_balancer),
    FigureSpec("allocation_map", "allocation maps: modules per phone in ring order and memory vs budget",
               [_sweep_cmd("lingualinked-bloom-3b", "allocation",
                           "--grid allocation.strategy=milp,uniform,memory,lingualinked,halda,pipeedge,greedy",
                           "--set workload.concurrency=4 --set workload.requests=8",
                           "--set allocation.objective=throughput --set network.rtt_sampling=expected")],
               draw_allocation_map),
    FigureSpec("speedup_phones", "speed-up vs number of phones",
               [_sweep_cmd("scenarios/sweeps/phones.yaml", "phones", "--zip devices.0.count=1,2,3,4",
                           "--zip devices.1.count=1,2,3,4", "--grid allocation.strategy=milp,uniform,memory,lingualinked",
                           "--seeds 1-4")],
               draw_speedup_phones),
    FigureSpec("speedup_rssi", "speed-up vs RSSI",
               [_sweep_cmd("scenarios/sweeps/rssi.yaml", "rssi", "--grid network.default_rssi_dbm=-50,-55,-60,-65,-70,-73,-76",
                           "--grid allocation.strategy=milp,uniform,memory,lingualinked", "--seeds 1-3")],
               draw_speedup_rssi),
    FigureSpec("costmodel", "cost model: predicted vs measured per held-out segment",
               ["llsim bench costmodel_accuracy"], draw_costmodel),
    FigureSpec("solve_time", "allocator solve time vs instance size", ["llsim bench solve_time"], draw_solve_time),
    FigureSpec("hil_fidelity", "simulated vs real (HIL) per scenario",
               ["llsim bench fidelity"], draw_fidelity),
]


def make_figures(results: str | Path | None = None, out: str | Path | None = None, formats=("png", "pdf"),
                 only: list[str] | None = None, sweeps: str | Path | None = None, log=print) -> list[Path]:
    """Draw every figure whose sources exist; note the others and how to make them."""
    res = Path(results) if results else ROOT / "results"
    src = Sources(res, Path(sweeps) if sweeps else ROOT / SWEEPS)
    out = Path(out) if out else res / "figures"
    names = {f.name for f in FIGURES}
    unknown = [o for o in only or [] if o not in names]
    if unknown:
        raise LLSimError(f"--only {', '.join(unknown)}: no such figure; use {', '.join(sorted(names))}")
    written = []
    with paper_style():
        for f in FIGURES:
            if only and f.name not in only:
                continue
            try:
                fig, data = f.draw(src)
            except Missing as e:
                log(f"skipped {f.name}: {e}; make it with: {' && '.join(f.commands)}")
                continue
            written += save(fig, out / f.name, formats)
            data.to_csv(out / f"{f.name}.csv", index=False, float_format="%.6g")
            log(f"{f.name}: {f.title}")
    return written
