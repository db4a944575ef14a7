"""Tiny random configs of each architecture family: the CPU ground-truth grid (tests, benchmark)."""

from __future__ import annotations

from typing import Any

TOY_FAMILIES = ("llama", "qwen2", "gpt2", "phi3", "gemma2")


def toy_config(model_type: str, **overrides: Any) -> dict[str, Any]:
    """A config dict (with ``model_type``) small enough to train a few steps on CPU in milliseconds."""
    base: dict[str, Any] = dict(vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    if model_type == "llama":
        cfg = dict(base, model_type="llama")
    elif model_type == "qwen2":
        cfg = dict(base, model_type="qwen2", tie_word_embeddings=False)
    elif model_type == "phi3":
        cfg = dict(base, model_type="phi3", tie_word_embeddings=False, pad_token_id=0,
                   original_max_position_embeddings=512, sliding_window=None)
    elif model_type == "gemma2":
        cfg = dict(base, model_type="gemma2", head_dim=16, query_pre_attn_scalar=16, sliding_window=4096,
                   pad_token_id=0)
    elif model_type == "gpt2":
        cfg = dict(model_type="gpt2", vocab_size=512, n_embd=64, n_layer=2, n_head=4, n_positions=512,
                   tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    else:
        raise ValueError(f"model_type: one of {', '.join(TOY_FAMILIES)}; got {model_type!r}")
    cfg.update(overrides)
    return cfg


# Toys whose KV cache is a few per cent of a training step (a wide head_dim, four layers), so a test with a
# 1 % tolerance can see it: the training-cache tests and benchmarks/memory_loop.py.
WIDE_HEAD_TOYS: dict[str, dict[str, Any]] = {
    "llama": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=32, num_hidden_layers=4),
    "qwen2": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=32, num_hidden_layers=4),
    "gemma2": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=32,
                   num_hidden_layers=4),
    "phi3": dict(num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=4),
    "gpt2": dict(n_layer=4),
}


# The CPU ground-truth grid: architecture × (method, precision, batch, seq, checkpointing, ...).
GRID_SETUPS: tuple[dict[str, Any], ...] = (
    dict(method="full", precision="fp32", batch=1, seq=16),
    dict(method="full", precision="bf16", batch=2, seq=24, checkpointing=True),
    dict(method="full", precision="amp-bf16", batch=2, seq=16, optimizer="sgd"),
    dict(method="full", precision="fp32", batch=1, seq=32, optimizer="adamw8bit"),
    dict(method="lora", precision="fp32", batch=2, seq=32),
    dict(method="lora", precision="amp-bf16", batch=1, seq=16, checkpointing=True),
    dict(method="lora", precision="bf16", batch=2, seq=16, targets="all-linear", rank=4),
    dict(method="qlora", precision="fp32", compute_dtype="bf16", batch=2, seq=16),
    dict(method="qlora", precision="amp-bf16", batch=1, seq=32, targets="all-linear", checkpointing=True),
    dict(method="lora", precision="amp-bf16", batch=2, seq=16, lora_dropout=0.1, attn="eager"),
)
GRID_FAMILIES = ("llama", "qwen2", "gpt2", "phi3", "gemma2")


def at_point(kw: dict[str, Any], scale: int) -> dict[str, Any]:
    """A grid setup with batch and sequence length both multiplied by ``scale`` (the second point of the grid)."""
    return dict(kw, batch=kw["batch"] * scale, seq=kw["seq"] * scale) if scale != 1 else dict(kw)


def accuracy_grid(families: tuple[str, ...] = GRID_FAMILIES,
                  scales: tuple[int, ...] = (1,)) -> list[tuple[str, dict[str, Any]]]:
    """(model_type, setup kwargs) pairs covering architectures × batch × seq × checkpointing × method × precision;
    ``scales`` repeats every setup at batch·k × seq·k (two points tell a per-token slope from a constant)."""
    return [(fam, at_point(kw, k)) for fam in families for kw in GRID_SETUPS for k in scales]
