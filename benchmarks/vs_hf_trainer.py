"""labkit's engine vs ``transformers.Trainer`` + peft on the same run: useful tokens/s, peak memory, losses.

    python benchmarks/vs_hf_trainer.py                     # tiny full FT and smollm2-135m LoRA r8, ABBA
    python benchmarks/vs_hf_trainer.py --models tiny --steps 40 --rounds 2 --labkit-option packing=false \
        --labkit-option loss_chunk=0                      # labkit padded, with the full logits
    python benchmarks/vs_hf_trainer.py --device cuda      # on a GPU: peak = torch.cuda.max_memory_allocated

Same base weights, same text2sql train records tokenized once by labkit (prompt masked with
-100), the **same batches in the same order** (the Trainer gets labkit's shuffled order and a
sequential sampler, so the loss curves can be compared step by step), same batch size, steps,
learning rate and schedule (transformers' cosine with warmup in both), AdamW, clipping at 1.0,
fp32 (on the CPU by default; ``--device cuda`` runs both on the GPU). The Trainer uses what its
users would: ``DataCollatorForSeq2Seq`` (pads to the longest in the batch, labels with -100),
peft's ``get_peft_model`` with the same LoraConfig, and ``TrainingArguments``' default optimizer
(``adamw_torch_fused`` since torch 2.8, fused on the CPU too; labkit's engine uses the same fused
kernel on the CPU). Each run reports the optimizer it stepped with.

Each run is a fresh subprocess, in ABBA order (labkit, trainer, trainer, labkit, …), so machine
noise and warm caches hit both alike. Reported per run:

* useful tokens/s: prompt + answer tokens (not padding) of steps 2..N over their wall time
  (labkit: its step records; Trainer: the time between ``on_step_end`` callbacks, batch
  loading included in both);
* peak memory: the process's max RSS (``resource.getrusage``) after training, and its growth
  over the RSS measured just before training began (model loaded, data tokenized) — the
  training's own peak, free of what importing the libraries costs each side; on CUDA also
  ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` over the training alone;
* the loss per step.

The summary row per model is the median over runs of labkit / Trainer tokens/s and the
median peak-RSS growth of each side, then the two loss curves side by side.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

SETUPS = {  # model → (method, steps by default)
    "tiny": ("full", 30),
    "smollm2-135m": ("lora", 8),
}
BATCH = 8
WARMUP_STEPS = 2


def _config(model: str, steps: int, options: dict[str, Any]):
    from labkit.train.config import TrainConfig

    method = SETUPS[model][0]
    return TrainConfig(model=model, method=method, rank=8, targets=("q_proj", "k_proj", "v_proj", "o_proj"),
                       steps=steps, batch_size=BATCH, warmup_steps=WARMUP_STEPS, schedule="cosine",
                       precision="fp32", eval_examples=0, **options)


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _reset_cuda_peak(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _cuda_peaks(device: str) -> dict[str, int]:
    """The training's own CUDA peaks (allocated and reserved), after :func:`_reset_cuda_peak`."""
    if device != "cuda":
        return {}
    import torch

    torch.cuda.synchronize()
    return {"cuda_max_allocated": int(torch.cuda.max_memory_allocated()),
            "cuda_max_reserved": int(torch.cuda.max_memory_reserved())}


def _optimizer_name(optimizer: Any) -> str:
    """``AdamW (fused)`` / ``AdamW (foreach)`` / ``AdamW (not fused)``: the kernel a run stepped with."""
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the Trainer's
    defaults = getattr(optimizer, "defaults", {})
    kind = "fused" if defaults.get("fused") else "foreach" if defaults.get("foreach") else "not fused"
    return f"{type(optimizer).__name__} ({kind})"


