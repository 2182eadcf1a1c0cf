"""Pareto fronts and hypervolume over objective vectors with mixed directions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["dominates", "hypervolume", "nondominated", "to_minimisation"]


def to_minimisation(points: Sequence[Sequence[float]], maximise: Sequence[bool]) -> np.ndarray:
    """Points with maximised objectives negated, so that smaller is better everywhere."""
    sign = np.where(np.asarray(maximise, dtype=bool), -1.0, 1.0)
    return np.asarray(points, dtype=np.float64).reshape(-1, len(maximise)) * sign


def dominates(a: Sequence[float], b: Sequence[float], maximise: Sequence[bool]) -> bool:
    """a is no worse than b everywhere and better somewhere."""
    pa, pb = to_minimisation([a, b], maximise)
    return bool(np.all(pa <= pb) and np.any(pa < pb))


def nondominated(points: Sequence[Sequence[float]], maximise: Sequence[bool]) -> list[int]:
    """Indices of the points no other point dominates (duplicates all kept)."""
    p = to_minimisation(points, maximise)
    keep = []
    for i in range(len(p)):
        dominated = np.all(p <= p[i], axis=1) & np.any(p < p[i], axis=1)
        if not dominated.any():
            keep.append(i)
    return keep


def hypervolume(
    points: Sequence[Sequence[float]], maximise: Sequence[bool], reference: Sequence[float]
) -> float:
    """Volume dominated by `points` and bounded by `reference` (points not better than it count for nothing)."""
    p = to_minimisation(points, maximise)
    ref = to_minimisation([reference], maximise)[0]
    p = p[np.all(p < ref, axis=1)]
    if len(p) == 0:
        return 0.0
    p = p[nondominated(p, [False] * p.shape[1])]
    if p.shape[1] == 2:
        p = p[np.argsort(p[:, 0])]
        volume, best_y = 0.0, ref[1]
        for x, y in p:
            if y < best_y:
                volume += (ref[0] - x) * (best_y - y)
                best_y = y
        return float(volume)
    from optuna._hypervolume import compute_hypervolume

    return float(compute_hypervolume(p, ref))
