"""The ``llsim`` command line.

Every user error (:class:`llsim.errors.LLSimError`) is printed as one line on stderr with exit code 2.
"""
from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from llsim.errors import LLSimError

console = Console()


def _fmt_int(x: float) -> str:
    return f"{x:,.0f}"


# ---- model ---------------------------------------------------------------------------------------
def cmd_model_list(args) -> int:
    from llsim.model.zoo import ZOO

    t = Table(title="llsim model zoo (built locally, nothing downloaded)")
    for c in ("name", "family", "layers", "hidden", "heads", "kv heads", "ffn", "vocab", "params"):
        t.add_column(c, justify="right" if c not in ("name", "family") else "left")
    from llsim.model.analytic import analytic_graph
    for cfg in ZOO.values():
        g = analytic_graph(cfg, 1)
        t.add_row(cfg.name, cfg.family, str(cfg.layers), str(cfg.hidden), str(cfg.heads), str(cfg.n_kv_heads),
                  str(cfg.ffn), str(cfg.vocab), f"{g.total_params / 1e6:,.1f}M")
    console.print(t)
    return 0


def cmd_model_inspect(args) -> int:
    from llsim.model.load import model_graph

    g = model_graph(args.model, args.seq_len, args.batch)
    if args.json:
        print(json.dumps(g.to_summary(), indent=2))
        return 0
    t = Table(title=f"{g.name}  (seq_len={g.seq_len}, batch={g.batch}, source={g.source})")
    for c in ("index", "name", "params MB", "GFLOPs", "output KB"):
        t.add_column(c, justify="left" if c == "name" else "right")
    for m in g.modules:
        t.add_row(str(m.index), m.name, f"{m.param_bytes / 1e6:,.2f}", f"{m.flops / 1e9:,.3f}",
                  f"{m.output_bytes / 1e3:,.1f}")
    t.add_section()
    t.add_row("", "total (unique)", f"{g.unique_param_bytes / 1e6:,.2f}", f"{g.total_flops / 1e9:,.3f}", "")
    console.print(t)
    console.print(f"unique parameters: {_fmt_int(g.total_params)}   modules: {g.n_modules}")
    return 0


