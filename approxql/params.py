"""Request parameters: declared types, and turning request values into bound values.

Request values are never formatted into SQL. They are checked and converted here, then
bound to DuckDB named parameters that the feature SQL casts to the declared type.
"""
from __future__ import annotations

import datetime as dt
import difflib
import math
from dataclasses import dataclass
from typing import Any, Mapping

import pyarrow as pa
import sqlglot
from sqlglot import exp

from .errors import RequestError

_INT_RANGES = {
    exp.DataType.Type.TINYINT: 8, exp.DataType.Type.SMALLINT: 16,
    exp.DataType.Type.INT: 32, exp.DataType.Type.BIGINT: 64,
}
_FLOATS = {exp.DataType.Type.DOUBLE, exp.DataType.Type.FLOAT, exp.DataType.Type.DECIMAL}
_STRINGS = {exp.DataType.Type.VARCHAR, exp.DataType.Type.TEXT, exp.DataType.Type.CHAR}
_TIMESTAMPS = {exp.DataType.Type.TIMESTAMP, exp.DataType.Type.TIMESTAMPNTZ, exp.DataType.Type.DATETIME}


@dataclass(frozen=True)
class Param:
    """One declared request parameter, e.g. ``time_hour TIMESTAMP``."""

    name: str
    type: exp.DataType

    @property
    def type_sql(self) -> str:
        return self.type.sql("duckdb")

    @property
    def arrow_type(self) -> pa.DataType:
        """Arrow type that carries this parameter's values (the SQL casts to the exact type)."""
        t = self.type.this
        if t in _INT_RANGES:
            return pa.int64()
        if t in _FLOATS:
            return pa.float64()
        if t == exp.DataType.Type.BOOLEAN:
            return pa.bool_()
        if t in _TIMESTAMPS:
            return pa.timestamp("us")
        if t == exp.DataType.Type.DATE:
            return pa.date32()
        return pa.string()

    def coerce(self, value: Any) -> Any:
        """Return ``value`` as the Python value DuckDB binds for this type, or raise RequestError."""
        if value is None:
            raise RequestError(f"parameter {self.name!r} is NULL; approxql needs a value for every parameter")
        t = self.type.this
        try:
            if t in _STRINGS:
                if not isinstance(value, str):
                    raise TypeError
                return value
            if t in _INT_RANGES:
                return _to_int(value, _INT_RANGES[t])
            if t in _FLOATS:
                return _to_float(value)
            if t == exp.DataType.Type.BOOLEAN:
                return _to_bool(value)
            if t in _TIMESTAMPS:
                return _to_timestamp(value)
            if t == exp.DataType.Type.DATE:
                return _to_date(value)
        except (TypeError, ValueError, OverflowError) as e:
            why = f" ({e})" if str(e) else ""
            raise RequestError(
                f"parameter {self.name!r} expects {self.type_sql}, got {value!r} "
                f"of type {type(value).__name__}{why}"
            ) from None
        # Any other DuckDB type travels as text; the CAST in the SQL converts and validates it.
        return value.isoformat() if hasattr(value, "isoformat") else str(value)


def parse_params(text: str) -> list[Param]:
    """Parse ``name TYPE, name TYPE(…)`` into Params; raises ValueError with the bad piece."""
    params: list[Param] = []
    for piece in _split_top_level(text):
        name, _, type_text = piece.strip().partition(" ")
        if not name or not type_text.strip():
            raise ValueError(f"expected 'name TYPE', got {piece.strip()!r}")
        if not name.isidentifier():
            raise ValueError(f"parameter name {name!r} is not an identifier")
        try:
            dtype = exp.DataType.build(type_text.strip(), dialect="duckdb")
        except (sqlglot.errors.ParseError, ValueError):
            raise ValueError(f"parameter {name!r} has unknown type {type_text.strip()!r}") from None
        if dtype.this == exp.DataType.Type.USERDEFINED:
            raise ValueError(f"parameter {name!r} has unknown type {type_text.strip()!r}")
        if any(p.name == name for p in params):
            raise ValueError(f"parameter {name!r} is declared twice")
        params.append(Param(name, dtype))
    if not params:
        raise ValueError("no parameters declared")
    return params


def bind_request(params: list[Param], request: Mapping[str, Any]) -> dict[str, Any]:
    """Check a request against the declared parameters and convert every value."""
    if not isinstance(request, Mapping):
        raise RequestError(f"a request must be a mapping of parameter name to value, got {type(request).__name__}")
    names = [p.name for p in params]
    missing = [n for n in names if n not in request]
    extra = [k for k in request if k not in names]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(map(repr, missing))}")
        for k in extra:
            hint = difflib.get_close_matches(str(k), names, n=1)
            parts.append(f"unknown {k!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        raise RequestError(f"request parameters do not match the pipeline ({'; '.join(parts)}); expected {names}")
    return {p.name: p.coerce(request[p.name]) for p in params}


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses (DECIMAL(10,2) stays whole)."""
    pieces, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            pieces.append(text[start:i])
            start = i + 1
    pieces.append(text[start:])
    return [p for p in pieces if p.strip()]


def _to_int(value: Any, bits: int) -> int:
    if isinstance(value, bool):
        raise TypeError
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("not an integer")
        value = int(value)
    elif isinstance(value, str):
        value = int(value.strip())
    elif not isinstance(value, int):
        if not hasattr(value, "__index__"):  # numpy integers have it, floats do not
            raise TypeError
        value = value.__index__()
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if not lo <= value <= hi:
        raise OverflowError(f"outside [{lo}, {hi}]")
    return value


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError
    if isinstance(value, str):
        value = value.strip()
    elif not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise TypeError
    out = float(value)
    if not math.isfinite(out):
        raise ValueError("not a finite number")
    return out


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise TypeError


def _to_timestamp(value: Any) -> dt.datetime:
    if hasattr(value, "to_pydatetime"):  # pandas / numpy-like timestamps
        value = value.to_pydatetime()
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:  # TIMESTAMP is naive: store the UTC wall time
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return value
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day)
    raise TypeError


def _to_date(value: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        return dt.date.fromisoformat(value.strip())
    raise TypeError
