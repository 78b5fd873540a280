"""One look for every figure: a paper column's width, the Okabe-Ito colour-blind-safe palette,
one fixed colour (and marker) per allocation strategy, labelled axes with units, legends outside
the data.

Figures are :class:`matplotlib.figure.Figure` objects drawn with the Agg renderer (no pyplot, no
display, no global backend change: importing llsim never changes a user's matplotlib set-up).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

COLUMN_IN = 3.4  # a two-column paper's column width, inches
DPI = 300  # PNG resolution (1020 px across at a column's width)

# Okabe & Ito (2008), "Color universal design": distinguishable with every common colour-vision deficiency
OKABE_ITO = {"orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73", "yellow": "#F0E442", "blue": "#0072B2",
             "vermillion": "#D55E00", "purple": "#CC79A7", "black": "#000000"}
GREY = "#8C8C8C"

# one colour and marker per strategy, in every figure
STRATEGY_COLOURS = {"milp": OKABE_ITO["blue"], "oracle": OKABE_ITO["black"], "uniform": OKABE_ITO["orange"],
                    "memory": OKABE_ITO["green"], "lingualinked": OKABE_ITO["vermillion"],
                    "halda": OKABE_ITO["purple"], "pipeedge": OKABE_ITO["sky"], "greedy": OKABE_ITO["yellow"],
                    "explicit": GREY}
STRATEGY_MARKERS = {"milp": "o", "oracle": "*", "uniform": "s", "memory": "^", "lingualinked": "D", "halda": "v",
                    "pipeedge": "P", "greedy": "X", "explicit": "."}
STRATEGY_LABELS = {"milp": "milp (llsim)", "memory": "memory (exo)", "lingualinked": "LinguaLinked",
                   "pipeedge": "PipeEdge", "uniform": "uniform", "greedy": "greedy",
                   "oracle": "oracle"}
# anything else (runs compared, sweep hues that are not strategies): in this order (yellow last: low contrast)
CYCLE = [OKABE_ITO[k] for k in ("blue", "orange", "green", "vermillion", "purple", "sky", "black", "yellow")]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
# phones in allocation maps: light fills that carry black text, none of them a strategy's colour
DEVICE_FILLS = ["#BBCCEE", "#CCEEFF", "#CCDDAA", "#EEEEBB", "#FFCCCC", "#DDDDDD", "#E5CCFF", "#FFE5CC"]

RC = {
    "font.size": 7.5, "axes.titlesize": 7.5, "axes.labelsize": 7.5, "xtick.labelsize": 6.5, "ytick.labelsize": 6.5,
    "legend.fontsize": 6.5, "legend.frameon": False, "legend.handlelength": 1.6, "legend.columnspacing": 1.0,
    "legend.borderaxespad": 0.2, "lines.linewidth": 1.2, "lines.markersize": 3.5, "axes.linewidth": 0.6,
    "xtick.major.width": 0.6, "ytick.major.width": 0.6, "xtick.major.size": 2.5, "ytick.major.size": 2.5,
    "xtick.minor.size": 1.5, "ytick.minor.size": 1.5, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.linewidth": 0.4, "grid.alpha": 0.35, "axes.axisbelow": True,
    "font.family": "DejaVu Sans", "pdf.fonttype": 42, "svg.fonttype": "none", "savefig.dpi": DPI,
    "figure.constrained_layout.use": True, "figure.constrained_layout.h_pad": 0.02,
    "figure.constrained_layout.w_pad": 0.02, "axes.prop_cycle": None,
}


def strategy_colour(name: str) -> str:
    return STRATEGY_COLOURS.get(str(name), GREY)


def colour(i: int) -> str:
    return CYCLE[i % len(CYCLE)]


def label(strategy: str) -> str:
    return STRATEGY_LABELS.get(str(strategy), str(strategy))


def is_strategy_set(values) -> bool:
    vals = [str(v) for v in values]
    return bool(vals) and all(v in STRATEGY_COLOURS for v in vals)


def hue_colours(values) -> dict:
    """Colours for the values of a hue: a strategy's own colour when every value is a strategy."""
    vals = list(dict.fromkeys(values))
    if is_strategy_set(vals):
        return {v: strategy_colour(v) for v in vals}
    return {v: colour(i) for i, v in enumerate(vals)}


def hue_markers(values) -> dict:
    vals = list(dict.fromkeys(values))
    if is_strategy_set(vals):
        return {v: STRATEGY_MARKERS.get(str(v), "o") for v in vals}
    return {v: MARKERS[i % len(MARKERS)] for i, v in enumerate(vals)}


@contextlib.contextmanager
def paper_style():
    import matplotlib as mpl
    from cycler import cycler

    rc = dict(RC)
    rc["axes.prop_cycle"] = cycler(color=CYCLE)
    with mpl.rc_context(rc):
        yield


def new_figure(height_in: float = 2.3, width_in: float = COLUMN_IN, **kw):
    """A figure a column wide (no pyplot: nothing global is touched). Call inside :func:`paper_style`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), **kw)
    FigureCanvasAgg(fig)
    return fig


def legend_above(fig_or_ax, handles=None, labels=None, ncol: int | None = None, **kw):
    """A legend above the axes, outside the data."""
    ax = fig_or_ax
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return None
    n = ncol or min(len(handles), 4)
    return ax.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.01), ncol=n, borderaxespad=0.0,
                     **kw)


def fig_legend_top(fig, handles, labels, ncol: int | None = None, **kw):
    """A figure-level legend above every panel (constrained layout makes room for it)."""
    if not handles:
        return None
    return fig.legend(handles, labels, loc="outside upper center", ncol=ncol or min(len(handles), 4), **kw)


def plain_log(axis) -> None:
    """Log-axis tick labels as plain numbers (0.1, 1, 10) rather than powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def save(fig, stem: str | Path, formats=("png",)) -> list[Path]:
    """Write ``stem.<fmt>`` for each format; returns the paths written."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for fmt in formats:
        p = stem.parent / f"{stem.name}.{fmt}"  # (a stem may contain dots: tokens_per_s_vs_workload.concurrency)
        kw = {"metadata": {"Software": None}} if fmt == "png" else {}
        if fmt == "pdf":
            kw = {"metadata": {"CreationDate": None, "Producer": None, "Creator": "llsim"}}
        fig.savefig(p, format=fmt, dpi=DPI, **kw)
        out.append(p)
    return out
