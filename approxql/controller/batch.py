"""Serving many requests together.

Each request keeps its own decisions (``run.RequestRun``, the same as ``predict``), but their work
is done together: in every step, one statement per feature query reads the next increment of all
requests that read it (``sampling.batch``), one lateral statement computes what is exact, and one
model call (in chunks) serves every request's sensitivity rows or propagation draws. Requests
that stop drop out; the rest go on to their next round.

All requests plan from the pipeline's learned state as it was when the batch began (the same
snapshot a lone ``predict`` would use), so each gets the decisions ``predict`` gives it with that
state and seed. Statement timings of a batch are not learned as single-request costs; where
requests finished (the warm start) is.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ..errors import ApproxQLError
from ..model import ModelOutput
from ..sampling.batch import advance_many
from .options import Options
from .run import ExactAll, Fixed, Infer, Read, RequestRun

if TYPE_CHECKING:
    from ..pipeline import Pipeline

MODEL_CHUNK = 65_536   # model rows per ONNX call: bounded memory, and still few calls


def predict_many(pipe: "Pipeline", bounds: Sequence[Mapping[str, Any]], opts: Options, *,
                 raise_errors: bool = True, index: Sequence[int] | None = None) -> list:
    """Predictions (or, with ``raise_errors=False``, the ApproxQLError of a request that failed)
    in request order; ``index`` numbers the requests in errors (default 0, 1, ...)."""
    t_start = time.perf_counter()
    book = pipe.costs.snapshot()
    runs = [RequestRun(pipe, b, opts, book, t_start) for b in bounds]
    out: list = [None] * len(runs)
    pending: dict[int, Any] = {}

    def step(i: int, result=None, first: bool = False) -> None:
        try:
            op = runs[i].start() if first else runs[i].send(result)
        except ApproxQLError as e:
            if raise_errors:
                number = i if index is None else index[i]
                raise type(e)(f"request {number} ({describe(bounds[i])}): {e}") from None
            out[i], op = e, None
        if op is None:
            out[i] = out[i] if out[i] is not None else runs[i].prediction
            pending.pop(i, None)
        else:
            pending[i] = op

    types = {p.name: p.arrow_type for p in pipe.params}
    with pipe.engine.cursor() as cur:
        for i in range(len(runs)):
            step(i, first=True)
        while pending:
            answers = _serve(pipe, cur, runs, dict(pending), types)
            for i in list(pending):
                step(i, answers.get(i))
    return out


def _serve(pipe, cur, runs, pending: dict[int, Any], types) -> dict[int, Any]:
    """Do every pending operation, kind by kind, and charge each run the time of its kind."""
    answers: dict[int, Any] = {}
    kinds: dict[type, list[int]] = {}
    for i, op in pending.items():
        kinds.setdefault(type(op), []).append(i)
    for kind, ids in kinds.items():
        t0 = time.perf_counter()
        ops = [pending[i] for i in ids]
        if kind is Fixed:
            answers.update(zip(ids, pipe.fixed_features_many([op.bound for op in ops])))
        elif kind is ExactAll:
            answers.update(zip(ids, [(raw, "") for raw in pipe.exact_raw_many([op.bound for op in ops])]))
        elif kind is Read:
            _read(pipe, cur, ops, types)
        elif kind is Infer:
            answers.update(zip(ids, _infer(pipe.model, [op.rows for op in ops])))
        else:
            raise AssertionError(f"unknown operation {kind.__name__}")
        for i in ids:
            runs[i].charge(pending[i].stage, t0)
    return answers


def _read(pipe, cur, ops: list[Read], types) -> None:
    """One batched read per query, over every request that reads it in this step."""
    for q in dict.fromkeys(q for op in ops for q in op.samplers):
        items = [(op.samplers[q], op.targets[q]) for op in ops if q in op.targets]
        advance_many(pipe.engine, cur, items, types)


def _infer(model, blocks: list[np.ndarray]) -> list[ModelOutput]:
    """One model run over all blocks (in chunks of MODEL_CHUNK rows), split back per block."""
    rows = np.vstack(blocks)
    parts = [model.run(rows[a:a + MODEL_CHUNK]) for a in range(0, len(rows), MODEL_CHUNK)]
    proba = None if parts[0].probabilities is None else np.vstack([p.probabilities for p in parts])
    whole = ModelOutput(np.concatenate([p.values for p in parts]), proba, parts[0].classes)
    ends = np.cumsum([len(block) for block in blocks])
    return [whole.take(slice(b - len(block), b)) for block, b in zip(blocks, ends)]


def describe(bound: Mapping[str, Any]) -> str:
    """A request's values for an error message (the SQL function's row numbers are per chunk)."""
    text = ", ".join(f"{k}={v!r}" for k, v in bound.items())
    return text if len(text) <= 200 else text[:197] + "..."
