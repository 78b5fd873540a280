"""``manifest.json``: everything needed to re-run a run, and :func:`load_for_rerun` which does.

The manifest holds llsim's version and git commit (when llsim runs from a git checkout), the
command line and its overrides, the resolved scenario (every default filled in, every path
absolute), each device profile's contents and SHA-256, the SHA-256 of an ONNX model or a trace
file, the seed and the plan. ``llsim run --from-manifest DIR/manifest.json --out NEW`` validates
that scenario again with the recorded profiles, checks the inputs' digests, and simulates the
recorded plan: every result file of NEW is byte-identical to DIR's (``timing.json`` holds the
wall clock and differs; the manifest differs only in ``invocation``).
"""
from __future__ import annotations

import json
import subprocess
from functools import lru_cache
from pathlib import Path

from llsim.filehash import sha256_file
from llsim import __version__
from llsim.errors import LLSimError

FORMAT = 1



@lru_cache(maxsize=1)
def git_commit() -> dict:
    """{commit, dirty} of the checkout llsim runs from, or Nones (an installed package, no git)."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5)
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                "llsim"], capture_output=True, text=True, timeout=5)
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def build_manifest(sc, devices, plan, invocation: dict | None = None, scenario_file: str | None = None,
                   recorded_profiles: dict | None = None) -> dict:
    """The manifest of a run; a re-run passes the original's ``scenario_file`` and profile records."""
    from llsim.model.load import is_onnx_path
    from llsim.results.writer import versions
    from llsim.scenario import dump_resolved

    profiles = {}
    for spec in sc.devices:
        if recorded_profiles and spec.profile in recorded_profiles:
            profiles[spec.profile] = recorded_profiles[spec.profile]
            continue
        d = next(x for x in devices if x.profile is not None and _ref_matches(spec.profile, x))
        p = d.profile
        profiles[spec.profile] = {"name": p.name, "file": str(p.path) if p.path else None,
                                  "sha256": sha256_file(p.path) if p.path and Path(p.path).exists() else None,
                                  "content": p.model_dump(mode="json", exclude={"path"})}
    inputs = {}
    if is_onnx_path(sc.model):
        inputs["model"] = {"path": sc.model, "sha256": sha256_file(sc.model)}
    if sc.network.kind == "trace":
        inputs["trace"] = {"path": sc.network.trace, "sha256": sha256_file(sc.network.trace)}
    return {
        "format": FORMAT,
        "llsim": {"version": __version__, **git_commit()},
        "invocation": invocation or {"argv": None, "overrides": [], "seed_flag": None},
        "scenario": dump_resolved(sc),
        "scenario_file": scenario_file if scenario_file is not None else (str(sc.path) if sc.path else None),
        "seed": sc.seed,
        "plan": plan.to_json(), "plan_strategy": plan.strategy,
        "devices": [{"index": d.index, "name": d.name, "profile": d.profile.name,
                     "provenance": d.profile.provenance.kind} for d in devices],
        "profiles": profiles,
        "inputs": inputs,
        "versions": versions(),
    }


def _ref_matches(ref: str, dev) -> bool:
    from llsim.device.profile import load_profile

    try:
        return load_profile(ref) is dev.profile
    except LLSimError:
        return False


def load_for_rerun(path: str | Path):
    """(scenario, plan, manifest) of a recorded run; raises :class:`LLSimError` when it cannot be
    reproduced here (an input file changed, a manifest that is not one)."""
    from llsim.alloc.plan import Plan, StagePlan
    from llsim.device.profile import DeviceProfile, registered_profiles
    from llsim.scenario import validate_scenario

    p = Path(path)
    where = f"--from-manifest {p}"
    try:
        man = json.loads(p.read_text())
    except FileNotFoundError:
        raise LLSimError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LLSimError(f"{where}: not a JSON manifest ({' '.join(str(e).split())})") from None
    if not isinstance(man, dict) or not {"scenario", "plan", "profiles"} <= set(man):
        raise LLSimError(f"{where}: not an llsim run manifest (written by llsim >= 0.1 with 'scenario', 'plan' "
                         "and 'profiles')")
    for what, rec in (man.get("inputs") or {}).items():
        f = Path(rec["path"])
        if not f.exists():
            raise LLSimError(f"{where}: the run's {what} file {f} is gone")
        if sha256_file(f) != rec["sha256"]:
            raise LLSimError(f"{where}: the run's {what} file {f} changed since the run (SHA-256 differs)")
    profs = {}
    for ref, rec in man["profiles"].items():
        try:
            profs[ref] = DeviceProfile.model_validate(rec["content"])
        except Exception as e:  # noqa: BLE001 - any malformed record is the manifest's problem
            raise LLSimError(f"{where}: the recorded profile '{ref}' is not valid: {' '.join(str(e).split())[:200]}") \
                from None
        profs[ref].path = Path(rec["file"]) if rec.get("file") else None
    with registered_profiles(profs):
        sc = validate_scenario(man["scenario"], None)
        try:
            plan = Plan(tuple(StagePlan(int(s["device"]), int(s["start_module"]), int(s["end_module"]))
                              for s in man["plan"]), str(man.get("plan_strategy", "explicit")))
        except (KeyError, TypeError, ValueError):
            raise LLSimError(f"{where}: its 'plan' is not a list of stages") from None
    return sc, plan, man, profs
