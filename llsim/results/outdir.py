"""Output paths, checked before any long work: a results directory is new or empty, or ``--force``
clears it (only if it is an llsim results directory); a file to write is writable."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from llsim.errors import LLSimError


def _probe(d: Path, flag: str) -> None:
    probe = d / ".llsim-write-test"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise LLSimError(f"{flag} {d}: cannot write there ({e.strerror or e})") from None


def _mkdir(d: Path, flag: str) -> None:
    try:
        d.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        bad = next((p for p in [d, *d.parents] if p.exists() and not p.is_dir()), d)
        raise LLSimError(f"{flag} {d}: {bad} is a file, not a directory") from None
    except OSError as e:
        raise LLSimError(f"{flag} {d}: cannot create the directory ({e.strerror or e})") from None


SEGMENT_FILE = re.compile(r"^segment_\d+\.onnx(\.data)?$")


def prepare_run_dir(out: str | Path, force: bool, flag: str = "--out", files: tuple[str, ...] | None = None,
                    segments: bool = False) -> Path:
    """Make ``out`` an empty, writable directory. An existing non-empty one is refused unless
    ``force``; ``force`` clears it only when it is llsim's: it holds its marker (``manifest.json``
    of a results directory, ``plan.json`` of segments: the first of ``files``) or nothing but the
    files llsim writes there (``files``, and ``segment_<i>.onnx`` when ``segments``)."""
    from llsim.results.writer import RUN_FILES

    files = files or RUN_FILES
    marker = files[0]
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LLSimError(f"{flag} {out}: exists and is a file; give a directory")
    if out.is_dir():
        try:
            entries = sorted(os.listdir(out))
        except OSError as e:
            raise LLSimError(f"{flag} {out}: cannot read the directory ({e.strerror or e})") from None
        if entries:
            if not force:
                raise LLSimError(f"{flag} {out}: the directory is not empty (a previous run?); give --force to clear "
                                 "it, or another --out")
            foreign = [e for e in entries if e not in files and not (e.startswith(".") and e.endswith(".tmp"))
                       and not (segments and SEGMENT_FILE.match(e))]
            if marker not in entries and foreign:
                raise LLSimError(f"{flag} {out}: --force clears only a directory llsim wrote, and this one holds "
                                 f"'{foreign[0]}' and no {marker}; choose another --out")
            for e in entries:
                p = out / e
                try:
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p)
                    else:
                        p.unlink()
                except OSError as err:
                    raise LLSimError(f"{flag} {out}: cannot clear {p} ({err.strerror or err})") from None
    _mkdir(out, flag)
    _probe(out, flag)
    return out


def check_output_file(path: str | Path, flag: str = "--out") -> Path:
    """``path`` can be written: its directory exists (or can be made) and is writable, it is not a directory."""
    p = Path(path)
    if p.is_dir():
        raise LLSimError(f"{flag} {p}: is a directory; give a file name")
    if p.exists() and not os.access(p, os.W_OK):
        raise LLSimError(f"{flag} {p}: exists and is not writable")
    _mkdir(p.parent if str(p.parent) else Path("."), flag)
    _probe(p.parent if str(p.parent) else Path("."), flag)
    return p
