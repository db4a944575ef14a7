"""Models for labkit: the self-pretrained ``tiny`` Llama, offline SmolLM2-135M, and any HF model.

Use the names ``"tiny"`` and ``"smollm2-135m"`` anywhere a model is asked for; a Hugging Face hub
id (e.g. ``"HuggingFaceTB/SmolLM2-135M-Instruct"``, where the hub is reachable) or a local folder
goes through the same calls.
"""

from labkit.models.registry import (
    BUILTIN_MODELS,
    ModelNotFoundError,
    count_parameters,
    fetch_model,
    hub_reachable,
    load_config,
    load_model,
    load_tokenizer,
    model_info,
    quantization_config,
    resolve_model,
)
from labkit.models.tiny import pretrain_tiny, sample_text, tiny_config
from labkit.models.tokenizer import CHATML_TEMPLATE, train_tokenizer

__all__ = [
    "BUILTIN_MODELS",
    "CHATML_TEMPLATE",
    "ModelNotFoundError",
    "count_parameters",
    "fetch_model",
    "hub_reachable",
    "load_config",
    "load_model",
    "load_tokenizer",
    "model_info",
    "pretrain_tiny",
    "quantization_config",
    "resolve_model",
    "sample_text",
    "tiny_config",
    "train_tokenizer",
]
