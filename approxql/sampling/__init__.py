"""Approximate feature computation: nested sampling in DuckDB and honest error for every aggregate.

``terms`` takes an aggregate query apart, ``layout`` turns its moment terms into contribution
columns, ``support`` decides how many sampled rows an interval needs, the strategies (``prepared``,
``system``, ``exact``) write the SQL of a sample increment, and ``sampler`` runs increments for one
request and turns them into estimates.
"""
from .catalog import PreparedTable, prepare
from .sampler import STRATEGIES, CompiledQuery, QueryResult, QuerySampler, compile_query

__all__ = ["STRATEGIES", "CompiledQuery", "PreparedTable", "QueryResult", "QuerySampler", "compile_query", "prepare"]
