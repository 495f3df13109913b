"""The DuckDB engine, approxql's embedded default."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import duckdb
import pyarrow as pa
from sqlglot import exp

from ..errors import QueryError
from ..plan import FeatureQuery, QueryKind
from .base import Compiled, Engine

_ROW_ID = "__approxql_rid"


class DuckDBEngine(Engine):
    """Runs feature queries on a DuckDB connection; every call uses its own cursor, so one
    engine serves many threads."""

    name = "duckdb"
    dialect = "duckdb"

    def __init__(self, con: duckdb.DuckDBPyConnection):
        if not isinstance(con, duckdb.DuckDBPyConnection):
            raise TypeError(f"con must be a duckdb connection, got {type(con).__name__}")
        self.con = con

    def cursor(self) -> duckdb.DuckDBPyConnection:
        return self.con.cursor()

    def check_tables(self, queries: Sequence[FeatureQuery]) -> None:
        with self.cursor() as cur:
            known = {r[0].lower() for r in cur.execute(
                "SELECT table_name FROM duckdb_tables() UNION ALL SELECT view_name FROM duckdb_views()").fetchall()}
        for q in queries:
            for t in q.tables:
                if "." not in t and t.lower() not in known:
                    raise QueryError(f"feature query {q.name} (line {q.line}) reads table {t!r}, "
                                     f"which does not exist in this database")

    # -- exact, one request ---------------------------------------------------------------
    def exact_features(self, compiled: Compiled, params: Mapping[str, Any], cur=None) -> dict[str, Any]:
        if cur is None:
            with self.cursor() as own:
                return self.exact_features(compiled, params, own)
        try:
            cur.execute(compiled.sql, {k: params[k] for k in compiled.params})
            rows = cur.fetchmany(2)
        except duckdb.Error as e:
            raise QueryError(f"feature queries failed: {_first_line(e)}") from e
        names = [d[0] for d in cur.description]
        if len(rows) != 1:
            raise QueryError(self._too_many_rows(compiled.queries, params))
        return dict(zip(names, rows[0]))

    # -- exact, many requests ---------------------------------------------------------------
    def exact_features_many(self, compiled: Compiled, requests: pa.Table) -> pa.Table:
        reqs = requests.append_column(_ROW_ID, pa.array(range(requests.num_rows), pa.int64()))
        with self.cursor() as cur:
            try:
                cur.register("__approxql_requests", reqs)
                out = cur.sql(compiled.sql).to_arrow_table()
            except duckdb.Error as e:
                raise QueryError(f"feature queries failed: {_first_line(e)}") from e
            finally:
                cur.unregister("__approxql_requests")
        if out.num_rows != requests.num_rows:
            raise QueryError("a lookup statement returned more than one row for some request; "
                             "a feature query must return at most one row")
        return out

    def compile_exact(self, queries: Sequence[FeatureQuery], *, batch: bool = False) -> Compiled:
        """Each query becomes a one-row subquery joined to a single base row (or, for
        batches, laterally to each request row): one round trip for all features."""
        if batch:
            base = "(SELECT * FROM __approxql_requests) AS __r"
            joins = [f"LEFT JOIN LATERAL ({_bind_to_columns(q.select).sql(self.dialect)}) AS {q.name} ON TRUE"
                     for q in queries]
            cols = ", ".join(f"{q.name}.{quote(f)}" for q in queries for f in q.features)
            sql = f"SELECT {cols} FROM {base} {' '.join(joins)} ORDER BY __r.{_ROW_ID}"
        else:
            joins = [f"LEFT JOIN ({q.sql(self.dialect)}) AS {q.name} ON TRUE" for q in queries]
            cols = ", ".join(f"{q.name}.{quote(f)}" for q in queries for f in q.features)
            sql = f"SELECT {cols} FROM (SELECT 1) AS __one {' '.join(joins)}"
        params = tuple(dict.fromkeys(p for q in queries for p in q.params))
        return Compiled(sql, tuple(queries), params)

    def _too_many_rows(self, queries, params) -> str:
        """Name the lookup that returned several rows (a rare path: one query per lookup)."""
        for q in queries:
            if q.kind is QueryKind.LOOKUP:
                with self.cursor() as cur:
                    sql = f"SELECT count(*) FROM ({q.sql(self.dialect)})"
                    n = cur.execute(sql, _used_params([q], params)).fetchall()[0][0]
                if n > 1:
                    return (f"lookup query {q.name} (line {q.line}) returned {n} rows for this request; "
                            f"a feature query must return at most one row")
        return "feature queries returned an unexpected number of rows"


def _bind_to_columns(select: exp.Select) -> exp.Select:
    """Replace each ``$param`` with the request relation's column of that name."""
    out = select.copy()
    for node in list(out.find_all(exp.Placeholder)):
        node.replace(exp.column(node.name, table="__r", quoted=True))
    return out


def _used_params(queries: Sequence[FeatureQuery], params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: params[k] for q in queries for k in q.params}


def quote(name: str) -> str:
    """Quote an identifier (table or column) for DuckDB."""
    return '"' + name.replace('"', '""') + '"'


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
