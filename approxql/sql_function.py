"""Pipelines as DuckDB functions: ``SELECT flights_delay(carrier, time_hour, distance).value FROM ...``.

``register`` adds two scalar functions named after the pipeline: ``<name>(params...)`` returns
STRUCT(value, probability, exact, rounds, met_bound) from ``predict_many`` on each chunk of rows
DuckDB hands it (up to 2048), and ``<name>_exact(params...)`` the same STRUCT from exactly
computed features. Arguments take the pipeline's declared parameter types, in order.

NULL handling follows SQL: a row with a NULL argument gets a NULL result (the function is not
called for it). Integer parameters take BIGINT and float parameters DOUBLE, so any integer or
numeric column binds, and each value is checked against the declared type (a value out of an
INTEGER's range is refused like a bad Python request). An argument of another kind is cast by
DuckDB where an implicit cast exists, and otherwise the call fails to bind with DuckDB's "No
function matches" error naming the expected types. A request the pipeline refuses (e.g. a NULL feature without a fill value) fails the query
with that error, or gives NULL with ``errors="null"``.
"""
from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from .controller import check_options
from .errors import ModelError, OptionError
from .pipeline import Pipeline, load_pipeline

RESULT_FIELDS = ("value", "probability", "exact", "rounds", "met_bound")
# the widest SQL type of each parameter's kind: any integer column binds (ranges are checked per
# value, as for Python requests), any float or decimal column binds as DOUBLE
_ARGUMENT_TYPES = {pa.int64(): "BIGINT", pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN", pa.timestamp("us"): "TIMESTAMP",
                   pa.date32(): "DATE", pa.string(): "VARCHAR"}


def register(con: duckdb.DuckDBPyConnection, pipeline: Pipeline | str | Path, *, tau: float | None = None,
             delta: float | None = None, seed: int = 0, errors: str = "raise", name: str | None = None,
             **options: Any) -> Pipeline:
    """Add ``<name>`` and ``<name>_exact`` to ``con``; ``pipeline`` is a Pipeline or a pipeline file
    (loaded on ``con``), ``name`` defaults to the pipeline's. tau and delta default to the
    pipeline file's; other ``predict_many`` options (``strategy``, ``points``, ...) may be given
    too. Registering the same name again on the same connection replaces the functions.
    Returns the pipeline."""
    pipe = pipeline if isinstance(pipeline, Pipeline) else load_pipeline(pipeline, con=con)
    if errors not in ("raise", "null"):
        raise OptionError(f"errors must be 'raise' or 'null', got {errors!r}")
    kwargs = dict(tau=tau, delta=delta, seed=seed, errors=errors, **options)
    allowed = {"policy", "initial_fraction", "max_rounds", "points", "time_budget_ms", "strategy", "learn"}
    unknown = set(options) - allowed
    if unknown:
        raise OptionError(f"register: unknown option(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(allowed))}")
    check_options(task=pipe.task, tau=tau, delta=delta, seed=seed, default_tau=pipe.spec.tau,
                  default_delta=pipe.spec.delta, **{k: options.get(k) for k in
                                                    ("initial_fraction", "max_rounds", "points", "time_budget_ms")},
                  policy=options.get("policy", "approxql"), strategy=options.get("strategy", "auto"),
                  learn=options.get("learn", True))   # a bad option fails now, not on the first row
    names = [p.name for p in pipe.params]
    arg_types = [duckdb.sqltype(_ARGUMENT_TYPES[p.arrow_type]) for p in pipe.params]
    result = duckdb.struct_type({"value": _value_type(pipe), "probability": duckdb.sqltype("DOUBLE"),
                                 "exact": duckdb.sqltype("BOOLEAN"), "rounds": duckdb.sqltype("INTEGER"),
                                 "met_bound": duckdb.sqltype("BOOLEAN")})

    value_type = result.children[0][1]
    arrow_value = {"DOUBLE": pa.float64(), "BIGINT": pa.int64(), "VARCHAR": pa.string()}[str(value_type)]

    def approximate(*columns: pa.Array) -> pa.StructArray:
        return _struct(pipe.predict_many(_table(names, columns), **kwargs), arrow_value)

    def exact(*columns: pa.Array) -> pa.StructArray:
        return _struct(pipe.predict_exact_many(_table(names, columns), errors=errors), arrow_value)

    name = pipe.name if name is None else name
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise OptionError(f"register: name must be an identifier, got {name!r}")
    for fname, fn in ((name, approximate), (f"{name}_exact", exact)):
        fn.__signature__ = inspect.Signature([inspect.Parameter(n, inspect.Parameter.POSITIONAL_ONLY) for n in names])
        try:
            con.remove_function(fname)   # registering again on this connection replaces the function
        except duckdb.Error:
            pass
        try:
            # side_effects: results depend on the tables, so DuckDB must call it for every row it needs
            con.create_function(fname, fn, arg_types, result, type="arrow", side_effects=True)
            _ALIVE[(id(con), fname)] = (con, fn)
        except duckdb.CatalogException:
            raise OptionError(f"register: a function named {fname!r} already exists in this database; DuckDB "
                              f"replaces a Python function only through the connection that registered it, so "
                              f"register again there, or pass name=...") from None
    return pipe


# DuckDB's catalog keeps a bare pointer to a Python function, released when the registering
# connection is closed or collected: a later call then runs freed memory (measured: a crash, or
# another function called). Holding both here keeps every registered function callable.
_ALIVE: dict[tuple[int, str], tuple] = {}


def register_all(con: duckdb.DuckDBPyConnection, folder: str | Path, **kwargs: Any) -> dict[str, Pipeline]:
    """Register every pipeline file (``*.sql``) in ``folder``; returns them by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise OptionError(f"register_all: {folder} is not a folder")
    files = sorted(folder.glob("*.sql"))
    if not files:
        raise OptionError(f"register_all: no pipeline files (*.sql) in {folder}")
    pipes = {}
    for path in files:
        pipe = register(con, path, **kwargs)
        if pipe.name in pipes:
            raise OptionError(f"register_all: two pipelines are named {pipe.name!r} "
                              f"({pipes[pipe.name].spec.path.name} and {path.name})")
        pipes[pipe.name] = pipe
    return pipes


def _table(names, columns) -> pa.Table:
    return pa.table({n: (c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c) for n, c in zip(names, columns)})


def _struct(out: pa.Table, value_type: pa.DataType) -> pa.StructArray:
    arrays = [out.column(f).combine_chunks() for f in RESULT_FIELDS]
    arrays[0] = arrays[0].cast(value_type)
    return pa.StructArray.from_arrays(arrays, names=list(RESULT_FIELDS))


def _value_type(pipe: Pipeline):
    """DOUBLE for regression; the label's type (BIGINT or VARCHAR) for classification."""
    if pipe.task == "regression":
        return duckdb.sqltype("DOUBLE")
    label = pipe.model.label_type
    if label == "tensor(string)":
        return duckdb.sqltype("VARCHAR")
    if label in ("tensor(int64)", "tensor(int32)"):
        return duckdb.sqltype("BIGINT")
    raise ModelError(f"model {pipe.model.path.name}: label output type {label} cannot be a SQL value")
