"""``python -m benchmarks [PIPELINE...] [--scale S]``: the benchmark suite (see benchmarks/suite)."""
import sys

from benchmarks.suite.main import main

sys.exit(main())
