"""Serving LoRA: merged weights vs an attached adapter, one base with N adapters vs N models.

The seeds' multi-tenant argument, measured rather than asserted:

* latency per generated token with the adapter attached (two extra thin matmuls per adapted
  linear) vs merged into W with ``merge_and_unload`` (no extra cost, but one model per task);
* storage of N task adapters on one base vs N merged models;
* switching tasks: peft ``set_adapter`` on one base (several adapters loaded) vs
  unmerge + merge of another adapter vs loading another merged model from disk.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from labkit.lora.spec import TARGET_SETS, LoRAError, LoRASpec

__all__ = ["measure_serving", "per_token_latency", "dir_bytes"]


def dir_bytes(path: str | Path) -> int:
    """Bytes of every file under ``path`` (what a checkpoint costs on disk)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _median_time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _generate(model: nn.Module, input_ids: torch.Tensor, n: int) -> None:
    model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        pad_token_id=0,
    )


@torch.no_grad()
def per_token_latency(
    models: dict[str, nn.Module], input_ids: torch.Tensor, new_tokens: int, repeats: int = 3
) -> dict[str, float]:
    """Seconds per generated token during decoding (greedy, KV cache on), for each model.

    Prefill is taken out: ``(T(n tokens) − T(1 token)) / (n − 1)``. The models are measured
    in interleaved rounds (so a busy machine slows them all alike) and the median round is kept.
    """
    if new_tokens < 2:
        raise LoRAError(f"new_tokens: must be >= 2; got {new_tokens!r}")
    for m in models.values():
        _generate(m, input_ids, 2)  # warm-up
    rounds: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(repeats):
        for key, m in models.items():
            t0 = time.perf_counter()
            _generate(m, input_ids, new_tokens)
            t1 = time.perf_counter()
            _generate(m, input_ids, 1)
            t2 = time.perf_counter()
            rounds[key].append(max((t1 - t0) - (t2 - t1), 0.0) / (new_tokens - 1))
    return {k: statistics.median(v) for k, v in rounds.items()}


def _spec(rank: int, targets: str | tuple[str, ...]) -> LoRASpec:
    """The adapters served here: α = 2r on ``targets`` (a named set or module names)."""
    if isinstance(targets, str) and targets not in TARGET_SETS:
        raise LoRAError(f"targets: must be one of {', '.join(TARGET_SETS)}; got {targets!r}")
    return LoRASpec(rank=rank, alpha_policy="2r", targets=targets)


