"""What a benchmark pipeline provides: data, requests with ground truth, and a model to train."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import duckdb

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class BenchPipeline:
    """One pipeline of the suite.

    ``generate(con, scale, seed)`` creates the history table(s) and ``<name>_requests``: one row
    per request with the pipeline's params (in declared order) and ``label``, the ground truth.
    The first ``train`` requests train the model; the rest are served. ``scale`` 1.0 is the
    default run's size; rows matching one request grow linearly with it (``rows_per_request``
    says how many at scale 1). ``load(con, path)`` ingests the original public data in its own
    file format into the same tables, when a user has it.
    """

    name: str                            # sql/<name>.sql, models/<name>.onnx
    task: str                            # regression | classification
    table: str                           # the history table the aggregate queries read
    by: tuple[str, ...]                  # prepare(table, by=...): the entity columns
    order: tuple[str, ...]               # the exact path's own fastest layout: a copy sorted by these
    generate: Callable[[duckdb.DuckDBPyConnection, float, int], None]
    make_model: Callable[[], object]     # an unfitted scikit-learn estimator
    rows_per_request: str                # e.g. "~2.5e5 at scale 1 (whole zone-hour)"
    description: str
    load: Optional[Callable[[duckdb.DuckDBPyConnection, Path], None]] = None
    file_format: str = ""                # the original data's format, for the loader's docstring
    train: int = 1500
    stratify: Optional[str] = None      # prepare(..., stratify=...): what each group's reads are stratified on

    @property
    def sql_path(self) -> Path:
        return REPO / "sql" / f"{self.name}.sql"

    @property
    def model_path(self) -> Path:
        return REPO / "models" / f"{self.name}.onnx"
