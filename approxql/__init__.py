"""approxql: approximate ML inference on DuckDB.

Aggregate features are computed on growing random samples; the prediction stops as soon
as it is, with probability at least tau, within delta of the exact pipeline's prediction.
"""
from .errors import (ApproxQLError, ModelError, NullFeatureError, OptionError, PipelineError, QueryError,
                     RequestError)
from .pipeline import Pipeline, load_pipeline
from .pipeline_file import PipelineSpec, read_pipeline_file
from .prediction import Prediction
from .profiler import profile
from .sampling import prepare
from .sql_function import register, register_all

__version__ = "0.1.0"

__all__ = [
    "ApproxQLError", "ModelError", "NullFeatureError", "OptionError", "PipelineError", "QueryError",
    "RequestError", "Pipeline", "PipelineSpec", "Prediction", "load_pipeline", "prepare", "profile", "read_pipeline_file",
    "register", "register_all",
]