def _random_adapter(peft_model: nn.Module, name: str, seed: int) -> None:
    """Give adapter ``name`` a non-zero B, as a trained adapter would have."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in peft_model.modules():
            lora_b = getattr(module, "lora_B", None)
            if lora_b is not None and name in lora_b:
                w = lora_b[name].weight
                w.copy_(torch.randn(w.shape, generator=g).to(w) * 0.02)


def measure_serving(
    model: nn.Module | str = "tiny",
    *,
    rank: int = 8,
    targets: str | tuple[str, ...] = "attention",
    n_adapters: int = 4,
    new_tokens: int = 32,
    prompt_len: int = 16,
    batch_size: int = 1,
    repeats: int = 3,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Measure merged vs attached serving on one model and return the figures as a dict.

    ``model`` is a loaded causal LM (left untouched: work happens on copies) or a name for
    ``labkit.models.load_model``. Adapters get random non-zero B so merging really changes W.
    """
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from labkit.device import resolve_device

    for field, value, low in (("rank", rank, 1), ("n_adapters", n_adapters, 1), ("new_tokens", new_tokens, 2),
                              ("prompt_len", prompt_len, 1), ("batch_size", batch_size, 1),
                              ("repeats", repeats, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise LoRAError(f"{field}: must be an integer >= {low}; got {value!r}")
    name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "") or "model"
    if isinstance(model, str):
        from labkit.models import load_model

        model = load_model(model)
    dev = resolve_device(device)
    base = copy.deepcopy(model).to(dev).eval()
    vocab = base.config.vocab_size
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, vocab, (batch_size, prompt_len), generator=g).to(dev)
    spec = _spec(rank, targets)
    lcfg = spec.peft_config(getattr(base.config, "model_type", None))

    with tempfile.TemporaryDirectory(prefix="labkit-serving-") as tmp:
        tmp_path = Path(tmp)
        # Base model on disk, then N adapters trained (here: random) on it.
        base.save_pretrained(str(tmp_path / "base"))
        base_bytes = dir_bytes(tmp_path / "base")
        peft_model = get_peft_model(copy.deepcopy(base), lcfg, adapter_name="task0")
        for i in range(1, n_adapters):
            peft_model.add_adapter(f"task{i}", lcfg)
        adapter_bytes = []
        for i in range(n_adapters):
            _random_adapter(peft_model, f"task{i}", seed=i + 1)
        peft_model.save_pretrained(str(tmp_path / "adapters"))  # one subfolder per adapter
        for i in range(n_adapters):
            sub = tmp_path / "adapters" / f"task{i}"
            adapter_bytes.append(
                sum(f.stat().st_size for f in sub.glob("adapter_*") if f.is_file())
            )
        peft_model.set_adapter("task0")
        peft_model.eval()
        trainable_per_adapter = sum(
            p.numel() for n, p in peft_model.named_parameters() if ".task0." in n and "lora_" in n
        )

        # Latency: base, adapter attached, adapter merged (merge_and_unload of a reloaded copy).
        single = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "adapters" / "task0"))
        t0 = time.perf_counter()
        merged = single.merge_and_unload()
        merge_seconds = time.perf_counter() - t0
        merged.eval()
        lat = per_token_latency(
            {"base": base, "attached": peft_model, "merged": merged}, input_ids, new_tokens, repeats
        )
        lat_base, lat_attached, lat_merged = lat["base"], lat["attached"], lat["merged"]
        with torch.no_grad():
            logits_attached = peft_model(input_ids).logits
            max_diff = (merged(input_ids).logits - logits_attached).abs().max().item()
        merged.save_pretrained(str(tmp_path / "merged0"))
        merged_bytes = dir_bytes(tmp_path / "merged0")

        # Switching tasks.
        order = [f"task{(i + 1) % n_adapters}" for i in range(max(2 * n_adapters, 4))]

        def set_all() -> None:
            for a in order:
                peft_model.set_adapter(a)

        t_set = _median_time(set_all, repeats) / len(order)

        def unmerge_merge() -> None:
            for a in order:
                peft_model.unmerge_adapter()
                peft_model.set_adapter(a)
                peft_model.merge_adapter()

        peft_model.merge_adapter()
        t_remerge = _median_time(unmerge_merge, repeats) / len(order)
        peft_model.unmerge_adapter()
        peft_model.set_adapter("task0")

        def load_merged() -> None:
            AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged0")).to(dev)

        t_load_merged = _median_time(load_merged, repeats)

        # Several tenants in one batch: each row uses its own adapter (peft `adapter_names`).
        tenants = [f"task{i % n_adapters}" for i in range(max(batch_size, n_adapters))]
        mixed_ids = torch.randint(3, vocab, (len(tenants), prompt_len), generator=g).to(dev)
        with torch.no_grad():
            peft_model(mixed_ids)  # warm-up
            t_single = _median_time(lambda: peft_model(mixed_ids), repeats)
            t_mixed = _median_time(lambda: peft_model(mixed_ids, adapter_names=tenants), repeats)

    n = n_adapters
    return {
        "model": name,
        "device": str(dev),
        "rank": rank,
        "targets": spec.targets if isinstance(spec.targets, str) else list(spec.targets),
        "n_adapters": n,
        "new_tokens": new_tokens,
        "prompt_len": prompt_len,
        "batch_size": batch_size,
        "latency_ms_per_token": {
            "base": 1e3 * lat_base,
            "attached": 1e3 * lat_attached,
            "merged": 1e3 * lat_merged,
        },
        "attached_overhead": lat_attached / lat_merged - 1.0 if lat_merged > 0 else None,
        "max_logit_diff_merged_vs_attached": max_diff,
        "merge_seconds": merge_seconds,
        "storage": {
            "base_bytes": base_bytes,
            "adapter_bytes": adapter_bytes[0],
            "merged_model_bytes": merged_bytes,
            "trainable_params_per_adapter": trainable_per_adapter,
            "separate_total_bytes": base_bytes + sum(adapter_bytes),  # one base + N adapters
            "merged_total_bytes": n * merged_bytes,  # N merged models
        },
        "switch_seconds": {
            "set_adapter": t_set,
            "unmerge_merge": t_remerge,
            "load_merged_model": t_load_merged,
        },
        "mixed_batch_seconds": {"one_adapter": t_single, "per_row_adapters": t_mixed, "rows": len(tenants)},
    }
