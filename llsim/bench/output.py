"""Bench result files: each bench that feeds a figure also writes its rows as a CSV in ``results/``
(``LLSIM_RESULTS_DIR`` overrides the folder), so the figures (``llsim plot figures``) are drawn from
files, not from the benches' code, and can be redrawn after a bench changes."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def results_dir() -> Path:
    return Path(os.environ.get("LLSIM_RESULTS_DIR") or ROOT / "results")


def save_rows(name: str, rows: list[dict], columns: list[str] | None = None) -> Path:
    """Write ``rows`` to ``results/<name>.csv`` (columns: ``columns`` or every key, in first-seen order)."""
    from llsim.results.writer import write_csv

    if columns is None:
        columns = []
        for r in rows:
            columns += [k for k in r if k not in columns]
    out = results_dir() / f"{name}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    write_csv(tmp, [{k: ("" if v is None else v) for k, v in r.items()} for r in rows], columns)
    tmp.replace(out)
    return out
