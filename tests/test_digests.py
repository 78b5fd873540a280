"""Every shipped scenario's results are byte-identical to the committed digests (tests/digests.py).

The digests were recorded with the versions of requirements.lock; with other versions of the
numeric packages (a solver or BLAS that rounds differently) the comparison is meaningless, so the
test is skipped then (``make test-latest``), naming the package that differs.
"""
from __future__ import annotations

import importlib.metadata as md
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NUMERIC = ("numpy", "highspy", "simpy", "onnx", "onnxruntime", "scipy", "pydantic")


def _lock_mismatch() -> str | None:
    lock = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line)
        if m:
            lock[m.group(1).lower().replace("_", "-")] = m.group(2)
    for pkg in NUMERIC:
        try:
            have = md.version(pkg)
        except md.PackageNotFoundError:
            continue
        if pkg in lock and lock[pkg] != have:
            return f"{pkg} {have} installed, {lock[pkg]} locked"
    return None


@pytest.mark.slow
def test_every_shipped_scenario_is_byte_identical_to_its_digest(capsys):
    why = _lock_mismatch()
    if why:
        pytest.skip(f"digests hold for requirements.lock's versions: {why}")
    sys.path.insert(0, str(ROOT / "tests"))
    import digests

    rc = digests.main(["--check"])
    out = capsys.readouterr().out
    assert rc == 0, "\n".join(line for line in out.splitlines() if line.startswith(("DIFFERS", "unknown", "no ")))
