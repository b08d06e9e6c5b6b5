"""``SparseGPT``: one-shot pruning from calibration data (Frantar & Alistarh 2023), through ``PruningCallback``."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from lightning_sparsity.prune_types.base import PruneType, check_setting, register_prune_type


@register_prune_type
class SparseGPT(PruneType):
    """Prunes each layer once, before the first step, from the Hessian of its reconstruction error on calibration
    batches, moving the kept weights to make up for the pruned ones (:func:`lightning_sparsity.oneshot.prune_one_shot`);
    training then goes on with the masks fixed. One-shot only: its ramp is ``step_range=[0, 0]``."""

    name = "SparseGPT"
    pattern_kinds = ("unstructured", "n_of_m")
    one_shot = "SparseGPT"
    one_shot_only = True

    @dataclass(frozen=True)
    class Settings:
        block_size: float = 128
        damping: float = 0.01

        def __post_init__(self) -> None:
            if self.block_size < 1 or not float(self.block_size).is_integer():
                raise ValueError(f"Pruner.parameters['block_size'] must be an integer >= 1, got {self.block_size:g}")
            check_setting("damping", self.damping, 0.0)

    def scores(self, name: str, weight: Tensor) -> Tensor:
        raise RuntimeError("SparseGPT prunes in one shot from calibration data; it has no scores to rank by")
