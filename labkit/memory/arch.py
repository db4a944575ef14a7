"""Architectures: load a config (catalog name, local path, Hugging Face id, or object) and
read off what memory depends on — parameter counts from a real meta-device model.

Meta-device construction (``torch.device("meta")``) builds the exact module tree transformers
would build, without allocating a byte: tied embeddings are counted once, GQA's smaller K/V
projections are what they are, biases and norms are included.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from labkit.errors import LabkitError

CATALOG_DIR = Path(__file__).with_name("catalog")
# model_type -> the family whose forward formulas.py models by hand (others: trace only)
FAMILIES = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "phi3": "phi3", "gpt2": "gpt2",
            "gemma2": "gemma2"}


class ArchError(LabkitError):
    """The model could not be resolved to a causal-LM config; the message says what to pass."""


def catalog_names() -> list[str]:
    """Names of the configs shipped with labkit (work offline)."""
    return sorted(p.stem for p in CATALOG_DIR.glob("*.json"))


@dataclass(frozen=True)
class LinearSpec:
    """One linear layer inside a transformer block (names relative to the block)."""

    name: str
    fan_in: int
    fan_out: int
    bias: bool
    conv1d: bool = False  # GPT-2's transposed Conv1D


@dataclass
class ArchInfo:
    """What memory depends on in an architecture (read off a meta-device model)."""

    name: str
    config: Any
    model_type: str
    family: str | None
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    params_total: int
    params_embedding: int  # token (+ position) embeddings
    params_lm_head: int  # 0 when tied
    params_norm: int  # every norm weight/bias in the model
    block_linears: list[LinearSpec] = field(default_factory=list)
    block_params: int = 0
    sdpa_supported: bool = True
    param_tensors: int = 0
    param_numels: tuple[int, ...] = ()
    buffer_bytes: int = 0  # buffers of an fp32 model (RoPE inv_freq, ...)
    buffer_bytes_half: int = 0  # buffers of a model built in bf16/fp16
    dropout_embd: float = 0.0
    dropout_attn: float = 0.0
    dropout_resid: float = 0.0
    softcap_attn: bool = False
    softcap_final: bool = False

    @property
    def linear_params_per_block(self) -> int:
        return sum(lin.fan_in * lin.fan_out for lin in self.block_linears)

    @property
    def linear_bias_per_block(self) -> int:
        return sum(lin.fan_out for lin in self.block_linears if lin.bias)

    def linears_matching(self, targets: tuple[str, ...] | str) -> list[LinearSpec]:
        """The block linears peft would wrap for ``target_modules`` (suffix match; all-linear = all)."""
        from labkit.lora.spec import ALL_LINEAR, target_matches  # peft's matching rule, written once

        if targets == ALL_LINEAR:
            return list(self.block_linears)
        return [lin for lin in self.block_linears if target_matches(lin.name, tuple(targets))]

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "model_type": self.model_type, "hidden": self.hidden,
                "intermediate": self.intermediate, "layers": self.layers, "heads": self.heads,
                "kv_heads": self.kv_heads, "head_dim": self.head_dim, "vocab": self.vocab,
                "tied_embeddings": self.tied, "params": self.params_total}


def load_config(model: Any) -> tuple[str, Any]:
    """``(display name, PretrainedConfig)`` for a catalog name, built-in, path, HF id or config."""
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(model, PretrainedConfig):
        return getattr(model, "_name_or_path", "") or model.model_type, model
    if isinstance(model, dict):
        return _from_dict(dict(model), "config")
    if not isinstance(model, (str, Path)):
        raise ArchError(f"--model: expected a name, path or config; got {type(model).__name__}")
    text = str(model)
    if text in ("tiny", "smollm2-135m"):
        try:  # the models agent's built-ins (config only, no weights built)
            from labkit.models import load_config as _lc  # type: ignore[attr-defined]

            return text, _lc(text)
        except Exception:  # noqa: BLE001 - fall back to the shipped copy
            pass
    key = text.lower()
    if (CATALOG_DIR / f"{key}.json").is_file():
        return key, _from_dict(json.loads((CATALOG_DIR / f"{key}.json").read_text()), key)[1]
    path = Path(text).expanduser()
    if path.is_file() and path.suffix == ".json":
        return path.parent.name or text, _from_dict(json.loads(path.read_text()), text)[1]
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ArchError(f"--model: folder {text} has no config.json")
        try:
            return path.name, AutoConfig.from_pretrained(str(path))
        except Exception as exc:  # noqa: BLE001
            raise ArchError(f"--model: invalid config in {text}: {_last_line(exc)}") from exc
    if text.count("/") == 1 and not text.startswith((".", "/")):
        return text, _hub_config(text)
    raise ArchError(
        f"--model: {text!r} is not a catalog name ({', '.join(catalog_names())}), "
        "a local folder or config.json, nor a Hugging Face id (owner/name)")


def _from_dict(data: dict[str, Any], name: str) -> tuple[str, Any]:
    from transformers import AutoConfig

    data = {k: v for k, v in data.items() if not k.startswith("_labkit")}
    model_type = data.pop("model_type", None)
    if not model_type:
        raise ArchError(f"--model: config {name} has no model_type")
    from transformers import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        raise ArchError(f"--model: transformers does not know model_type {model_type!r}")
    try:
        return name, AutoConfig.for_model(model_type, **data)
    except Exception as exc:  # noqa: BLE001 - transformers validates configs with its own error types
        raise ArchError(f"--model: invalid config: {_last_line(exc)}") from exc


def _last_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1].strip() if text else type(exc).__name__


def _hub_config(repo_id: str) -> Any:
    """Config only from the Hub cache, else the Hub; fails within seconds when offline."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(repo_id, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached: try the network below
        pass
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or not _online("huggingface.co"):
        raise ArchError(
            f"--model: {repo_id} is not cached and huggingface.co cannot be reached (offline). "
            f"Pass a catalog name ({', '.join(catalog_names()[:6])}, ...) or a local config.json")
    try:
        return AutoConfig.from_pretrained(repo_id)
    except Exception as exc:  # noqa: BLE001
        raise ArchError(f"--model: could not fetch the config of {repo_id}: {exc}") from exc


