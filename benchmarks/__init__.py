"""Benchmark scripts of must-cli, run from the repository root as ``python -m benchmarks.NAME``.

benchmarks/README.md lists each script, the question it answers and its run time; shared helpers
live in benchmarks/common.py.
"""
