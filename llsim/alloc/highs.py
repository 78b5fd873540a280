"""HiGHS instances with nothing printed.

HiGHS 1.16 prints a banner ("Running HiGHS ...") on the C-level stdout when a process creates its
first solver instance, before any option can turn output off. That would break ``--json`` output
and clutter every run, so the first instance is created with file descriptor 1 pointed at
``/dev/null`` (C buffers flushed before it is restored); later instances print nothing anyway.
"""
from __future__ import annotations

import ctypes
import os
import sys

_first_done = False


def _flush_c_stdout() -> None:
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no C library handle (unusual platforms): nothing buffered there to lose
        pass


def new_highs():
    """A ``highspy.Highs`` with output off, single-threaded; the banner never reaches stdout."""
    global _first_done
    import highspy

    if _first_done:
        h = highspy.Highs()
    else:
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        saved = os.dup(1)
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, 1)
            h = highspy.Highs()
            _flush_c_stdout()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            os.close(null)
        _first_done = True
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    return h