def _online(host: str, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _config_key(config: Any) -> str:
    return json.dumps(config.to_dict(), sort_keys=True, default=str)


_BY_NAME: dict[str, ArchInfo] = {}


def arch_info(model: Any) -> ArchInfo:
    """Resolve ``model`` and count its parameters on the meta device (cached per config)."""
    if isinstance(model, ArchInfo):
        return model
    if isinstance(model, str) and model in _BY_NAME:
        return _BY_NAME[model]
    name, config = load_config(model)
    info = _arch_info_cached(name, _config_key(config), config)
    if isinstance(model, str) and (CATALOG_DIR / f"{model.lower()}.json").is_file():
        _BY_NAME[model] = info  # shipped files do not change during a session
    return info


_CACHE: dict[str, ArchInfo] = {}


def _arch_info_cached(name: str, key: str, config: Any) -> ArchInfo:
    if key not in _CACHE:
        _CACHE[key] = _build_info(name, config)
    info = _CACHE[key]
    return info if info.name == name else _renamed(info, name)


def _renamed(info: ArchInfo, name: str) -> ArchInfo:
    import copy

    other = copy.copy(info)
    other.name = name
    return other


def meta_model(config: Any, attn: str = "sdpa") -> nn.Module:
    """The real ``AutoModelForCausalLM`` for ``config`` with every tensor on the meta device."""
    import copy

    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(config)  # from_config writes the attention choice into the config it is given
    with torch.device("meta"):
        try:
            return AutoModelForCausalLM.from_config(config, attn_implementation=attn)
        except ValueError as exc:
            if attn == "sdpa" and "scaled_dot_product_attention" in str(exc):
                return AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="eager")
            raise ArchError(f"--model: not a causal-LM architecture transformers can build: {exc}") from exc


