"""The controller: propagate feature uncertainty through the model, plan with its sensitivity,
stop with a guarantee. ``run`` holds one request's decisions; ``loop`` serves one request and
``batch`` many together; ``planner`` (approxql) and ``biathlon`` (the original policy, as a
baseline) choose fractions; ``propagation`` and ``sensitivity`` read the model's answers.
"""
from .batch import predict_many
from .loop import predict
from .options import POLICIES, Options, check_options

__all__ = ["POLICIES", "Options", "check_options", "predict", "predict_many"]
