"""llsim plot: every command writes a real PNG a column wide from a small run; legends stay off the
data; one colour per strategy; the paper set is drawn from result files, skipping what is missing."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
TINY = """
name: tiny
model: tiny-bloom
seed: 1
devices:
  - {profile: snapdragon-8gen2, threads: 4}
  - {profile: kirin-990, threads: 4}
  - {profile: kirin-810, threads: 4}
network: {kind: infrastructure, standard: ac, width_mhz: 80}
allocation: {strategy: uniform}
workload: {prompt_tokens: 8, new_tokens: 6, requests: 4, concurrency: 2, mode: kv_cache}
"""
# a throttle the balancer answers within a few simulated seconds
DYNAMIC = TINY.replace("new_tokens: 6, requests: 4", "new_tokens: 40, requests: 40") + """
events:
  - {at: 0.5, kind: throttle, device: 0, factor: 0.3}
balancer: {enabled: true, interval_s: 0.1, smoothing_s: 0.2, sustain_s: 0.2, min_interval_s: 1, horizon_s: 30}
"""


def png_size(p: Path) -> tuple[int, int]:
    data = p.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{p} is not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def assert_column_png(p: Path):
    assert p.is_file() and p.stat().st_size > 5_000, f"{p} is missing or empty"
    w, h = png_size(p)
    assert w == 1020 and 200 < h < 2000, (w, h)  # 3.4 in at 300 dpi
    import matplotlib.image

    img = matplotlib.image.imread(p)
    assert img[..., :3].std() > 0.05, f"{p} is blank"


@pytest.fixture
def runs(tmp_path):
    from llsim.scenario import load_scenario
    from llsim.judge.run import run_to_dir

    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "dyn.yaml").write_text(DYNAMIC)
    run_to_dir(load_scenario(tmp_path / "tiny.yaml"), tmp_path / "a")
    run_to_dir(load_scenario(tmp_path / "tiny.yaml", ["allocation.strategy=milp"]), tmp_path / "b")
    res, _, _ = run_to_dir(load_scenario(tmp_path / "dyn.yaml"), tmp_path / "dyn")
    return tmp_path


def test_plot_run_writes_every_figure(runs, capsys):
    code, out, err = run_cli(["plot", runs / "a", "--out", runs / "figs"], capsys)
    assert code == 0, err
    names = {"latency_cdf", "tokens_per_s", "gantt", "memory", "airtime"}
    assert {Path(x).stem for x in out.split()} == names
    for n in names:
        assert_column_png(runs / "figs" / f"{n}.png")
    # with events and rebalances, a Gantt window, svg
    code, out, err = run_cli(["plot", runs / "dyn", "--format", "png,svg", "--window", "0.4:0.6"], capsys)
    assert code == 0, err
    assert b"<svg" in (runs / "dyn" / "figures" / "tokens_per_s.svg").read_bytes()[:500]
    assert_column_png(runs / "dyn" / "figures" / "gantt.png")
    code, _, err = run_cli(["plot", runs / "dyn", "--window", "3:1"], capsys)
    assert code == 2 and "END must be after START" in err


def test_plot_run_without_timeline_skips_what_needs_it(runs, capsys):
    (runs / "a" / "timeline.json").unlink()
    code, out, err = run_cli(["plot", runs / "a", "--out", runs / "f2"], capsys)
    assert code == 0
    assert {Path(x).stem for x in out.split()} == {"latency_cdf", "tokens_per_s", "airtime"}
    assert "skipped gantt" in err and "skipped memory" in err


def test_plot_a_run_that_made_no_token(runs, capsys):
    from llsim.scenario import load_scenario
    from llsim.judge.run import run_to_dir

    res, _, _ = run_to_dir(load_scenario(runs / "tiny.yaml", ["duration.max_sim_s=0.001"]), runs / "empty")
    assert not res.tokens
    code, out, err = run_cli(["plot", runs / "empty"], capsys)
    assert code == 0, err  # the executions begun still give a Gantt chart, memory and airtime
    assert {Path(x).stem for x in out.split()} == {"gantt", "memory", "airtime"}
    assert "skipped latency_cdf" in err and "generated no token" in err and "skipped tokens_per_s" in err
    (runs / "empty" / "timeline.json").unlink()
    (runs / "empty" / "links.csv").write_text("")
    code, out, err = run_cli(["plot", runs / "empty"], capsys)
    assert code == 2 and "nothing to plot" in err and out == ""


def test_plot_compare(runs, capsys):
    code, out, err = run_cli(["plot", "compare", runs / "a", runs / "b", runs / "dyn", "--labels", "uniform,milp,dyn",
                              "--out", runs / "cmp"], capsys)
    assert code == 0, err
    for n in ("compare_latency_cdf", "compare_tokens_per_s"):
        assert_column_png(runs / "cmp" / f"{n}.png")
    code, _, err = run_cli(["plot", "compare", runs / "a"], capsys)
    assert code == 2 and "two or more" in err
    code, _, err = run_cli(["plot", runs / "nope"], capsys)
    assert code == 2 and "no such run directory" in err


def test_plot_sweep(runs, capsys):
    from llsim.sweep import run_sweep

    run_sweep(str(runs / "tiny.yaml"), ["workload.concurrency=1,2,4", "allocation.strategy=uniform,milp"], seeds="1-2",
              out=runs / "sw", timeline=False)
    code, out, err = run_cli(["plot", "sweep", runs / "sw", "--x", "workload.concurrency", "--y", "tokens_per_s",
                              "--hue", "allocation.strategy"], capsys)
    assert code == 0, err
    assert_column_png(Path(out.strip()))
    code, out, err = run_cli(["plot", "sweep", runs / "sw", "--x", "allocation.strategy", "--y", "ttft_ms",
                              "--where", "workload.concurrency=2", "--out", runs / "x.png"], capsys)
    assert code == 0, err
    assert_column_png(runs / "x.png")
    code, _, err = run_cli(["plot", "sweep", runs / "sw", "--x", "workload.concurrency", "--y", "tokens_per_s"], capsys)
    assert code == 2 and "allocation.strategy also varies" in err
    code, _, err = run_cli(["plot", "sweep", runs / "sw", "--x", "workload.concurrency", "--y", "nope",
                            "--hue", "allocation.strategy"], capsys)
    assert code == 2 and "'nope' is not a column" in err


def test_sweep_summary_is_mean_and_sd_over_seeds():
    from llsim.plot.sweep import summarise

    rng = np.random.default_rng(3)
    rows = []
    for x in (1, 2, 3):
        for h in ("milp", "uniform"):
            for seed in range(5):
                rows.append({"x": x, "h": h, "seed": seed, "status": "ok", "y": rng.normal(x * 10, 1)})
    rows.append({"x": 1, "h": "milp", "seed": 9, "status": "failed", "y": np.nan})
    t = pd.DataFrame(rows)
    s = summarise(t, "x", "y", "h", ["x", "h"])
    for _, r in s.iterrows():
        v = t[(t["x"] == r["x"]) & (t["h"] == r["h"]) & (t["status"] == "ok")]["y"]
        assert r["count"] == 5 and r["mean"] == pytest.approx(v.mean()) and r["std"] == pytest.approx(v.std())


def test_every_strategy_has_its_own_colour_and_marker():
    from llsim import registry

    STRATEGIES = registry.names(judged_only=True)
    from llsim.plot.style import OKABE_ITO, STRATEGY_COLOURS, STRATEGY_MARKERS, hue_colours

    assert set(STRATEGIES) <= set(STRATEGY_COLOURS) and set(STRATEGIES) <= set(STRATEGY_MARKERS)
    cols = [STRATEGY_COLOURS[s] for s in STRATEGIES]
    assert len(set(cols)) == len(cols) and set(cols) <= set(OKABE_ITO.values())
    assert hue_colours(["uniform", "milp"]) == {"uniform": STRATEGY_COLOURS["uniform"], "milp": STRATEGY_COLOURS["milp"]}


def _legends_off_data(fig):
    """No legend's box overlaps an axes' plotting area."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    for lg in legends:
        lb = lg.get_window_extent(r)
        for ax in fig.axes:
            ab = ax.get_window_extent(r)
            overlap = max(0, min(lb.x1, ab.x1) - max(lb.x0, ab.x0)) * max(0, min(lb.y1, ab.y1) - max(lb.y0, ab.y0))
            assert overlap < 1.0, f"a legend covers the data of {ax.get_title() or ax.get_ylabel()}"
    return len(legends)


