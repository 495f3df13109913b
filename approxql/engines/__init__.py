"""Engines that run feature queries. DuckDB is the embedded default."""
from .base import Compiled, Engine
from .duckdb import DuckDBEngine

__all__ = ["Compiled", "Engine", "DuckDBEngine"]
