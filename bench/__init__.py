"""Benchmarks of halaxy-bridge, each figure measured with its floor in the same run.

Run with `make bench` or `python -m bench --size tiny|full` from the repository root; see
`bench/run.py` and docs/performance.md.
"""
