"""The suite's pipelines, in the order of the original evaluation, then the real flights."""
from __future__ import annotations

import importlib

from ..spec import BenchPipeline

NAMES = ("trips", "tick", "battery", "turbofan", "fraud", "bearing", "student", "flights")


def available() -> dict[str, BenchPipeline]:
    """Every pipeline whose module exists, by short name."""
    out = {}
    for name in NAMES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            continue
        out[name] = module.PIPELINE
    return out
