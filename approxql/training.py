"""Training pipeline models with scikit-learn and exporting them to ONNX.

Features for training come from the pipeline's own exact path (``exact_feature_table``), so a
model sees at training time exactly what it sees when serving.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType

from .engines import Engine
from .pipeline import exact_feature_table
from .pipeline_file import PipelineSpec


@dataclass(frozen=True)
class TrainingReport:
    model_path: Path
    n_train: int
    n_test: int
    metric: str
    model_score: float      # MAE (regression) or accuracy (classification) on the test set
    baseline_score: float   # the same metric for predicting the training mean / majority class


def feature_matrix(spec: PipelineSpec, engine: Engine, requests: pa.Table, *, chunk: int = 1000,
                   progress=None) -> np.ndarray:
    """(n, len(inputs)) float64 matrix of exact features, computed ``chunk`` requests at a time."""
    parts = []
    for start in range(0, requests.num_rows, chunk):
        table = exact_feature_table(spec, engine, requests.slice(start, chunk).select([p.name for p in spec.params]))
        parts.append(np.column_stack([table.column(n).to_numpy(zero_copy_only=False).astype(np.float64)
                                      for n in spec.inputs]))
        if progress is not None:
            progress.update(min(chunk, requests.num_rows - start))
    X = np.vstack(parts)
    if np.isnan(X).any():
        bad = [spec.inputs[j] for j in np.where(np.isnan(X).any(axis=0))[0]]
        raise ValueError(f"features {bad} are NULL for some training requests; add '-- fill:' values for them")
    return X


def export_onnx(estimator, n_features: int, path: Path, task: str) -> Path:
    """Write a fitted scikit-learn estimator as ONNX with one 2-D float input named 'features'."""
    options = {id(estimator): {"zipmap": False}} if task == "classification" else None
    onx = to_onnx(estimator, initial_types=[("features", FloatTensorType([None, n_features]))],
                  options=options, target_opset=17)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".onnx.tmp")
    tmp.write_bytes(onx.SerializeToString())
    tmp.replace(path)  # atomic: a crash never leaves a half-written model
    return path


def fit_and_export(spec: PipelineSpec, estimator, X_train, y_train, X_test, y_test) -> TrainingReport:
    """Fit, score against a constant baseline, and export to the pipeline's model path."""
    estimator.fit(X_train, y_train)
    pred = estimator.predict(X_test)
    if spec.task == "regression":
        metric, score, base = "MAE", float(np.mean(np.abs(pred - y_test))), float(np.mean(np.abs(np.mean(y_train) - y_test)))
    else:
        values, counts = np.unique(y_train, return_counts=True)
        metric, score, base = "accuracy", float(np.mean(pred == y_test)), float(np.mean(y_test == values[np.argmax(counts)]))
    export_onnx(estimator, X_train.shape[1], spec.model_path, spec.task)
    return TrainingReport(spec.model_path, len(X_train), len(X_test), metric, score, base)
