"""Shared helpers of the benchmark scripts: models, timing, results and the docs page.

Only torch, transformers and lightning are imported at module level, so the Intel Neural Compressor
runner can import this module from its own virtual environment.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from transformers import BertConfig

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"

#: MiniLM-sized BERT (the size of all-MiniLM-L6): hidden 384, 6 layers, intermediate 1536.
MINILM = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)


def bert_config(size: str, **overrides: Any) -> BertConfig:
    """``minilm`` (hidden 384, 6 layers) or ``base`` (``BertConfig()`` defaults), randomly initialised."""
    settings = dict(MINILM) if size == "minilm" else {}
    settings.update(overrides)
    return BertConfig(**settings)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "lightning": pl.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def interleaved(variants: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[Any]]:
    """Runs each variant once per round, round after round, so that load on a shared machine hits all alike.

    Each variant returns the figure it measured (e.g. seconds); returns every variant's list of figures.
    """
    figures: dict[str, list[Any]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            figures[name].append(run())
    return figures


def clock() -> tuple[float, float]:
    """(wall-clock, process CPU) seconds now. With one torch thread, CPU seconds are what the work costs
    on an idle core; on a shared machine wall-clock also counts the time other processes held the cores."""
    return time.perf_counter(), time.process_time()


def timed(run: Callable[[], Any]) -> tuple[float, float]:
    """(wall-clock, CPU) seconds of one call."""
    wall, cpu = clock()
    run()
    wall_end, cpu_end = clock()
    return wall_end - wall, cpu_end - cpu


def set_threads(threads: int) -> None:
    """Torch intra-op threads. 1 by default in the scripts: on a shared 2-core machine, 2-thread runs are
    dominated by OpenMP threads waiting for each other whenever another process holds a core."""
    torch.set_num_threads(threads)


def median(values: list[float]) -> float:
    return statistics.median(values)


def save(name: str, result: dict[str, Any]) -> Path:
    """Writes ``benchmarks/results/<name>.json`` (with the machine) and regenerates docs/benchmarks.md."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **result}, indent=2) + "\n")
    from benchmarks.docs import write_docs  # matplotlib lives in the main environment only

    write_docs()
    return path


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table; floats get 3 significant decimals."""
    cells = [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])
