"""Model sensitivity by secants: how far the output moves when one feature moves by its error.

ONNX Runtime has no gradients and tree models are piecewise constant, so each approximate
feature is moved to ``estimate +/- h * stderr`` (one batch of 2d + 1 rows). The result, per
feature, is the output change per standard error: the planner's measure of what refining that
feature is worth.
"""
from __future__ import annotations

import numpy as np

from ..model import ModelOutput
from .features import FeatureState
from .propagation import label_probability

STEP = 2.0  # in standard errors: wide enough to cross a tree split that matters


def secant_rows(state: FeatureState) -> np.ndarray:
    """The point estimate, then each approximate feature moved up and down by STEP standard errors."""
    idx = state.approximate
    rows = np.repeat(state.x0[None, :], 2 * len(idx) + 1, axis=0)
    for k, j in enumerate(idx):
        h = STEP * state.stderr[j]
        rows[1 + 2 * k, j] += h
        rows[2 + 2 * k, j] -= h
    return rows


def secant_sensitivity(out: ModelOutput, state: FeatureState, *, task: str) -> np.ndarray:
    """Output change per standard error for each input (0 for exact inputs), from the model's
    output on ``secant_rows(state)``."""
    idx = state.approximate
    s = np.zeros(len(state.x0))
    if len(idx) == 0:
        return s
    if task == "regression":
        y = out.values.astype(np.float64)
    elif out.probabilities is not None:
        y = label_probability(out, out.values[0])
    else:
        y = (out.values == out.values[0]).astype(np.float64)
    plus, minus = y[1::2], y[2::2]
    s[idx] = np.abs(plus - minus) / (2 * STEP)
    return s
