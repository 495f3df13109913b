"""The result of one prediction."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class Prediction:
    """One pipeline prediction.

    Attributes:
        value: the prediction (a number for regression, a label for classification). A sampled
            regression answers with the centre of the 2 * delta window holding the most of the
            model's outputs on the feature draws, not the model at the point estimates.
        probability: estimated probability that ``value`` is within delta of (regression) or
            equal to (classification) the prediction from exactly computed features; 1.0 when exact.
        exact: True when every feature was computed exactly.
        features: feature name -> the value given to the model.
        rates: aggregate feature query -> fraction of its matching rows used (1.0 = exact).
        rounds: rounds of feature computation the request took.
        latency_ms: wall time of the whole call.
        met_bound: whether the stopping rule (probability >= tau) was met.
        stages_ms: time per stage (queries, estimation, propagation, planning, ...), adding up to latency_ms.
        stderr: feature name -> standard error of its estimate (0.0 when exact).
        stop_reason: why the loop stopped.
        history: per round, the fraction of each query and the probability reached.
        notes: per aggregate query, how it was sampled and what was computed exactly and why.
        reads: per statement ``predict`` ran for a query, a dict: ``query``, ``fraction`` (before
            and after), ``rows`` (rows of the table it read, estimated; None when unknown), ``ms``
            and ``exact``; query ``"*"`` is the one statement that computes everything exactly.
            Empty from ``predict_many``, whose statements serve many requests at once.
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
    stderr: Mapping[str, float] = field(default_factory=dict)
    stop_reason: str = "computed exactly"
    history: tuple = ()
    notes: Mapping[str, str] = field(default_factory=dict)
    reads: tuple = ()

    def explain(self) -> str:
        """A readable account of what was sampled, why it stopped and what each stage cost."""
        kind = "exact" if self.exact else "approximate"
        lines = [f"prediction {self.value!r} ({kind}; probability {self.probability:.3f}, "
                 f"bound {'met' if self.met_bound else 'NOT met'}; {self.rounds} round(s); {self.latency_ms:.2f} ms)",
                 f"stopped: {self.stop_reason}"]
        for k, v in self.features.items():
            se = self.stderr.get(k, 0.0)
            lines.append(f"  feature {k} = {v:.6g}" + (f" +/- {se:.3g} (1 s.e.)" if se else " (exact)"))
        for k, r in self.rates.items():
            lines.append(f"  query {k}: {100 * r:.3g}% of matching rows" + (f" — {self.notes[k]}" if k in self.notes else ""))
        for h in self.history:
            fr = ", ".join(f"{q} {100 * p:.3g}%" for q, p in h["fractions"].items())
            prob = h.get("probability")
            lines.append(f"  round {h['round']}: {fr}" + ("" if prob is None else f" -> probability {prob:.3f}")
                         + (" (intervals not yet trusted: minimum support)" if "probability" in h and prob is None else ""))
        total = sum(self.stages_ms.values()) or 1.0
        lines += [f"  stage {k}: {v:.3f} ms ({100 * v / total:.0f}%)" for k, v in self.stages_ms.items()]
        return "\n".join(lines)
