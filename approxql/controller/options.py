"""Options of an approximate prediction, validated once with messages a user can act on."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import OptionError
from ..sampling import STRATEGIES

POLICIES = ("approxql", "biathlon", "fixed")   # fixed: one sample at initial_fraction, no guarantee
DEFAULT_POINTS = 256
DEFAULT_START = 0.02
WARM_CAP = 0.25      # a warm start never begins above this fraction on warm history alone
START_ROWS = 2_000   # a first read of a prepared copy takes at least this many rows (see run._start)


@dataclass(frozen=True)
class Options:
    tau: float
    delta: float | None
    seed: int
    policy: str
    initial_fraction: float | None
    max_rounds: int
    points: int
    time_budget_ms: float | None
    strategy: str
    learn: bool = True


def check_options(*, task: str, tau, delta, seed, policy, initial_fraction, max_rounds, points,
                  time_budget_ms, strategy, default_tau: float, default_delta: float | None,
                  learn: bool = True) -> Options:
    tau = default_tau if tau is None else tau
    if not _number(tau) or not 0 < tau < 1:
        raise OptionError(f"tau must be a number in (0, 1), got {tau!r}")
    delta = default_delta if delta is None else delta
    if task == "regression" and delta is None:
        raise OptionError("a regression pipeline needs delta: pass delta= or add '-- delta: ...' to its file")
    if delta is not None and (not _number(delta) or delta < 0):  # checked for classification too, though unused
        raise OptionError(f"delta must be a number >= 0, got {delta!r}")
    seed = 0 if seed is None else seed
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**31:
        raise OptionError(f"seed must be an integer in [0, 2^31), got {seed!r}")
    if policy not in POLICIES:
        raise OptionError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    if initial_fraction is not None and (not _number(initial_fraction) or not 0 < initial_fraction <= 1):
        raise OptionError(f"initial_fraction must be in (0, 1], got {initial_fraction!r}")
    if policy == "fixed" and initial_fraction is None:
        raise OptionError("policy 'fixed' reads one sample at initial_fraction: pass initial_fraction=")
    default_rounds = 8 if policy == "approxql" else 200
    max_rounds = default_rounds if max_rounds is None else max_rounds
    if not isinstance(max_rounds, int) or isinstance(max_rounds, bool) or max_rounds < 1:
        raise OptionError(f"max_rounds must be an integer >= 1, got {max_rounds!r}")
    points = DEFAULT_POINTS if points is None else points
    if not isinstance(points, int) or isinstance(points, bool) or points < 2:
        raise OptionError(f"points must be an integer >= 2, got {points!r}")
    if time_budget_ms is not None and (not _number(time_budget_ms) or time_budget_ms <= 0):
        raise OptionError(f"time_budget_ms must be a number > 0, got {time_budget_ms!r}")
    if strategy not in STRATEGIES:
        raise OptionError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if not isinstance(learn, bool):
        raise OptionError(f"learn must be True or False, got {learn!r}")
    return Options(float(tau), None if delta is None else float(delta), seed, policy, initial_fraction,
                   max_rounds, points, time_budget_ms, strategy, learn)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
