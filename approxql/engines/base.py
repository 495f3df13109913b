"""The engine interface: what the rest of approxql needs from a SQL engine.

Exact feature computation and the controller's cursor go through this interface. DuckDB is the
embedded default; another engine (a distributed SQL engine) implements the same methods in its
own dialect. The sampling strategies in ``approxql.sampling`` write DuckDB SQL (key ranges on a
prepared copy, TABLESAMPLE SYSTEM): another engine adds strategies of its own beside them.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import pyarrow as pa

from ..plan import FeatureQuery


@dataclass(frozen=True)
class Compiled:
    """A statement an engine has compiled once and runs many times."""

    sql: str
    queries: tuple[FeatureQuery, ...]
    params: tuple[str, ...]   # request parameters the statement binds


class Engine(ABC):
    """Runs feature queries with bound request parameters."""

    name: str = "engine"
    dialect: str = "duckdb"   # sqlglot dialect the engine's SQL is generated in

    @abstractmethod
    def cursor(self):
        """A handle of its own for one call (DuckDB: a cursor), usable as a context manager."""

    @abstractmethod
    def check_tables(self, queries: Sequence[FeatureQuery]) -> None:
        """Raise QueryError naming any table the queries read that does not exist."""

    @abstractmethod
    def compile_exact(self, queries: Sequence[FeatureQuery], *, batch: bool = False) -> Compiled:
        """One statement computing every feature of ``queries`` exactly, for one request
        (bound parameters) or, with ``batch``, for a relation of requests."""

    @abstractmethod
    def exact_features(self, compiled: Compiled, params: Mapping[str, Any], cur=None) -> dict[str, Any]:
        """Every feature computed exactly for one request (NULL stays None), on ``cur`` when the
        caller holds a cursor (opening one costs a little on every request)."""

    @abstractmethod
    def exact_features_many(self, compiled: Compiled, requests: pa.Table) -> pa.Table:
        """Exact features for many requests at once: one row per request, in request order."""
