"""The merging experiment on real fine-tunes: specialists, the path between them, and the rivals.

* :func:`train_specialists` — the same base fine-tuned on task A and on task B separately;
* :func:`merge_path` — every merge method along its path, both tasks evaluated at every point
  (a :class:`~labkit.merge.path.MergePath` for the panel);
* :func:`multitask_model` (A+B mixed in one run) and :func:`sequential_model` (A, then B from A's
  weights — the forgetting is measured on A, not assumed);
* :class:`GreedyLM` — greedy decoding over the *average of the logits* of one or more models
  (one model: an ordinary LM; two: the specialists' ensemble, two forward passes per token);
* :func:`inference_cost` — measured time and memory per generated token;
* :func:`comparison_table` — the closing note's table.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from labkit.merge.adapters import full_state_dict
from labkit.merge.methods import METHODS, merge
from labkit.merge.path import MergePath, build_path
from labkit.tasks.evaluate import MAX_NEW_TOKENS

StateDict = Mapping[str, torch.Tensor]


# --------------------------------------------------------------------------- evaluation
class TaskEvaluator:
    """Scores a state dict (or a model) on both tasks with :func:`labkit.tasks.evaluate_model`.

    The state dict is loaded into one reusable copy of the base architecture, so evaluating a
    merge costs no new model. ``n_eval`` eval examples of each task, fixed by ``seed``.
    Scores are remembered by a fingerprint of the weights' bytes (:func:`fingerprint`): greedy
    evaluation is deterministic, so the same weights met again — a specialist, the path's
    ``t = 0.5`` or ``λ = 1`` point in the closing table — are not evaluated twice (``hits`` counts them).
    """

    def __init__(self, template: nn.Module, tokenizer: Any, task_a: str, task_b: str, *, n_eval: int = 24,
                 seed: int = 0, max_new_tokens: int = MAX_NEW_TOKENS, batch_size: int = 24) -> None:
        from labkit.tasks import load_task

        self.model = copy.deepcopy(template).eval()
        self.tokenizer = tokenizer
        self.tasks = (task_a, task_b)
        self.examples = {
            name: list(load_task(name, seed=seed)["eval"].select(range(n_eval))) for name in self.tasks
        }
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.calls = 0
        self.hits = 0
        self._scores: dict[str, dict[str, float]] = {}

    def score_model(self, model: nn.Module) -> dict[str, float]:
        """``{"acc_a", "acc_b", "loss_a", "loss_b", ...}`` of any model (or :class:`GreedyLM`)."""
        from labkit.tasks import evaluate_tasks

        self.calls += 1
        out: dict[str, float] = {}
        results = evaluate_tasks(model, self.tokenizer, self.examples, max_new_tokens=self.max_new_tokens,
                                 batch_size=self.batch_size)
        for key, name in zip(("a", "b"), self.tasks):
            metrics = results[name]
            out[f"acc_{key}"] = float(metrics["accuracy"])
            out[f"exact_{key}"] = float(metrics.get("exact_match", float("nan")))
            out[f"loss_{key}"] = float(metrics["loss"])
        return out

    def __call__(self, state_dict: StateDict) -> dict[str, float]:
        key = fingerprint(state_dict)
        if key in self._scores:
            self.hits += 1
            return dict(self._scores[key])
        missing, unexpected = self.model.load_state_dict(dict(state_dict), strict=False)
        if unexpected or [m for m in missing if not m.endswith("lm_head.weight")]:
            raise ValueError(f"state dict does not fit the base model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        score = self.score_model(self.model)
        self._scores[key] = dict(score)
        return score


def fingerprint(state_dict: StateDict) -> str:
    """A digest of every tensor's name, dtype, shape and bytes: equal only for bit-identical weights."""
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


# --------------------------------------------------------------------------- training
@dataclass
class Specialists:
    """A base and its two fine-tunes (as full state dicts; LoRA adapters merged in)."""

    task_a: str
    task_b: str
    method: str
    base_model: nn.Module
    tokenizer: Any
    base_sd: dict[str, torch.Tensor]
    sd_a: dict[str, torch.Tensor]
    sd_b: dict[str, torch.Tensor]
    model_a: nn.Module
    model_b: nn.Module
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def model_from(self, state_dict: StateDict) -> nn.Module:
        """A fresh plain model holding ``state_dict``."""
        model = copy.deepcopy(self.base_model)
        model.load_state_dict(dict(state_dict), strict=False)
        return model.eval()


def _config(model: str, task: str, method: str, steps: int, seed: int, **extra: Any):
    from labkit.train.config import TrainConfig

    return TrainConfig(model=model, task=task, method=method, steps=steps, seed=seed, eval_examples=0, **extra)


