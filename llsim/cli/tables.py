"""Terminal output that fits 80 columns and up: tables laid out by design, progress on stderr.

:func:`fit_table` gives every column a width from what it holds: ``key`` columns (names) and
``num`` columns never wrap and are never cut; ``text`` columns wrap at spaces (a word longer than
the room left is folded, never cut with an ellipsis). Only when even that does not fit the
console are key columns shortened, to unique short names (``snapdr~8gen2-0``). Headers wrap at
spaces. Nothing here fixes a console width: the console's own (the terminal's, ``COLUMNS``, else
80) is used.

Progress (``status``, ``note``) goes to stderr, so stdout holds only results.
"""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

KINDS = ("key", "num", "text")
MIN_KEY = 10


def stdout_console() -> Console:
    """A console on stdout, its width read now (the terminal's, else ``COLUMNS``, else 80)."""
    return Console(highlight=False)


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


def short_unique(names: list[str], width: int) -> list[str]:
    """Names longer than ``width`` shortened to ``head~tail`` (the tail keeps the ``-k`` that
    tells devices of one profile apart), as long as needed to stay unique."""
    if all(len(n) <= width for n in names):
        return list(names)
    width = max(width, 5)
    for w in range(width, max(len(n) for n in names) + 1):
        out = []
        for n in names:
            if len(n) <= w:
                out.append(n)
            else:
                tail = (w - 1) // 2
                out.append(n[:w - 1 - tail] + "~" + n[len(n) - tail:])
        if len(set(out)) == len(set(names)):
            return out
    return list(names)


def _words(s: str) -> int:
    return max((len(w) for w in s.split()), default=0)


def fit_table(columns: list[tuple[str, str]], rows: list[list[str]], width: int, title: str | None = None,
              max_word: int = 24) -> Table:
    """A table of ``rows`` (strings) whose columns are (header, kind) with kind in ``key``,
    ``num``, ``text``, laid out for a console ``width`` columns wide."""
    n = len(columns)
    rows = [[str(c) for c in r] for r in rows]
    natural, minimum, cell_min = [], [], []
    for j, (head, kind) in enumerate(columns):
        cells = [r[j] for r in rows]
        longest = max((len(c) for c in cells), default=0)
        hw = _words(head)
        if kind == "text":
            natural.append(max(longest, hw))
            minimum.append(max(min(max((_words(c) for c in cells), default=0), max_word), hw, 4))
            cell_min.append(4)
        else:  # cells never wrap; the header may, at its spaces (and, as a last resort, inside a word)
            natural.append(max(longest, len(head)))
            minimum.append(max(longest, hw))
            cell_min.append(max(longest, 1))
    overhead = 2 * (n - 1)  # between two columns: one space of padding and box.SIMPLE_HEAD's blank rule
    room = width - overhead
    widths = list(natural)
    if sum(natural) > room:
        widths = list(minimum)
        deficit = sum(widths) - room
        while deficit > 0:  # still too wide: fold headers inside their words (the longest first), never a cell
            j = max(range(n), key=lambda j: widths[j] - cell_min[j])
            if widths[j] <= cell_min[j]:
                break
            widths[j] -= 1
            deficit -= 1
        if deficit > 0:  # even that does not fit: shorten key columns to unique short names
            keys = [j for j, (_, k) in enumerate(columns) if k == "key"]
            for j in keys:
                cut = min(deficit, max(widths[j] - MIN_KEY, 0))
                if cut:
                    widths[j] -= cut
                    deficit -= cut
                    col = short_unique([r[j] for r in rows], widths[j])
                    for r, v in zip(rows, col):
                        r[j] = v
        extra = room - sum(widths)
        texts = [j for j, (_, k) in enumerate(columns) if k == "text" and natural[j] > widths[j]]
        while extra > 0 and texts:  # share what is left among text columns, up to their natural width
            for j in list(texts):
                if extra <= 0:
                    break
                widths[j] += 1
                extra -= 1
                if widths[j] >= natural[j]:
                    texts.remove(j)
    t = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0),
              title_justify="left", title_style="bold")
    for (head, kind), w in zip(columns, widths):
        t.add_column(Text(head, no_wrap=False, overflow="fold"), justify="right" if kind == "num" else "left",
                     width=max(w, 1), no_wrap=kind != "text", overflow="fold")
    for r in rows:
        t.add_row(*r)
    return t


@contextmanager
def status(text: str):
    """A spinner with ``text`` and the elapsed time on stderr while the block runs (terminals only)."""
    c = stderr_console()
    if not c.is_terminal:
        yield
        return
    t0 = time.perf_counter()
    with c.status(text) as st:
        def tick():
            st.update(f"{text} ({time.perf_counter() - t0:.0f} s)")
        yield tick


def note(text: str) -> None:
    """One progress line on stderr (benches: which case runs now)."""
    print(text, file=sys.stderr, flush=True)


def int_ranges(xs) -> str:
    """[1, 2, 3, 4, 8] -> "1-4,8"."""
    xs = sorted(set(xs))
    out, i = [], 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        out.append(str(xs[i]) if j == i else f"{xs[i]}-{xs[j]}" if j > i + 1 else f"{xs[i]},{xs[j]}")
        i = j + 1
    return ",".join(out)


def fmt_bytes(n: float, unit: str = "GB") -> str:
    scale = {"KB": 1e3, "MB": 1e6, "GB": 1e9}[unit]
    return f"{n / scale:,.2f}"