def _sources(root: Path, runs: Path):
    """A results folder and sweeps for the paper set, made small: the benches' CSV schema, tiny sweeps."""
    from llsim.bench.output import save_rows
    from llsim.sweep import run_sweep

    res, sw = root / "results", root / "sweeps"
    import os

    os.environ["LLSIM_RESULTS_DIR"] = str(res)
    try:
        save_rows("paper", [{"scenario": f"lingualinked-bloom-{m}", "setting": s, "in_flight": k,
                             "objective": "latency" if k == 1 else "throughput", "milp_plan": "a:0-1",
                             "milp_ms_per_token": 100.0, "milp_tokens_per_s": 10.0, "vs_uniform": 2.0 + i / 10,
                             "vs_memory": 1.8, "vs_lingualinked": None if (m == "3b" and k == 1) else 1.2}
                            for i, m in enumerate(("1b1", "1b7", "3b")) for s, k in (("1 in flight", 1), ("4 in flight", 4))])
        from llsim.bench.solve_time import run as solve_run

        save_rows("solve_time", solve_run(sizes=[(4, 8), (8, 10)], seeds=(1,)))
        rng = np.random.default_rng(1)
        meas = np.exp(rng.uniform(-1, 2, 20))
        save_rows("costmodel_accuracy", [{"model": ["small-bloom", "small-llama"][i % 2], "seq_len": 8, "threads": 1 + i % 2,
                                          "segment": "modules 0-1", "predicted_ms": m * rng.uniform(0.85, 1.15),
                                          "measured_ms": m} for i, m in enumerate(meas)])
    finally:
        del os.environ["LLSIM_RESULTS_DIR"]
    tiny, dyn = str(runs / "tiny.yaml"), str(runs / "dyn.yaml")
    run_sweep(dyn, ["balancer.enabled=true,false"], out=sw / "balance-throttle", timeline=False)
    run_sweep(dyn.replace("dyn", "dyn"), ["balancer.enabled=true,false"], out=sw / "balance-background", timeline=False,
              sets=["events=[{at: 0.5, kind: background, device: 0, share: 0.6, duration_s: 2}]"])
    run_sweep(tiny, ["allocation.strategy=milp,uniform,memory,lingualinked,halda,pipeedge,greedy"],
              out=sw / "allocation", timeline=False)
    run_sweep(tiny, ["allocation.strategy=milp,uniform,lingualinked"], zipped=["devices.1.count=1,2", "devices.2.count=1,2"],
              seeds="1-2", out=sw / "phones", timeline=False)
    run_sweep(tiny, ["allocation.strategy=milp,uniform", "network.default_rssi_dbm=-50,-70"], seeds="1-2",
              out=sw / "rssi", timeline=False)
    return res, sw