def run_labkit(model: str, steps: int, options: dict[str, Any], device: str = "cpu") -> dict[str, Any]:
    from labkit.models import load_model, load_tokenizer
    from labkit.train.data import training_features
    from labkit.train.engine import TrainHooks, train

    class OptimizerSeen(TrainHooks):  # notes which optimizer the run stepped with
        name = ""

        def after_step(self, step: int, model: Any, optimizer: Any) -> None:
            self.name = self.name or _optimizer_name(optimizer)

    config = _config(model, steps, options)
    base = (load_model(model), load_tokenizer(model))
    training_features(base[1], config)  # tokenize before the RSS baseline, as the Trainer side does
    before = _current_rss_bytes()
    _reset_cuda_peak(device)
    hooks = OptimizerSeen()
    record = train(config, base=base, progress=False, raise_errors=True, device=device, hooks=hooks)
    peaks = _cuda_peaks(device)
    timed = record.steps[1:]
    tokens = sum(s.tokens_per_s * s.seconds for s in timed)
    return {"tokens_per_s": tokens / sum(s.seconds for s in timed), "losses": record.losses,
            "optimizer": hooks.name, "rss_before": before, "rss_peak": _rss_bytes(), **peaks}


def _labkit_order(features: list, seed: int, n: int) -> list:
    """The first ``n`` examples in the order labkit's batch stream draws them (labkit.train.data)."""
    from labkit.train.data import shuffled_groups

    out: list = []
    groups = shuffled_groups(len(features), BATCH, seed)
    while len(out) < n:
        out += [features[i] for i in next(groups)]
    return out[:n]


def run_trainer(model: str, steps: int, options: dict[str, Any], device: str = "cpu") -> dict[str, Any]:
    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from labkit.models import load_model, load_tokenizer
    from labkit.train.data import training_features

    config = _config(model, steps, {})
    tokenizer = load_tokenizer(model)
    net = load_model(model)
    net.config.use_cache = False
    if config.method == "lora":
        from peft import get_peft_model

        from labkit.lora.spec import model_type_of

        net = get_peft_model(net, config.lora.peft_config(model_type_of(net)))  # what labkit builds, by peft's usual call
    examples = _labkit_order(training_features(tokenizer, config), config.seed, steps * BATCH)
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    real_tokens: list[int] = []

    def collate(features):
        batch = collator([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])
        real_tokens.append(int(batch["attention_mask"].sum()))
        return batch

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = [time.perf_counter()]

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    class InOrder(Trainer):  # labkit's batches, in labkit's order
        def _get_train_sampler(self, *args, **kwargs):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    clock = Clock()
    with tempfile.TemporaryDirectory() as out:
        arguments = TrainingArguments(
            output_dir=out, per_device_train_batch_size=BATCH, gradient_accumulation_steps=1, max_steps=steps,
            learning_rate=config.learning_rate, lr_scheduler_type="cosine", warmup_steps=WARMUP_STEPS,
            weight_decay=0.0, max_grad_norm=1.0, logging_steps=1, save_strategy="no",
            report_to=[], use_cpu=device == "cpu", seed=config.seed, dataloader_num_workers=0, remove_unused_columns=False,
            disable_tqdm=True)
        trainer = InOrder(model=net, args=arguments, train_dataset=examples, data_collator=collate,
                          callbacks=[clock])
        before = _current_rss_bytes()
        _reset_cuda_peak(device)
        trainer.train()
        peaks = _cuda_peaks(device)
    seconds = [b - a for a, b in zip(clock.ends, clock.ends[1:])]
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {"tokens_per_s": sum(real_tokens[1:steps]) / sum(seconds[1:]), "losses": losses,
            "optimizer": _optimizer_name(trainer.optimizer), "rss_before": before, "rss_peak": _rss_bytes(), **peaks}


def _cuda_text(run: dict[str, Any]) -> str:
    if "cuda_max_allocated" not in run:
        return ""
    return (f"  cuda max allocated {run['cuda_max_allocated'] / 2**20:.0f} MiB, "
            f"reserved {run['cuda_max_reserved'] / 2**20:.0f} MiB")


