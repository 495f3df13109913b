"""The requests a profile replays: a file (JSON lines, or anything DuckDB reads: CSV, Parquet, ...)
or the database's ``<pipeline name>_requests`` table, with at most ``n`` drawn deterministically."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from ..engines.duckdb import quote
from ..errors import RequestError

JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")


def load_requests(con: duckdb.DuckDBPyConnection, spec, path: str | Path | None, *, n: int,
                  seed: int = 0) -> list[dict[str, Any]]:
    """Up to ``n`` requests (the pipeline's params only), the same ones for the same seed."""
    names = [p.name for p in spec.params]
    if path is None:
        table = f"{spec.name}_requests"
        with con.cursor() as cur:
            found = cur.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [table]).fetchall()[0][0]
            if not found:
                raise RequestError(f"no requests to replay: the database has no table {table!r}; pass --requests FILE "
                                   f"(JSON lines, CSV or Parquet with columns {', '.join(names)})")
            cols = [r[0] for r in cur.execute("SELECT column_name FROM duckdb_columns() WHERE table_name = ?",
                                              [table]).fetchall()]
            _require(cols, names, f"table {table}")
            rows = cur.sql(f"SELECT {', '.join(quote(c) for c in names)} FROM {quote(table)}").to_arrow_table().to_pylist()
    else:
        rows = _read_file(Path(path), names)
    if not rows:
        raise RequestError(f"no requests to replay in {path or spec.name + '_requests'}")
    if len(rows) > n:
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), n, replace=False))
        rows = [rows[i] for i in keep]
    return [{k: r[k] for k in names} for r in rows]


def _read_file(path: Path, names: list[str]) -> list[dict]:
    if not path.is_file():
        raise OSError(f"requests file {path} not found")
    if path.suffix.lower() in JSON_SUFFIXES:
        text = path.read_text()
        try:
            rows = json.loads(text) if text.lstrip().startswith("[") else [
                json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise RequestError(f"{path}: not JSON lines (one object per line) or a JSON array: {e}") from None
        if not all(isinstance(r, dict) for r in rows):
            raise RequestError(f"{path}: every request must be a JSON object of parameter name to value")
        for i, r in enumerate(rows):
            _require(list(r), names, f"{path} line {i + 1}")
        return rows
    literal = "'" + str(path).replace("'", "''") + "'"
    with duckdb.connect() as mem:
        try:
            table = mem.sql(f"SELECT * FROM {literal}").to_arrow_table()
        except duckdb.Error as e:
            raise RequestError(f"{path}: DuckDB cannot read it as a table ({str(e).strip().splitlines()[0]}); "
                               f"give JSON lines, CSV or Parquet") from None
    _require(table.column_names, names, str(path))
    return table.select(names).to_pylist()


def _require(have, names, where: str) -> None:
    missing = [c for c in names if c not in have]
    if missing:
        raise RequestError(f"{where} lacks the pipeline's parameter(s) {', '.join(missing)} "
                           f"(it has: {', '.join(have) or 'nothing'})")
