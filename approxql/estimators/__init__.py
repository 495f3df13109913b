"""Estimators: Horvitz-Thompson totals, delta-method covariances and quantile intervals from samples."""

from .moments import Moments
from .quantiles import (
    QuantileEstimate,
    disc_index,
    quantile_estimate,
    quantile_interval,
    sample_quantile,
    woodruff_quantile,
)
from .totals import (
    ConfidenceInterval,
    Estimate,
    check_p,
    covariance_from_jacobian,
    delta_method,
    estimate_totals,
    feature_covariance,
    make_estimates,
    z_value,
)

__all__ = [
    "ConfidenceInterval",
    "Estimate",
    "Moments",
    "QuantileEstimate",
    "check_p",
    "covariance_from_jacobian",
    "delta_method",
    "disc_index",
    "estimate_totals",
    "feature_covariance",
    "make_estimates",
    "quantile_estimate",
    "quantile_interval",
    "sample_quantile",
    "woodruff_quantile",
    "z_value",
]
