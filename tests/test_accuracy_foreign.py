"""The foreign-graph part of the cost-model accuracy bench (issue 18): what it times and how it prices."""
from __future__ import annotations

import pytest

from llsim.device.accuracy import FOREIGN_DIR, foreign_manifest, measure_foreign, predict
from llsim.device.profile import load_profile


class CountingExecutor:
    """Times nothing: returns a fixed latency and records what it was asked to run."""

    def __init__(self):
        self.calls = []

    def time_runs(self, model, feeds, threads, runs, warmup, rounds=1):
        self.calls.append((len(model), threads, sorted(feeds)))
        return 1e-3


def test_each_foreign_graph_is_timed_whole_and_as_two_halves_that_partition_it():
    names = ["gpt2-h128", "llama-h512-dyn8"]
    ex = CountingExecutor()
    got = measure_foreign([1, 2], executor=ex, names=names, seqs=(16, 64), rounds=2)
    assert len(got) == len(names) * 2 * 2 * 3  # graphs x seqs x threads x (whole + two halves)
    assert len(ex.calls) == 2 * len(got)  # every job once per round
    man = foreign_manifest()
    for name in names:
        for seq in (16, 64):
            for t in (1, 2):
                rows = [m for m in got if (m.model, m.seq_len, m.threads) == (name, seq, t)]
                whole = next(m for m in rows if m.segment == "whole")
                halves = [m for m in rows if m.segment != "whole"]
                assert len(halves) == 2 and all(m.measured_ms == pytest.approx(1.0) for m in rows)
                assert [x.name for h in halves for x in h.modules] == [x.name for x in whole.modules]
                assert whole.meta["exporter"] == man[name]["exporter"]
                assert whole.meta["quantization"] == man[name]["quantization"]


def test_a_whole_graph_is_priced_as_the_sum_of_its_halves_but_one_run_overhead():
    """The halves' prices add up to the whole's, less one per-run overhead (the cut adds a run, no work)."""
    prof = load_profile("host")
    got = measure_foreign([1], executor=CountingExecutor(), names=["bloom-h128"], seqs=(64,), rounds=1)
    rows = predict(got, prof)
    whole = next(r for r in rows if r.segment == "whole")
    halves = sum(r.predicted_ms for r in rows if r.segment != "whole")
    overhead_ms = prof.compute.threads[1].run_overhead_us * 1e-3
    assert halves - whole.predicted_ms == pytest.approx(overhead_ms, rel=1e-6, abs=1e-6)


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest"):
        foreign_manifest(tmp_path)
    assert (FOREIGN_DIR / "manifest.json").is_file()
