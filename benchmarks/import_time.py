"""Import time of the package: the engine alone beside Lightning itself, and with the classic facade.

Each figure is a fresh interpreter's ``import`` wall time, medians over interleaved rounds. ``--baseline DIR`` adds
the same imports from another checkout (e.g. an older commit in a git worktree), side by side.

    python -m benchmarks.import_time --rounds 7 [--baseline /tmp/old-checkout]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.common import ROOT, save, table

IMPORTS = {
    "lightning.pytorch": "import lightning.pytorch",
    "lightning_sparsity (PruningCallback, Pruner)": "import lightning_sparsity",
    "lightning_sparsity + NLPTrainer": "import lightning_sparsity; lightning_sparsity.NLPTrainer",
}


def seconds(statement: str, root: Path) -> float:
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    env = {**os.environ, "PYTHONPATH": str(root)}
    return float(
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout to time beside this one")
    args = parser.parse_args()
    roots = {"this checkout": ROOT} | ({"baseline": args.baseline} if args.baseline else {})
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):  # interleaved: every import once per round
        for label, root in roots.items():
            for name, statement in IMPORTS.items():
                times.setdefault((label, name), []).append(seconds(statement, root))
    rows = [{"checkout": c, "import": n, "seconds": statistics.median(v)} for (c, n), v in times.items()]
    print(table(["checkout", "import", "median seconds"], [[r["checkout"], r["import"], r["seconds"]] for r in rows]))
    save("import_time", {"rounds": args.rounds, "rows": rows})


if __name__ == "__main__":
    main()
