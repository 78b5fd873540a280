"""The ``llsim`` command line.

Exit codes: 0 done; 2 a user error (:class:`llsim.errors.LLSimError`: one line on stderr) or a run
that hit an error (memory overflow, terminal failover: results kept); 3 a run that ended before
completing its requests (a time limit, a stall: results kept, ``stop_reason`` says why); 70 a bug
in llsim (one line on stderr naming the file that holds the traceback); 130 interrupted (Ctrl-C:
what was simulated is written); 141 stdout was closed (``| head``), quietly.
"""
from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table  # noqa: F401 - kept for commands that build their own tables

from llsim import registry
from llsim.cli.parser import _Parser
from llsim.cli.tables import fit_table, int_ranges, status, stdout_console
from llsim.errors import LLSimError

console = Console()
EXIT_INCOMPLETE, EXIT_BUG, EXIT_INTERRUPTED, EXIT_PIPE = 3, 70, 130, 141


def _fmt_int(x: float) -> str:
    return f"{x:,.0f}"


# ---- model ---------------------------------------------------------------------------------------
def cmd_model_list(args) -> int:
    from llsim.model.analytic import analytic_graph
    from llsim.model.zoo import ZOO

    con = stdout_console()
    rows = []
    for cfg in ZOO.values():
        g = analytic_graph(cfg, 1)
        rows.append([cfg.name, cfg.family, str(cfg.layers), str(cfg.hidden), str(cfg.heads), str(cfg.n_kv_heads),
                     str(cfg.ffn), str(cfg.vocab), f"{cfg.max_positions:,}", f"{g.total_params / 1e6:,.1f}M"])
    con.print("llsim model zoo (built locally, nothing downloaded)")
    con.print(fit_table([("name", "key"), ("family", "key"), ("layers", "num"), ("hidden", "num"), ("heads", "num"),
                         ("kv heads", "num"), ("ffn", "num"), ("vocab", "num"), ("positions", "num"),
                         ("params", "num")], rows, con.width))
    return 0


def _check_positions(model: str, seq_len: int, flag: str = "--seq-len") -> None:
    """A zoo model's positions hold ``seq_len`` (an ONNX file's limit is not known before it runs)."""
    from llsim.model.load import is_onnx_path
    from llsim.model.zoo import get_config

    if not is_onnx_path(model):
        cfg = get_config(model)
        if seq_len > cfg.max_positions:
            raise LLSimError(f"{flag} {seq_len}: {cfg.name} has {cfg.max_positions} positions; give at most "
                             f"{cfg.max_positions}")


def _positive(value: int, flag: str, hi: int | None = None) -> None:
    if value < 1 or (hi is not None and value > hi):
        raise LLSimError(f"{flag} {value}: must be >= 1" + (f" and <= {hi:,}" if hi else ""))


def cmd_model_inspect(args) -> int:
    from llsim.model.load import is_onnx_path, model_graph

    _positive(args.seq_len, "--seq-len", 10**6)
    _positive(args.batch, "--batch", 4096)
    _check_positions(args.model, args.seq_len)
    onnx = is_onnx_path(args.model)
    if onnx and args.dtype:
        raise LLSimError(f"--dtype {args.dtype}: an ONNX file's weights have their own dtypes; --dtype applies to "
                         "zoo models")
    dtype = args.dtype or "fp32"
    g = model_graph(args.model, args.seq_len, args.batch, weight_dtype=dtype)
    if args.json:
        print(json.dumps({**g.to_summary(), "weight_dtype": None if onnx else dtype,
                          "param_bytes": [m.param_bytes for m in g.modules]}, indent=2, allow_nan=False))
        return 0
    con = stdout_console()
    what = "weights as stored in the file" if onnx else f"{dtype} weights"
    con.print(f"{g.name}: seq_len {g.seq_len}, batch {g.batch}, {what}, source {g.source}")
    rows = [[str(m.index), m.name, f"{m.param_bytes / 1e6:,.2f}", f"{m.flops / 1e9:,.3f}",
             f"{m.output_bytes / 1e3:,.1f}"] for m in g.modules]
    rows.append(["", "total (unique)", f"{g.unique_param_bytes / 1e6:,.2f}", f"{g.total_flops / 1e9:,.3f}", ""])
    con.print(fit_table([("index", "num"), ("name", "key"), (f"params MB ({dtype if not onnx else 'file'})", "num"),
                         ("GFLOPs", "num"), ("output KB", "num")], rows, con.width))
    con.print(f"unique parameters: {_fmt_int(g.total_params)}   modules: {g.n_modules}")
    return 0


