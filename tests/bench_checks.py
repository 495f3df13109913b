"""Checks every benchmark pipeline's tests share: generate, checksum, the pipeline file against
the requests table."""
from __future__ import annotations

import duckdb

import approxql
from benchmarks.suite.spec import BenchPipeline


def generated(pipeline: BenchPipeline, scale: float, seed: int) -> duckdb.DuckDBPyConnection:
    """A fresh in-memory database holding the pipeline's generated tables."""
    con = duckdb.connect()
    pipeline.generate(con, scale, seed)
    return con


def checksum(con: duckdb.DuckDBPyConnection, table: str) -> tuple:
    """Row count and a hash of every row in order (for tables generated row by row)."""
    return con.execute(f'SELECT count(*), sum(hash(rowid, x)) FROM "{table}" x').fetchall()[0]


def pipeline_file_and_request_columns(pipeline: BenchPipeline, con: duckdb.DuckDBPyConnection):
    """The pipeline file read and matched to the pipeline; the requests table's (column, type)
    pairs, which must be the file's params in order, then ``label``."""
    spec = approxql.read_pipeline_file(pipeline.sql_path)
    assert (spec.name, spec.task, spec.model_path) == (pipeline.name, pipeline.task, pipeline.model_path)
    cols = con.execute(f"SELECT column_name, column_type FROM (DESCRIBE {pipeline.name}_requests)").fetchall()
    assert [c for c, _ in cols] == [p.name for p in spec.params] + ["label"]
    assert [t for _, t in cols[:-1]] == [con.execute(f"SELECT typeof(NULL::{p.type_sql})").fetchall()[0][0]
                                         for p in spec.params]
    return spec, cols
