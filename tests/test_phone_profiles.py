"""Calibrated phone profiles: they load, say where every number comes from, and reproduce the
published decode speeds they were *not* fitted on.

Independent expectations: the tokens/s below are copied from DakeQQ/Native-LLM-for-Android's README
(ONNX Runtime CPU, q8f32, 1024 context), not read from llsim.device.calibration.
"""
from __future__ import annotations

import functools
import re

import pytest

from llsim.device import calibration as cal
from llsim.device.costmodel import CostModel
from llsim.device.profile import PROFILE_DIR, list_profiles, load_profile
from llsim.model.analytic import analytic_graph
from llsim.model.zoo import get_config

PHONES = ["snapdragon-8gen2", "tensor-g3", "kirin-990", "exynos-1380", "kirin-810", "helio-g85"]
CITED_THREADS = 3  # DakeQQ's apps: SetIntraOpNumThreads(3)

# (phone, zoo model, cited tok/s): the one figure each bandwidth is fitted on ...
FITS = [("snapdragon-8gen2", "qwen2-1.5b", 20.0), ("kirin-990", "qwen2-1.5b", 13.0),
        ("kirin-810", "qwen2-1.5b", 7.0)]
# ... and the figures held out (never used by the calibration)
HOLDOUTS = [("snapdragon-8gen2", "llama-3.2-1b", 25.0), ("snapdragon-8gen2", "minicpm-2b", 9.5),
            ("kirin-990", "llama-3.2-1b", 16.0), ("kirin-990", "minicpm-2b", 6.0)]


@functools.lru_cache(maxsize=None)
def _prefill_graph(model: str, tokens: int):
    return analytic_graph(get_config(model), seq_len=tokens, weight_dtype="int8")


def test_the_six_phones_are_there():
    assert set(PHONES) <= set(list_profiles())


@pytest.mark.parametrize("name", list_profiles())
def test_every_profile_loads(name):
    prof = load_profile(name)
    assert prof.name == name
    assert prof.compute.default_threads in prof.compute.threads


@pytest.mark.parametrize("name", PHONES)
def test_calibrated_provenance_is_complete(name):
    prof = load_profile(name)
    assert prof.kind == "phone"
    pv = prof.provenance
    assert pv.kind == "calibrated"
    assert len(pv.sources) >= 3 and all(s.strip() for s in pv.sources)
    # the method shows the arithmetic: numbers with units, not prose only
    assert len(re.findall(r"\d+(?:\.\d+)?\s*(?:GB/s|GFLOPS|ms|tok/s|MB)", pv.method)) >= 5, pv.method
    assert pv.replace_with_measured and "llsim profile adb SERIAL" in pv.replace_with_measured
    assert f"device_profiles/{name}.yaml" in pv.replace_with_measured
    for section in (prof.memory, prof.compute, prof.thermal, prof.network):
        assert section.source.strip()
    assert prof.memory.budget_fraction == 0.7
    assert prof.memory.ram_available_gb <= prof.memory.ram_total_gb
    assert prof.thermal.peak_speed == 1.0 and 0 < prof.thermal.sustained_speed <= 1.0
    assert {1, 2, 4} <= set(prof.compute.threads)
    if prof.cores >= 8:
        assert 8 in prof.compute.threads
    if "ASSUM" not in prof.thermal.source:  # a thermal figure is either cited or called an assumption
        assert "http" in prof.thermal.source or ".com" in prof.thermal.source


@pytest.mark.parametrize("name", ["tensor-g3", "exynos-1380", "helio-g85"])
def test_spec_derived_phones_say_they_are_estimates(name):
    prof = load_profile(name)
    assert "ESTIMATED" in prof.compute.source
    assert "not a measurement" in prof.notes
    assert "DakeQQ" not in " ".join(prof.provenance.sources)  # no tokens/s exists for these SoCs


@pytest.mark.parametrize("name", PHONES)
def test_yaml_is_what_the_calibration_derives(name):
    """The checked-in YAML is regenerated from llsim/device/calibration.py (not hand-edited)."""
    built = cal.build_phone_profile(name)
    on_disk = load_profile(name)
    assert on_disk.compute.model_dump() == built.compute.model_dump()
    assert on_disk.provenance.model_dump() == built.provenance.model_dump()


