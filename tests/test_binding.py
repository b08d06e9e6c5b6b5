"""Late, module-aware binding: layers built in configure_model, tied weights, re-created parameters, manual
optimization with several optimizers, two callbacks on one weight, and checkpoints of the format before it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers import SEQ, VOCAB, TinyBert, make_trainer, tiny_bert_config, toy_loader
from lightning.pytorch.callbacks import Callback
from transformers import BertForMaskedLM

from lightning_sparsity import Pruner, PruningCallback

FIXTURES = Path(__file__).parent / "fixtures"
QUERY = [r"layer\.0\.attention\.self\.query\.weight"]


class BuiltLate(pl.LightningModule):
    """Builds its layers in ``configure_model``, as sharded and large models do."""

    def __init__(self) -> None:
        super().__init__()
        self.net: torch.nn.Module | None = None

    def configure_model(self) -> None:
        if self.net is None:
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(
                torch.nn.Embedding(VOCAB, 16), torch.nn.Flatten(), torch.nn.Linear(16 * SEQ, 32), torch.nn.Linear(32, 2)
            )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_layers_built_in_configure_model_are_pruned() -> None:
    pruning = PruningCallback([Pruner(target_sparsity_ratio=0.5, step_range=[0, 2])])
    module = BuiltLate()
    make_trainer(max_steps=3, callbacks=[pruning]).fit(module, toy_loader())
    assert list(pruning.sparsifiers[0].weights) == ["net.2.weight"]  # all Linear weights but the output head
    assert float((module.net[2].weight == 0).float().mean()) == 0.5


class MaskedLM(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = BertForMaskedLM(tiny_bert_config())  # its decoder weight is the word embeddings'

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.model(input_ids=batch[0], labels=batch[0]).loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def test_tied_weights_are_pruned_once_a_second_fit_keeps_the_ramp_and_the_embedding_tie_is_said() -> None:
    module = MaskedLM()
    decoder = module.model.cls.predictions.decoder
    assert decoder.weight is module.model.bert.embeddings.word_embeddings.weight
    pruning = PruningCallback([Pruner(target_sparsity_ratio=0.8, step_range=[0, 4], names=[r".*decoder\.weight"])])
    with pytest.warns(UserWarning, match=r"tied to the embedding 'model\.bert\.embeddings\.word_embeddings\.weight'"):
        make_trainer(max_steps=5, callbacks=[pruning]).fit(module, toy_loader())
    (sparsifier,) = pruning.sparsifiers
    assert pruning.sparsity() == pytest.approx(0.8, abs=1e-3) and sparsifier.last_update == 4
    make_trainer(max_steps=8, callbacks=[pruning]).fit(module, toy_loader())  # a second fit: the same masks go on
    assert pruning.sparsifiers[0] is sparsifier and sparsifier.last_update == 4
    assert pruning.sparsity() == pytest.approx(0.8, abs=1e-3)
    assert float((module.model.bert.embeddings.word_embeddings.weight == 0).float().mean()) == pytest.approx(0.8, 1e-3)


class ReplacesAParameter(Callback):
    """Re-creates a pruned parameter mid-training, as code that re-wraps or re-loads a layer does."""

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        if trainer.global_step == 3:
            query = pl_module.model.bert.encoder.layer[0].attention.self.query
            query.weight = torch.nn.Parameter(query.weight.detach() + 1.0)  # dense again: no zero left


def test_a_re_created_parameter_is_followed_and_masked() -> None:
    module = TinyBert()
    pruning = PruningCallback([Pruner(target_sparsity_ratio=0.5, step_range=[0, 2], names=QUERY)])
    make_trainer(max_steps=6, callbacks=[pruning, ReplacesAParameter()]).fit(module, toy_loader())
    weight = module.model.bert.encoder.layer[0].attention.self.query.weight
    assert pruning.sparsifiers[0].weights[next(iter(pruning.sparsifiers[0].weights))] is weight
    assert float((weight == 0).float().mean()) == 0.5 == pruning.sparsity()


class TwoOptimizers(TinyBert):
    """Manual optimization: the encoder and the rest step with two optimizers; pruned weights are checked for zeros
    right after the encoder's step, inside the training step."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.nonzero_after_step = 0

    def training_step(self, batch: Any, batch_idx: int) -> None:
        encoder, rest = self.optimizers()  # type: ignore[misc]
        loss = super().training_step(batch, batch_idx)
        encoder.zero_grad()
        rest.zero_grad()
        self.manual_backward(loss)
        encoder.step()
        pruning = next(c for c in self.trainer.callbacks if isinstance(c, PruningCallback))
        for sparsifier in pruning.sparsifiers:
            for name, mask in sparsifier.masks.items():
                self.nonzero_after_step += int((sparsifier.weights[name][~mask] != 0).sum())
        rest.step()

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        encoder = [p for n, p in self.named_parameters() if ".encoder." in n]
        rest = [p for n, p in self.named_parameters() if ".encoder." not in n]
        return [torch.optim.AdamW(encoder, lr=5e-2), torch.optim.AdamW(rest, lr=1e-3)]


