"""``prune_one_shot`` on whole models: layer-sequential calibration, encoders and decoders, errors, export."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from transformers import BertForSequenceClassification, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from lightning_sparsity import Pruner, PruningCallback
from lightning_sparsity.export import is_two_four_sparse, semi_structured_unavailable, to_semi_structured
from lightning_sparsity.functional.patterns import parse_pattern
from lightning_sparsity.oneshot import FeatureNormStatistic, prune_one_shot, prune_weight_, recording_inputs
from tests.helpers import SEQ, VOCAB, TinyBert, make_trainer, tiny_bert_config, toy_loader


def bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config())


def llama(hidden_size: int = 32) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2 * SEQ,
    )
    return LlamaForCausalLM(config)


def qwen2() -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2 * SEQ,
    )
    return Qwen2ForCausalLM(config)


def batches(count: int = 6, size: int = 4, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, VOCAB, (size, SEQ), generator=generator)} for _ in range(count)]


def logits_error(model: nn.Module, dense: nn.Module, data: list[dict[str, torch.Tensor]]) -> float:
    with torch.no_grad():
        return sum((model(**batch).logits - dense(**batch).logits).square().mean().item() for batch in data)


def copy_of(model: nn.Module) -> nn.Module:
    twin = type(model)(model.config)
    twin.load_state_dict(model.state_dict())
    return twin.eval()


@pytest.mark.parametrize("build", [bert, llama, qwen2], ids=["bert", "llama", "qwen2"])
@pytest.mark.parametrize("prune_type", ["SparseGPT", "Wanda", "BasicMagnitude"])
@pytest.mark.parametrize("pattern", ["1x1", "2:4"])
def test_every_linear_weight_of_the_layers_is_pruned_exactly_and_nothing_else(build, prune_type, pattern):
    model = build()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    masks = prune_one_shot(model, batches(), prune_type=prune_type, sparsity=0.5, pattern=pattern)
    layers = "bert.encoder.layer." if build is bert else "model.layers."
    linear = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith(layers)}
    assert set(masks) == linear and len(linear) == (12 if build is bert else 14)
    weights = dict(model.named_parameters())
    for name, keep in masks.items():
        assert torch.equal(weights[name] == 0, ~keep)
        assert (~keep).sum().item() == keep.numel() // 2
        if pattern == "2:4":
            assert is_two_four_sparse(weights[name])
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == linear


@pytest.mark.parametrize("build", [bert, llama], ids=["bert", "llama"])
def test_sparsegpt_keeps_the_model_closer_to_dense_than_magnitude(build):
    dense = build().eval()
    data = batches(count=8)
    errors = {}
    for prune_type in ("SparseGPT", "BasicMagnitude"):
        model = copy_of(dense)
        prune_one_shot(model, data, prune_type=prune_type, sparsity=0.5)
        errors[prune_type] = logits_error(model, dense, batches(count=4, seed=1))
    assert errors["SparseGPT"] < errors["BasicMagnitude"]


def test_each_layer_is_calibrated_on_the_outputs_of_the_pruned_layers_before_it():
    """Wanda's masks are a pure function of the inputs a weight saw: the second layer's query mask must be the
    one its inputs in the pruned model give, not the one its inputs in the dense model give."""
    dense = bert().eval()
    data = batches()
    model = copy_of(dense)
    masks = prune_one_shot(model, data, prune_type="Wanda", sparsity=0.5)
    name = "bert.encoder.layer.1.attention.self.query.weight"
    query = model.bert.encoder.layer[1].attention.self.query

    def mask_from_inputs_in(source: nn.Module) -> torch.Tensor:
        layer = source.get_submodule("bert.encoder.layer.1.attention.self.query")
        with recording_inputs({name: (layer, "weight")}, FeatureNormStatistic) as norms, torch.no_grad():
            for batch in data:
                source(**batch)
        weight = dense.get_submodule("bert.encoder.layer.1.attention.self.query").weight.detach().clone()
        return prune_weight_("Wanda", weight, norms[name].value(), 0.5, parse_pattern("1x1"), "per_channel", {})

    assert query.weight.count_nonzero().item() == query.weight.numel() // 2
    assert torch.equal(masks[name], mask_from_inputs_in(model))
    assert not torch.equal(masks[name], mask_from_inputs_in(dense))


def test_names_outside_the_layers_are_pruned_from_a_full_pass_of_the_pruned_model():
    model = bert()
    names = [r"layer\.0\..*query\.weight", "pooler.dense.weight", "classifier.weight"]
    masks = prune_one_shot(model, batches(), names=names)
    assert list(masks) == [
        "bert.encoder.layer.0.attention.self.query.weight",
        "bert.pooler.dense.weight",
        "classifier.weight",
    ]
    assert model.classifier.weight.count_nonzero().item() == model.classifier.weight.numel() // 2


def test_a_model_without_repeated_layers_prunes_all_its_linear_weights_but_the_head():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    masks = prune_one_shot(model, [torch.randn(5, 8) for _ in range(3)], prune_type="Wanda", sparsity=0.25)
    assert list(masks) == ["0.weight", "2.weight"]
    assert (model[0].weight == 0).sum().item() == 32 and model[4].weight.count_nonzero().item() == 32


def test_a_custom_forward_runs_tuple_batches_and_training_mode_comes_back():
    model = bert().train()
    data = [(batch["input_ids"], torch.zeros(4, dtype=torch.long)) for batch in batches()]
    prune_one_shot(model, data, prune_type="SparseGPT", sparsity=0.6, forward=lambda m, b: m(input_ids=b[0]))
    assert model.training
    weight = model.bert.encoder.layer[0].output.dense.weight
    assert (weight == 0).sum().item() == round(0.6 * weight.numel())


def test_magnitude_needs_no_calibration_data():
    model = bert()
    masks = prune_one_shot(model, [], prune_type="BasicMagnitude", sparsity=0.5, method="per_channel")
    keep = masks["bert.encoder.layer.0.intermediate.dense.weight"]
    assert (~keep).sum(dim=1).eq(keep.shape[1] // 2).all()


def test_sparsegpt_prunes_bfloat16_weights():
    model = llama().to(torch.bfloat16)
    masks = prune_one_shot(model, batches(count=2), sparsity=0.5, pattern="2:4")
    weight = model.model.layers[1].mlp.down_proj.weight
    assert weight.dtype == torch.bfloat16 and is_two_four_sparse(weight)
    assert torch.equal(weight == 0, ~masks["model.layers.1.mlp.down_proj.weight"])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"prune_type": "OBS"}, "prune_type='OBS' is not valid for one-shot pruning"),
        ({"pattern": "head"}, "pattern='head' does not suit one-shot SparseGPT"),
        ({"pattern": "4x1"}, "pattern='4x1' does not suit one-shot SparseGPT"),
        ({"pattern": "2x"}, "pattern='2x' is not valid"),
        ({"sparsity": 1.0}, r"sparsity must be a number in \[0, 1\)"),
        ({"sparsity": 0.6, "pattern": "2:4"}, "sparsity=0.6 is above 0.5"),
        ({"method": "per_row"}, "method='per_row' is not valid"),
        ({"parameters": {"alpha": 1.0}}, "unknown key 'alpha'"),
        ({"parameters": {"damping": 0.0}}, r"parameters\['damping'\] must be a finite number > 0"),
        ({"parameters": {"block_size": 6}, "pattern": "2:4"}, "multiple of M"),
        ({"forward": "model"}, "forward must be a callable"),
        ({"names": ["word_embeddings.weight"]}, "matches no prunable weight"),
    ],
)
def test_bad_settings_are_value_errors_naming_the_field(settings, message):
    with pytest.raises(ValueError, match=message):
        prune_one_shot(bert(), batches(count=1), **settings)


def test_bad_models_and_data_are_value_errors_before_any_weight_changes():
    model = bert()
    before = model.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    with pytest.raises(ValueError, match="calibration_batches is empty"):
        prune_one_shot(model, [], prune_type="Wanda")
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="weight of a Conv2d; one-shot pruning calibrates torch.nn.Linear"):
        prune_one_shot(conv, [torch.randn(1, 1, 3, 3)], names=["0.weight"])
    odd = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="pattern does not divide weight '0.weight'"):
        prune_one_shot(odd, [torch.randn(2, 6)], pattern="2:4")
    assert torch.equal(model.bert.encoder.layer[0].attention.self.query.weight, before)


def test_a_weight_whose_layer_never_runs_is_a_value_error():
    model = bert()
    with pytest.raises(ValueError, match="'classifier.weight' saw no calibration input"):
        prune_one_shot(model, batches(count=1), names=["classifier.weight"], forward=lambda m, b: m.bert(**b))


@pytest.mark.skipif(bool(semi_structured_unavailable()), reason="2:4 semi-structured kernels need an Ampere+ GPU")
def test_two_four_results_export_to_semi_structured_and_compute_the_same():
    model = llama(hidden_size=128).half().cuda()  # semi-structured kernels take weights of 64 rows and up
    data = [{key: value.cuda() for key, value in batch.items()} for batch in batches(count=2, size=8)]
    masks = prune_one_shot(model, data, sparsity=0.5, pattern="2:4")
    with torch.no_grad():
        expected = model(**data[0]).logits
    converted = to_semi_structured(model)
    assert converted and all(f"{name}.weight" in masks for name in converted)
    with torch.no_grad():
        torch.testing.assert_close(model(**data[0]).logits, expected, rtol=1e-2, atol=1e-2)


def test_semi_structured_export_says_why_it_cannot_run_here():
    if not semi_structured_unavailable():
        pytest.skip("this machine runs 2:4 semi-structured kernels")
    model = bert()
    prune_one_shot(model, batches(count=1), pattern="2:4")
    with pytest.raises(RuntimeError, match="2:4 semi-structured sparsity needs"):
        to_semi_structured(model)


class CalibratedBert(TinyBert):
    """A LightningModule whose batches are ``(input_ids, labels)``: it says how to run one for calibration."""

    def calibration_step(self, batch: Any) -> Any:
        return self.model(input_ids=batch[0])


@pytest.mark.parametrize(
    ("prune_type", "pattern", "method"),
    [("SparseGPT", "2:4", "per_tensor"), ("Wanda", "1x1", "per_channel"), ("BasicMagnitude", "2:4", "per_tensor")],
)
def test_the_callback_prunes_once_from_calibration_batches_as_the_function_does(
    prune_type: str, pattern: str, method: str
) -> None:
    """A pruner whose ramp is ``step_range=[0, 0]`` is one-shot: before the first step the callback calibrates on
    ``calibration_samples`` training samples, prunes as ``prune_one_shot`` does on them, and keeps the masks fixed."""
    loader = toy_loader(64)
    names = [r".*encoder.*\.weight"]
    module = CalibratedBert(lr=0.0)  # the first fit's one step changes no weight: the one-shot result shows
    expected = CalibratedBert()
    calibration = [b for _, b in zip(range(3), loader, strict=False)]  # 24 samples
    reference = prune_one_shot(expected, calibration, prune_type=prune_type, sparsity=0.5, pattern=pattern,
                               method=method, names=names, forward=lambda m, b: m.calibration_step(b))  # fmt: skip
    after_one_shot = {n: p.detach().clone() for n, p in expected.named_parameters()}
    pruner = Pruner(prune_type=prune_type, target_sparsity_ratio=0.5, pattern=pattern, method=method,
                    step_range=[0, 0], names=names)  # fmt: skip
    pruning = PruningCallback([pruner], calibration_samples=24)
    make_trainer(max_steps=1, callbacks=[pruning]).fit(module, loader)
    (sparsifier,) = pruning.sparsifiers
    assert sparsifier.masks.keys() == reference.keys() and sparsifier.last_update == 0
    for name, mask in reference.items():
        assert torch.equal(sparsifier.masks[name], mask), name
        assert torch.equal(module.get_parameter(name), after_one_shot[name]), name
    module.lr = 1e-2
    make_trainer(max_steps=5, callbacks=[pruning]).fit(module, loader)  # fine-tuning: the masks stay as they were
    for name, mask in reference.items():
        assert torch.equal(sparsifier.masks[name], mask) and not module.get_parameter(name)[~mask].any()


def test_sparsegpt_is_one_shot_only_and_warns_when_calibration_data_runs_short() -> None:
    assert Pruner(prune_type="SparseGPT", target_sparsity_ratio=0.5).step_range == [0, 0]
    with pytest.raises(ValueError, match=r"step_range=\[0, 10\] does not suit prune_type='SparseGPT'"):
        Pruner(prune_type="SparseGPT", target_sparsity_ratio=0.5, step_range=[0, 10])
    with pytest.raises(ValueError, match=r"calibration_samples must be an integer >= 1"):
        PruningCallback(calibration_samples=0)
    pruning = PruningCallback([Pruner(prune_type="SparseGPT", target_sparsity_ratio=0.5, names=[r".*query\.weight"])],
                              calibration_samples=1000)  # fmt: skip
    with pytest.warns(UserWarning, match=r"calibration_samples=1000, but the training data holds 16 samples"):
        make_trainer(max_steps=1, callbacks=[pruning]).fit(CalibratedBert(), toy_loader(16))
    assert pruning.sparsity() == 0.5


def test_nlp_trainer_prunes_once_with_a_one_shot_pruner(tmp_path: Any) -> None:
    """``trainer.prune()`` with a SparseGPT pruner: calibrated on its train dataset before training, then fine-tuned
    with the 2:4 masks fixed."""
    import datasets
    from transformers import TrainingArguments

    from lightning_sparsity import NLPTrainer, PruningConfig
    from tests.helpers import toy_dataset

    input_ids, labels = toy_dataset(64, 0).tensors
    train = datasets.Dataset.from_dict({"input_ids": input_ids.tolist(), "label": labels.tolist()})
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config())
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=4, use_cpu=True,
                             save_strategy="no", logging_strategy="no", disable_tqdm=True, report_to=[])  # fmt: skip
    trainer = NLPTrainer(model=model, args=args, train_dataset=train)
    pruner = Pruner(prune_type="SparseGPT", target_sparsity_ratio=0.5, pattern="2:4", names=[r".*encoder.*\.weight"])
    trainer.prune(pruning_config=PruningConfig(pruner=[pruner]))
    weights = [p for n, p in model.named_parameters() if ".encoder." in n and n.endswith("weight") and p.dim() == 2]
    assert len(weights) == 12
    for weight in weights:
        assert bool(((weight == 0).reshape(weight.shape[0], -1, 4).sum(-1) == 2).all())
    assert trainer.pruning_report.layers.sparsity == 0.5
