"""The documentation's code runs: every Python block tagged ``<!-- docs-test: run -->`` in docs/.

Blocks of a page run in order in one namespace. A block tagged ``<!-- docs-test: setup -->`` shows readers
how to load real models and data; here it stands for the page's entry in ``SETUPS``, which puts a tiny
BERT and a toy task in their place. Untagged blocks (old code of other tools) are not run.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import lightning
import pytest
import torch
from helpers import TinyBert, tiny_bert_config, toy_dataset, toy_loader
from transformers import BertForSequenceClassification

DOCS = Path(__file__).resolve().parent.parent / "docs"
TAGGED_BLOCK = re.compile(r"<!-- docs-test: (run|setup) -->\s*\n```python[^\n]*\n(.*?)\n```", re.DOTALL)


def token_dataset(size: int, seed: int) -> datasets.Dataset:
    input_ids, labels = toy_dataset(size, seed).tensors
    return datasets.Dataset.from_dict({"input_ids": input_ids.tolist(), "label": labels.tolist()})


def nlp_toolkit_setup() -> dict[str, Any]:
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config())
    return {
        "model": model,
        "tokenizer": None,
        "train_dataset": token_dataset(64, 0),
        "eval_dataset": token_dataset(32, 1),
    }


def model_pruning_setup() -> dict[str, Any]:
    return {"make_module": TinyBert, "train_loader": toy_loader(64)}


def distillation_setup() -> dict[str, Any]:
    from transformers import TrainingArguments

    torch.manual_seed(0)
    student, teacher = (BertForSequenceClassification(tiny_bert_config()) for _ in range(2))
    args = TrainingArguments(
        output_dir="outputs", num_train_epochs=3, use_cpu=True, save_strategy="no", report_to=[], disable_tqdm=True
    )
    train, validation = token_dataset(64, 0), token_dataset(32, 1)
    return {"student": student, "teacher": teacher, "train": train, "validation": validation, "training_args": args}


SETUPS: dict[str, Callable[[], dict[str, Any]]] = {
    "distillation.md": distillation_setup,
    "migration/nlp-toolkit.md": nlp_toolkit_setup,
    "migration/model-pruning.md": model_pruning_setup,
}


def tagged_blocks(page: Path) -> list[tuple[str, str]]:
    return TAGGED_BLOCK.findall(page.read_text())


PAGES = sorted(page.relative_to(DOCS).as_posix() for page in DOCS.rglob("*.md") if tagged_blocks(page))


def test_every_migration_guide_has_code_that_runs():
    guides = {page.relative_to(DOCS).as_posix() for page in (DOCS / "migration").glob("*.md")}
    assert guides and guides <= set(PAGES)


@pytest.mark.parametrize("page", PAGES)
def test_page_code_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # files the examples write land here
    namespace: dict[str, Any] = {"lightning": lightning, "module": TinyBert(), "train_loader": toy_loader(64)}
    for index, (kind, code) in enumerate(tagged_blocks(DOCS / page)):
        compiled = compile(code, f"{page} (block {index})", "exec")  # setup blocks must at least be valid Python
        if kind == "setup":
            namespace.update(SETUPS[page]())
        else:
            exec(compiled, namespace)
