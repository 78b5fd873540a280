"""Fitting the cost model: non-negative least squares on relative error.

Every coefficient is non-negative (a negative seconds-per-FLOP is meaningless), and the loss is the
relative error (a 10 us op matters as much as a 10 ms one, in proportion). With <= 3 unknowns the
exact NNLS solution is found by enumerating the active sets.
"""
from __future__ import annotations

import itertools

import numpy as np


def nnls_relative(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """argmin_{b >= 0} sum(((X b - y) / y)^2), exact for small column counts."""
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    w = 1.0 / np.maximum(y, 1e-12)
    Xw, yw = X * w[:, None], y * w
    # columns span 1 .. 1e9 (overhead, FLOPs, bytes): normalise them, or rank tests and lstsq lose the
    # small ones; the solution is scaled back at the end
    scale = np.linalg.norm(Xw, axis=0)
    scale[scale == 0] = 1.0
    Xw = Xw / scale
    n = X.shape[1]
    best, best_err = np.zeros(n), float(np.sum(yw**2))
    for k in range(1, n + 1):
        for cols in itertools.combinations(range(n), k):
            sub = Xw[:, cols]
            if np.linalg.matrix_rank(sub) < k:
                continue
            b, *_ = np.linalg.lstsq(sub, yw, rcond=None)
            if np.any(b < 0):
                continue
            full = np.zeros(n)
            full[list(cols)] = b
            err = float(np.sum((Xw @ full - yw) ** 2))
            if err < best_err * (1 - 1e-12):
                best, best_err = full, err
    return best / scale


def ape(pred, meas) -> np.ndarray:
    pred, meas = np.asarray(pred, float), np.asarray(meas, float)
    return np.abs(pred - meas) / meas
