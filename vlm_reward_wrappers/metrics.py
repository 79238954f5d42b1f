"""Figures shared by online and offline labelling: agreement with and correlation to the true reward."""

from __future__ import annotations

import numpy as np


def pearson(values: np.ndarray, gt: np.ndarray) -> float:
    """Pearson correlation of ``values`` with ``gt`` over the entries where both are finite; NaN when
    fewer than 3 are, or either is constant there."""
    values, gt = np.asarray(values, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    valid = np.isfinite(values) & np.isfinite(gt)
    if valid.sum() < 3 or values[valid].std() == 0 or gt[valid].std() == 0:
        return float("nan")
    return float(np.corrcoef(values[valid], gt[valid])[0, 1])


def gt_preference(gt_a: float, gt_b: float) -> int:
    """The preference the true reward states: 1 if the second is higher, 0 if the first, -1 if it cannot
    tell (a tie or an unknown reward)."""
    if not (np.isfinite(gt_a) and np.isfinite(gt_b)) or gt_a == gt_b:
        return -1
    return int(gt_b > gt_a)
