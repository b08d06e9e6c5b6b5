"""A light core: importing the package loads the engine, and the classic facade only on first use."""

import subprocess
import sys

CHECK = """
import sys
import lightning.pytorch  # Lightning itself loads some of transformers (torchmetrics' text metrics)
before = {m for m in sys.modules if m.startswith("transformers")}
import lightning_sparsity
from lightning_sparsity import Pruner, PruningCallback, register_prune_type
added = sorted(m for m in sys.modules if m.startswith("transformers") and m not in before)
assert not added, added
assert "lightning_sparsity.trainer" not in sys.modules
from lightning_sparsity import NLPTrainer, OptimizedModel
assert "lightning_sparsity.trainer" in sys.modules
"""


def test_importing_the_package_leaves_transformers_and_the_facade_alone() -> None:
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