def _get(config: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    return default


def _validate_config(config: Any) -> None:
    h = _get(config, "hidden_size", "n_embd")
    a = _get(config, "num_attention_heads", "n_head")
    if h is None or a is None:
        raise ArchError("--model: config lacks hidden_size/num_attention_heads")
    if _get(config, "head_dim") is None and h % a:
        raise ArchError(f"--model: num_attention_heads ({a}) must divide hidden_size ({h})")
    k = _get(config, "num_key_value_heads", default=a)
    if a % k:
        raise ArchError(f"--model: num_key_value_heads ({k}) must divide num_attention_heads ({a})")


def _build_info(name: str, config: Any) -> ArchInfo:
    _validate_config(config)
    model = meta_model(config)
    sdpa_ok = model.config._attn_implementation == "sdpa"
    total = sum(p.numel() for p in model.parameters())  # parameters() dedupes tied weights
    emb = model.get_input_embeddings()
    params_emb = emb.weight.numel()
    for mod_name, mod in model.named_modules():  # learned positions (GPT-2's wpe)
        if isinstance(mod, nn.Embedding) and mod is not emb and "layers" not in mod_name:
            params_emb += mod.weight.numel()
    out = model.get_output_embeddings()
    tied = out is not None and out.weight is emb.weight
    params_head = 0 if tied or out is None else out.weight.numel()
    params_norm = sum(p.numel() for n, m in model.named_modules() if _is_norm(m)
                      for p in m.parameters(recurse=False))
    blocks = _blocks(model, _get(config, "num_hidden_layers", "n_layer"))
    linears = []
    from transformers.pytorch_utils import Conv1D

    for sub_name, mod in blocks[0].named_modules():
        if isinstance(mod, nn.Linear):
            linears.append(LinearSpec(sub_name, mod.in_features, mod.out_features, mod.bias is not None))
        elif isinstance(mod, Conv1D):
            fan_in, fan_out = mod.weight.shape
            linears.append(LinearSpec(sub_name, fan_in, fan_out, mod.bias is not None, conv1d=True))
    h = _get(config, "hidden_size", "n_embd")
    a = _get(config, "num_attention_heads", "n_head")
    inter = _get(config, "intermediate_size", "n_inner") or 4 * h
    return ArchInfo(
        name=name, config=config, model_type=config.model_type,
        family=FAMILIES.get(config.model_type), hidden=h, intermediate=inter,
        layers=len(blocks), heads=a, kv_heads=_get(config, "num_key_value_heads", default=a),
        head_dim=_get(config, "head_dim", default=h // a), vocab=config.vocab_size, tied=tied,
        params_total=total, params_embedding=params_emb, params_lm_head=params_head,
        params_norm=params_norm, block_linears=linears,
        block_params=sum(p.numel() for p in blocks[0].parameters()), sdpa_supported=sdpa_ok,
        param_tensors=len(list(model.parameters())),
        param_numels=tuple(p.numel() for p in model.parameters()),
        buffer_bytes=_buffer_bytes(model), buffer_bytes_half=_buffer_bytes(_meta_half(config, model)),
        dropout_embd=float(_get(config, "embd_pdrop", default=0.0) or 0.0),
        dropout_attn=float(_get(config, "attn_pdrop", "attention_dropout", default=0.0) or 0.0),
        dropout_resid=float(_get(config, "resid_pdrop", default=0.0) or 0.0) if config.model_type == "gpt2" else 0.0,
        softcap_attn=bool(_get(config, "attn_logit_softcapping")),
        softcap_final=bool(_get(config, "final_logit_softcapping")),
    )


def _buffer_bytes(model: nn.Module) -> int:
    seen = {}
    for b in model.buffers():
        seen[id(b)] = b.numel() * b.element_size()
    return sum(seen.values())


def _meta_half(config: Any, fp32_model: nn.Module) -> nn.Module:
    """Buffers of a bf16 build (some stay fp32, e.g. RoPE's inv_freq); skip the rebuild if none."""
    if not list(fp32_model.buffers()):
        return fp32_model
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        try:
            return AutoModelForCausalLM.from_config(copy.deepcopy(config), dtype=torch.bfloat16,
                                                    attn_implementation=fp32_model.config._attn_implementation)
        except Exception:  # noqa: BLE001
            return fp32_model


def _is_norm(mod: nn.Module) -> bool:
    return isinstance(mod, nn.LayerNorm) or type(mod).__name__.endswith("RMSNorm")


def _blocks(model: nn.Module, n_layers: int | None) -> nn.ModuleList:
    for mod in model.modules():
        if isinstance(mod, nn.ModuleList) and len(mod) and (n_layers is None or len(mod) == n_layers):
            return mod
    raise ArchError("--model: could not find the list of transformer blocks")