def _worker(args: argparse.Namespace) -> None:
    warnings.filterwarnings("ignore")
    options = dict(_parse_option(o) for o in args.labkit_option)
    run = run_labkit if args.worker == "labkit" else run_trainer
    print(json.dumps(run(args.model, args.steps, options, args.device)))


def _parse_option(text: str) -> tuple[str, Any]:
    name, _, value = text.partition("=")
    if not value:
        raise SystemExit(f"--labkit-option: must be NAME=VALUE (a TrainConfig field); got {text!r}")
    return name.strip(), json.loads(value.strip())


def _spawn(side: str, model: str, steps: int, options: list[str], device: str = "cpu") -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--models", model,
               "--model", model, "--steps", str(steps), "--device", device]
    for option in options:
        command += ["--labkit-option", option]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{side} run on {model} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="tiny,smollm2-135m", help="comma-separated: tiny, smollm2-135m")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: 30 tiny, 8 smollm2)")
    parser.add_argument("--rounds", type=int, default=1, help="ABBA rounds (each: 2 labkit + 2 Trainer runs)")
    parser.add_argument("--labkit-option", action="append", default=[], help="NAME=VALUE for labkit's TrainConfig")
    parser.add_argument("--json", type=Path, default=None, help="also write every run here")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where both sides train")
    parser.add_argument("--worker", choices=("labkit", "trainer"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in SETUPS]
    if bad:
        raise SystemExit(f"--models: must be among {', '.join(SETUPS)}; got {bad[0]!r}")
    if args.steps is not None and args.steps < 3:
        raise SystemExit(f"--steps: must be at least 3 (the first step is warm-up); got {args.steps}")
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for model in models:
        steps = args.steps or SETUPS[model][1]
        runs: dict[str, list[dict[str, Any]]] = {"labkit": [], "trainer": []}
        for _ in range(args.rounds):
            for side in ("labkit", "trainer", "trainer", "labkit"):
                run = _spawn(side, model, steps, args.labkit_option, args.device)
                runs[side].append(run)
                print(f"{model:14s} {side:8s} {run['tokens_per_s']:9.0f} tok/s  peak RSS "
                      f"{run['rss_peak'] / 2**20:7.0f} MiB (+{(run['rss_peak'] - run['rss_before']) / 2**20:.0f} "
                      f"in training)  final loss {run['losses'][-1]:.4f}  {run['optimizer']}" + _cuda_text(run), flush=True)
        results[model] = runs
    print("\nmodel          method  labkit tok/s  Trainer tok/s  ratio   growth labkit  growth Trainer")
    for model, runs in results.items():
        lab = statistics.median(r["tokens_per_s"] for r in runs["labkit"])
        hf = statistics.median(r["tokens_per_s"] for r in runs["trainer"])
        grow = {k: statistics.median((r["rss_peak"] - r["rss_before"]) / 2**20 for r in v) for k, v in runs.items()}
        print(f"{model:14s} {SETUPS[model][0]:6s} {lab:12.0f} {hf:14.0f} {lab / hf:6.2f}x "
              f"{grow['labkit']:10.0f} MiB {grow['trainer']:11.0f} MiB")
        if "cuda_max_allocated" in runs["labkit"][0]:
            peak = {k: statistics.median(r["cuda_max_allocated"] / 2**20 for r in v) for k, v in runs.items()}
            print(f"{'':14s} cuda max allocated: labkit {peak['labkit']:.0f} MiB, Trainer {peak['trainer']:.0f} MiB")
    for model, runs in results.items():
        a, b = runs["labkit"][0]["losses"], runs["trainer"][0]["losses"]
        print(f"\n{model}: loss per step (labkit | Trainer | difference)")
        for i, (x, y) in enumerate(zip(a, b), 1):
            print(f"  {i:3d}  {x:.4f}  {y:.4f}  {x - y:+.4f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
