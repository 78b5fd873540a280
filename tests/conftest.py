from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    yield


def run_cli(argv, capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    from llsim.cli.main import main

    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err