def test_manual_optimization_with_two_optimizers_keeps_zeros_inside_the_step_and_counts_its_own_steps() -> None:
    module = TwoOptimizers()
    pruner = Pruner(target_sparsity_ratio=0.6, step_range=[0, 6], update_frequency=2, names=[r".*encoder.*weight"])
    pruning = PruningCallback([pruner])
    trainer = make_trainer(max_epochs=1, callbacks=[pruning])
    trainer.fit(module, toy_loader(64))  # 8 batches: 16 optimizer steps in all, 8 of the encoder's
    (sparsifier,) = pruning.sparsifiers
    assert trainer.global_step == 16 and sparsifier.steps == 8
    assert sparsifier.last_update == 6 and pruning.sparsity() == pytest.approx(0.6, abs=1e-3)
    assert module.nonzero_after_step == 0


def test_two_callbacks_on_one_weight_are_refused_before_training() -> None:
    first = PruningCallback([Pruner(names=QUERY)])
    second = PruningCallback([Pruner(names=[r".*attention\.self\..*\.weight"])], state_key_suffix="2")
    with pytest.raises(ValueError, match=r"pruned by two PruningCallbacks"):
        make_trainer(max_steps=1, callbacks=[first, second]).fit(TinyBert(), toy_loader())


def test_a_weight_in_no_optimizer_is_refused_before_training() -> None:
    class Partial(TinyBert):
        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.model.classifier.parameters(), lr=0.1)

    with pytest.raises(ValueError, match=r"in no optimizer"):
        make_trainer(max_steps=1, callbacks=[PruningCallback([Pruner(names=QUERY)])]).fit(Partial(), toy_loader())


@pytest.mark.parametrize("prune_type", ["SnipMomentum", "OBS"])
def test_callback_state_of_format_2_still_loads(prune_type: str) -> None:
    """States written before prune types became plug-ins (format 2: scores and Fisher beside the masks)."""
    saved = torch.load(FIXTURES / "callback_state_format2.pt", weights_only=True)[prune_type]
    assert saved["callback"]["format"] == 2
    parameters = {"block_size": 4} if prune_type == "OBS" else None
    pruner = Pruner(prune_type=prune_type, target_sparsity_ratio=0.8, step_range=[2, 20], update_frequency=2,
                    names=QUERY, parameters=parameters)  # fmt: skip
    pruning = PruningCallback([pruner])
    pruning.load_state_dict(saved["callback"])
    module = TinyBert()
    module.model.bert.encoder.layer[0].attention.self.query.weight.data.copy_(saved["weight"])
    make_trainer(max_steps=0, callbacks=[pruning]).fit(module, toy_loader())
    (sparsifier,) = pruning.sparsifiers
    (name,) = sparsifier.weights
    state = saved["callback"]["states"][0]
    assert sparsifier.last_update == state["last_update"] and sparsifier.steps == 0
    assert torch.equal(sparsifier.state_dict()["masks"][name], state["masks"][name])
    kept = state["fisher"] if prune_type == "OBS" else state["scores"]
    held = sparsifier.criterion.fisher if prune_type == "OBS" else sparsifier.criterion.stored
    assert torch.equal(held[name], kept[name])