def _parse_boundaries(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise LLSimError(f"--boundaries '{text}' must be comma-separated module indices, e.g. 0,5,12") from None


def cmd_model_split(args) -> int:
    from llsim.model.load import onnx_bundle
    from llsim.model.segment import split_model, verify

    bundle = onnx_bundle(args.model, args.seq_len, args.batch)
    g = bundle.graph
    if g.n_modules < 2 and (args.boundaries or args.segments > 1):
        raise LLSimError(f"{g.name} cannot be cut: no position in its graph where a single activation tensor "
                         "crosses (every candidate cut carries several activation tensors or tensors of unknown "
                         "shape), so it has one module")
    if args.boundaries:
        b = _parse_boundaries(args.boundaries)
        if b and b[0] != 0:
            b = [0] + b
        if b and b[-1] != g.n_modules:
            b = b + [g.n_modules]
        bad = [x for x in b if not 0 <= x <= g.n_modules]
        if bad:
            raise LLSimError(f"--boundaries {args.boundaries}: module index {bad[0]} is out of range 0..{g.n_modules} "
                             f"({g.name} has {g.n_modules} modules)")
    else:
        b = g.even_boundaries(args.segments)
    res = split_model(bundle.om, bundle.cuts, g, b, args.out, bundle.proto)
    t = Table(title=f"{g.name} split into {len(b) - 1} segments -> {args.out}")
    for c in ("segment", "modules", "file", "inputs (from)", "outputs"):
        t.add_column(c)
    for s in res.plan["segments"]:
        ins = ", ".join(f"{i['name'].split('/')[-1]}<-{i['from']}" for i in s["inputs"])
        t.add_row(str(s["index"]), f"{s['modules'][0]}..{s['modules'][1] - 1}", s["file"], ins,
                  str(len(s["outputs"])))
    console.print(t)
    console.print(f"sequential routes: {len(res.plan['sequential'])}   residual routes: {len(res.plan['residual'])}")
    if args.verify:
        diff = verify(bundle.om, args.out, bundle.proto)
        ok = diff <= 1e-5
        console.print(f"verify: max abs difference full vs chained = {diff:.3e} ({'OK' if ok else 'FAIL'} at 1e-5)")
        if not ok:
            return 1
    return 0


# ---- profile -------------------------------------------------------------------------------------
def _parse_threads(text: str) -> list[int]:
    try:
        ts = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise LLSimError(f"--threads '{text}' must be comma-separated integers, e.g. 1,2,4") from None
    if not ts or ts[0] < 1:
        raise LLSimError(f"--threads '{text}': thread counts must be >= 1")
    return ts


def cmd_profile_host(args) -> int:
    from pathlib import Path

    from llsim.device.profiler import profile_host

    threads = _parse_threads(args.threads)
    prof, elapsed = profile_host(Path(args.out), threads, runs=args.runs, quick=args.quick,
                                 log=lambda m: console.print(m, highlight=False))
    console.print(f"wrote {args.out} (+ {Path(args.out).with_suffix('.samples.csv').name}) in {elapsed:.0f} s")
    return 0


def cmd_profile_list(args) -> int:
    from llsim.device.profile import list_profiles, load_profile

    t = Table(title="device profiles (device_profiles/)")
    for c in ("name", "kind", "device", "SoC", "cores", "RAM avail GB", "threads", "provenance"):
        t.add_column(c)
    for name in list_profiles():
        p = load_profile(name)
        t.add_row(p.name, p.kind, p.device, p.soc, str(p.cores), f"{p.memory.ram_available_gb:g}",
                  ",".join(map(str, sorted(p.compute.threads))), p.provenance.kind)
    console.print(t)
    return 0


def cmd_profile_show(args) -> int:
    from llsim.device.profile import load_profile

    p = load_profile(args.profile)
    console.print(f"[bold]{p.name}[/bold]: {p.device} ({p.soc}), {p.kind}, provenance: {p.provenance.kind}")
    console.print("CPU: " + ", ".join(f"{c.cores}x {c.core or c.name} @ {c.freq_ghz:g} GHz" for c in p.cpu))
    console.print(f"RAM: {p.memory.ram_total_gb:g} GB total, {p.memory.ram_available_gb:g} GB available, budget "
                  f"{p.memory.budget_fraction:g} -> {p.memory.budget_bytes / 1e9:.2f} GB")
    console.print(f"thermal: sustained {p.thermal.sustained_speed:g} x peak after {p.thermal.time_to_throttle_s:g} s;"
                  f" Wi-Fi 802.11{p.network.wifi_standard}, {p.network.spatial_streams} streams")
    for th in sorted(p.compute.threads):
        tc = p.compute.threads[th]
        t = Table(title=f"{th} thread(s): run overhead {tc.run_overhead_us:g} us, fused scale {tc.fused_scale}, "
                        f"fused per-op overhead {tc.fused_op_overhead_us} us")
        for c in ("class", "overhead us", "GFLOP/s", "act GB/s", "weight GB/s", "narrow GFLOP/s"):
            t.add_column(c, justify="right")
        for cls, c in tc.classes.items():
            t.add_row(cls, f"{c.overhead_us:.2f}", f"{c.gflops:.1f}", f"{c.gbps:.1f}", f"{c.weight_gbps:.1f}",
                      f"{c.narrow_gflops:.1f}")
        console.print(t)
    prov = p.provenance
    if prov.kind == "measured":
        console.print(f"measured by {prov.tool} on {prov.host}, {prov.date}, onnxruntime {prov.onnxruntime_version};"
                      f" samples: {prov.samples}")
    else:
        console.print("calibrated from: " + "; ".join(prov.sources))
        if prov.replace_with_measured:
            console.print(f"replace with a measurement: {prov.replace_with_measured}")
    return 0


def cmd_profile_predict(args) -> int:
    from llsim.device.costmodel import CostModel
    from llsim.device.profile import load_profile
    from llsim.model.load import model_graph

    p = load_profile(args.profile)
    g = model_graph(args.model, args.seq_len, 1)
    cm = CostModel(p)
    threads = args.threads or p.compute.default_threads
    cm.coefs(threads)  # clear error for an unmeasured thread count
    per = [(m, cm.module_seconds(m, threads) * 1e3) for m in g.modules]
    total = cm.segment_seconds(g.modules, threads) * 1e3
    if args.json:
        print(json.dumps({"profile": p.name, "model": g.name, "seq_len": g.seq_len, "threads": threads,
                          "total_ms": total,
                          "modules": [{"index": m.index, "name": m.name, "ms": ms} for m, ms in per]}, indent=2))
        return 0
    t = Table(title=f"{g.name} on {p.name} ({threads} threads, seq_len {g.seq_len}): predicted latency")
    for c in ("index", "name", "GFLOPs", "ms"):
        t.add_column(c, justify="left" if c == "name" else "right")
    for m, ms in per:
        t.add_row(str(m.index), m.name, f"{m.flops / 1e9:,.3f}", f"{ms:,.3f}")
    t.add_section()
    t.add_row("", "total (one session.run)", f"{g.total_flops / 1e9:,.3f}", f"{total:,.3f}")
    console.print(t)
    return 0


# ---- run -----------------------------------------------------------------------------------------
def cmd_run(args) -> int:
    from pathlib import Path

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from llsim.scenario import load_scenario
    from llsim.sim.run import run_to_dir

    sc = load_scenario(args.scenario, args.set, args.seed)
    out = Path(args.out or f"runs/{sc.name}-seed{sc.seed}")
    total = sc.workload.requests * sc.workload.new_tokens
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} tokens"),
                  TimeElapsedColumn(), console=console, transient=True, disable=not console.is_terminal) as prog:
        task = prog.add_task(f"simulating {sc.name}", total=total)
        res, devices, plan = run_to_dir(sc, out, progress=lambda n: prog.advance(task, n))
    m = res.metrics
    t = Table(title=f"{sc.name}: {sc.model} on {len(plan.stages)} of {len(devices)} devices "
                    f"({plan.strategy}: {plan.describe([d.name for d in devices])})")
    t.add_column("metric")
    t.add_column("value", justify="right")
    tl = m["token_latency_ms"]
    rows = [("TTFT ms (mean)", m["ttft_ms"]), ("token latency ms p50", tl["p50"]), ("token latency ms p90", tl["p90"]),
            ("token latency ms p99", tl["p99"]), ("tokens/s", m["tokens_per_s"]),
            ("requests completed / submitted", f"{m['requests_completed']} / {m['requests_submitted']}"),
            ("simulated time s", m["sim_time_s"]), ("wall time s", m["wall_time_s"]), ("simpy events", m["events"])]
    for k, v in rows:
        t.add_row(k, f"{v:,.3f}" if isinstance(v, float) else str(v))
    console.print(t)
    dt = Table(title="devices")
    for c in ("device", "modules", "utilisation", "peak memory GB", "budget GB", "MB sent", "MB received"):
        dt.add_column(c, justify="left" if c == "device" else "right")
    for r in res.device_rows:
        dt.add_row(r["name"], r["modules"], f"{r['utilisation']:.2f}", f"{r['peak_memory_bytes'] / 1e9:.2f}",
                   f"{r['memory_budget_bytes'] / 1e9:.2f}", f"{r['bytes_sent'] / 1e6:.2f}",
                   f"{r['bytes_received'] / 1e6:.2f}")
    console.print(dt)
    console.print(f"results in {out}/ (timeline.json opens in https://ui.perfetto.dev)")
    if res.error:
        print(f"llsim: error: {res.error} (partial results kept in {out})", file=sys.stderr)
        return 2
    return 0


