import signal
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


SLOW_LIST = Path(__file__).with_name("slow_tests.txt")


def pytest_configure(config):
    """A test run started in the background by a non-interactive shell (`cmd &`, as some CI
    runners do) inherits SIGINT ignored, and so would every process the tests start: the tests that
    press Ctrl-C on an llsim process would then time out. Ctrl-C is restored for them as a terminal
    gives it (an ignored signal survives exec; a handler does not, the children start with the default)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config, items):
    """Mark the tests of tests/slow_tests.txt slow (measured durations; `pytest -m "not slow"` is the fast loop)."""
    slow = {line.strip() for line in SLOW_LIST.read_text().splitlines() if line.strip() and not line.startswith("#")}
    for item in items:
        if item.nodeid in slow:
            item.add_marker(pytest.mark.slow)