def _parse_boundaries(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise LLSimError(f"--boundaries '{text}' must be comma-separated module indices, e.g. 0,5,12") from None


def cmd_model_split(args) -> int:
    from llsim.model.load import onnx_bundle
    from llsim.model.segment import split_model, verify
    from llsim.results.outdir import prepare_run_dir

    _positive(args.segments, "--segments", 4096)
    _positive(args.seq_len, "--seq-len", 10**5)
    _positive(args.batch, "--batch", 256)
    _check_positions(args.model, args.seq_len)
    if args.boundaries:
        _parse_boundaries(args.boundaries)
    prepare_run_dir(args.out, args.force, files=("plan.json",), segments=True)
    bundle = onnx_bundle(args.model, args.seq_len, args.batch)
    g = bundle.graph
    if g.n_modules < 2 and (args.boundaries or args.segments > 1):
        why = (f"; onnxruntime could not run it at --seq-len {args.seq_len} to find its shapes ({bundle.om.run_error}): "
               "a smaller --seq-len?") if bundle.om.run_error else ""
        raise LLSimError(f"{g.name} cannot be cut: no position in its graph where a single activation tensor "
                         "crosses (every candidate cut carries several activation tensors or tensors of unknown "
                         f"shape), so it has one module{why}")
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
    con = stdout_console()
    con.print(f"{g.name} split into {len(b) - 1} segments -> {args.out}")
    rows = []
    for s in res.plan["segments"]:
        ins = ", ".join(f"{i['name'].split('/')[-1]}<-{i['from']}" for i in s["inputs"])
        rows.append([str(s["index"]), f"{s['modules'][0]}..{s['modules'][1] - 1}", s["file"], ins,
                     str(len(s["outputs"]))])
    con.print(fit_table([("segment", "num"), ("modules", "num"), ("file", "key"), ("inputs (from)", "text"),
                         ("outputs", "num")], rows, con.width))
    con.print(f"sequential routes: {len(res.plan['sequential'])}   residual routes: {len(res.plan['residual'])}")
    if args.verify:
        try:
            diff = verify(bundle.om, args.out, bundle.proto)
        except LLSimError:
            raise
        except Exception as e:  # onnxruntime refusing the model or its inputs is about the input, not llsim
            if type(e).__module__.startswith("onnxruntime"):
                raise LLSimError(f"--verify: onnxruntime could not run {g.name} at --seq-len {args.seq_len}: "
                                 f"{' '.join(str(e).split())[:300]}") from None
            raise
        ok = diff <= 1e-5
        con.print(f"verify: max abs difference full vs chained = {diff:.3e} ({'OK' if ok else 'FAIL'} at 1e-5)")
        if not ok:
            return 1
    return 0


# ---- profile -------------------------------------------------------------------------------------
def _parse_threads(text: str) -> list[int]:
    try:
        ts = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise LLSimError(f"--threads '{text}' must be comma-separated integers, e.g. 1,2,4") from None
    if not ts or ts[0] < 1 or ts[-1] > 256:
        raise LLSimError(f"--threads '{text}': thread counts must be in 1..256")
    return ts


def cmd_profile_host(args) -> int:
    from pathlib import Path

    from llsim.device.profiler import profile_host

    from llsim.results.outdir import check_output_file

    threads = _parse_threads(args.threads)
    _positive(args.runs, "--runs", 10**4)
    out = check_output_file(args.out)  # before profiling for a minute, not after
    check_output_file(out.with_suffix(".samples.csv"))
    prof, elapsed = profile_host(out, threads, runs=args.runs, quick=args.quick,
                                 log=lambda m: print(m, file=sys.stderr, flush=True))
    stdout_console().print(f"wrote {args.out} (+ {Path(args.out).with_suffix('.samples.csv').name}) in {elapsed:.0f} s")
    return 0


def cmd_profile_adb(args) -> int:
    """`llsim profile adb SERIAL`: the profiler through llsim's worker on a phone (llsim/adb/profile.py)."""
    from pathlib import Path

    from llsim.adb.profile import profile_adb
    from llsim.results.outdir import check_output_file

    threads = _parse_threads(args.threads)
    _positive(args.runs, "--runs", 10**4)
    out = check_output_file(args.out)  # before profiling for minutes, not after
    check_output_file(out.with_suffix(".samples.csv"))
    prof, elapsed = profile_adb(args.serial, out, threads, runs=args.runs, quick=args.quick,
                                phone_port=args.phone_port, log=lambda m: print(m, file=sys.stderr, flush=True))
    stdout_console().print(f"wrote {args.out} (+ {Path(args.out).with_suffix('.samples.csv').name}) in {elapsed:.0f} "
                           f"s: {prof.device}, {prof.soc}, measured")
    return 0


def cmd_profile_list(args) -> int:
    from llsim.device.profile import list_profiles, load_profile

    con = stdout_console()
    rows = []
    for name in list_profiles():
        p = load_profile(name)
        rows.append([name, p.kind, p.device, p.soc, str(p.cores), f"{p.memory.ram_available_gb:g}",
                     int_ranges(p.compute.threads), p.provenance.kind])
    con.print("device profiles (device_profiles/; use a name, or a path to your own YAML)")
    con.print(fit_table([("name", "key"), ("kind", "key"), ("device", "text"), ("SoC", "text"), ("cores", "num"),
                         ("RAM avail GB", "num"), ("threads", "num"), ("provenance", "key")], rows, con.width,
                        max_word=10))
    return 0


def cmd_profile_show(args) -> int:
    from llsim.device.profile import load_profile

    p = load_profile(args.profile)
    console = stdout_console()
    console.print(f"[bold]{p.name}[/bold]: {p.device} ({p.soc}), {p.kind}, provenance: {p.provenance.kind}")
    console.print("CPU: " + ", ".join(f"{c.cores}x {c.core or c.name} @ {c.freq_ghz:g} GHz" for c in p.cpu))
    console.print(f"RAM: {p.memory.ram_total_gb:g} GB total, {p.memory.ram_available_gb:g} GB available, budget "
                  f"{p.memory.budget_fraction:g} -> {p.memory.budget_bytes / 1e9:.2f} GB")
    console.print(f"thermal: sustained {p.thermal.sustained_speed:g} x peak after {p.thermal.time_to_throttle_s:g} s;"
                  f" Wi-Fi 802.11{p.network.wifi_standard}, {p.network.spatial_streams} streams")
    console.print("per op class: time = overhead + FLOPs / GFLOP/s + activation bytes / act GB/s + weight bytes / "
                  "weight GB/s + FLOPs / sqrt(rows) / narrow GFLOP/s; 'off': the term is not used; 'free': "
                  ">= 100,000 GB/s, a cost made negligible (e.g. a gather reads only its rows)")

    def rate(x: float) -> str:
        return "off" if x == 0 else ("free" if x >= 1e5 else f"{x:,.1f}")

    for th in sorted(p.compute.threads):
        tc = p.compute.threads[th]
        scale = ", ".join(f"{k} {v:g}" for k, v in tc.fused_scale.items()) or "none"
        per_op = "each class's overhead" if tc.fused_op_overhead_us is None else f"{tc.fused_op_overhead_us:g} us"
        console.print(f"{th} thread(s): run overhead {tc.run_overhead_us:g} us; fused scale {scale}; fused per-op "
                      f"overhead {per_op}")
        rows = [[cls, f"{c.overhead_us:.2f}", rate(c.gflops), rate(c.gbps), rate(c.weight_gbps), rate(c.narrow_gflops)]
                for cls, c in tc.classes.items()]
        console.print(fit_table([("class", "key"), ("overhead us", "num"), ("GFLOP/s", "num"), ("act GB/s", "num"),
                                 ("weight GB/s", "num"), ("narrow GFLOP/s", "num")], rows, console.width))
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
    _positive(args.seq_len, "--seq-len", 10**6)
    _check_positions(args.model, args.seq_len)
    if args.threads is not None and args.threads not in p.compute.threads:
        raise LLSimError(f"--threads {args.threads}: profile {p.name} has no coefficients for {args.threads} threads "
                         f"(it has {', '.join(map(str, sorted(p.compute.threads)))})")
    g = model_graph(args.model, args.seq_len, 1)
    cm = CostModel(p)
    threads = args.threads if args.threads is not None else p.compute.default_threads
    per = [(m, cm.module_seconds(m, threads) * 1e3) for m in g.modules]
    total = cm.segment_seconds(g.modules, threads) * 1e3
    if args.json:
        print(json.dumps({"profile": p.name, "model": g.name, "seq_len": g.seq_len, "threads": threads,
                          "total_ms": total,
                          "modules": [{"index": m.index, "name": m.name, "ms": ms} for m, ms in per]}, indent=2,
                         allow_nan=False))
        return 0
    con = stdout_console()
    con.print(f"{g.name} on {p.name} ({threads} threads, seq_len {g.seq_len}): predicted latency")
    rows = [[str(m.index), m.name, f"{m.flops / 1e9:,.3f}", f"{ms:,.3f}"] for m, ms in per]
    rows.append(["", "total (one session.run)", f"{g.total_flops / 1e9:,.3f}", f"{total:,.3f}"])
    con.print(fit_table([("index", "num"), ("name", "key"), ("GFLOPs", "num"), ("ms", "num")], rows, con.width))
    return 0


# ---- run -----------------------------------------------------------------------------------------
def _run_summary(con, sc, m: dict, devices, plan, res, out) -> None:
    """The run's summary at the console's width: a title line, the plan, metrics, devices."""
    names = [d.name for d in devices]
    con.print(f"[bold]{sc.name}[/bold]: {sc.model} ({sc.weight_dtype}) on {len(plan.stages)} of {len(devices)} devices, "
              f"{sc.workload.mode}, plan by {plan.strategy}")
    plans = m.get("plans") or [{"stages": plan.to_json(), "from_s": 0.0, "change": "initial"}]
    last = plans[-1]
    cols = [("stage", "num"), ("device", "key"), ("modules", "num")]
    rows = [[str(i), names[s["device"]], f"{s['start_module']}-{s['end_module']}"] for i, s in enumerate(plans[0]["stages"])]
    con.print(fit_table(cols, rows, con.width, title="plan"))
    if len(plans) > 1:
        rows = [[str(i), names[s["device"]], f"{s['start_module']}-{s['end_module']}"]
                for i, s in enumerate(last["stages"])]
        con.print(f"[bold]plan in force at the end[/bold] (from t={last['from_s']:.1f} s, after {len(plans) - 1} "
                  "change(s); every plan in metrics.json 'plans')")
        con.print(fit_table(cols, rows, con.width))
    tl = m["token_latency_ms"]

    def num(v, fmt="{:,.3f}"):
        return "-" if v is None else fmt.format(v)

    rows = [["stop reason", str(m["stop_reason"])],
            ["requests completed / submitted", f"{m['requests_completed']} / {m['requests_submitted']} "
                                               f"(of {sc.workload.requests})"],
            ["TTFT ms (mean)", num(m["ttft_ms"])], ["token latency ms p50", num(tl["p50"])],
            ["token latency ms p90", num(tl["p90"])], ["token latency ms p99", num(tl["p99"])],
            ["tokens/s", num(m["tokens_per_s"])], ["simulated time s", num(m["sim_time_s"])],
            ["wall time s", num(m["wall_time_s"])], ["simpy events", f"{m['events']:,}"]]
    if "rebalances" in m:
        rows.insert(2, ["rebalances", str(m["rebalances"])])
    con.print(fit_table([("metric", "key"), ("value", "num")], rows, con.width, title="metrics"))
    drows = []
    for r in res.device_rows:
        mods = r["modules"].split(" > ")
        shown = mods[0] if len(set(mods)) == 1 else f"{mods[0]} -> {mods[-1]}"
        drows.append([r["name"], shown, f"{r['utilisation']:.2f}", f"{r['peak_memory_bytes'] / 1e9:.2f}",
                      f"{r['memory_budget_bytes'] / 1e9:.2f}", f"{r['bytes_sent'] / 1e6:,.1f}",
                      f"{r['bytes_received'] / 1e6:,.1f}"])
    con.print(fit_table([("device", "key"), ("modules", "num"), ("util", "num"), ("peak GB", "num"),
                         ("budget GB", "num"), ("MB sent", "num"), ("MB recv", "num")], drows, con.width,
                        title="devices"))
    con.print(f"results in {out}/ (timeline.json opens in https://ui.perfetto.dev)")


def cmd_run(args) -> int:
    from contextlib import nullcontext
    from pathlib import Path

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from llsim.cli.tables import stderr_console
    from llsim.results.outdir import prepare_run_dir
    from llsim.scenario import load_scenario
    from llsim.judge.run import run_to_dir

    if bool(args.scenario) == bool(args.from_manifest):
        raise LLSimError("run: give a SCENARIO or --from-manifest DIR/manifest.json (one of them)")
    plan, rerun, registry = None, None, nullcontext()
    if args.from_manifest:
        if args.set or args.seed is not None:
            raise LLSimError("--from-manifest reproduces a run as recorded: --set and --seed do not apply")
        from llsim.device.profile import registered_profiles
        from llsim.results.manifest import load_for_rerun

        sc, plan, man, profs = load_for_rerun(args.from_manifest)
        rerun = {"scenario_file": man.get("scenario_file"), "profiles": man.get("profiles")}
        registry = registered_profiles(profs)
    else:
        sc = load_scenario(args.scenario, args.set, args.seed)
    out = Path(args.out or f"runs/{sc.name}-seed{sc.seed}")
    prepare_run_dir(out, args.force)
    invocation = {"argv": ["llsim", *getattr(args, "argv", [])], "overrides": list(args.set or []),
                  "seed_flag": args.seed, "from_manifest": args.from_manifest}
    total = sc.workload.requests * sc.workload.new_tokens
    err = stderr_console()
    with registry, Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                            TextColumn("{task.completed}/{task.total} tokens"), TimeElapsedColumn(), console=err,
                            transient=True, disable=not err.is_terminal) as prog:
        task = prog.add_task(f"simulating {sc.name}", total=total)
        planned = [False]

        def planning(text):  # shown (with the elapsed time) until the first token
            prog.update(task, description=text)
            return nullcontext()

        def advance(n):
            if not planned[0]:
                planned[0] = True
                prog.update(task, description=f"simulating {sc.name}")
            prog.advance(task, n)
        res, devices, plan = run_to_dir(sc, out, progress=advance, plan=plan, invocation=invocation, rerun=rerun,
                                        status=planning)
    m = res.metrics
    _run_summary(stdout_console(), sc, m, devices, plan, res, out)
    if res.error:
        print(f"llsim: error: {res.error} (partial results kept in {out})", file=sys.stderr)
        return 2
    if m["stop_reason"] == "interrupted":
        print(f"llsim: interrupted at simulated t={m['sim_time_s']:.2f} s; results so far in {out}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if m["stop_reason"] != "completed" or m["requests_completed"] < sc.workload.requests:
        print(f"llsim: run incomplete: {m['requests_completed']} of {sc.workload.requests} requests completed "
              f"(stop_reason: {m['stop_reason']}); results so far in {out}", file=sys.stderr)
        return EXIT_INCOMPLETE
    return 0


# ---- allocate ------------------------------------------------------------------------------------
def cmd_allocate(args) -> int:
    from llsim.judge.compare import compare
    from llsim.scenario import load_scenario

    sc = load_scenario(args.scenario, args.set, args.seed)
    objective = args.objective or sc.allocation.objective
    known = registry.names(judged_only=True)
    strategies = list(known) if args.strategy == "all" else [x.strip() for x in args.strategy.split(",")]
    bad = [x for x in strategies if x not in known]
    if bad or not strategies:
        raise LLSimError("--strategy: " + registry.unknown(bad[0] if bad else args.strategy, judged_only=True,
                                                           extra=" (comma-separated) or all"))
    with status(f"planning {sc.name} with {len(strategies)} strategies and judging each plan by simulation"):
        judged, names, pb = compare(sc, strategies, objective, expected_rtt=args.expected_rtt,
                                    simulate_plans=not args.no_simulate)
    if args.json:
        print(json.dumps({j.result.strategy: j.to_json(names) for j in judged}, indent=2, allow_nan=False))
        return 0
    wide = stdout_console()
    wide.print(f"{sc.name}: {sc.model}, objective {objective}, {len(names)} devices, "
               f"{sc.workload.mode}, {pb.in_flight} in flight")
    cols = [(c, "key" if c == "strategy" else "text" if c.startswith("stages") or c == "feasible" else "num")
            for c in ("strategy", "stages (device: modules)", "pred ms/tok", "sim ms/tok", "pred tok/s", "sim tok/s",
                      "solve s", "feasible")]
    rows = []

    def f(x, fmt="{:,.2f}"):
        return "-" if x is None else fmt.format(x)

    for j in judged:
        r, p = j.result, j.result.prediction
        stages = " | ".join(f"{names[s.device]}: {s.start_module}-{s.end_module}" for s in r.plan.stages) \
            if r.plan else (r.error or "")
        pred_ms = p.evaluated_latency_s * 1e3 if p and p.evaluated_latency_s is not None else None
        rows.append([r.strategy, stages, f(pred_ms), f(j.simulated_token_latency_ms),
                     f(p.evaluated_tokens_per_s if p else None), f(j.simulated_tokens_per_s),
                     f(r.solve_time_s, "{:.3f}"),
                     "yes" if j.feasible else ("no: " + (r.error or j.sim_error or "not simulated"))[:60]])
    wide.print(fit_table(cols, rows, wide.width, max_word=12))
    m = next((j for j in judged if j.result.strategy == "milp"), None)
    if m and m.result.info:
        i = m.result.info
        wide.print(f"milp: {i['solver']} {i['status']}, linear model {f(i['objective_ms'])} ms/token, bound "
                   f"{f(i['bound_ms'])}, gap {f(i['gap'], '{:.2e}')}, {i['variables']} variables, "
                   f"{i['constraints']} constraints, {i['rounds']} round(s); chose the {i.get('selected', 'milp')} "
                   f"among {i.get('candidates', 1)} candidates ({i.get('evaluated', 0)} judged)")
        by = m.result.prediction.evaluated_by if m.result.prediction else ""
        wide.print("pred = " + ("the model (exact with one request in flight)" if by == "model" else
                                "a short simulation of the workload with RTTs at their mean") +
                   "; sim = the judged run" + (" (RTTs at their mean)" if args.expected_rtt else " (random RTTs)"))
    return 0


# ---- bench ---------------------------------------------------------------------------------------
def cmd_bench(args) -> int:
    from llsim.bench.__main__ import bench_names

    names = bench_names()
    if args.name not in names:
        raise LLSimError(f"bench: unknown benchmark '{args.name}'; use one of {', '.join(names)}")
    if args.name != "allocator":
        given = [f for f, v in (("--check", args.check), ("--write", args.write), ("--only", args.only)) if v]
        if given:
            raise LLSimError(f"{given[0]} applies to `llsim bench allocator` only, not to {args.name}")
    if args.name == "allocator":
        from llsim.bench.allocator import main as bench_allocator

        if args.only is not None:
            from llsim.bench.allocator import instance_names

            known = instance_names()
            want = [x.strip() for x in args.only.split(",") if x.strip()]
            bad = [x for x in want if x not in known] or ([] if want else [args.only])
            if bad:
                raise LLSimError(f"--only: no bench instance '{bad[0]}' in scenarios/bench/ (e.g. {known[0]})")
        return bench_allocator(check_=args.check, write=args.write, only=args.only, random=args.random,
                               seed=args.seed if args.seed is not None else 1)
    from llsim.bench.__main__ import main as bench_main

    return bench_main([args.name])


# ---- parser --------------------------------------------------------------------------------------
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
    m.add_argument("--dtype", choices=["fp32", "fp16", "int8"], help="weight dtype of a zoo model (default fp32)")
    m.add_argument("--json", action="store_true")
    m.set_defaults(fn=cmd_model_inspect)
    m = msub.add_parser("split", help="write runnable ONNX segments and plan.json")
    m.add_argument("model")
    m.add_argument("--segments", type=int, default=2)
    m.add_argument("--boundaries", help="explicit module boundaries, e.g. 0,5,12")
    m.add_argument("--out", required=True)
    m.add_argument("--force", action="store_true", help="clear --out if it holds a previous split")
    m.add_argument("--verify", action="store_true", help="run full vs chained on random inputs (tolerance 1e-5)")
    m.add_argument("--seq-len", type=int, default=16, help="sequence length used for shapes and --verify")
    m.add_argument("--batch", type=int, default=1)
    m.set_defaults(fn=cmd_model_split)

    m = sub.add_parser("run", help="simulate a scenario and write a results directory",
                       epilog="exit codes: 0 completed; 2 an error (input, or the run hit one; results kept); "
                              "3 the run ended before completing its requests (stop_reason says why); "
                              "130 interrupted (results so far kept)")
    m.add_argument("scenario", nargs="?", help="path to a scenario YAML or a name from scenarios/")
    m.add_argument("--from-manifest", metavar="DIR/manifest.json",
                   help="re-run a recorded run exactly (same scenario, profiles, plan and seed)")
    m.add_argument("--out", help="results directory (default runs/<name>-seed<N>); must be new or empty")
    m.add_argument("--force", action="store_true", help="clear --out first if it holds a previous run")
    m.add_argument("--seed", type=int)
    m.add_argument("--set", action="append", default=[], metavar="path.to.field=value",
                   help="override a scenario field (repeatable)")
    m.set_defaults(fn=cmd_run)

    m = sub.add_parser("allocate", help="plan a scenario with every strategy and judge the plans by simulation")
    m.add_argument("scenario", help="path to a scenario YAML or a name from scenarios/")
    m.add_argument("--strategy", default="all", help=f"{', '.join(registry.names(judged_only=True))} "
                   "(comma-separated) or all")
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
                   "costmodel_accuracy | solve_time | balancer | worker_overhead | fidelity")
    m.add_argument("--check", action="store_true", help="allocator: fail on a quality regression (CI)")
    m.add_argument("--write", action="store_true", help="allocator: rewrite the committed reference CSV")
    m.add_argument("--only", help="allocator: comma-separated instance names")
    m.add_argument("--random", type=int, metavar="N", help="allocator: N random instances instead of scenarios/bench")
    m.add_argument("--seed", type=int, help="allocator --random: the instances' seed (default 1)")
    m.set_defaults(fn=cmd_bench)

    sub.add_parser("worker", help="run a HIL worker: llsim worker --listen 127.0.0.1:PORT --secret-file F "
                   "(llsim worker --help; docs/hil-protocol.md)", add_help=False)
    from llsim.cli.sweep import add_parser as add_sweep
    from llsim.plot.cli import add_parser as add_plot

    from llsim.cli.fidelity import add_parser as add_fidelity

    add_fidelity(sub)  # llsim fidelity (llsim/judge/fidelity.py)
    add_sweep(sub)  # llsim sweep (llsim/sweep.py)
    add_plot(sub)  # llsim plot (llsim/plot/)

    pp = sub.add_parser("profile", help="device profiles and the cost model")
    psub = pp.add_subparsers(dest="sub", required=True, parser_class=_Parser)
    m = psub.add_parser("host", help="measure this machine and write a profile")
    m.add_argument("--out", required=True, help="e.g. device_profiles/host.yaml")
    m.add_argument("--threads", default="1,2", help="thread counts to measure, e.g. 1,2,4")
    m.add_argument("--runs", type=int, default=10, help="timed runs per graph (median kept)")
    m.add_argument("--quick", action="store_true", help="a smaller sweep (about a third of the time)")
    m.set_defaults(fn=cmd_profile_host)
    m = psub.add_parser("adb", help="measure an Android phone (over adb, through llsim's worker in Termux) and "
                        "write a profile")
    m.add_argument("serial", help="the phone (`llsim devices`)")
    m.add_argument("--out", required=True, help="e.g. device_profiles/my-phone.yaml")
    m.add_argument("--threads", default="1,2", help="thread counts to measure, e.g. 1,2,4")
    m.add_argument("--runs", type=int, default=10, help="timed runs per graph (median kept)")
    m.add_argument("--quick", action="store_true", help="a smaller sweep (about a third of the time)")
    m.add_argument("--phone-port", type=int, default=7071, help="the worker's port on the phone")
    m.set_defaults(fn=cmd_profile_adb)
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

    from llsim.adb.cli import register as register_adb  # llsim devices, llsim hil doctor/deploy/fake-phone
    register_adb(sub)
    return p


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _bug_report(argv: list[str]) -> str:
    """Write the traceback of the exception being handled to a file; its path."""
    import os
    import tempfile
    import time
    import traceback

    from llsim import __version__

    path = os.path.join(tempfile.gettempdir(), f"llsim-bug-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt")
    try:
        from llsim.results.manifest import git_commit

        commit = git_commit().get("commit")
    except Exception:  # noqa: BLE001 - the report must not fail
        commit = None
    try:
        with open(path, "w") as f:
            f.write(f"llsim {__version__} (commit {commit or 'unknown'}), Python {sys.version.split()[0]}\n")
            f.write(f"command: llsim {' '.join(argv)}\n\n")
            f.write(traceback.format_exc())
    except OSError:
        return "(could not write a traceback file)"
    return path


