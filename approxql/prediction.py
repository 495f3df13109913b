"""The result of one prediction."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class Prediction:
    """One pipeline prediction.

    Attributes:
        value: the model's output (a number for regression, a label for classification).
        probability: estimated probability that ``value`` is within delta of (regression) or
            equal to (classification) the prediction from exactly computed features; 1.0 when exact.
        exact: True when every feature was computed exactly.
        features: feature name -> the value given to the model.
        rates: aggregate feature query -> fraction of its matching rows used (1.0 = exact).
        rounds: rounds of feature computation the request took.
        latency_ms: wall time of the whole call.
        met_bound: whether the stopping rule (probability >= tau) was met.
        stages_ms: time per stage (queries, model, ...), adding up to about latency_ms.
    """

    value: Any
    probability: float
    exact: bool
    features: Mapping[str, float]
    rates: Mapping[str, float]
    rounds: int
    latency_ms: float
    met_bound: bool = True
    stages_ms: Mapping[str, float] = field(default_factory=dict)

    def explain(self) -> str:
        """A readable account of how the prediction was made."""
        lines = [f"prediction {self.value!r} ({'exact' if self.exact else 'approximate'}, "
                 f"probability {self.probability:.3f}, {self.rounds} round(s), {self.latency_ms:.2f} ms)"]
        lines += [f"  feature {k} = {v!r}" for k, v in self.features.items()]
        lines += [f"  query {k}: {100 * r:.1f}% of matching rows" for k, r in self.rates.items()]
        lines += [f"  stage {k}: {v:.3f} ms" for k, v in self.stages_ms.items()]
        return "\n".join(lines)