# ---- allocate ------------------------------------------------------------------------------------
def cmd_allocate(args) -> int:
    from llsim.alloc.compare import compare
    from llsim.alloc.strategies import STRATEGIES
    from llsim.scenario import load_scenario

    sc = load_scenario(args.scenario, args.set, args.seed)
    objective = args.objective or sc.allocation.objective
    strategies = list(STRATEGIES) if args.strategy == "all" else [x.strip() for x in args.strategy.split(",")]
    judged, names, pb = compare(sc, strategies, objective, expected_rtt=args.expected_rtt,
                                simulate_plans=not args.no_simulate)
    if args.json:
        print(json.dumps({j.result.strategy: j.to_json(names) for j in judged}, indent=2))
        return 0
    t = Table(title=f"{sc.name}: {sc.model}, objective {objective}, {len(names)} devices, "
                    f"{sc.workload.mode}, {pb.in_flight} in flight")
    for c in ("strategy", "stages (device: modules)", "pred ms/tok", "sim ms/tok", "pred tok/s", "sim tok/s",
              "solve s", "feasible"):
        t.add_column(c, justify="left" if c.startswith(("strategy", "stages")) else "right")

    def f(x, fmt="{:,.2f}"):
        return "-" if x is None else fmt.format(x)

    for j in judged:
        r, p = j.result, j.result.prediction
        stages = " | ".join(f"{names[s.device]}: {s.start_module}-{s.end_module}" for s in r.plan.stages) \
            if r.plan else (r.error or "")
        t.add_row(r.strategy, stages, f(p.latency_s * 1e3 if p else None), f(j.simulated_token_latency_ms),
                  f(p.tokens_per_s if p else None), f(j.simulated_tokens_per_s), f(r.solve_time_s, "{:.3f}"),
                  "yes" if j.feasible else ("no: " + (r.error or j.sim_error or "not simulated"))[:60])
    wide = console if console.is_terminal else Console(width=200)
    wide.print(t)
    m = next((j for j in judged if j.result.strategy == "milp"), None)
    if m and m.result.info:
        i = m.result.info
        wide.print(f"milp: {i['solver']} {i['status']}, objective {f(i['objective_ms'])} ms, bound "
                      f"{f(i['bound_ms'])} ms, gap {f(i['gap'], '{:.2e}')}, {i['variables']} variables, "
                      f"{i['constraints']} constraints, {i['rounds']} round(s)")
    return 0


