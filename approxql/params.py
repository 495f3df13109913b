"""Request parameters: declared types, and turning request values into bound values.

Request values are never formatted into SQL. They are checked and converted here, then
bound to DuckDB named parameters that the feature SQL casts to the declared type.
"""
from __future__ import annotations

import datetime as dt
import difflib
import math
import re
import threading
from dataclasses import dataclass
from typing import Any, Mapping

import duckdb
import pyarrow as pa
import sqlglot
from sqlglot import exp

from .errors import RequestError

_INT_RANGES = {
    exp.DataType.Type.TINYINT: 8, exp.DataType.Type.SMALLINT: 16,
    exp.DataType.Type.INT: 32, exp.DataType.Type.BIGINT: 64,
}
# unsigned and 128-bit integers: checked here, then bound as their decimal text (the SQL casts it)
_WIDE_INT_RANGES = {
    exp.DataType.Type.UTINYINT: (0, 2 ** 8 - 1), exp.DataType.Type.USMALLINT: (0, 2 ** 16 - 1),
    exp.DataType.Type.UINT: (0, 2 ** 32 - 1), exp.DataType.Type.UBIGINT: (0, 2 ** 64 - 1),
    exp.DataType.Type.INT128: (-(2 ** 127), 2 ** 127 - 1), exp.DataType.Type.UINT128: (0, 2 ** 128 - 1),
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
                return _utf8(value)
            if t in _INT_RANGES:
                return _to_int(value, _INT_RANGES[t])
            if t in _WIDE_INT_RANGES:
                return str(_to_int(value, _WIDE_INT_RANGES[t]))
            if t in _FLOATS:
                return _in_float_type(_to_float(value), self.type)
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
        # Any other DuckDB type travels as text; the CAST in the SQL converts it. It is validated
        # here by the same CAST, so a bad value is this parameter's RequestError, not a failed query.
        text = value.isoformat() if hasattr(value, "isoformat") else value if isinstance(value, str) else None
        if text is None:
            if isinstance(value, (bytes, bytearray, memoryview, Mapping, list, tuple, set, frozenset)):
                raise RequestError(f"parameter {self.name!r} expects {self.type_sql}, got {value!r} "
                                   f"of type {type(value).__name__}")
            text = str(value)
        try:
            _check_cast(_utf8(text), self.type_sql)
        except ValueError as e:
            raise RequestError(f"parameter {self.name!r} expects {self.type_sql}, got {value!r} "
                               f"of type {type(value).__name__} ({e})") from None
        return text


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
        except (sqlglot.errors.ParseError, sqlglot.errors.TokenError, ValueError, RecursionError):
            raise ValueError(f"parameter {name!r} has unknown type {type_text.strip()!r}") from None
        _check_whole_type(name, type_text.strip(), dtype)
        if dtype.this == exp.DataType.Type.USERDEFINED:
            raise ValueError(f"parameter {name!r} has unknown type {type_text.strip()!r}")
        if any(p.name == name for p in params):
            raise ValueError(f"parameter {name!r} is declared twice")
        params.append(Param(name, dtype))
    if not params:
        raise ValueError("no parameters declared")
    return params


_CONSTRAINTS = re.compile(r"\b(NOT|NULL|DEFAULT|CHECK|PRIMARY|UNIQUE|REFERENCES|COLLATE|GENERATED|CONSTRAINT|AS)\b",
                          re.IGNORECASE)


def _check_whole_type(name: str, text: str, dtype) -> None:
    """The whole text must be one type, read the same by sqlglot and DuckDB: sqlglot stops at what
    it cannot read ('DOUBLE; DROP TABLE t' gave a Block, 'INTEGER NOT NULL' an INTEGER), and a
    constraint is not a type."""
    bad = ValueError(f"parameter {name!r} has unknown type {text!r}")
    if not isinstance(dtype, exp.DataType) or _CONSTRAINTS.search(text) or not re.fullmatch(r"[A-Za-z0-9_ (),\[\]]+", text):
        raise bad
    try:
        same = str(duckdb.sqltype(text)) == str(duckdb.sqltype(dtype.sql("duckdb")))
    except (duckdb.Error, RuntimeError, TypeError):
        raise bad from None
    if not same:
        raise bad


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


def _utf8(value: str) -> str:
    """Refuse text DuckDB cannot store (lone surrogates, e.g. from undecodable command-line bytes)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode text (it holds a lone surrogate)") from None
    return value


_REAL_OVERFLOW = 2.0 ** 128 - 2.0 ** 103   # a DOUBLE this large rounds to infinity as a REAL


def _in_float_type(value: float, dtype: exp.DataType) -> float:
    """Refuse a finite DOUBLE that the declared REAL or DECIMAL(p, s) cannot hold (the SQL CAST would fail)."""
    t = dtype.this
    if t == exp.DataType.Type.FLOAT:
        if abs(value) >= _REAL_OVERFLOW:
            raise OverflowError("outside the range of REAL")
    elif t == exp.DataType.Type.DECIMAL:
        args = [e.name for e in dtype.expressions]
        precision, scale = (int(args[0]), int(args[1]) if len(args) > 1 else 0) if args else (18, 3)
        # DuckDB rounds to the scale, then needs fewer than precision - scale integer digits
        if abs(value) >= float(10 ** (precision - scale)) - 0.5 * 10.0 ** -scale:
            raise OverflowError(f"outside the range of {dtype.sql('duckdb')}")
    return value


_CASTER: Any = None
_CASTER_LOCK = threading.Lock()


def _check_cast(text: str, type_sql: str) -> None:
    """Run ``CAST(text AS type)`` on a private in-memory DuckDB; raise ValueError if it fails."""
    global _CASTER
    import duckdb
    with _CASTER_LOCK:
        if _CASTER is None:
            _CASTER = duckdb.connect(":memory:")
        cur = _CASTER.cursor()
    try:
        cur.execute(f"SELECT CAST($v AS {type_sql})", {"v": text}).fetchall()
    except duckdb.Error as e:
        raise ValueError(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__) from None
    finally:
        cur.close()


def _to_int(value: Any, bits: "int | tuple[int, int]") -> int:
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
    lo, hi = bits if isinstance(bits, tuple) else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
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
