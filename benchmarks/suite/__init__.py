"""The benchmark suite: the paper's seven pipelines plus real flights, against strong baselines.

``pipelines/`` holds one module per pipeline (data generator in DuckDB SQL with a scale knob,
loader for the original public file format, model factory); ``sql/`` at the repository root
holds their pipeline files. ``run`` times every system on the same requests, ``report`` writes
``benchmarks/results/<date>/report.md`` and its plots. Entry points: ``python -m benchmarks`` and
``approxql bench``.
"""
