"""``llsim plot sweep DIR --x PATH --y METRIC [--hue PATH]``: a metric of a sweep against a swept
parameter, the mean over seeds with error bars of one standard deviation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from llsim.errors import LLSimError
from llsim.plot.style import hue_colours, hue_markers, label, legend_above, new_figure, paper_style, save

METRIC_LABELS = {"tokens_per_s": "tokens/s", "ttft_ms": "TTFT (ms)", "ttft_p90_ms": "TTFT p90 (ms)",
                 "token_latency_ms.mean": "mean token latency (ms)", "token_latency_ms.p50": "token latency p50 (ms)",
                 "token_latency_ms.p90": "token latency p90 (ms)", "token_latency_ms.p99": "token latency p99 (ms)",
                 "sim_time_s": "simulated time (s)", "wall_time_s": "wall time (s)", "wall_s": "wall time (s)",
                 "requests_completed": "requests completed", "rebalances": "rebalances",
                 "speedup": "speed-up (x)"}
PATH_LABELS = {"network.default_rssi_dbm": "RSSI (dBm)", "workload.concurrency": "requests in flight",
               "allocation.strategy": "strategy", "workload.new_tokens": "new tokens per request",
               "workload.prompt_tokens": "prompt tokens", "balancer.enabled": "balancer"}


def axis_label(name: str) -> str:
    if name in METRIC_LABELS:
        return METRIC_LABELS[name]
    if name in PATH_LABELS:
        return PATH_LABELS[name]
    for suffix, unit in (("_ms", "ms"), ("_s", "s"), ("_dbm", "dBm"), ("_bytes", "bytes"), ("_mbps", "Mb/s"),
                         ("_gb", "GB")):
        if name.endswith(suffix):
            return f"{name} ({unit})"
    return name


def _match(series: pd.Series, raw: str) -> pd.Series:
    import yaml

    try:
        v = yaml.safe_load(raw)
    except yaml.YAMLError:
        v = raw
    if isinstance(v, bool) or series.dtype == "boolean":
        return series.astype("string").str.lower() == str(v).lower()
    if isinstance(v, (int, float)) and pd.api.types.is_numeric_dtype(series):
        return pd.Series(np.isclose(series.astype("float64"), float(v)), index=series.index)
    return series.astype("string") == str(raw)


def select(table: pd.DataFrame, where: list[str]) -> pd.DataFrame:
    for w in where or []:
        if "=" not in w:
            raise LLSimError(f"--where '{w}': expected PATH=VALUE")
        k, v = w.split("=", 1)
        if k not in table:
            raise LLSimError(f"--where {k}: not a column of the sweep (its parameters: {_params(table)})")
        table = table[_match(table[k], v).fillna(False).to_numpy(bool)]
    return table


def _params(table: pd.DataFrame) -> str:
    cols = [c for c in table.columns if c not in ("point", "seed", "status", "error", "wall_s", "run_dir")]
    return ", ".join(c for c in cols if "." in c and not c.startswith(("token_latency_ms.", "throughput_windows.")))


def summarise(table: pd.DataFrame, x: str, y: str, hue: str | None = None, params: list[str] | None = None
              ) -> pd.DataFrame:
    """Mean, standard deviation and count of ``y`` over seeds for each (hue, x); the points that
    failed are left out. Raises when another swept parameter varies (it would be averaged over)."""
    for c in (x, y) + ((hue,) if hue else ()):
        if c not in table:
            raise LLSimError(f"'{c}' is not a column of the sweep (parameters: {_params(table)}; metrics such as "
                             "tokens_per_s, ttft_ms, token_latency_ms.p99)")
    ok = table[table["status"] == "ok"]
    if ok.empty:
        raise LLSimError("no point of the sweep succeeded: nothing to plot")
    if not pd.api.types.is_numeric_dtype(ok[y]):
        raise LLSimError(f"--y {y}: not a numeric metric")
    others = [p for p in (params or []) if p not in (x, hue) and p in ok and ok[p].nunique(dropna=False) > 1]
    if others:
        raise LLSimError(f"{', '.join(others)} also varies in this sweep: give it as --hue or keep one value "
                         f"with --where {others[0]}=VALUE")
    keys = [hue, x] if hue else [x]
    g = ok.groupby(keys, sort=False, dropna=False)[y]
    out = g.agg(["mean", "std", "count"]).reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out


def draw(ax, summary: pd.DataFrame, x: str, hue: str | None, order: list | None = None) -> list:
    """Lines (numeric x) or points per category, error bars of one s.d.; returns legend handles."""
    numeric = pd.api.types.is_numeric_dtype(summary[x]) and summary[x].dtype != "boolean"
    hues = list(dict.fromkeys(summary[hue])) if hue else [None]
    colours, markers = hue_colours(hues), hue_markers(hues)
    cats = order or list(dict.fromkeys(summary[x]))
    handles = []
    for i, h in enumerate(hues):
        s = summary[summary[hue] == h] if hue else summary
        if numeric:
            s = s.sort_values(x)
            xs = s[x].astype("float64").to_numpy()
        else:
            off = (i - (len(hues) - 1) / 2) * min(0.6 / max(len(hues), 1), 0.15)
            xs = np.array([cats.index(v) for v in s[x]]) + off
        c = colours[h] if hue else colours[None]
        e = ax.errorbar(xs, s["mean"], yerr=s["std"], color=c, marker=markers[h] if hue else "o",
                        ls="-" if numeric else "none", capsize=2, elinewidth=0.8, capthick=0.8,
                        label=label(h) if hue else None)
        handles.append(e)
    if not numeric:
        ax.set_xticks(range(len(cats)), [label(c) for c in cats])
        ax.set_xlim(-0.5, len(cats) - 0.5)
        ax.grid(axis="x", visible=False)
    elif summary[x].nunique() <= 8:
        vals = sorted(summary[x].astype("float64").unique())
        ax.set_xticks(vals, [f"{v:g}".replace("-", "\u2212") for v in vals])
    return handles


def plot_sweep(sweep_dir: str | Path, x: str, y: str, hue: str | None = None, where: list[str] | None = None,
               out: str | Path | None = None, formats=("png",), logy: bool = False, log=print) -> list[Path]:
    from llsim.results.reader import load_sweep

    d = Path(sweep_dir)
    table = select(load_sweep(d), where or [])
    import json

    params = json.loads((d / "sweep.json").read_text()).get("parameters", [])
    failed = int((table["status"] != "ok").sum())
    if failed:
        log(f"{failed} failed point(s) left out")
    s = summarise(table, x, y, hue, params)
    seeds = int(s["count"].max())
    with paper_style():
        fig = new_figure(2.4)
        ax = fig.subplots()
        draw(ax, s, x, hue)
        ax.set_xlabel(axis_label(x))
        ax.set_ylabel(axis_label(y) + (f"\nmean \u00b1 s.d., {seeds} seeds" if seeds > 1 else ""))
        if logy:
            ax.set_yscale("log")
        if hue:
            legend_above(ax, ncol=min(4, s[hue].nunique()), title=axis_label(hue))
        stem = Path(out) if out else d / "figures" / f"{y}_vs_{x}".replace("/", "-")
        return save(fig, stem.with_suffix("") if stem.suffix in (".png", ".pdf", ".svg") else stem, formats)
