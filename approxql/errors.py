"""approxql's exceptions.

Every error approxql raises is an ``ApproxQLError``; each also subclasses the matching
built-in so callers can catch ``ValueError`` or ``RuntimeError`` generically.
"""
from __future__ import annotations


class ApproxQLError(Exception):
    """Base class of every error approxql raises on purpose."""


class PipelineError(ApproxQLError, ValueError):
    """A pipeline file is malformed. The message names the file and line."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        self.path, self.line, self.detail = path, line, message
        where = path or "<pipeline>"
        if line is not None:
            where = f"{where}:{line}"
        super().__init__(f"{where}: {message}")


class ModelError(ApproxQLError, ValueError):
    """The ONNX model is missing, unreadable, does not match the pipeline, or misbehaved."""


class RequestError(ApproxQLError, ValueError):
    """A request is missing parameters, has extra ones, or holds a value of the wrong type."""


class NullFeatureError(RequestError):
    """A feature came out NULL and the pipeline declares no fill value for it."""


class QueryError(ApproxQLError, RuntimeError):
    """The engine failed to run a feature query."""


class OptionError(ApproxQLError, ValueError):
    """An option such as tau, delta or a fraction is out of range."""
