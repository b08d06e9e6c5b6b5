"""A per-tensor sparsity report that prints as a table."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class LayerSparsity:
    """The sparsity of one pruned tensor: measured zeros, the current target and the final target."""

    name: str
    shape: tuple[int, ...]
    numel: int
    zeros: int
    target: float
    final_target: float

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel


class SparsityReport(list[LayerSparsity]):
    """One row per pruned tensor; ``str()`` gives a Markdown table, ``to_dicts()`` plain rows."""

    @property
    def sparsity(self) -> float:
        """Overall fraction of zeros across the rows."""
        numel = sum(row.numel for row in self)
        return sum(row.zeros for row in self) / numel if numel else 0.0

    def to_dicts(self) -> list[dict]:
        return [{**asdict(row), "shape": list(row.shape), "sparsity": row.sparsity} for row in self]

    def __str__(self) -> str:
        lines = ["| tensor | shape | sparsity | target | final target |", "| --- | --- | ---: | ---: | ---: |"]
        for row in self:
            shape = "x".join(map(str, row.shape))
            lines.append(f"| {row.name} | {shape} | {row.sparsity:.4f} | {row.target:.4f} | {row.final_target:.4f} |")
        lines.append(f"| **overall** | {sum(r.numel for r in self)} weights | {self.sparsity:.4f} | | |")
        return "\n".join(lines)
