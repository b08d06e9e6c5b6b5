"""What export buys: compressed checkpoint size, and CPU inference speed of a slimmed model.

1. Checkpoint: a MiniLM-sized BertModel (random init) with every encoder Linear weight magnitude-pruned to
   90%, written by ``save_sparse`` twice: with the pruned weights as ``+0.0`` (as PruningCallback writes them)
   and as ``weight * mask`` leaves them (``-0.0`` for negative weights, as ``torch.nn.utils.prune`` does); the
   encoder Linear weights' stored bytes (bitmasks + values) are compared with their dense bytes, the file with
   the dense safetensors file, and the file is loaded back and compared bit for bit
   (``benchmarks/results/export_checkpoint.json``; ``--checkpoint-only`` measures this part alone).
2. Inference: the same-sized BertModel with half the heads and 75% of the FFN neurons of every layer pruned
   (``head``/``channel`` masks from magnitudes), timed dense and after ``slim()``, batch 32 x 128 tokens,
   ``torch.inference_mode``; the two run interleaved, round after round, and the speed-up is the median of
   the rounds' ratios of process CPU seconds (1 torch thread by default: robust to load on a shared
   machine); wall-clock ratios are reported beside them.
3. With ``--sst2``: the embedded all-MiniLM-L6-v2 fine-tuned on the SST-2 slice of ``lightning_sparsity/data/sst2``
   (dense steps), then pruned with the same ``head``/``channel`` targets by SnipMomentum (ramp + recovery
   steps) and slimmed; test accuracy of both, and the time of one pass over the test set, dense vs slim.

    python -m benchmarks.bench_export [--rounds 7] [--batch 32] [--seq 128] [--sst2] [--checkpoint-only]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import BertModel

from benchmarks.common import bert_config, interleaved, load, median, save, set_threads, table, timed
from lightning_sparsity.export import load_sparse, save_sparse, slim
from lightning_sparsity.functional import magnitude_scores, pattern_masks
from lightning_sparsity.functional.patterns import Blocks
from lightning_sparsity.layers import prunable_weights
from lightning_sparsity.structure import UNITS, analyze, structured_masks

SPARSITY = 0.9
CHECKPOINT_SETUP = (
    "MiniLM-sized BertModel (hidden 384, 6 layers, 12 heads, FFN 1536), random init, every encoder Linear weight "
    f"magnitude-pruned to {SPARSITY:.0%}"
)
HEADS_PRUNED, NEURONS_PRUNED = 0.5, 0.75


def encoder_linear_weights(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: weight for name, weight in prunable_weights(model).items() if name.startswith("encoder.")}


@torch.no_grad()
def checkpoint_figures() -> dict[str, dict[str, object]]:
    """Stored bytes and file sizes at 90% sparsity, with the pruned weights written as ``+0.0`` (as PruningCallback
    does) and as ``weight * mask`` leaves them (``-0.0`` for negative weights, as torch.nn.utils.prune does)."""
    torch.manual_seed(0)
    model = BertModel(bert_config("minilm"))
    weights = encoder_linear_weights(model)
    masks = pattern_masks([magnitude_scores(w) for w in weights.values()], SPARSITY, Blocks())
    dense_weights = {name: weight.clone() for name, weight in weights.items()}
    figures = {}
    for zeros in ("+0.0", "-0.0"):
        for (name, weight), mask in zip(weights.items(), masks, strict=True):
            if zeros == "+0.0":
                weight.copy_(dense_weights[name].masked_fill(~mask, 0.0))
            else:
                weight.copy_(dense_weights[name] * mask)
        figures[zeros] = _checkpoint_figures(model, weights)
    return figures


def _checkpoint_figures(model: BertModel, weights: dict[str, torch.nn.Parameter]) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        save_sparse(model, path)
        with safe_open(str(path), framework="pt") as file:
            stored = sum(file.get_tensor(key).nbytes for key in file.keys() if key.split("/", 1)[-1] in weights)
        loaded = load_sparse(path)
        file_bytes = path.stat().st_size
        save_file(model.state_dict(), str(Path(folder) / "dense.safetensors"))
        dense_file_bytes = (Path(folder) / "dense.safetensors").stat().st_size
    state = model.state_dict()
    exact = list(loaded) == list(state) and all(
        torch.equal(loaded[name].view(torch.int32), tensor.view(torch.int32))
        if tensor.dtype == torch.float32
        else torch.equal(loaded[name], tensor)
        for name, tensor in state.items()
    )
    dense = sum(w.nbytes for w in weights.values())
    return {
        "negative_zeros": sum(int(torch.signbit(w[w == 0]).sum()) for w in weights.values()),
        "encoder_linear_dense_bytes": dense,
        "encoder_linear_stored_bytes": stored,
        "encoder_linear_fraction": stored / dense,
        "file_bytes": file_bytes,
        "dense_file_bytes": dense_file_bytes,
        "file_fraction": file_bytes / dense_file_bytes,
        "bit_exact": exact,
    }


@torch.no_grad()
def structured_model() -> BertModel:
    """A MiniLM-sized BertModel whose heads and FFN neurons are pruned by magnitude, as the patterns do."""
    torch.manual_seed(0)
    model = BertModel(bert_config("minilm")).eval()
    weights = dict(model.named_parameters())
    for structure, sparsity in (("head", HEADS_PRUNED), ("channel", NEURONS_PRUNED)):
        groups = [c.group for c in analyze(model).couplings if c.structure == UNITS[structure]]
        scores = {name: magnitude_scores(weights[name]) for group in groups for name in group.names}
        for name, mask in structured_masks(groups, scores, sparsity).items():
            weights[name].masked_fill_(~mask, 0.0)
    return model


def inference_figures(rounds: int, batch: int, seq: int) -> dict[str, object]:
    dense = structured_model()
    slimmed = slim(dense)
    input_ids = torch.randint(0, dense.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))

    def run(model: BertModel) -> torch.Tensor:
        with torch.inference_mode():
            return model(input_ids=input_ids).last_hidden_state

    expected, actual = run(dense), run(slimmed)  # also the warm-up
    return {
        **dense_versus_slim(lambda: run(dense), lambda: run(slimmed), rounds),
        "max_abs_difference": float((expected - actual).abs().max()),
        "outputs_close": bool(torch.allclose(expected, actual, rtol=1e-4, atol=1e-5)),
        "dense_parameters": sum(p.numel() for p in dense.parameters()),
        "slim_parameters": sum(p.numel() for p in slimmed.parameters()),
        "slimmed_layers": kept_sizes(slimmed),
    }


def kept_sizes(model: torch.nn.Module) -> list[dict[str, int]]:
    """Heads and FFN neurons each layer of a slimmed BERT keeps."""
    layers = model.get_submodule("bert.encoder" if hasattr(model, "bert") else "encoder").layer
    return [
        {
            "num_heads": block.attention.self.num_attention_heads,
            "intermediate_size": block.intermediate.dense.out_features,
        }
        for block in layers
    ]


def dense_versus_slim(dense: Callable[[], object], slimmed: Callable[[], object], rounds: int) -> dict[str, object]:
    """Median CPU and wall-clock seconds of both, interleaved, and the medians of the rounds' ratios."""
    figures = interleaved({"dense": lambda: timed(dense), "slim": lambda: timed(slimmed)}, rounds)
    pairs = list(zip(figures["dense"], figures["slim"], strict=True))
    return {
        "dense_cpu_s": median([cpu for _, cpu in figures["dense"]]),
        "slim_cpu_s": median([cpu for _, cpu in figures["slim"]]),
        "speedup": median([d_cpu / s_cpu for (_, d_cpu), (_, s_cpu) in pairs]),
        "speedup_wall": median([d_wall / s_wall for (d_wall, _), (s_wall, _) in pairs]),
        "raw": figures,
    }


