"""Run every benchmark and print its figures."""
from __future__ import annotations

import sys
import time
import tracemalloc

from rich.console import Console
from rich.table import Table

console = Console()


def bench_model_analysis() -> None:
    """Analysing 7B-class models from their config: wall time and peak Python memory."""
    from llsim.model.analytic import analytic_graph
    from llsim.model.zoo import get_config

    t = Table(title="analytical module graph (no weights allocated)")
    for c in ("model", "seq_len", "params", "GFLOPs", "time ms", "peak MB"):
        t.add_column(c, justify="right")
    for name in ("bloom-7b1", "llama-2-7b", "llama-3.2-3b"):
        for seq in (128, 2048):
            tracemalloc.start()
            t0 = time.perf_counter()
            g = analytic_graph(get_config(name), seq)
            dt = time.perf_counter() - t0
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            t.add_row(name, str(seq), f"{g.total_params / 1e9:.2f}B", f"{g.total_flops / 1e9:,.0f}",
                      f"{dt * 1000:.1f}", f"{peak / 1e6:.2f}")
    console.print(t)


def bench_onnx_ingestion() -> None:
    from llsim.model.load import onnx_bundle

    t = Table(title="ONNX build + ingestion + cut analysis")
    for c in ("model", "nodes", "modules", "time s"):
        t.add_column(c, justify="right")
    for name in ("small-bloom", "small-llama"):
        t0 = time.perf_counter()
        b = onnx_bundle(name, seq_len=64)
        t.add_row(name, str(len(b.proto.graph.node)), str(b.graph.n_modules), f"{time.perf_counter() - t0:.2f}")
    console.print(t)


def bench_costmodel_accuracy() -> None:
    """Predicted vs measured optimised segment latency on this host, for models whose shapes the
    host profile was not fitted on (device_profiles/host.yaml; re-measure with `llsim profile host`)."""
    from llsim.device.accuracy import evaluate, summary
    from llsim.device.profile import load_profile

    prof = load_profile("host")
    threads = [t for t in (1, 2) if t in prof.compute.threads]
    rows = evaluate(prof, threads)
    t = Table(title=f"cost-model accuracy on {prof.device} (profile measured {prof.provenance.date})")
    for c in ("model", "seq", "threads", "segment", "predicted ms", "measured ms", "error %"):
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(r.model, str(r.seq_len), str(r.threads), r.segment, f"{r.predicted_ms:.3f}", f"{r.measured_ms:.3f}",
                  f"{r.ape * 100:.1f}")
    console.print(t)
    s = summary(rows)
    console.print(f"held-out segments: {s['n']}   median APE {s['median_ape'] * 100:.1f}%   "
                  f"p90 APE {s['p90_ape'] * 100:.1f}%   (targets: <= 10% and <= 20%)")


BENCHES = [bench_model_analysis, bench_onnx_ingestion, bench_costmodel_accuracy]


def main(argv: list[str] | None = None) -> int:
    names = set(argv or sys.argv[1:])
    for b in BENCHES:
        if names and b.__name__.removeprefix("bench_") not in names:
            continue
        console.rule(b.__name__.removeprefix("bench_"))
        b()
    return 0


if __name__ == "__main__":
    sys.exit(main())