@pytest.mark.parametrize("phone,model,cited", FITS)
def test_fitted_figure_is_reproduced(phone, model, cited):
    pred = cal.decode_tokens_per_s(load_profile(phone), model, context=1024, threads=CITED_THREADS)
    assert pred == pytest.approx(cited, rel=0.01)


@pytest.mark.parametrize("phone,model,cited", HOLDOUTS)
def test_holdout_within_25_percent(phone, model, cited):
    pred = cal.decode_tokens_per_s(load_profile(phone), model, context=1024, threads=CITED_THREADS)
    assert abs(pred - cited) / cited <= 0.25, f"{phone} {model}: predicted {pred:.2f} tok/s, cited {cited}"


def test_holdouts_are_not_fitted():
    fitted = {(p.name, p.fit.model) for p in cal.PHONES.values() if p.fit}
    assert not fitted & {(p, m) for p, m, _ in HOLDOUTS}
    assert fitted == {(p, m) for p, m, _ in FITS}


@pytest.mark.parametrize("threads", [CITED_THREADS, None])
def test_decode_speed_ordering(threads):
    tps = {n: cal.decode_tokens_per_s(load_profile(n), "qwen2-1.5b", threads=threads)
           for n in ("snapdragon-8gen2", "kirin-990", "kirin-810", "helio-g85")}
    assert tps["snapdragon-8gen2"] > tps["kirin-990"] > tps["kirin-810"] > tps["helio-g85"]


def _big_mid_cores(prof) -> int:
    slowest = min(prof.cpu, key=lambda c: c.freq_ghz)
    return prof.cores - slowest.cores


@pytest.mark.parametrize("name", PHONES)
def test_more_threads_never_slower_for_prefill(name):
    prof = load_profile(name)
    cm = CostModel(prof)
    g = _prefill_graph("qwen2-1.5b", 128)
    ts = [t for t in sorted(prof.compute.threads) if t <= _big_mid_cores(prof)]
    assert len(ts) >= 2
    secs = [cm.segment_seconds(g.modules, t) for t in ts]
    assert all(b <= a for a, b in zip(secs, secs[1:])), dict(zip(ts, secs))


def test_spec_ratio_bandwidth_arithmetic():
    """An estimated phone's weight bandwidth is its reference's, scaled by DRAM peak."""
    for name, ref in (("tensor-g3", "snapdragon-8gen2"), ("exynos-1380", "kirin-990"), ("helio-g85", "kirin-810")):
        a, b = cal.PHONES[name].soc, cal.PHONES[ref].soc
        bw = load_profile(name).compute.threads[4].classes["matmul"].weight_gbps
        bw_ref = load_profile(ref).compute.threads[4].classes["matmul"].weight_gbps
        assert bw == pytest.approx(bw_ref * a.dram_peak_gbps / b.dram_peak_gbps, rel=1e-3)
    assert cal.HELIO_G85.dram_peak_gbps == pytest.approx(14.4)
    assert cal.KIRIN990.dram_peak_gbps == pytest.approx(34.128)


def test_peak_flops_arithmetic():
    # 8 Gen 2, threads fill X3 first: 32 x 3.19 = 102.08; + A715 16 x 2.8 = 44.8
    assert cal.peak_fp32_gflops(cal.SD8G2, 1) == pytest.approx(102.08)
    assert cal.peak_fp32_gflops(cal.SD8G2, 2) == pytest.approx(146.88)
    # Kirin 810: two A76 at 2.27 then A55s at 1.88
    assert cal.peak_fp32_gflops(cal.KIRIN810, 3) == pytest.approx(16 * 2.27 * 2 + 8 * 1.88)
    assert cal.EFFICIENCY == pytest.approx(0.52)


def test_profiles_dir_is_the_repo_one():
    assert PROFILE_DIR.name == "device_profiles"
    assert (PROFILE_DIR / "kirin-990.yaml").exists()
