"""The ``lightning-sparsity`` command: ``LightningCLI`` with the text-classification module and datamodule.

``lightning-sparsity fit --config examples/configs/sst2_unstructured_80.yaml`` fine-tunes and prunes with the
``PruningCallback`` configured under ``trainer.callbacks``; ``validate``, ``test`` and ``predict`` work the same.
"""

from __future__ import annotations

from typing import Optional

from lightning.pytorch.cli import LightningCLI

from lightning_sparsity.text import TextClassificationDataModule, TextClassificationModule


def main(args: Optional[list[str]] = None) -> None:
    """Runs the CLI on ``args`` (None: the command line)."""
    LightningCLI(
        TextClassificationModule,
        TextClassificationDataModule,
        args=args,
        save_config_kwargs={"overwrite": True},
    )


if __name__ == "__main__":
    main()
