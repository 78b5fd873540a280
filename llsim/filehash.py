"""The sha256 of a file, read in 1 MiB blocks (segment files, weights, traces and profiles are
hashed for manifests, deployment and the HIL worker's load check). The worker itself
(``llsim/hil/worker.py``) keeps its own copy: it runs alone on a phone, importing no llsim module."""
from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