def _quiet_stdout() -> None:
    """stdout was closed by its reader (``| head``): send what is left to /dev/null, say nothing."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """A warning is one line on stderr, like an error (not a source path and a line of code)."""
    return f"llsim: warning: {_one_line(message)}\n"


def main(argv: list[str] | None = None) -> int:
    """The command line, behind a guard: a user error is one line and exit 2; anything unexpected is
    one line saying it is a bug in llsim, with the path of a file holding the traceback (exit 70);
    Ctrl-C exits 130 (a run keeps what it simulated); a closed stdout exits 141 quietly. Warnings
    are one line on stderr."""
    import warnings

    warnings.formatwarning = _format_warning
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    if argv[:1] == ["worker"]:  # the worker parses its own options (the same file runs alone on a phone)
        from llsim.hil.worker import main as worker_main

        return worker_main(argv[1:])
    try:
        args = build_parser().parse_args(argv)
        args.argv = argv
        return int(args.fn(args) or 0)
    except SystemExit as e:  # argparse: --help, --version (0) or a usage error (2, already printed)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except LLSimError as e:
        print(f"llsim: error: {_one_line(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("llsim: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_PIPE
    except Exception as e:  # noqa: BLE001 - the guard: never a traceback on the terminal
        path = _bug_report(argv)
        print(f"llsim: internal error, a bug in llsim ({type(e).__name__}: {_one_line(e)[:200]}); please report it "
              f"with the traceback in {path}", file=sys.stderr)
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
