"""The ``lightning-sparsity`` CLI: fit from a YAML end to end, ``--print_config`` round trip, bad pruners, own CLI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from fixtures.tiny_text import PAIRS_TSV, save_tiny_model
from lightning.pytorch.cli import LightningCLI
from transformers import AutoModelForSequenceClassification

from lightning_sparsity import Pruner, PruningCallback
from lightning_sparsity.cli import field_message, main
from lightning_sparsity.layers import name_matches, select_weights
from lightning_sparsity.sparsifier import Sparsifier
from lightning_sparsity.text import TextClassificationDataModule, TextClassificationModule, resolve_model_path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "configs"
SCRIPT = Path(sys.executable).parent / "lightning-sparsity"
PRUNED = r".*encoder.*\.(query|key|value|dense)\.weight"

CONFIG = f"""
seed_everything: 0
trainer:
  accelerator: cpu
  max_epochs: 2
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
    - class_path: lightning_sparsity.PruningCallback
      init_args:
        pruners:
          - prune_type: BasicMagnitude
            target_sparsity_ratio: 0.75
            epoch_range: [0, 1]
            names: ['{PRUNED}']
model:
  model_name_or_path: {{model}}
  learning_rate: 0.001
data:
  train_file: {PAIRS_TSV}
  validation_file: {PAIRS_TSV}
  text_column: sentence1
  text_pair_column: sentence2
  max_length: 32
  batch_size: 8
"""


@pytest.fixture(autouse=True)
def command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI gets its arguments from ``args``, not from pytest's command line."""
    monkeypatch.setattr(sys, "argv", ["lightning-sparsity"])


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    path = folder / "prune.yaml"
    path.write_text(CONFIG.format(model=save_tiny_model(folder / "tiny")))
    return path


def checkpoint_sparsity(root: Path) -> tuple[float, int]:
    """Fraction of zeros in the pruned weights of the one checkpoint under ``root``, and their count."""
    (checkpoint,) = root.rglob("*.ckpt")
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    weights = [w for name, w in state.items() if name_matches(name, PRUNED)]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights), len(weights)


def test_console_script_fits_and_prunes_the_checkpoint(config: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(SCRIPT), "fit", "--config", str(config), f"--trainer.default_root_dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sparsity, count = checkpoint_sparsity(tmp_path)
    assert count == 12 and sparsity == 0.75


def test_print_config_round_trips(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), "--print_config"])
    printed = capsys.readouterr().out
    pruner = yaml.safe_load(printed)["trainer"]["callbacks"][0]["init_args"]["pruners"][0]
    assert pruner["target_sparsity_ratio"] == 0.75 and pruner["names"] == [PRUNED] and pruner["pattern"] == "1x1"
    again = tmp_path / "printed.yaml"
    again.write_text(printed)
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(again), "--print_config"])
    assert capsys.readouterr().out == printed


@pytest.mark.parametrize(
    ("line", "bad", "message"),
    [
        (
            "target_sparsity_ratio: 0.75",
            "target_sparsity_ratio: 1.5",
            r"Pruner\.target_sparsity_ratio must be a number in \[0, 1\), got 1\.5",
        ),
        (
            "prune_type: BasicMagnitude",
            "prune_type: Magnitude",
            r"Pruner\.prune_type='Magnitude' is not valid; allowed values: 'BasicMagnitude'",
        ),
        ("epoch_range: [0, 1]", "epoch_range: [2, 1]", r"Pruner\.epoch_range must be \[start, end\] with integers"),
        ("target_sparsity_ratio: 0.75", "target_sparsity: 0.75", r"Pruner: Option 'target_sparsity' is not accepted"),
        (
            "target_sparsity_ratio: 0.75",
            "target_sparsity_ratio: high",
            r"Pruner\.target_sparsity_ratio: .*Expected a <class 'float'>",
        ),
        (
            "        pruners:\n",
            "        pruners: []\n        unused:\n",
            r"PruningCallback: Option 'unused' is not accepted",
        ),
    ],
    ids=["out of range", "unknown prune type", "reversed range", "unknown key", "not a number", "unknown callback key"],
)
def test_bad_pruner_values_fail_before_training_with_the_fields_message_first(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture, line: str, bad: str, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(config.read_text().replace(line, bad))
    with pytest.raises(SystemExit) as error:
        main(["fit", "--config", str(path), f"--trainer.default_root_dir={tmp_path}"])
    assert error.value.code == 2
    report = capsys.readouterr().err.split("\nerror: ", 1)[1]
    first_line, rest = report.split("\n", 1)
    assert re.match(message, first_line), report[:3000]
    assert "Union subtypes" in rest, "the parser's full report follows the field's message"
    assert not list(tmp_path.rglob("*.ckpt"))


def test_field_message_leaves_short_errors_alone() -> None:
    assert field_message(ValueError("Parser key \"model.learning_rate\": Expected a <class 'float'>")) is None


def test_an_unreadable_checkpoint_is_refused_naming_the_file(config: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.ckpt"
    empty.touch()
    with pytest.raises(ValueError, match=rf"checkpoint {re.escape(str(empty))} is empty \(0 bytes\)"):
        main(["fit", "--config", str(config), f"--trainer.default_root_dir={tmp_path}", f"--ckpt_path={empty}"])
    assert list(tmp_path.rglob("*.ckpt")) == [empty], "nothing ran: no checkpoint was written"


def test_ckpt_path_last_without_a_last_checkpoint_is_an_error(config: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--ckpt_path last found no last checkpoint.*save_last=true"):
        main(["validate", "--config", str(config), "--ckpt_path", "last", f"--trainer.default_root_dir={tmp_path}"])


def test_the_same_yaml_works_from_a_users_own_lightning_cli(config: Path, tmp_path: Path) -> None:
    cli = LightningCLI(
        TextClassificationModule,
        TextClassificationDataModule,
        args=["fit", "--config", str(config), f"--trainer.default_root_dir={tmp_path}"],
    )
    (pruning,) = [c for c in cli.trainer.callbacks if isinstance(c, PruningCallback)]
    assert pruning.sparsity() == 0.75
    assert checkpoint_sparsity(tmp_path) == (0.75, 12)


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda path: path.stem)
def test_example_configs_parse_into_valid_pruners(example: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(example), "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    (pruner,) = config["trainer"]["callbacks"][0]["init_args"]["pruners"]
    assert Pruner(**pruner).target_sparsity_ratio == pruner["target_sparsity_ratio"] >= 0.5
    assert config["model"]["model_name_or_path"] == "all-MiniLM-L6-v2"
    for split in ("train", "validation", "test"):
        assert (ROOT / config["data"][f"{split}_file"]).is_file()


def test_example_pruners_reach_their_targets_on_the_embedded_minilm() -> None:
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model_path("all-MiniLM-L6-v2"), num_labels=2)
    dense = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    for example in sorted(EXAMPLES.glob("*.yaml")):
        model.load_state_dict(dense)
        (settings,) = yaml.safe_load(example.read_text())["trainer"]["callbacks"][0]["init_args"]["pruners"]
        pruner = Pruner(**settings)
        weights = select_weights(model, pruner.names, pruner.excluded_names)
        assert len(weights) == 36, example.name
        Sparsifier(pruner, weights).update_masks(pruner.target_sparsity_ratio)
        for name, weight in weights.items():
            assert float((weight == 0).float().mean()) == pytest.approx(pruner.target_sparsity_ratio, abs=1e-3), name