def sst2_figures(rounds: int, dense_steps: int, prune_steps: int, recovery_steps: int) -> dict[str, object]:
    import lightning.pytorch as pl

    from lightning_sparsity import Pruner, PruningCallback
    from lightning_sparsity.text import TextClassificationDataModule, TextClassificationModule

    pl.seed_everything(0)
    folder = Path(__file__).resolve().parents[1] / "lightning_sparsity" / "data" / "sst2"
    files = {f"{split}_file": str(folder / f"{split}.tsv") for split in ("train", "validation", "test")}
    data = TextClassificationDataModule(**files, max_length=64, batch_size=32, eval_batch_size=64)
    module = TextClassificationModule("all-MiniLM-L6-v2", num_labels=2, learning_rate=1e-4)

    def fit(steps: int, callbacks: list[pl.Callback]) -> pl.Trainer:
        trainer = pl.Trainer(
            accelerator="cpu",
            max_steps=steps,
            max_epochs=-1,
            limit_val_batches=0,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=False,
            callbacks=callbacks,
        )
        trainer.fit(module, data)
        return trainer

    def accuracy(trainer: pl.Trainer, tested: TextClassificationModule) -> float:
        return float(trainer.test(tested, data, verbose=False)[0]["test_acc"])

    dense_trainer = fit(dense_steps, [])
    dense_accuracy = accuracy(dense_trainer, module)
    dense = copy.deepcopy(module.model).eval()
    ramp = {"prune_type": "SnipMomentum", "step_range": [0, prune_steps], "update_frequency": 10, "schedule": "cubic"}
    pruners = [
        Pruner(pattern="head", target_sparsity_ratio=HEADS_PRUNED, **ramp),
        Pruner(pattern="channel", target_sparsity_ratio=NEURONS_PRUNED, **ramp),
    ]
    prune_trainer = fit(prune_steps + recovery_steps, [PruningCallback(pruners=pruners)])
    slimmed = slim(module.model.eval())
    slim_accuracy = accuracy(prune_trainer, TextClassificationModule.from_model(slimmed))
    slimmed.eval()  # from_model() set it to train mode
    batches = [{k: v for k, v in batch.items() if k != "labels"} for batch in data.test_dataloader()]

    def run(model: torch.nn.Module) -> None:
        with torch.inference_mode():
            for batch in batches:
                model(**batch)

    return {
        "dense_accuracy": dense_accuracy,
        "slim_accuracy": slim_accuracy,
        "accuracy_change_points": 100 * (slim_accuracy - dense_accuracy),
        "steps": {"dense": dense_steps, "prune_ramp": prune_steps, "recovery": recovery_steps},
        "slimmed_layers": kept_sizes(slimmed),
        **dense_versus_slim(lambda: run(dense), lambda: run(slimmed), rounds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (medians over them)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--sst2", action="store_true", help="also fine-tune, prune and slim MiniLM on SST-2")
    parser.add_argument("--sst2-steps", type=int, nargs=3, default=[200, 300, 200], help="dense, ramp, recovery")
    parser.add_argument("--sst2-rounds", type=int, default=3, help="interleaved timing rounds of the test-set pass")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--checkpoint-only", action="store_true", help="only the compressed checkpoint figures")
    args = parser.parse_args()
    set_threads(args.threads)

    save("export_checkpoint", {"setup": CHECKPOINT_SETUP, "checkpoint": checkpoint_figures()})
    if args.checkpoint_only:
        return
    inference = inference_figures(args.rounds, args.batch, args.seq)
    setup = (
        f"MiniLM-sized BertModel (hidden 384, 6 layers, 12 heads, FFN 1536), random init; inference with "
        f"{HEADS_PRUNED:.0%} of heads and {NEURONS_PRUNED:.0%} of FFN neurons removed, batch {args.batch} x "
        f"{args.seq} tokens, {args.threads} torch thread(s)"
    )
    result = {"setup": setup, "rounds": args.rounds, "inference": inference}
    if args.sst2:
        result["sst2"] = sst2_figures(args.sst2_rounds, *args.sst2_steps)
    save("export", result)
    print(markdown(result, load("export_checkpoint")))


def markdown(result: dict | None, checkpoint: dict | None) -> str:
    """The export section of docs/benchmarks.md from ``benchmarks/results/export.json`` (inference) and
    ``export_checkpoint.json`` (compressed checkpoints)."""
    parts = ["## Export: compressed checkpoints and slimmed models"]
    if checkpoint:
        parts += ["", _checkpoint_markdown(checkpoint)]
    if result:
        parts += ["", _inference_markdown(result)]
    return "\n".join(parts)


def _checkpoint_markdown(result: dict) -> str:
    plus, minus = result["checkpoint"]["+0.0"], result["checkpoint"]["-0.0"]
    rows = [
        ["encoder Linear weights, stored / dense bytes, +0.0 zeros", plus["encoder_linear_fraction"], "<= 0.15"],
        ["encoder Linear weights, stored / dense bytes, -0.0 zeros", minus["encoder_linear_fraction"], ""],
        ["whole file / dense safetensors file, +0.0 zeros", plus["file_fraction"], ""],
        ["whole file / dense safetensors file, -0.0 zeros", minus["file_fraction"], "about 0.60"],
        ["loads bit-exact, +0.0 / -0.0 zeros", f"{plus['bit_exact']} / {minus['bit_exact']}", "True / True"],
    ]
    return "\n".join(
        [
            f"`python -m benchmarks.bench_export --checkpoint-only` ({result['setup']}; measured "
            f"{result['machine']['date']}). *+0.0 zeros*: pruned weights written as PruningCallback writes them; "
            f"*-0.0 zeros*: as `weight * mask` leaves them (`torch.nn.utils.prune`, Lightning's `ModelPruning`), "
            f"{minus['negative_zeros']:,} of the pruned weights negative zeros. A zero of either sign costs one mask "
            "bit, and a negative one also a sign bit in the bitmask of the zeros' signs.",
            "",
            table(["figure", "measured", "goal"], rows),
        ]
    )


def _inference_markdown(result: dict) -> str:
    inference = result["inference"]
    rows = [
        ["inference, dense (CPU s)", inference["dense_cpu_s"], ""],
        ["inference, slimmed (CPU s)", inference["slim_cpu_s"], ""],
        [
            "speed-up of slim(), CPU time (wall-clock)",
            f"{inference['speedup']:.2f} ({inference['speedup_wall']:.2f})",
            ">= 1.5",
        ],
        ["max abs difference of outputs, dense vs slim", f"{inference['max_abs_difference']:.1e}", "float tolerance"],
    ]
    if "sst2" in result:
        sst2 = result["sst2"]
        rows += [
            [
                "SST-2 slice test accuracy, dense -> pruned + slimmed",
                f"{sst2['dense_accuracy']:.3f} -> {sst2['slim_accuracy']:.3f}",
                "within 1.5 points",
            ],
            [
                "SST-2 test-set pass speed-up, CPU time (wall-clock)",
                f"{sst2['speedup']:.2f} ({sst2['speedup_wall']:.2f})",
                ">= 2",
            ],
        ]
    return "\n".join(
        [
            f"`python -m benchmarks.bench_export{' --sst2' * ('sst2' in result)}` ({result['setup']}; "
            f"{result['rounds']} interleaved rounds; measured {result['machine']['date']}).",
            "",
            table(["figure", "measured", "goal"], rows),
            *([_sst2_note(result["sst2"])] if "sst2" in result else []),
        ]
    )


def _sst2_note(sst2: dict) -> str:
    steps = sst2["steps"]
    return (
        "\nSST-2: the embedded all-MiniLM-L6-v2 on the `lightning_sparsity/data/sst2` slice, "
        f"fine-tuned {steps['dense']} steps "
        f"(dense figures), then {steps['prune_ramp']} + {steps['recovery']} more steps pruning half the heads and "
        "75% of the FFN neurons of every layer (SnipMomentum `head`/`channel` pruners) and slimmed; the speed-up "
        "is one pass over the 872 test sentences (batch 64)."
    )


if __name__ == "__main__":
    main()