@pytest.mark.slow
def test_plot_figures_draws_the_paper_set_from_files(runs, tmp_path, capsys):
    from llsim.plot.paper import FIGURES, Sources

    res, sw = _sources(tmp_path / "src", runs)
    code, out, err = run_cli(["plot", "figures", "--results", res, "--sweeps", sw, "--out", tmp_path / "figs"], capsys)
    assert code == 0, err
    drawn = {f.name for f in FIGURES} - {"hil_fidelity"}
    for n in drawn:
        assert_column_png(tmp_path / "figs" / f"{n}.png")
        assert (tmp_path / "figs" / f"{n}.pdf").read_bytes()[:5] == b"%PDF-"
        assert len(pd.read_csv(tmp_path / "figs" / f"{n}.csv")) > 0  # the numbers drawn, beside the figure
    assert "skipped hil_fidelity" in err and "llsim bench fidelity" in err  # no HIL results yet
    # each figure's legend is outside its data
    from llsim.plot.style import paper_style

    src = Sources(res, sw)
    with paper_style():
        for f in FIGURES:
            if f.name in drawn:
                fig, _ = f.draw(src)
                assert _legends_off_data(fig) >= 1
    # the speed-up figure's numbers: milp over each peer, paired by seed
    data = pd.read_csv(tmp_path / "figs" / "speedup_rssi.csv")
    t = __import__("llsim.results", fromlist=["load_sweep"]).load_sweep(sw / "rssi")
    sp = data[data["kind"] == "speedup"]
    for _, r in sp.iterrows():
        at = t[t["network.default_rssi_dbm"] == r["network.default_rssi_dbm"]]
        m = at[at["allocation.strategy"] == "milp"].set_index("seed")["tokens_per_s"]
        o = at[at["allocation.strategy"] == r["allocation.strategy"]].set_index("seed")["tokens_per_s"]
        assert r["speedup_mean"] == pytest.approx((m / o).mean(), rel=1e-5)
    # with HIL results the fidelity figure is drawn too
    pd.DataFrame({"scenario": ["demo", "demo", "balance"], "metric": ["tokens/s", "TTFT ms", "tokens/s"],
                  "simulated": [10.0, 200.0, 8.0], "measured": [9.0, 230.0, 8.5]}).to_csv(res / "hil_fidelity.csv",
                                                                                          index=False)
    code, out, err = run_cli(["plot", "figures", "--results", res, "--sweeps", sw, "--out", tmp_path / "figs",
                              "--only", "hil_fidelity", "--format", "png"], capsys)
    assert code == 0, err
    assert_column_png(tmp_path / "figs" / "hil_fidelity.png")


def test_figure_commands_are_in_the_makefile_and_readme():
    """Each figure's caption names the command behind it, and make figures runs it."""
    from llsim.plot.paper import FIGURES

    make = (ROOT / "Makefile").read_text()
    readme = (ROOT / "README.md").read_text()
    for f in FIGURES:
        assert f"results/figures/{f.name}.png" in readme or f.name == "hil_fidelity"
        for c in f.commands:
            if "not yet in llsim" in c:
                continue
            assert c.replace("llsim ", "$(BIN)/llsim ", 1) in make, c
            assert c in readme, c