def test_a_target_that_whole_units_cannot_reach_is_said_before_training() -> None:
    class ThreeRows(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.hidden, self.head = torch.nn.Linear(SEQ, 3), torch.nn.Linear(3, 2)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return torch.nn.functional.cross_entropy(self.head(self.hidden(batch[0].float())), batch[1])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    pruning = PruningCallback([Pruner(pattern="1xchannel", target_sparsity_ratio=0.5, step_range=[0, 0])])
    with pytest.warns(UserWarning, match=r"cannot prune 'hidden\.weight' to 0\.5 .* it will reach 0\.6667"):
        make_trainer(max_steps=1, callbacks=[pruning]).fit(ThreeRows(), toy_loader())
    assert pruning.sparsity() == pytest.approx(2 / 3)


def test_transposed_convolutions_rank_output_channels() -> None:
    """A ConvTranspose weight is ``in x out x kernel``: per-channel pruning ranks within each output channel."""
    layer = torch.nn.ConvTranspose2d(4, 6, kernel_size=2)
    from lightning_sparsity.sparsifier import Sparsifier

    sparsifier = Sparsifier(Pruner(method="per_channel", target_sparsity_ratio=0.5), {"weight": layer.weight},
                            modules={"weight": layer})  # fmt: skip
    sparsifier.update_masks(0.5)
    mask = sparsifier.masks["weight"]
    assert mask.shape == layer.weight.shape
    per_output_channel = (~mask).transpose(0, 1).reshape(6, -1).sum(dim=1)
    assert per_output_channel.tolist() == [8] * 6  # half of each output channel's 4 x 2 x 2 weights


class TinyGPT2(pl.LightningModule):
    """GPT-2's projections are transformers' Conv1D: weights stored ``in x out``."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        self.model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=32, n_layer=2, n_head=4))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.model(input_ids=batch[0], labels=batch[0]).loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


@pytest.mark.parametrize(("pattern", "target"), [("1x1", 0.7), ("4x1", 0.5), ("2:4", 0.5), ("1xchannel", 0.5)])
def test_conv1d_weights_prune_as_the_out_x_in_matrix_they_compute_with(pattern: str, target: float) -> None:
    module = TinyGPT2()
    pruning = PruningCallback([Pruner(pattern=pattern, target_sparsity_ratio=target, step_range=[0, 2])])
    make_trainer(max_steps=3, callbacks=[pruning]).fit(module, toy_loader())
    (sparsifier,) = pruning.sparsifiers
    assert any(name.endswith("c_attn.weight") for name in sparsifier.weights)  # Conv1D weights are selected
    for name, mask in sparsifier.masks.items():
        matrix = (~mask).t()  # out_features x in_features
        assert int(matrix.sum()) == round(target * matrix.numel()), name
        if pattern == "2:4":  # two zeros in every four consecutive inputs of each output
            assert bool((matrix.reshape(matrix.shape[0], -1, 4).sum(-1) == 2).all()), name
        if pattern == "4x1":  # blocks of four outputs for one input
            blocks = matrix.reshape(matrix.shape[0] // 4, 4, -1)
            assert bool((blocks.all(1) | ~blocks.any(1)).all()), name
        if pattern == "1xchannel":  # whole outputs
            assert bool((matrix.all(1) | ~matrix.any(1)).all()), name
        assert not module.get_parameter(name)[~mask].any()


def test_empty_layers_are_left_out_and_a_model_without_prunable_layers_names_its_layer_types() -> None:
    class WithEmpty(BuiltLate):
        def configure_model(self) -> None:
            super().configure_model()
            self.empty = torch.nn.Linear(0, 4)  # nothing to prune: not selected, no aminmax() error

    pruning = PruningCallback([Pruner(target_sparsity_ratio=0.5, step_range=[0, 0])])
    make_trainer(max_steps=1, callbacks=[pruning]).fit(WithEmpty(), toy_loader())
    assert [name for s in pruning.sparsifiers for name in s.weights] == ["net.2.weight"]

    class EmbeddingsOnly(BuiltLate):
        def configure_model(self) -> None:
            self.net = torch.nn.Sequential(torch.nn.Embedding(VOCAB, 2), torch.nn.LayerNorm(2))

    with pytest.raises(ValueError, match=r"this model's weights are in Embedding, LayerNorm"):
        make_trainer(max_steps=1, callbacks=[PruningCallback()]).fit(EmbeddingsOnly(), toy_loader())