def load_base(model: str = "tiny") -> tuple[nn.Module, Any]:
    from labkit.models import load_model, load_tokenizer

    return load_model(model), load_tokenizer(model)


def train_specialists(model: str = "tiny", task_a: str = "text2sql", task_b: str = "json_extract", *,
                      method: str = "full", steps: int = 120, seed: int = 0,
                      base: tuple[nn.Module, Any] | None = None, store: Any = None,
                      **train_options: Any) -> Specialists:
    """Fine-tune one base on A and on B separately (same settings, same seed)."""
    from labkit.train.engine import train

    base = base or load_base(model)
    models, records = {}, {}
    for key, task in (("A", task_a), ("B", task_b)):
        config = _config(model, task, method, steps, seed, **train_options)
        record, trained = train(config, base=base, return_model=True, progress=False, store=store)
        if record["status"] != "ok" or trained is None:
            raise RuntimeError(f"training the {task} specialist failed: {record.get('status')} {record.get('error', '')}")
        models[key], records[key] = trained.eval(), record
    base_sd = full_state_dict(base[0])
    return Specialists(task_a, task_b, method, base[0], base[1], base_sd, full_state_dict(models["A"]),
                       full_state_dict(models["B"]), models["A"], models["B"], records,
                       {"model": model, "method": method, "steps": steps, "seed": seed, **train_options})


def multitask_model(spec: Specialists, *, steps: int | None = None, store: Any = None) -> tuple[dict, nn.Module]:
    """One run on A and B's training sets mixed (default: the two specialists' steps together)."""
    from labkit.train.engine import train

    s = spec.settings
    extra = {k: v for k, v in s.items() if k not in ("model", "method", "steps", "seed")}
    config = _config(s["model"], f"{spec.task_a}+{spec.task_b}", s["method"], steps or 2 * s["steps"], s["seed"], **extra)
    record, model = train(config, base=(spec.base_model, spec.tokenizer), return_model=True, progress=False, store=store)
    if record["status"] != "ok" or model is None:
        raise RuntimeError(f"multi-task training failed: {record.get('status')} {record.get('error', '')}")
    return record, model.eval()


def sequential_model(spec: Specialists, *, steps: int | None = None, store: Any = None) -> tuple[dict, nn.Module]:
    """Fine-tune A's model further on B (A's LoRA is merged in first): catastrophic forgetting."""
    from labkit.train.engine import train

    s = spec.settings
    extra = {k: v for k, v in s.items() if k not in ("model", "method", "steps", "seed")}
    config = _config(s["model"], spec.task_b, s["method"], steps or s["steps"], s["seed"], **extra)
    config = config.replace(extra={"after": spec.task_a})  # a different run (and store key) from B alone
    start = spec.model_from(spec.sd_a)
    record, model = train(config, base=(start, spec.tokenizer), return_model=True, progress=False, store=None)
    if record["status"] != "ok" or model is None:
        raise RuntimeError(f"sequential training failed: {record.get('status')} {record.get('error', '')}")
    return record, model.eval()


# --------------------------------------------------------------------------- the path
def merge_path(spec: Specialists, evaluator: TaskEvaluator, *, ts: Sequence[float] | None = None,
               lambdas: Sequence[float] | None = None, densities: Sequence[float] = (0.5,),
               methods: Sequence[str] = METHODS, convention: str = "paper", seed: int = 0,
               progress: Callable[[str], None] | None = None) -> MergePath:
    """Evaluate every method along its grid once; add base and specialist scores as references."""
    path = build_path(spec.base_sd, spec.sd_a, spec.sd_b, evaluator, task_a=spec.task_a, task_b=spec.task_b,
                      ts=ts, lambdas=lambdas, densities=densities, methods=methods, convention=convention,
                      seed=seed, meta=dict(spec.settings), progress=progress)
    path.reference = {
        "base": evaluator(spec.base_sd),
        "specialist A": evaluator(spec.sd_a),
        "specialist B": evaluator(spec.sd_b),
    }
    return path


