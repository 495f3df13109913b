"""The controller: propagate feature uncertainty through the model, plan with its sensitivity,
stop with a guarantee. ``loop`` runs one request; ``planner`` (approxql) and ``biathlon`` (the
original policy, as a baseline) choose fractions; ``propagation`` and ``sensitivity`` ask the model.
"""
from .loop import predict
from .options import POLICIES, Options, check_options

__all__ = ["POLICIES", "Options", "check_options", "predict"]
