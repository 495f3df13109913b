"""Reading a pipeline file: a header of ``-- key: value`` lines, then SELECT statements.

The result is a ``PipelineSpec``: plain data, validated, with no database or model attached.
Every problem is reported as a PipelineError naming the file and line.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import sqlglot
from sqlglot import exp
from sqlglot.dialects.duckdb import DuckDB
from sqlglot.tokens import TokenType

from .errors import PipelineError
from .params import Param, parse_params
from .plan import FeatureQuery, PlanError, QueryKind, build_query

REQUIRED_KEYS = ("name", "model", "task", "params", "inputs")
OPTIONAL_KEYS = ("delta", "tau", "fill")
TASKS = ("regression", "classification")
_HEADER_LINE = re.compile(r"^--\s*([A-Za-z_]+)\s*:(.*)$")


@dataclass(frozen=True)
class PipelineSpec:
    """Everything a pipeline file says, validated."""

    path: Path
    name: str
    model_path: Path
    task: str
    params: tuple[Param, ...]
    inputs: tuple[str, ...]
    queries: tuple[FeatureQuery, ...]
    delta: float | None = None
    tau: float = 0.95
    fill: dict[str, float] = field(default_factory=dict)

    @property
    def aggregate_queries(self) -> tuple[FeatureQuery, ...]:
        return tuple(q for q in self.queries if q.kind is QueryKind.AGGREGATE)

    def query_of(self, feature: str) -> FeatureQuery:
        return next(q for q in self.queries if feature in q.features)


def read_pipeline_file(path: str | Path) -> PipelineSpec:
    """Parse and validate a pipeline file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PipelineError("pipeline file not found", path=str(path)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise PipelineError(f"cannot read pipeline file: {e}", path=str(path)) from None
    return parse_pipeline(text, path)


def parse_pipeline(text: str, path: str | Path = "<pipeline>") -> PipelineSpec:
    """Parse pipeline text; ``path`` names it in errors and anchors the model path."""
    path = Path(path)
    src = str(path)
    header, lines_of, body_start = _read_header(text, src)

    def fail(msg: str, key: str | None = None):
        raise PipelineError(msg, path=src, line=lines_of.get(key) if key else None)

    missing = [k for k in REQUIRED_KEYS if k not in header]
    if missing:
        fail(f"missing header key(s) {', '.join(missing)}; a pipeline file starts with "
             f"'-- key: value' lines for {', '.join(REQUIRED_KEYS)}")
    name = header["name"]
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        fail(f"name {name!r} must be an identifier (letters, digits, underscore), it is also the SQL function name", "name")
    task = header["task"]
    if task not in TASKS:
        fail(f"task must be one of {', '.join(TASKS)}, got {task!r}", "task")
    try:
        params = parse_params(header["params"])
    except ValueError as e:
        fail(f"params: {e}", "params")
    inputs = [s.strip() for s in header["inputs"].split(",") if s.strip()]
    if not inputs:
        fail("inputs: no model inputs listed", "inputs")
    dup = sorted({i for i in inputs if inputs.count(i) > 1})
    if dup:
        fail(f"inputs: {', '.join(dup)} listed more than once", "inputs")
    delta = _number(header, "delta", lines_of, src, lambda v: v >= 0, "a number >= 0") if "delta" in header else None
    tau = _number(header, "tau", lines_of, src, lambda v: 0 < v < 1, "a number in (0, 1)") if "tau" in header else 0.95

    queries = _read_statements(text, body_start, params, src)
    producers: dict[str, FeatureQuery] = {}
    for q in queries:
        for f in q.features:
            if f in producers:
                raise PipelineError(f"feature {f!r} is produced by two statements (lines {producers[f].line} "
                                    f"and {q.line}); every feature must come from exactly one", path=src, line=q.line)
            producers[f] = q
    for i in inputs:
        if i not in producers:
            hint = difflib.get_close_matches(i, list(producers), n=1)
            fail(f"input {i!r} is not produced by any statement" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                 + f"; statements produce {', '.join(producers)}", "inputs")
    fill = _read_fill(header.get("fill", ""), producers, lines_of.get("fill"), src)
    try:
        model_path = (path.parent / header["model"]).resolve()
    except (ValueError, OSError) as e:   # e.g. a NUL byte in the path
        fail(f"model: {header['model']!r} is not a usable file path ({e})", "model")
    return PipelineSpec(path=path, name=name, model_path=model_path, task=task,
                        params=tuple(params), inputs=tuple(inputs), queries=tuple(queries),
                        delta=delta, tau=tau, fill=fill)


def _read_header(text: str, src: str) -> tuple[dict[str, str], dict[str, int], int]:
    """Header keys, the line of each, and the index of the first body line."""
    header: dict[str, str] = {}
    lines_of: dict[str, int] = {}
    lines = text.splitlines()
    body_start = len(lines)
    for i, raw in enumerate(lines):
        line = raw.strip()
        if not line:
            continue
        if not line.startswith("--"):
            body_start = i
            break
        m = _HEADER_LINE.match(line)
        if not m:
            continue  # a plain comment
        key, value = m.group(1).lower(), m.group(2).strip()
        if key not in REQUIRED_KEYS + OPTIONAL_KEYS:
            hint = difflib.get_close_matches(key, REQUIRED_KEYS + OPTIONAL_KEYS, n=1)
            raise PipelineError(f"unknown header key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                                + f"; known keys: {', '.join(REQUIRED_KEYS + OPTIONAL_KEYS)}", path=src, line=i + 1)
        if key in header and key != "fill":
            raise PipelineError(f"header key {key!r} given twice (first on line {lines_of[key]})", path=src, line=i + 1)
        if not value:
            raise PipelineError(f"header key {key!r} has no value", path=src, line=i + 1)
        header[key] = f"{header[key]}, {value}" if key in header else value
        lines_of.setdefault(key, i + 1)
    return header, lines_of, body_start


def _read_statements(text: str, body_start: int, params: list[Param], src: str) -> list[FeatureQuery]:
    lines = text.splitlines(keepends=True)
    offset = sum(len(l) for l in lines[:body_start])
    body = text[offset:]
    try:
        tokens = DuckDB().tokenize(body)
    except sqlglot.errors.TokenError as e:
        raise PipelineError(f"cannot tokenize SQL: {e}", path=src, line=body_start + 1) from None
    chunks: list[tuple[int, int, int]] = []  # (start, end, line of first token) per statement
    start, first_line = 0, None
    for tok in tokens:
        if tok.token_type == TokenType.SEMICOLON:
            if first_line is not None:
                chunks.append((start, tok.start, first_line))
            start, first_line = tok.end + 1, None
        elif first_line is None:  # token.line drifts after '$' tokens: count newlines instead
            first_line = body.count("\n", 0, tok.start) + 1
    if first_line is not None:
        chunks.append((start, len(body), first_line))
    queries: list[FeatureQuery] = []
    for lo, hi, tok_line in chunks:
        sql = body[lo:hi]
        line = body_start + tok_line
        try:
            statement = sqlglot.parse_one(sql, read="duckdb")
        except sqlglot.errors.TokenError as e:
            raise PipelineError(f"cannot tokenize SQL: {e}", path=src, line=line) from None
        except RecursionError:
            raise PipelineError("SQL nested too deeply to parse", path=src, line=line) from None
        except sqlglot.errors.ParseError as e:
            err = e.errors[0] if e.errors else {}
            err_line = body_start + body.count("\n", 0, lo) + (err.get("line") or 1)
            desc = err.get("description") or str(e).splitlines()[0]
            raise PipelineError(f"SQL parse error: {desc}", path=src, line=err_line) from None
        refused = _not_read_only(statement, sql)
        if refused:
            raise PipelineError(f"only SELECT statements are allowed in a pipeline file (it can only read), found "
                                f"{refused}", path=src, line=line)
        try:
            queries.append(build_query(f"q{len(queries) + 1}", statement, params, line))
        except PlanError as e:
            raise PipelineError(str(e), path=src, line=line) from None
    if not queries:
        raise PipelineError("no SQL statements after the header", path=src, line=body_start + 1)
    return queries


# statements (or clauses) that write, change settings or run arbitrary commands: refused anywhere in
# a statement, e.g. a data-modifying CTE ``WITH x AS (DELETE ... RETURNING *) SELECT ...`` (DuckDB runs
# those) or ``SELECT ... INTO t`` (which sqlglot writes out as CREATE TABLE t AS SELECT ...)
_WRITES = tuple(getattr(exp, n) for n in (
    "DML", "DDL", "Drop", "Alter", "TruncateTable", "Command", "Set", "Pragma", "Use", "Transaction", "Commit",
    "Rollback", "Install", "Attach", "Detach", "Export", "Analyze", "Grant", "Revoke", "Comment", "Refresh", "Cache",
    "Uncache", "LoadData", "Kill", "Execute") if hasattr(exp, n))


def _not_read_only(statement: exp.Expression, sql: str) -> str | None:
    """What makes a parsed statement more than a read, named as its author wrote it; None for a plain SELECT."""
    if not isinstance(statement, exp.Select):
        word = re.match(r"\s*([A-Za-z]+)", sql)
        keyword = word.group(1).upper() if word else ""
        return keyword if keyword and keyword not in ("WITH", "FROM", "SELECT") else type(statement).__name__.upper()
    for node in statement.walk():
        if isinstance(node, exp.Into):
            return "SELECT ... INTO (it creates a table)"
        if isinstance(node, _WRITES):
            kind = node.name.upper() if isinstance(node, exp.Command) and node.name else type(node).__name__.upper()
            return f"{kind} inside the SELECT"
        if isinstance(node, exp.Func) and _function_name(node) in _STATEFUL:
            return f"{_function_name(node)}() (it changes a sequence)"
    return None


_STATEFUL = {"NEXTVAL", "SETVAL"}


def _function_name(node: exp.Func) -> str:
    return (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).upper()


def _number(header, key, lines_of, src, ok, expected) -> float:
    try:
        value = float(header[key])
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not ok(value):
        raise PipelineError(f"{key} must be {expected}, got {header[key]!r}", path=src, line=lines_of[key])
    return value


def _read_fill(text: str, producers: dict, line: int | None, src: str) -> dict[str, float]:
    fill: dict[str, float] = {}
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        name, eq, value = (s.strip() for s in piece.partition("="))
        if not eq:
            raise PipelineError(f"fill: expected name=value, got {piece!r}", path=src, line=line)
        if name not in producers:
            hint = difflib.get_close_matches(name, list(producers), n=1)
            raise PipelineError(f"fill: {name!r} is not a feature" + (f" (did you mean {hint[0]!r}?)" if hint else ""),
                                path=src, line=line)
        try:
            fill[name] = float(value)
        except ValueError:
            fill[name] = math.nan
        if not math.isfinite(fill[name]):
            raise PipelineError(f"fill: value for {name!r} must be a finite number, got {value!r}", path=src, line=line)
    return fill