# ---- bench ---------------------------------------------------------------------------------------
def cmd_bench(args) -> int:
    if args.name == "allocator":
        from llsim.bench.allocator import main as bench_allocator

        return bench_allocator(check_=args.check, write=args.write, only=args.only)
    from llsim.bench.__main__ import main as bench_main

    return bench_main([args.name])


# ---- parser --------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other user error
        self.print_usage(sys.stderr)
        print(f"llsim: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="llsim", description="Distributed LLM inference on phone clusters: simulate, plan, verify.")
    from llsim import __version__
    p.add_argument("--version", action="version", version=f"llsim {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    pm = sub.add_parser("model", help="model zoo, ONNX ingestion and segmentation")
    msub = pm.add_subparsers(dest="sub", required=True, parser_class=_Parser)
    m = msub.add_parser("list", help="list the zoo")
    m.set_defaults(fn=cmd_model_list)
    m = msub.add_parser("inspect", help="per-module params, FLOPs and output bytes")
    m.add_argument("model", help="zoo name (llsim model list) or path to an .onnx file")
    m.add_argument("--seq-len", type=int, default=128)
    m.add_argument("--batch", type=int, default=1)
    m.add_argument("--json", action="store_true")
    m.set_defaults(fn=cmd_model_inspect)
    m = msub.add_parser("split", help="write runnable ONNX segments and plan.json")
    m.add_argument("model")
    m.add_argument("--segments", type=int, default=2)
    m.add_argument("--boundaries", help="explicit module boundaries, e.g. 0,5,12")
    m.add_argument("--out", required=True)
    m.add_argument("--verify", action="store_true", help="run full vs chained on random inputs (tolerance 1e-5)")
    m.add_argument("--seq-len", type=int, default=16, help="sequence length used for shapes and --verify")
    m.add_argument("--batch", type=int, default=1)
    m.set_defaults(fn=cmd_model_split)

    m = sub.add_parser("run", help="simulate a scenario and write a results directory")
    m.add_argument("scenario", help="path to a scenario YAML or a name from scenarios/")
    m.add_argument("--out", help="results directory (default runs/<name>-seed<N>)")
    m.add_argument("--seed", type=int)
    m.add_argument("--set", action="append", default=[], metavar="path.to.field=value",
                   help="override a scenario field (repeatable)")
    m.set_defaults(fn=cmd_run)

    m = sub.add_parser("allocate", help="plan a scenario with every strategy and judge the plans by simulation")
    m.add_argument("scenario", help="path to a scenario YAML or a name from scenarios/")
    m.add_argument("--strategy", default="all", help="milp, oracle, uniform, memory, lingualinked, halda, "
                   "pipeedge, greedy (comma-separated) or all")
    m.add_argument("--objective", choices=["latency", "throughput"])
    m.add_argument("--json", action="store_true")
    m.add_argument("--seed", type=int)
    m.add_argument("--set", action="append", default=[], metavar="path.to.field=value")
    m.add_argument("--expected-rtt", action="store_true",
                   help="judge with every RTT at its mean (no sampling noise; what the bench does)")
    m.add_argument("--no-simulate", action="store_true", help="plan and predict only")
    m.set_defaults(fn=cmd_allocate)

    m = sub.add_parser("bench", help="benchmarks (allocator quality regression, simulator speed, ...)")
    m.add_argument("name", help="allocator | model_analysis | onnx_ingestion | simulator_speed | "
                   "costmodel_accuracy | solve_time | balancer")
    m.add_argument("--check", action="store_true", help="allocator: fail on a quality regression (CI)")
    m.add_argument("--write", action="store_true", help="allocator: rewrite the committed reference CSV")
    m.add_argument("--only", help="allocator: comma-separated instance names")
    m.set_defaults(fn=cmd_bench)

    from llsim.cli.sweep import add_parser as add_sweep
    from llsim.plot.cli import add_parser as add_plot

    add_sweep(sub)  # llsim sweep (llsim/sweep.py)
    add_plot(sub)  # llsim plot (llsim/plot/)

    pp = sub.add_parser("profile", help="device profiles and the cost model")
    psub = pp.add_subparsers(dest="sub", required=True, parser_class=_Parser)
    m = psub.add_parser("host", help="measure this machine and write a profile")
    m.add_argument("--out", required=True, help="e.g. device_profiles/host.yaml")
    m.add_argument("--threads", default="1,2", help="thread counts to measure, e.g. 1,2,4")
    m.add_argument("--runs", type=int, default=10, help="timed runs per graph (median kept)")
    m.add_argument("--quick", action="store_true", help="smaller micro-graph sweep")
    m.set_defaults(fn=cmd_profile_host)
    m = psub.add_parser("list", help="profiles in device_profiles/")
    m.set_defaults(fn=cmd_profile_list)
    m = psub.add_parser("show", help="summary of a profile")
    m.add_argument("profile", help="name in device_profiles/ or a path")
    m.set_defaults(fn=cmd_profile_show)
    m = psub.add_parser("predict", help="predicted per-module latency of one forward pass")
    m.add_argument("profile")
    m.add_argument("model")
    m.add_argument("--seq-len", type=int, default=128)
    m.add_argument("--threads", type=int)
    m.add_argument("--json", action="store_true")
    m.set_defaults(fn=cmd_profile_predict)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except LLSimError as e:
        print(f"llsim: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("llsim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
