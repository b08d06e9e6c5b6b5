"""The ``lightning-sparsity`` command: ``LightningCLI`` with the text-classification module and datamodule.

``lightning-sparsity fit --config examples/configs/sst2_unstructured_80.yaml`` fine-tunes and prunes with the
``PruningCallback`` configured under ``trainer.callbacks``; ``validate``, ``test`` and ``predict`` work the same.
Two things differ from a plain ``LightningCLI``: a bad value of a callback's or pruner's field is reported by its
own message first (jsonargparse buries it in the report of every ``Union`` alternative it tried), and a
``--ckpt_path`` file that cannot be a checkpoint is refused naming the file, before anything runs.
"""

from __future__ import annotations

import re
import textwrap
import warnings
import zipfile
from pathlib import Path
from typing import Any, NoReturn, Optional, Union

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_sparsity.text import TextClassificationDataModule, TextClassificationModule

_UNION_NOISE = "Does not validate against any of the Union subtypes"
_PROBLEM = re.compile(r"Problem with given class_path '([\w.]+)':")
_PARSER_KEY = re.compile(r'Parser key "([^"]+)":\s*(.*)', re.DOTALL)
#: How ``torch.save`` files begin: a zip archive (the default since torch 1.6) or the legacy pickle format.
_ZIP_HEADER, _LEGACY_TORCH_HEADER = b"PK\x03\x04", b"\x80\x02\x8a\x0a"


def field_message(error: BaseException) -> Optional[str]:
    """The message of the field that failed, from a jsonargparse error that buries it in ``Union`` noise:
    ``Pruner.target_sparsity_ratio must be ...`` or ``Pruner.prune_type: Expected a typing.Literal[...]``.
    None when the error is not such a report (its message is short already)."""
    chain = [error]
    while chain[-1].__cause__ is not None and chain[-1].__cause__ not in chain:
        chain.append(chain[-1].__cause__)
    if _UNION_NOISE not in str(error):
        return None
    problems = [index for index, link in enumerate(chain) if _PROBLEM.match(str(link))]
    if problems:  # a value jsonargparse refused: the class it was building, then the field and why
        index = problems[-1]
        problem = _PROBLEM.match(str(chain[index]))
        assert problem is not None  # matched just above
        class_name = problem[1].rsplit(".", 1)[-1]
        inner = str(chain[index + 1]) if index + 1 < len(chain) else str(chain[index]).split(":", 1)[1]
        key = _PARSER_KEY.match(inner.strip())
        if key:
            return f"{class_name}.{key[1]}: {' '.join(key[2].split())}"
        return f"{class_name}: {' '.join(inner.split())}"
    root = str(chain[-1])  # a value the class itself refused: its own ValueError, which names the field
    return root if len(chain) > 1 and _UNION_NOISE not in root else None


def _field_first(message: str, headline: Optional[str]) -> str:
    if headline is None:
        return message
    return f"{headline}\n\nThe parser's full report (every alternative it tried):\n{textwrap.indent(message, '  ')}"


def check_checkpoint(path: Union[str, Path, None]) -> None:
    """Raises ``ValueError`` naming ``path`` when it is a file that cannot be a ``torch.save`` checkpoint: empty,
    cut short, or something else. ``torch.load`` would fail on it with a bare ``EOFError``, an
    ``UnpicklingError`` (advising ``weights_only=False``) or a ``KeyError``. Anything that is not a file
    (``"last"``, ``"best"``, a URL, a sharded checkpoint's folder, a missing path) is left to Lightning."""
    if path is None or not Path(path).is_file():
        return
    size = Path(path).stat().st_size
    if size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes): it was not written, or not completely")
    with Path(path).open("rb") as file:
        head = file.read(len(_LEGACY_TORCH_HEADER))
    if head == _ZIP_HEADER and not zipfile.is_zipfile(path):
        raise ValueError(
            f"checkpoint {path} ({size} bytes) is cut short: it begins as torch.save's zip archive but has no end "
            "(central directory); it was not written completely or not copied whole"
        )
    if head not in (_ZIP_HEADER, _LEGACY_TORCH_HEADER):
        raise ValueError(
            f"checkpoint {path} ({size} bytes) is not a torch.save checkpoint: it begins with {head!r}, neither "
            "a zip archive nor torch's legacy pickle format"
        )


class _FieldFirstParser(LightningArgumentParser):
    """Reports the failing field's own message before jsonargparse's full report."""

    def error(self, message: str, ex: Optional[Exception] = None) -> NoReturn:
        if self.exit_on_error and ex is not None:  # the top-level parser; nested ones raise to it
            message = _field_first(message, field_message(ex))
        super().error(message, ex)


class SparsityCLI(LightningCLI):
    """``LightningCLI`` whose errors name the failing field first and that checks ``--ckpt_path`` up front."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("parser_class", _FieldFirstParser)
        super().__init__(*args, **kwargs)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as error:  # a class refused its arguments, e.g. Pruner(target_sparsity_ratio=1.5)
            if field_message(error) is None:
                raise
            self.parser.error(str(error), error)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand:  # LightningCLI reads the checkpoint's hyperparameters next, with torch.load
            check_checkpoint(self.config[subcommand].get("ckpt_path"))


#: Lightning's warning when ``ckpt_path="last"`` finds no checkpoint; it would then test the untrained model.
_NO_LAST_CHECKPOINT = r'.*ckpt_path="last"\) is set, but there is no last checkpoint'


def main(args: Optional[list[str]] = None) -> None:
    """Runs the CLI on ``args`` (None: the command line).

    ``--ckpt_path last`` without a last checkpoint is an error here, not a run of the untrained model.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=_NO_LAST_CHECKPOINT)
        try:
            SparsityCLI(
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