# --------------------------------------------------------------------------- ensemble and cost
class GreedyLM(nn.Module):
    """Greedy decoding on the mean of the members' logits; one member = an ordinary LM.

    Quacks like a causal LM for :func:`labkit.tasks.evaluate_model` (``__call__`` → ``.logits``,
    ``generate``). Every member keeps its own KV cache, so an ensemble of two costs two forward
    passes and two caches per token.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("members: need at least one model")
        self.members = nn.ModuleList(members)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any) -> Any:
        logits = torch.stack([m(input_ids=input_ids, attention_mask=attention_mask).logits.float()
                              for m in self.members]).mean(0)
        return _Output(logits)

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 generation_config: Any = None, max_new_tokens: int | None = None,
                 stop_ids: Sequence[int] | None = None, ignore_stop: bool = False, **_: Any) -> torch.Tensor:
        """Greedy continuation of left-padded prompts; returns prompt + new tokens (pad after a stop)."""
        n_new = int(max_new_tokens or getattr(generation_config, "max_new_tokens", 32))
        eos = stop_ids if stop_ids is not None else getattr(generation_config, "eos_token_id", None)
        stops = set([eos] if isinstance(eos, int) else (eos or []))
        pad = getattr(generation_config, "pad_token_id", None)
        pad = 0 if pad is None else int(pad)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.clone()
        position = (mask.long().cumsum(-1) - 1).clamp(min=0)
        caches: list[Any] = [None] * len(self.members)
        tokens, step_ids, step_pos = [input_ids], input_ids, position
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        self.cache_bytes = 0
        for _ in range(n_new):
            logits = 0
            for i, member in enumerate(self.members):
                out = member(input_ids=step_ids, attention_mask=mask, position_ids=step_pos,
                             past_key_values=caches[i], use_cache=True)
                caches[i] = out.past_key_values
                logits = logits + out.logits[:, -1].float()
            nxt = torch.argmax(logits, dim=-1)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            if not ignore_stop:
                done = done | torch.isin(nxt, torch.tensor(sorted(stops), dtype=nxt.dtype, device=nxt.device))
            tokens.append(nxt[:, None])
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            step_ids, step_pos = nxt[:, None], step_pos[:, -1:] + 1
            if not ignore_stop and bool(done.all()):
                break
        self.cache_bytes = sum(_cache_bytes(c) for c in caches)
        return torch.cat(tokens, dim=1)


@dataclass
class _Output:
    logits: torch.Tensor


def _cache_bytes(cache: Any) -> int:
    """Bytes held by a transformers KV cache (any layout): every tensor reachable from it, once."""
    seen: set[int] = set()
    total = 0

    def visit(obj: Any, depth: int = 0) -> None:
        nonlocal total
        if depth > 4 or obj is None:
            return
        if isinstance(obj, torch.Tensor):
            ptr = obj.untyped_storage().data_ptr()
            if ptr not in seen:
                seen.add(ptr)
                total += obj.untyped_storage().nbytes()
            return
        if isinstance(obj, (list, tuple)):
            for x in obj:
                visit(x, depth + 1)
            return
        for name in ("layers", "key_cache", "value_cache", "keys", "values"):
            if hasattr(obj, name):
                visit(getattr(obj, name), depth + 1)

    visit(cache)
    return total


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the parameters a forward pass reads (shared/tied storage counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        ptr = p.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += p.untyped_storage().nbytes()
    return total


def inference_cost(model: GreedyLM, tokenizer: Any, examples: Sequence[Mapping[str, Any]], *,
                   new_tokens: int = 32, repeats: int = 3) -> dict[str, float]:
    """Measured decode cost: ms per generated token, KV-cache and weight bytes, forward passes per token.

    Decodes exactly ``new_tokens`` greedy tokens per prompt (stops ignored, so every variant does
    the same work); best of ``repeats`` timings, one CPU thread for tiny models (as evaluation does).
    """
    from labkit.tasks import build_prompt
    from labkit.tasks.formatting import encode, pad_token_id

    prompts = [encode(tokenizer, build_prompt(tokenizer, ex)) for ex in examples]
    width = max(len(p) for p in prompts)
    pad = pad_token_id(tokenizer)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    model.eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            model.generate(ids, mask, max_new_tokens=new_tokens, stop_ids=[], ignore_stop=True)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    n_tokens = len(prompts) * new_tokens
    cached_tokens = len(prompts) * (width + new_tokens - 1)
    return {
        "ms_per_token": 1000.0 * best / n_tokens,
        "kv_bytes_per_token": model.cache_bytes / cached_tokens,
        "weight_bytes": float(sum(weight_bytes(m) for m in model.members)),
        "forward_passes_per_token": float(len(model.members)),
    }


# --------------------------------------------------------------------------- the table
def _brief(row: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {row[k]:.3f}" for k in ("acc_a", "acc_b", "loss_a", "loss_b") if k in row)


ROWS = ("base", "specialist A", "specialist B", "linear t=0.5", "SLERP t=0.5", "task arithmetic",
        "TIES", "DARE (linear)", "DARE (TIES)", "multi-task FT", "sequential FT (A→B)", "ensemble (logits)")


@dataclass
class Comparison:
    """The closing note: accuracy and loss on both tasks, plus inference cost, per approach."""

    task_a: str
    task_b: str
    rows: dict[str, dict[str, float]]
    settings: dict[str, Any]

    def forgetting(self) -> dict[str, float]:
        """What fine-tuning A's model further on B cost on A: accuracy lost and eval loss gained."""
        a, s = self.rows["specialist A"], self.rows["sequential FT (A→B)"]
        return {"accuracy_lost": a["acc_a"] - s["acc_a"], "loss_gained": s["loss_a"] - a["loss_a"]}

    def markdown(self) -> str:
        head = (f"| approach | acc {self.task_a} | acc {self.task_b} | loss {self.task_a} | loss {self.task_b} "
                "| ms/token | KV bytes/token | weight MB | passes/token |")
        lines = [head, "|" + "---|" * 9]
        for name, r in self.rows.items():
            lines.append(
                f"| {name} | {r['acc_a']:.3f} | {r['acc_b']:.3f} | {r['loss_a']:.3f} | {r['loss_b']:.3f} "
                f"| {r.get('ms_per_token', float('nan')):.2f} | {r.get('kv_bytes_per_token', float('nan')):.0f} "
                f"| {r.get('weight_bytes', float('nan')) / 1e6:.1f} | {r.get('forward_passes_per_token', float('nan')):.0f} |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"task_a": self.task_a, "task_b": self.task_b, "rows": self.rows, "settings": self.settings,
                "forgetting": self.forgetting()}


