"""The profiler: where a pipeline's latency goes (query overhead, scanning, estimation, propagation,
planning, the model), how close each feature query runs to its table's full-scan rate, and what-ifs
with their formulas: latency at peak rates, the largest sampling fraction within a latency target
(or exact computation, when it already meets it), other data layouts, and scale-out (a model).
``approxql profile`` on the command line."""
from .report import Profile
from .run import profile

__all__ = ["Profile", "profile"]
