"""The text-classification module and datamodule: file readers, labels, training with pruning, export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fixtures.tiny_text import PAIRS_TSV, save_tiny_model
from helpers import make_trainer, tiny_bert_config
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertForSequenceClassification

from lightning_sparsity import Pruner, PruningCallback
from lightning_sparsity.metrics import builtin_metrics
from lightning_sparsity.text import (
    TextClassificationDataModule,
    TextClassificationModule,
    adamw_with_warmup,
    label_names,
    read_rows,
    resolve_model_path,
)

ROWS = [
    {"sentence": 'a "quoted, word" here', "label": "pos"},
    {"sentence": "it's 'fine'", "label": "neg"},
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny"))


def pair_data(**overrides) -> TextClassificationDataModule:
    settings = dict(
        train_file=str(PAIRS_TSV),
        validation_file=str(PAIRS_TSV),
        test_file=str(PAIRS_TSV),
        text_column="sentence1",
        text_pair_column="sentence2",
        max_length=32,
        batch_size=8,
    )
    settings.update(overrides)
    return TextClassificationDataModule(**settings)


def test_tsv_is_read_verbatim_with_its_byte_order_mark_dropped(tmp_path: Path) -> None:
    path = tmp_path / "glue.tsv"
    path.write_text("\ufeffsentence\tlabel\na \"quoted, word\" here\tpos\r\nit's 'fine'\tneg\n", encoding="utf-8")
    assert read_rows(path) == ROWS


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_json_lines_or_a_list_whatever_the_json_suffix(tmp_path: Path, suffix: str) -> None:
    lines, listed = tmp_path / f"lines{suffix}", tmp_path / f"list{suffix}"
    lines.write_text("\n".join(json.dumps(row) for row in ROWS) + "\n")  # what datasets' to_json writes
    listed.write_text(json.dumps(ROWS))
    assert read_rows(lines) == read_rows(listed) == ROWS
    broken = tmp_path / f"broken{suffix}"
    broken.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"line 2 is not JSON .*one object a line \(JSON lines\)"):
        read_rows(broken)


@pytest.mark.parametrize("suffix", [".csv", ".json", ".jsonl"])
def test_csv_json_and_jsonl_give_the_same_rows(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"data{suffix}"
    if suffix == ".csv":
        path.write_text('sentence,label\n"a ""quoted, word"" here",pos\nit\'s \'fine\',neg\n')
    elif suffix == ".json":
        path.write_text(json.dumps(ROWS))
    else:
        path.write_text("\n".join(json.dumps(row) for row in ROWS) + "\n\n")
    assert read_rows(path) == ROWS


def test_headerless_file_takes_column_names(tmp_path: Path) -> None:
    path = tmp_path / "cola.tsv"
    path.write_text("gj04\t1\t\tOur friends won't buy this.\nclc95\t0\t*\tThe more we study, the less.\n")
    rows = read_rows(path, ["source", "label", "mark", "sentence"])
    assert [row["sentence"] for row in rows] == ["Our friends won't buy this.", "The more we study, the less."]
    assert [row["label"] for row in rows] == ["1", "0"]


def test_bad_files_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"suffix '\.txt'.*\.tsv, \.csv, \.json, \.jsonl"):
        read_rows(tmp_path / "data.txt")
    ragged = tmp_path / "ragged.tsv"
    ragged.write_text("sentence\tlabel\nfine\t1\nno label here\n")
    with pytest.raises(ValueError, match="line 3 has 1 fields"):
        read_rows(ragged)
    with pytest.raises(ValueError, match="train_file='data.txt' has an unknown format"):
        TextClassificationDataModule(train_file="data.txt")
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        TextClassificationDataModule(batch_size=0)


def test_string_labels_map_to_sorted_ids_and_integer_labels_stay() -> None:
    assert label_names(["1", "0", 2]) is None
    assert label_names(["not_entailment", "entailment", "not_entailment"]) == ["entailment", "not_entailment"]


def test_sentence_pairs_are_tokenized_with_label_ids(tiny_model: Path) -> None:
    data = pair_data(tokenizer_name_or_path=str(tiny_model))
    data.setup("fit")
    assert data.label_names == ["entailment", "not_entailment"] and data.num_labels == 2
    rows = read_rows(PAIRS_TSV)
    expected = [0 if row["label"] == "entailment" else 1 for row in rows]
    assert data.datasets["train"].labels == expected
    batch = next(iter(data.train_dataloader()))
    assert batch["input_ids"].shape[0] == 8 and batch["labels"].dtype == torch.long
    assert (batch["token_type_ids"] == 1).any(), "the second sentence of each pair gets token type 1"
    first = data.datasets["test"][0]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert tokenizer.decode(first["input_ids"]) == '[CLS] the " big " cat sat [SEP] the cat said " hi [SEP]'


def test_missing_column_names_the_columns(tiny_model: Path) -> None:
    data = pair_data(tokenizer_name_or_path=str(tiny_model), text_column="premise")
    with pytest.raises(ValueError, match=r"no column 'premise'; its columns are \['index', 'sentence1'"):
        data.setup("fit")


def test_fit_prunes_saves_label_names_and_exports(tiny_model: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    module = TextClassificationModule(str(tiny_model), learning_rate=1e-3, export_dir=str(export))
    pruner = Pruner(target_sparsity_ratio=0.5, epoch_range=[0, 1], names=[r".*encoder.*\.dense\.weight"])
    trainer = make_trainer(max_epochs=2, callbacks=[PruningCallback(pruners=[pruner])])
    data = pair_data()  # the tokenizer comes from the module's model folder
    trainer.fit(module, data)
    assert data.tokenizer.vocab_size == AutoTokenizer.from_pretrained(tiny_model).vocab_size
    logged = set(trainer.callback_metrics)
    assert {"train_loss", "train_acc_epoch", "val_loss", "val_acc", "val_f1", "val_mcc"} <= logged
    assert trainer.test(module, data, verbose=False)[0]["test_acc"] >= 0

    exported = AutoModelForSequenceClassification.from_pretrained(export)
    assert exported.config.id2label == {0: "entailment", 1: "not_entailment"}
    assert exported.config.label2id == {"entailment": 0, "not_entailment": 1}
    dense = [w for name, w in exported.named_parameters() if "encoder" in name and name.endswith("dense.weight")]
    assert len(dense) == 6
    assert sum(int((w == 0).sum()) for w in dense) == sum(w.numel() for w in dense) // 2
    assert AutoTokenizer.from_pretrained(export).decode([5]) == "the"


def test_num_labels_must_cover_the_data(tiny_model: Path, tmp_path: Path) -> None:
    three = tmp_path / "three.tsv"
    three.write_text("sentence1\tsentence2\tlabel\na\tb\tx\nc\td\ty\ne\tf\tz\n")
    module = TextClassificationModule(str(tiny_model))
    data = pair_data(train_file=str(three), validation_file=None, test_file=None)
    with pytest.raises(ValueError, match=r"num_labels=2 but the data has 3 labels: \['x', 'y', 'z'\]"):
        make_trainer().fit(module, data)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_labels", 1, "num_labels must be an integer >= 2"),
        ("learning_rate", 0.0, "learning_rate must be > 0"),
        ("weight_decay", -0.1, "weight_decay must be >= 0"),
        ("warmup_ratio", 1.0, r"warmup_ratio must be in \[0, 1\)"),
    ],
)
def test_bad_hyperparameters_fail_at_construction(tiny_model: Path, field: str, value: float, message: str) -> None:
    with pytest.raises(ValueError, match=f"TextClassificationModule.{message}"):
        TextClassificationModule(str(tiny_model), **{field: value})


def test_from_model_wraps_an_existing_instance(tiny_model: Path) -> None:
    model = BertForSequenceClassification.from_pretrained(tiny_model)
    module = TextClassificationModule.from_model(model, learning_rate=3e-4)
    assert module.model is model and module.hparams.learning_rate == 3e-4 and module.hparams.num_labels == 2
    assert "_model" not in module.hparams
    with pytest.raises(ValueError, match="num_labels=3 but the given model has 2 labels"):
        TextClassificationModule.from_model(model, num_labels=3)


def test_adamw_with_warmup_skips_decay_on_biases_and_norms(tiny_model: Path) -> None:
    model = BertForSequenceClassification.from_pretrained(tiny_model)
    optimizer, scheduler = adamw_with_warmup(model, 1e-3, 0.01, warmup_ratio=0.25, total_steps=8)
    decayed, plain = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decayed["weight_decay"] == 0.01 and plain["weight_decay"] == 0.0
    assert all(names[id(p)].endswith(("bias", "LayerNorm.weight")) for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(names)
    rates = []
    for _ in range(8):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.0, 5e-4, 1e-3, 1e-3 * 5 / 6, 1e-3 * 4 / 6, 1e-3 * 3 / 6, 1e-3 * 2 / 6, 1e-3 / 6])


def test_embedded_model_name_resolves_to_the_package_folder(tiny_model: Path) -> None:
    assert (Path(resolve_model_path("all-MiniLM-L6-v2")) / "config.json").is_file()
    assert resolve_model_path(str(tiny_model)) == str(tiny_model)


def test_fit_without_validation_and_predict_without_labels(tiny_model: Path, tmp_path: Path) -> None:
    unlabelled = tmp_path / "predict.jsonl"
    unlabelled.write_text('{"sentence1": "the cat", "sentence2": "a dog"}\n{"sentence1": "red", "sentence2": "blue"}\n')
    data = pair_data(validation_file=None, test_file=None, predict_file=str(unlabelled))
    module = TextClassificationModule(str(tiny_model))
    trainer = make_trainer()
    trainer.fit(module, data)
    assert "train_loss" in trainer.callback_metrics and "val_acc" not in trainer.callback_metrics
    (predictions,) = trainer.predict(module, data)
    assert predictions.shape == (2,) and set(predictions.tolist()) <= {0, 1}
    with pytest.raises(ValueError, match="test_file is not set, so there is no test data"):
        trainer.test(module, data)


def constant_model() -> BertForSequenceClassification:
    """Predicts class 0 for every input."""
    model = BertForSequenceClassification(tiny_bert_config())
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([50.0, -50.0]))
    return model


def test_val_acc_is_plain_accuracy_and_f1_mcc_are_logged():
    """A constant predictor on unbalanced labels: plain accuracy is the majority share (macro averaging gives 0.5)."""
    module = TextClassificationModule.from_model(constant_model())
    labels = torch.tensor([0, 0, 0, 1, 1, 0, 0, 1])
    module._shared_step({"input_ids": torch.ones(8, 4, dtype=torch.long), "labels": labels}, "val")
    assert float(module.accuracy["val_acc"].compute()) == pytest.approx(5 / 8)
    scores = module.scores["val"].compute()
    logits = torch.tensor([[1.0, 0.0]]).repeat(8, 1)
    same_as_trainer = builtin_metrics(logits, labels)  # NLPTrainer's eval_* figures agree
    assert float(scores["val_f1"]) == 0.0 == same_as_trainer["f1"]
    assert float(scores["val_mcc"]) == pytest.approx(same_as_trainer["matthews_correlation"])
    assert same_as_trainer["accuracy"] == pytest.approx(5 / 8)
