"""Results are files: each run writes a directory (manifest, metrics, tables, Perfetto timeline).

``llsim.results.load(RUN_DIR)`` and ``llsim.results.load_sweep(DIR)`` read them back as pandas
DataFrames (:mod:`llsim.results.reader`; imported on first use, so writing a run needs no pandas).
"""
from __future__ import annotations

__all__ = ["load", "load_sweep", "Run"]


def __getattr__(name):
    if name in __all__:
        from llsim.results import reader

        return getattr(reader, name)
    raise AttributeError(f"module 'llsim.results' has no attribute {name!r}")
