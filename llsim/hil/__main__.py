"""Try HIL on this host: greedy generation over local workers, checked against the whole model.

    python -m llsim.hil tiny-llama --workers 3 --mode kv_cache [--segments 4] [--tokens 16] [--kill-after 5]

Starts the workers (``backend: local``), cuts the zoo model (or an .onnx file) into segments, loads
them, generates, and prints the tokens, whether they equal onnxruntime's greedy generation with the
whole model, and per-stage times. ``--kill-after N`` kills one worker after N tokens to show the
failover (re-cut onto the survivors, resumed from the last token).
"""
from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from llsim.errors import LLSimError

    ap = argparse.ArgumentParser(prog="python -m llsim.hil", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default="tiny-llama")
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--segments", type=int, help="default: one per worker")
    ap.add_argument("--mode", choices=["kv_cache", "recompute"], default="kv_cache")
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--requests", type=int, default=2)
    ap.add_argument("--kill-after", type=int, help="kill worker 1 after this many tokens (failover demo)")
    args = ap.parse_args(argv)
    try:
        return _run(args)
    except LLSimError as e:
        print(f"llsim: error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    import numpy as np

    from llsim.errors import LLSimError
    from llsim.hil.launcher import WorkerPool
    from llsim.hil.runner import GreedyRunner, deploy, even_replan, greedy_reference
    from llsim.model.load import onnx_bundle
    from llsim.model.segment import split_model

    kv = args.mode == "kv_cache"
    bundle = onnx_bundle(args.model, seq_len=8, kv_cache=kv)
    n_seg = args.segments or args.workers
    bounds = bundle.graph.even_boundaries(min(n_seg, bundle.graph.n_modules))
    try:
        from llsim.model.zoo import get_config
        vocab = get_config(args.model).vocab
    except LLSimError:
        vocab = 100  # an .onnx file: small ids fit any vocabulary
    rng = np.random.default_rng(0)
    prompts = {f"req{i}": [int(x) for x in rng.integers(0, min(vocab, 200), 6)] for i in range(args.requests)}
    with tempfile.TemporaryDirectory() as tmp:
        split_model(bundle.om, bundle.cuts, bundle.graph, bounds, Path(tmp) / "d0", bundle.proto)
        t0 = time.perf_counter()
        with WorkerPool.start(args.workers, heartbeat_s=0.1, patience=5) as pool:
            print(f"{args.workers} workers up in {time.perf_counter() - t0:.2f} s: "
                  + ", ".join(f"{w.name} pid {p} at {w.address}" for w, p in zip(pool.workers, pool.pids)))
            nodes = [pool.workers[i % args.workers] for i in range(len(bounds) - 1)]
            dep = deploy(Path(tmp) / "d0", nodes, "d0")
            print(f"{bundle.om.name} cut at modules {bounds}, segment i on {', '.join(n.name for n in nodes)}")
            done = [0]

            def on_token(ev):
                done[0] += 1
                if args.kill_after and done[0] == args.kill_after and args.workers > 1:
                    print(f"killing {pool.workers[1].name} (pid {pool.pids[1]}) after {done[0]} tokens")
                    pool.kill(1, signal.SIGKILL)

            run = GreedyRunner(dep, args.mode, replan=even_replan(bundle, Path(tmp) / "replans"), on_token=on_token)
            t1 = time.perf_counter()
            g = run.generate(prompts, args.tokens, concurrency=len(prompts))
            wall = time.perf_counter() - t1
    ref = {r: greedy_reference(bundle.proto, p, args.tokens) for r, p in prompts.items()}
    for r, toks in g.tokens.items():
        print(f"{r}: prompt {prompts[r]} -> {toks}  {'== whole model' if toks == ref[r] else '!= whole model ' + str(ref[r])}")
    for f in g.failovers:
        print(f"failover: {', '.join(f.failed)} lost ({f.error_type}), detected {f.detected_after_s * 1e3:.0f} ms "
              f"into its step, re-cut to {f.boundaries} and loaded in {f.stall_s * 1e3:.0f} ms")
    by = {}
    for s in g.stages:
        by.setdefault((s.segment, s.kind, s.deployment), []).append(s)
    print(f"{sum(len(v) for v in g.tokens.values())} tokens in {wall:.2f} s; per stage (median ms): "
          "segment/kind/deployment: compute, queue, wait")
    for (seg, kind, d), v in sorted(by.items(), key=lambda kv_: (kv_[0][2], kv_[0][0], kv_[0][1])):
        med = lambda xs: statistics.median(xs) * 1e3  # noqa: E731
        print(f"  {seg}/{kind}/{d}: {med([s.compute_s for s in v]):.3f}, {med([s.queue_s for s in v]):.3f}, "
              f"{med([s.wait_s for s in v]):.3f}  ({len(v)} stages)")
    return 0 if all(g.tokens[r] == ref[r] for r in prompts) else 1


if __name__ == "__main__":
    sys.exit(main())
