"""``ringtape bench``: run the benchmark (``tools/bench/``) and write its JSON and table."""

from __future__ import annotations

from ringtape.tools.bench.run import bench_main as run

__all__ = ["run"]
