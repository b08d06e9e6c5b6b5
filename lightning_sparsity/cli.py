"""The ``lightning-sparsity`` command: ``LightningCLI`` with the text-classification module and datamodule.

``lightning-sparsity fit --config examples/configs/sst2_unstructured_80.yaml`` fine-tunes and prunes with the
``PruningCallback`` configured under ``trainer.callbacks``; ``validate``, ``test`` and ``predict`` work the same.
"""

from __future__ import annotations

import re
import warnings
from typing import Optional

from lightning.pytorch.cli import LightningCLI

from lightning_sparsity.text import TextClassificationDataModule, TextClassificationModule

#: Lightning's warning when ``ckpt_path="last"`` finds no checkpoint; it would then test the untrained model.
_NO_LAST_CHECKPOINT = r'.*ckpt_path="last"\) is set, but there is no last checkpoint'


def main(args: Optional[list[str]] = None) -> None:
    """Runs the CLI on ``args`` (None: the command line).

    ``--ckpt_path last`` without a last checkpoint is an error here, not a run of the untrained model.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=_NO_LAST_CHECKPOINT)
        try:
            LightningCLI(
                TextClassificationModule,
                TextClassificationDataModule,
                args=args,
                save_config_kwargs={"overwrite": True},
            )
        except Warning as warning:
            if not re.match(_NO_LAST_CHECKPOINT, str(warning)):
                raise
            raise ValueError(
                "--ckpt_path last found no last checkpoint of this config's trainer.default_root_dir: run fit "
                "first with a lightning.pytorch.callbacks.ModelCheckpoint(save_last=true) under trainer.callbacks "
                "(the example configs have one), or give --ckpt_path the path of a .ckpt file"
            ) from None


if __name__ == "__main__":
    main()
