"""Benchmarks: ``python -m benchmarks [--quick] [--only NAME]`` runs every ``bench_*.py``."""
