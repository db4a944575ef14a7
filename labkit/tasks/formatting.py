"""Instruction records → chat prompts → token ids with the prompt masked out of the loss.

A record ``{"instruction", "input", "output"}`` becomes a system message (the instruction) and a
user message (the input), rendered with the model's own chat template; the answer is the
assistant turn, followed by the template's end-of-turn token so the model learns to stop.
Only the answer tokens carry labels: the prompt's labels are -100, so the loss (and the
gradient) says nothing about predicting the question. Tokenizers with no chat template fall
back to the plain Alpaca layout (``### Instruction / ### Input / ### Response``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import torch

IGNORE_INDEX = -100
_SENTINEL = "\x1eLABKIT_ANSWER\x1e"


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def _messages(example: Mapping[str, Any], system: bool = True) -> list[dict[str, str]]:
    instruction = str(example.get("instruction") or "").strip()
    user = str(example.get("input") or "").strip()
    if not system:  # templates that refuse a system role: fold the instruction into the user turn
        return [{"role": "user", "content": f"{instruction}\n\n{user}".strip()}]
    msgs = [{"role": "system", "content": instruction}] if instruction else []
    return msgs + [{"role": "user", "content": user}]


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _supports_system(tokenizer: Any) -> bool:
    try:
        _render(tokenizer, [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], True)
        return True
    except Exception:  # jinja TemplateError "System role not supported" and the like
        return False


def _plain_prompt(example: Mapping[str, Any]) -> str:
    instruction = str(example.get("instruction") or "").strip()
    user = str(example.get("input") or "").strip()
    text = f"### Instruction:\n{instruction}\n\n"
    if user:
        text += f"### Input:\n{user}\n\n"
    return text + "### Response:\n"


def build_prompt(tokenizer: Any, example: Mapping[str, Any]) -> str:
    """The prompt text for ``example``: chat template with the generation prompt added."""
    if not has_chat_template(tokenizer):
        return _plain_prompt(example)
    return _render(tokenizer, _messages(example, _supports_system(tokenizer)), True)


def end_of_turn(tokenizer: Any) -> str:
    """The text that closes an assistant turn (``<|im_end|>`` for ChatML; eos otherwise).

    Found by rendering a conversation whose answer is a sentinel and reading what follows it,
    so it works for any chat template rather than a list of known ones.
    """
    eos = tokenizer.eos_token or ""
    if not has_chat_template(tokenizer):
        return eos
    msgs = _messages({"instruction": "s", "input": "u"}, _supports_system(tokenizer))
    try:
        full = tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": _SENTINEL}], tokenize=False)
    except Exception:
        return eos
    after = full.split(_SENTINEL, 1)[1] if _SENTINEL in full else ""
    return after.strip() or eos


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` with no special tokens added (templates already contain them)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def stop_token_ids(tokenizer: Any) -> list[int]:
    """Token ids that end generation: the end-of-turn token (if it is one token) and eos."""
    ids: list[int] = []
    eot = end_of_turn(tokenizer)
    if eot:
        eot_ids = encode(tokenizer, eot)
        if len(eot_ids) == 1:
            ids.append(eot_ids[0])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(int(tokenizer.eos_token_id))
    return ids


def pad_token_id(tokenizer: Any) -> int:
    """The pad id to use (the tokenizer's pad, else eos, else 0)."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def tokenize_example(
    tokenizer: Any, example: Mapping[str, Any], max_len: int, eot: str | None = None
) -> tuple[dict[str, list[int]], bool]:
    """``({"input_ids", "labels"}, truncated)`` for one record; labels are -100 over the prompt."""
    eot = end_of_turn(tokenizer) if eot is None else eot
    prompt_ids = encode(tokenizer, build_prompt(tokenizer, example))
    answer_ids = encode(tokenizer, str(example["output"]) + eot)
    truncated = len(prompt_ids) + len(answer_ids) > max_len
    if len(prompt_ids) >= max_len:  # keep at least one answer token so the loss is defined
        prompt_ids = prompt_ids[-(max_len - 1):]
    input_ids = (prompt_ids + answer_ids)[:max_len]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + answer_ids)[:max_len]
    return {"input_ids": input_ids, "labels": labels}, truncated


def tokenize_for_training(tokenizer: Any, examples: Iterable[Mapping[str, Any]], max_len: int) -> list[dict[str, list[int]]]:
    """Tokenize records for causal-LM fine-tuning: prompt masked with -100, answer + end-of-turn.

    Examples longer than ``max_len`` are cut at the right (a warning says how many).
    """
    if int(max_len) < 2:
        raise ValueError(f"max_len: must be at least 2; got {max_len!r}")
    features, n_cut = [], 0
    eot = end_of_turn(tokenizer)
    for ex in examples:
        feat, cut = tokenize_example(tokenizer, ex, int(max_len), eot)
        features.append(feat)
        n_cut += cut
    if n_cut:
        warnings.warn(f"{n_cut} of {len(features)} examples were longer than max_len={max_len} and were "
                      "truncated; raise seq_len to keep whole answers", stacklevel=2)
    return features


def token_lengths(tokenizer: Any, examples: Iterable[Mapping[str, Any]]) -> list[dict[str, int]]:
    """``{"prompt", "answer", "total"}`` token counts per record (to choose a sequence length)."""
    out = []
    eot = end_of_turn(tokenizer)
    for ex in examples:
        p = len(encode(tokenizer, build_prompt(tokenizer, ex)))
        a = len(encode(tokenizer, str(ex["output"]) + eot))
        out.append({"prompt": p, "answer": a, "total": p + a})
    return out


def collate(features: list[Mapping[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: ``input_ids`` with ``pad_id``, ``labels`` with -100, plus ``attention_mask``."""
    if not features:
        raise ValueError("features: must hold at least one example; got an empty list")
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), width), int(pad_id), dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        ids[i, :n] = torch.tensor(f["input_ids"], dtype=torch.long)
        labels[i, :n] = torch.tensor(f.get("labels", f["input_ids"]), dtype=torch.long)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