def comparison_table(spec: Specialists, evaluator: TaskEvaluator, *, lam: float = 1.0, density: float = 0.5,
                     convention: str = "paper", seed: int = 0, multitask_steps: int | None = None,
                     sequential_steps: int | None = None, cost_examples: int = 8, cost_tokens: int = 24,
                     progress: Callable[[str], None] | None = None) -> Comparison:
    """Score every approach on both tasks with the same evaluator, and measure inference cost.

    Task arithmetic / TIES / DARE use both task vectors at weight 1 and scale ``lam``.
    """
    say = progress or (lambda _msg: None)
    merged = {
        "linear t=0.5": merge("linear", spec.base_sd, spec.sd_a, spec.sd_b, t=0.5),
        "SLERP t=0.5": merge("slerp", spec.base_sd, spec.sd_a, spec.sd_b, t=0.5),
        "task arithmetic": merge("task_arithmetic", spec.base_sd, spec.sd_a, spec.sd_b, lam=lam),
        "TIES": merge("ties", spec.base_sd, spec.sd_a, spec.sd_b, lam=lam, density=density, convention=convention),
        "DARE (linear)": merge("dare_linear", spec.base_sd, spec.sd_a, spec.sd_b, lam=lam, density=density,
                               convention=convention, seed=seed),
        "DARE (TIES)": merge("dare_ties", spec.base_sd, spec.sd_a, spec.sd_b, lam=lam, density=density,
                             convention=convention, seed=seed),
    }
    rows: dict[str, dict[str, float]] = {}
    members: dict[str, list[nn.Module]] = {}
    examples = evaluator.examples[spec.task_a][: cost_examples // 2] + evaluator.examples[spec.task_b][: cost_examples // 2]

    def add(name: str, score: dict[str, float], models: list[nn.Module]) -> None:
        score.update(inference_cost(GreedyLM(models), spec.tokenizer, examples, new_tokens=cost_tokens))
        rows[name], members[name] = score, models
        say(f"{name}: {_brief(score)}, {score['ms_per_token']:.2f} ms/token")

    # cheapest first: every merge and the ensemble need no training
    for name, sd in [("base", spec.base_sd), ("specialist A", spec.sd_a), ("specialist B", spec.sd_b), *merged.items()]:
        add(name, evaluator(sd), [spec.model_from(sd)])
    ensemble = [spec.model_from(spec.sd_a), spec.model_from(spec.sd_b)]
    add("ensemble (logits)", evaluator.score_model(GreedyLM(ensemble)), ensemble)
    say("training sequential A→B")
    sq_record, sq_model = sequential_model(spec, steps=sequential_steps)
    sq_sd = full_state_dict(sq_model)
    add("sequential FT (A→B)", evaluator(sq_sd), [spec.model_from(sq_sd)])
    say(f"forgetting on {spec.task_a}: {rows['specialist A']['acc_a'] - rows['sequential FT (A→B)']['acc_a']:+.3f} "
        f"accuracy, {rows['sequential FT (A→B)']['loss_a'] - rows['specialist A']['loss_a']:+.3f} loss")
    say("training multi-task")
    mt_record, mt_model = multitask_model(spec, steps=multitask_steps)
    mt_sd = full_state_dict(mt_model)
    add("multi-task FT", evaluator(mt_sd), [spec.model_from(mt_sd)])
    settings = dict(spec.settings)
    settings.update({"lambda": lam, "density": density, "convention": convention, "merge_seed": seed,
                     "multitask_steps": mt_record["config"]["steps"], "sequential_steps": sq_record["config"]["steps"],
                     "n_eval": len(evaluator.examples[spec.task_a])})
    return Comparison(spec.task_a, spec.task_b, rows, settings)
