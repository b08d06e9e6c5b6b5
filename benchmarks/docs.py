"""Regenerates docs/benchmarks.md and its plots from benchmarks/results/*.json."""

from __future__ import annotations


def write_docs() -> None:
    pass
