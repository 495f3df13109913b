"""The ONNX model of a pipeline: loading, checking it against the pipeline, running batches."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from .errors import ModelError

_NUMPY_OF = {"tensor(float)": np.float32, "tensor(double)": np.float64}


@dataclass(frozen=True)
class ModelOutput:
    """Predictions for a batch: values (regression outputs or class labels), and class
    probabilities (n, k) with their class labels when the model gives them."""

    values: np.ndarray
    probabilities: np.ndarray | None = None
    classes: tuple | None = None

    def take(self, rows) -> "ModelOutput":
        """The outputs of some rows (a slice or an index array) of the batch."""
        return ModelOutput(self.values[rows], None if self.probabilities is None else self.probabilities[rows],
                           self.classes)


class OnnxModel:
    """An ONNX Runtime session bound to the pipeline's input order.

    Two layouts are accepted: one 2-D float input taking the features in ``inputs`` order,
    or one input per feature, matched by name.
    """

    def __init__(self, path: str | Path, inputs: Sequence[str], task: str, *, threads: int = 1):
        self.path, self.inputs, self.task = Path(path), tuple(inputs), task
        if not self.path.is_file():
            raise ModelError(f"model file {self.path} not found; train it first (see the pipeline's model: line)")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own untyped errors for corrupt files
            raise ModelError(f"model file {self.path} cannot be loaded by ONNX Runtime: {e}") from None
        self._bind_inputs()
        self._bind_outputs()

    def _bind_inputs(self) -> None:
        specs = self.session.get_inputs()
        d = len(self.inputs)
        if len(specs) == 1 and len(specs[0].shape) == 2:
            spec = specs[0]
            width = spec.shape[1]
            if isinstance(width, int) and width != d:
                raise ModelError(f"model {self.path.name} takes {width} features in input {spec.name!r}, "
                                 f"but the pipeline lists {d} inputs: {', '.join(self.inputs)}")
            self._layout, self._feeds = "matrix", [(spec.name, _dtype(spec, self.path), None)]
            return
        names = [s.name for s in specs]
        if sorted(names) != sorted(self.inputs):
            raise ModelError(f"model {self.path.name} has inputs {names}; expected one 2-D float input, "
                             f"or one input per feature named {list(self.inputs)}")
        by_name = {s.name: s for s in specs}
        self._layout = "named"
        self._feeds = [(name, _dtype(by_name[name], self.path), j) for j, name in enumerate(self.inputs)]

    def _bind_outputs(self) -> None:
        outs = self.session.get_outputs()
        self._output_names = [o.name for o in outs]
        if self.task == "regression":
            self._value_index, self._proba_index, self.label_type = 0, None, None
            return
        label = [i for i, o in enumerate(outs) if o.type in ("tensor(int64)", "tensor(string)", "tensor(int32)")]
        if not label:
            raise ModelError(f"classification model {self.path.name} has no label output (int64 or string tensor); "
                             f"outputs: {[(o.name, o.type) for o in outs]}")
        self._value_index = label[0]
        self.label_type = outs[label[0]].type
        rest = [i for i in range(len(outs)) if i != label[0]]
        self._proba_index = rest[0] if rest else None

    def run(self, X: np.ndarray) -> ModelOutput:
        """Predict a batch; X has shape (n, len(inputs)) in pipeline input order."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.inputs):
            raise ModelError(f"expected a feature matrix of shape (n, {len(self.inputs)}), got {X.shape}")
        finite = np.isfinite(X)
        if not finite.all():  # e.g. a DuckDB SUM or STDDEV that overflowed to inf: never a silent prediction
            bad = [self.inputs[j] for j in np.flatnonzero(~finite.all(axis=0))]
            raise ModelError(f"model {self.path.name} was given NaN or infinite values of input(s) "
                             f"{', '.join(map(repr, bad))} in {int((~finite.all(axis=1)).sum())} of {len(X)} rows "
                             f"(a feature overflowed, or is NaN); refusing to predict from them")
        feeds = {}
        for name, dtype, j in self._feeds:
            feeds[name] = (X if j is None else X[:, j:j + 1]).astype(dtype, copy=False)
        try:
            raw = self.session.run(self._output_names, feeds)
        except Exception as e:
            raise ModelError(f"model {self.path.name} failed on a batch of {len(X)} rows: {e}") from None
        values = np.asarray(raw[self._value_index]).reshape(len(X), -1)
        if values.shape[1] != 1:
            raise ModelError(f"model {self.path.name} output {self._output_names[self._value_index]!r} has "
                             f"{values.shape[1]} values per row; approxql expects one (a single-target model)")
        values = values[:, 0]
        if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
            raise ModelError(f"model {self.path.name} returned NaN or infinity for {int((~np.isfinite(values)).sum())} "
                             f"of {len(X)} rows")
        probabilities, classes = None, None
        if self._proba_index is not None:
            probabilities, classes = _probabilities(raw[self._proba_index], len(X), self.path.name,
                                                    self._output_names[self._proba_index])
        return ModelOutput(values, probabilities, classes)


def scalar(v):
    """A numpy scalar as the plain Python value (labels and predictions leave the package plain)."""
    return v.item() if isinstance(v, np.generic) else v


def _dtype(spec, path: Path):
    if spec.type not in _NUMPY_OF:
        raise ModelError(f"model {path.name} input {spec.name!r} has type {spec.type}; approxql feeds float or double")
    return _NUMPY_OF[spec.type]


PROBABILITY_TOLERANCE = 1e-3   # float32 probabilities of real classifiers sum to 1 within ~1e-6


def _probabilities(raw, n: int, model_name: str, output: str = "probabilities") -> tuple[np.ndarray, tuple | None]:
    """Class probabilities as an (n, k) array, from a tensor or from skl2onnx's ZipMap (a list of dicts);
    each row must be a distribution (entries in [0, 1], summing to 1 within PROBABILITY_TOLERANCE):
    the controller reads label margins and label probabilities from them."""
    if isinstance(raw, list) and raw and isinstance(raw[0], dict):
        classes = tuple(raw[0].keys())
        proba = np.array([[row[c] for c in classes] for row in raw], dtype=np.float64)
    else:
        proba, classes = np.asarray(raw, dtype=np.float64).reshape(n, -1), None
    if not np.all(np.isfinite(proba)):
        raise ModelError(f"model {model_name} returned NaN or infinite class probabilities")
    tol = PROBABILITY_TOLERANCE
    if proba.size and (proba.min() < -tol or proba.max() > 1 + tol):
        raise ModelError(f"model {model_name} output {output!r} is not class probabilities: values range "
                         f"from {proba.min():.6g} to {proba.max():.6g}, outside [0, 1]")
    sums = proba.sum(axis=1)
    off = np.abs(sums - 1.0)
    if off.size and off.max() > tol:
        worst = int(np.argmax(off))
        raise ModelError(f"model {model_name} output {output!r} is not class probabilities: row {worst} sums to "
                         f"{sums[worst]:.6g}, not 1 (tolerance {tol:g}; {int((off > tol).sum())} of {len(sums)} rows)")
    return proba, classes
