"""Byte-identity of every shipped scenario's results, against committed digests.

    python tests/digests.py --write          # record tests/data/digests.json (on the reference code)
    python tests/digests.py --check          # run every scenario again and compare, file by file
    python tests/digests.py --check demo balance-fading   # only these

A refactor that must preserve behaviour (issue 15) is checked with ``--check``: each scenario of
``scenarios/*.yaml`` and ``scenarios/bench/*.yaml`` is run with ``llsim run`` (its own seed) and the
sha256 of tokens.csv, devices.csv, links.csv, timeline.json, rebalances.csv and metrics.json is
compared (wall-clock figures live in timing.json, which is not compared). The digests hold for the
dependency versions of requirements.lock (a solver or BLAS of another version may round differently).
Exit code 0 when all match, 1 when one differs (each difference is listed), 2 on a bad argument.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIGESTS = ROOT / "tests" / "data" / "digests.json"
FILES = ("tokens.csv", "devices.csv", "links.csv", "timeline.json", "rebalances.csv", "metrics.json")


def scenarios() -> dict[str, Path]:
    out = {}
    for p in sorted((ROOT / "scenarios").glob("*.yaml")) + sorted((ROOT / "scenarios" / "bench").glob("*.yaml")):
        key = p.relative_to(ROOT / "scenarios").with_suffix("").as_posix()
        out[key] = p
    return out


def run_one(key: str, path: Path, tmp: Path) -> tuple[str, dict[str, str], str]:
    out = tmp / key.replace("/", "__")
    llsim = Path(sys.executable).with_name("llsim")
    cmd = [str(llsim) if llsim.exists() else sys.executable, *([] if llsim.exists() else ["-m", "llsim.cli.main"]),
           "run", str(path), "--out", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    digests = {}
    for f in FILES:
        fp = out / f
        digests[f] = hashlib.sha256(fp.read_bytes()).hexdigest() if fp.exists() else "absent"
    return key, digests, f"exit {p.returncode}" + (f": {p.stderr.strip().splitlines()[-1]}" if p.returncode and p.stderr.strip() else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", action="store_true", help="record the digests of the code as it is")
    g.add_argument("--check", action="store_true", help="compare with the recorded digests")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("only", nargs="*", help="scenario keys (e.g. demo, bench/homo4-bloom1b1-lat)")
    a = ap.parse_args(argv)
    allsc = scenarios()
    unknown = [k for k in a.only if k not in allsc]
    if unknown:
        print(f"unknown scenario(s) {unknown}; known: {', '.join(allsc)}", file=sys.stderr)
        return 2
    todo = {k: allsc[k] for k in (a.only or allsc)}
    recorded = json.loads(DIGESTS.read_text()) if DIGESTS.exists() else {}
    if a.check and not recorded:
        print(f"no digests at {DIGESTS}: run --write on the reference code first", file=sys.stderr)
        return 2
    results = {}
    with tempfile.TemporaryDirectory() as tmp, cf.ThreadPoolExecutor(a.jobs) as ex:
        for key, dg, status in ex.map(lambda kv: run_one(kv[0], kv[1], Path(tmp)), todo.items()):
            results[key] = {"status": status, "files": dg}
            print(f"{key:48s} {status}", flush=True)
    if a.write:
        recorded.update(results)
        DIGESTS.write_text(json.dumps(dict(sorted(recorded.items())), indent=1) + "\n")
        print(f"wrote {len(results)} scenario digests to {DIGESTS.relative_to(ROOT)}")
        return 0
    bad = 0
    for key, r in results.items():
        ref = recorded.get(key)
        if ref is None:
            print(f"{key}: no recorded digest")
            bad += 1
            continue
        diff = [f for f in FILES if ref["files"].get(f) != r["files"].get(f)]
        if ref["status"] != r["status"]:
            diff.append(f"status {ref['status']!r} -> {r['status']!r}")
        if diff:
            bad += 1
            print(f"DIFFERS {key}: {', '.join(diff)}")
    print(f"{len(results) - bad}/{len(results)} scenarios byte-identical")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
