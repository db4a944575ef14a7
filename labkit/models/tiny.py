"""The ``tiny`` base model: a ~4M-parameter Llama that labkit pretrains itself, on CPU, in minutes.

This is the lesson "pretraining vs fine-tuning" in code: a plain torch loop that predicts the
next token of public-domain text (Shakespeare plus Python's reference manual for some modern
English and code). Every fine-tuning lab then starts from this base, exactly as it would from a
downloaded checkpoint: same architecture family as SmolLM2/Llama (RMSNorm, RoPE, SwiGLU, GQA,
tied embeddings), same ChatML chat template, loaded through the same ``AutoModelForCausalLM``.

One thing a real base model has that minutes of pretraining cannot grow is the ability to copy
from its context (induction heads), and text-to-SQL on unseen names needs exactly that. So tiny
starts with an induction circuit written into its initial weights
(:mod:`labkit.models.circuits`), and half of its pretraining windows open with a span said
twice, so keeping the circuit pays. Without either, fine-tuned tiny writes the right query with
an invented name (execution accuracy 0-0.05); with both it copies the name (0.22-0.30; see
``benchmarks/copy_probe.py --controls --finetune``).

The default build ships with labkit (``tiny_base/``, 17 MB): ``ensure_tiny`` copies it into
``LABKIT_HOME`` instead of spending two CPU minutes on it, and every machine then fine-tunes the
same weights (a local build differs in float order with the thread count). It is this module's
output, rebuilt with ``python -m labkit.devtools rebuild-tiny`` whenever ``RECIPE`` changes;
``LABKIT_TINY_FROM_SCRATCH=1`` pretrains the shared tiny here instead, and lab 00 runs a fresh
short pretraining either way.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from labkit.data.corpus import corpus_split, generic_texts, shakespeare_texts
from labkit.home import atomic_write_json, cache_dir, file_lock
from labkit.models.circuits import head_scores, plant_induction_circuit
from labkit.models.tokenizer import IM_END, PAD_TOKEN, SPECIAL_IDS, VOCAB_SIZE, EOS_TOKEN, train_tokenizer
from labkit.train.step import StepSettings, scaler_for, train_step

# Defaults: a build must finish inside 3 minutes on 2 CPU cores. One step of 8 x 128 tokens
# costs ~0.4 CPU-seconds here (single thread), so 300 steps take ~1.5-2 minutes with prep,
# evaluation and saving. At equal tokens (409,600), 400 steps of 8 reached val loss 5.11 and
# 200 steps of 16 only 5.37 (lr 1.5e-3: 5.50): more, smaller steps win at this scale.
# lr 1e-3, not 3e-3: at 3e-3 the planted induction circuit is lost in the first 60 steps.
DEFAULT_STEPS = 300
DEFAULT_BATCH_SIZE = 8
DEFAULT_SEQ_LEN = 128
DEFAULT_LR = 1e-3
GENERIC_FRACTION = 0.25  # share of training windows drawn from the generic (pydoc) text
# Share of windows whose opening span (8 to seq_len/2 tokens) is repeated right after itself: the
# second copy is predictable only by copying, so the induction circuit earns its keep. Measured
# as the loss on a repeated text span over its first reading, after pretraining (seeds 0-2):
# 0.68-0.85 at 0.25, 0.37-0.42 at 0.5; at 0 the circuit is lost.
COPY_FRACTION = 0.5
ROPE_THETA = 500_000.0  # as Llama 3: slow-turning RoPE dimensions let a head compare tokens far apart
RECORD_FILE = "pretraining.json"
# The default build, made by this module's recipe (``python -m labkit.devtools rebuild-tiny``) and
# shipped with labkit: every machine starts from the same weights, without a 2-minute pretraining.
SHIPPED_DIR = Path(__file__).resolve().parent / "tiny_base"
FROM_SCRATCH_ENV = "LABKIT_TINY_FROM_SCRATCH"  # "1": pretrain the shared tiny here instead of copying it
# Bumped whenever the recipe changes what a default build is (tokenizer, init, data, defaults):
# a shared build from an older recipe is rebuilt instead of silently reused.
RECIPE = 2  # 2: space-apart tokenizer, planted induction circuit, repeated spans, lr 1e-3, RoPE 5e5
SAMPLE_PROMPTS = ("Enter HAMLET.", "O Romeo,", "The function")


def tiny_config() -> LlamaConfig:
    """The architecture of ``tiny`` (no weights needed).

    Special-token ids come from the tokenizer (fixed by the order the trainer is given them):
    LlamaConfig's defaults (bos 1, eos 2) would point at ``<|im_start|>``/``<|im_end|>``.
    """
    return LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention: 2 query heads share each K/V head
        head_dim=64,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=SPECIAL_IDS[EOS_TOKEN],
        eos_token_id=SPECIAL_IDS[EOS_TOKEN],
        pad_token_id=SPECIAL_IDS[PAD_TOKEN],
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        initializer_range=0.02,
        architectures=["LlamaForCausalLM"],
        dtype="float32",
    )


def tiny_generation_config() -> GenerationConfig:
    """Generation stops at end-of-text or at the end of a chat turn (``<|im_end|>``)."""
    return GenerationConfig(
        bos_token_id=SPECIAL_IDS[EOS_TOKEN],
        eos_token_id=[SPECIAL_IDS[EOS_TOKEN], SPECIAL_IDS[IM_END]],
        pad_token_id=SPECIAL_IDS[PAD_TOKEN],
    )


def default_tiny_dir() -> Path:
    """Where the shared ``tiny`` lives: ``LABKIT_HOME/models/tiny``."""
    return cache_dir("models") / "tiny"


def is_built(folder: Path) -> bool:
    """A finished build of today's recipe: the record is written last, the folder renamed into place whole."""
    record_file = Path(folder) / RECORD_FILE
    if not (record_file.is_file() and (Path(folder) / "model.safetensors").is_file()):
        return False
    try:
        return json.loads(record_file.read_text()).get("recipe") == RECIPE
    except (OSError, ValueError):
        return False


def _threads(num_threads: int | None) -> int:
    """Threads for pretraining: ``num_threads``, else what torch is set to use here (``OMP_NUM_THREADS`` /
    ``torch.set_num_threads``), never more than the cores this process may run on — a build started beside
    other work that set fewer threads must not oversubscribe the CPU (2 threads on a busy 2-core box made
    the build and its neighbour each about 2x slower)."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        available = os.cpu_count() or 1
    return max(1, min(num_threads or torch.get_num_threads(), available))


# ---------------------------------------------------------------------------------------------
# data


def _encode(tokenizer: PreTrainedTokenizerFast, text: str) -> torch.Tensor:
    """One long stream of token ids (documents are already joined by ``<|endoftext|>``)."""
    docs = text.split(EOS_TOKEN)
    encs = tokenizer.backend_tokenizer.encode_batch(docs)
    ids: list[int] = []
    for i, enc in enumerate(encs):
        if i:
            ids.append(SPECIAL_IDS[EOS_TOKEN])
        ids.extend(enc.ids)
    return torch.tensor(ids, dtype=torch.long)


@functools.lru_cache(maxsize=1)
def prepare_data(seed: int = 0) -> dict[str, Any]:
    """Corpus → split → tokenizer trained on the training text → encoded token streams.

    Cached per process (a second ``pretrain_tiny`` in the same kernel skips the ~10 s of
    tokenizer training and encoding); treat the result as read-only.
    """
    sources = {"shakespeare": shakespeare_texts(), "generic": generic_texts()}
    splits = {name: corpus_split(texts, seed, sep=EOS_TOKEN) for name, texts in sources.items()}
    tokenizer = train_tokenizer([train for train, _ in splits.values()])
    train = {name: _encode(tokenizer, tr) for name, (tr, _) in splits.items()}
    val = {name: _encode(tokenizer, va) for name, (_, va) in splits.items()}
    chars = {name: {"train": len(tr), "val": len(va)} for name, (tr, va) in splits.items()}
    return {"tokenizer": tokenizer, "train": train, "val": val, "chars": chars}


def _sample_batch(
    train: dict[str, torch.Tensor],
    batch_size: int,
    seq_len: int,
    gen: torch.Generator,
    generic_fraction: float,
    copy_fraction: float = 0.0,
) -> torch.Tensor:
    """``batch_size`` random windows of ``seq_len + 1`` tokens, a share from the generic text.

    A ``copy_fraction`` share of the windows open with a span of themselves said twice
    (``A B C … A B C …``): text the model can only predict the second time by copying.
    """
    rows = []
    for _ in range(batch_size):
        use_generic = torch.rand((), generator=gen).item() < generic_fraction
        stream = train["generic" if use_generic else "shakespeare"]
        start = int(torch.randint(0, len(stream) - seq_len - 1, (), generator=gen))
        row = stream[start : start + seq_len + 1].clone()
        if torch.rand((), generator=gen).item() < copy_fraction:
            span = int(torch.randint(8, max(9, (seq_len + 1) // 2), (), generator=gen))
            row[span : 2 * span] = row[:span]
        rows.append(row)
    return torch.stack(rows)


def _val_windows(val: dict[str, torch.Tensor], seq_len: int, per_source: int = 32) -> dict[str, torch.Tensor]:
    """Fixed, evenly spaced validation windows from every source (same every evaluation)."""
    windows = {}
    for name, stream in val.items():
        n = (len(stream) - 1) // (seq_len + 1)
        starts = torch.linspace(0, n - 1, min(per_source, n)).long().tolist()
        windows[name] = torch.stack([stream[i * (seq_len + 1) : (i + 1) * (seq_len + 1)] for i in starts])
    return windows


def _loss(model: LlamaForCausalLM, batch: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: position t predicts token t+1."""
    logits = model(input_ids=batch[:, :-1]).logits
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))


@torch.no_grad()
def _evaluate(model: LlamaForCausalLM, windows: dict[str, torch.Tensor], batch_size: int) -> dict[str, float]:
    """Mean held-out loss per source, and over all windows ("all")."""
    model.eval()
    sums: dict[str, float] = {}
    for name, rows in windows.items():
        sums[name] = sum(
            _loss(model, rows[i : i + batch_size]).item() * len(rows[i : i + batch_size])
            for i in range(0, len(rows), batch_size)
        )
    model.train()
    result = {name: sums[name] / len(windows[name]) for name in windows}
    result["all"] = sum(sums.values()) / sum(len(rows) for rows in windows.values())
    return result


def _lr_at(step: int, steps: int, lr: float) -> float:
    """Linear warm-up over the first 10% of steps, then cosine decay to 10% of ``lr``."""
    warmup = max(1, steps // 10)
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def sample_text(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    prompt: str,
    *,
    max_new_tokens: int = 40,
    temperature: float = 0.8,
    seed: int = 0,
) -> str:
    """Continue ``prompt`` by sampling (top-k 50): what the base model has learned to write."""
    torch.manual_seed(seed)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    out = model.generate(
        ids,
        max_new_tokens=max_new_tokens,
        do_sample=True,
        temperature=temperature,
        top_k=50,
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=False)


# ---------------------------------------------------------------------------------------------
# the training loop


def _pretrain_into(
    folder: Path,
    *,
    steps: int,
    batch_size: int,
    seq_len: int,
    lr: float,
    seed: int,
    progress: bool,
    callback: Callable[[dict[str, Any]], None] | None,
    eval_every: int | None,
    num_threads: int | None,
    sample_prompts: tuple[str, ...] = SAMPLE_PROMPTS,
    induction_circuit: bool = True,
    copy_fraction: float = COPY_FRACTION,
) -> dict[str, Any]:
    """Pretrain ``tiny`` from random weights and save everything into ``folder``."""
    from tqdm.auto import tqdm

    old_threads = torch.get_num_threads()
    threads = _threads(num_threads)
    torch.set_num_threads(threads)
    try:
        started = time.perf_counter()
        cpu_started = time.process_time()
        data = prepare_data(0)  # the corpus split is fixed; `seed` drives init and batches
        tokenizer = data["tokenizer"]
        prep_seconds = time.perf_counter() - started

        torch.manual_seed(seed)
        model = LlamaForCausalLM(tiny_config())
        circuit = plant_induction_circuit(model) if induction_circuit else None
        model.generation_config = tiny_generation_config()
        model.train()
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
            lr=lr,
            betas=(0.9, 0.95),
        )
        settings = StepSettings(scaler=scaler_for(torch.device("cpu"), enabled=False), max_grad_norm=1.0,
                                loss_fn=lambda net, batch, _n: _loss(net, batch["windows"]))
        gen = torch.Generator().manual_seed(seed)
        windows = _val_windows(data["val"], seq_len)
        eval_every = eval_every or max(1, steps // 5)

        losses: list[float] = []
        val_curve: list[dict[str, float]] = []
        train_started = time.perf_counter()
        bar = tqdm(range(steps), desc="pretraining tiny", disable=not progress, leave=False)
        for step in bar:
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, steps, lr)
            batch = _sample_batch(data["train"], batch_size, seq_len, gen, GENERIC_FRACTION, copy_fraction)
            result = train_step(model, [{"windows": batch}], optimizer, settings)  # the engine's own step

            losses.append(result.loss)
            record = {
                "step": step + 1,
                "loss": losses[-1],
                "grad_norm": result.grad_norm,
                "lr": optimizer.param_groups[0]["lr"],
                "tokens_seen": (step + 1) * batch_size * seq_len,
                "seconds": time.perf_counter() - train_started,
            }
            if (step + 1) % eval_every == 0 or step + 1 == steps:
                by_source = _evaluate(model, windows, batch_size)
                record["val_loss"] = by_source.pop("all")
                val_curve.append({"step": step + 1, "val_loss": record["val_loss"], **by_source})
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if callback is not None:
                callback(record)
        bar.close()
        train_seconds = time.perf_counter() - train_started

        model.eval()
        samples = [
            {"prompt": p, "text": sample_text(model, tokenizer, p, seed=seed)} for p in sample_prompts
        ]
        n_params = sum(p.numel() for p in model.parameters())
        heads = head_scores(model)
        best = max(heads, key=lambda h: h["induction"])
        tail = losses[-min(10, len(losses)) :]
        result: dict[str, Any] = {
            "model": "tiny",
            "recipe": RECIPE,
            "seed": seed,
            "steps": steps,
            "batch_size": batch_size,
            "seq_len": seq_len,
            "lr": lr,
            "generic_fraction": GENERIC_FRACTION,
            "copy_fraction": copy_fraction,
            "induction_circuit": circuit,  # what was planted at initialisation (None: plain random init)
            "head_scores": heads,  # per head: attention to the previous token / to the induction target
            "induction_score": best["induction"],
            "params": n_params,
            "losses": losses,
            "initial_loss": losses[0],
            "final_loss": sum(tail) / len(tail),
            "val_losses": val_curve,
            "val_loss": val_curve[-1]["val_loss"],
            "val_loss_by_source": {k: v for k, v in val_curve[-1].items() if k not in ("step", "val_loss")},
            "tokens_seen": steps * batch_size * seq_len,
            "corpus_chars": data["chars"],
            "corpus_tokens": {k: int(v.numel()) for k, v in data["train"].items()},
            "seconds": time.perf_counter() - started,
            # CPU time of this process: on a shared machine, cpu_seconds / num_threads is roughly
            # what the build would take with the cores to itself.
            "cpu_seconds": time.process_time() - cpu_started,
            "train_seconds": train_seconds,
            "prep_seconds": prep_seconds,
            "seconds_per_step": train_seconds / steps,
            "num_threads": threads,
            "torch_version": torch.__version__,
            "samples": samples,
        }
        model.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
        atomic_write_json(folder / RECORD_FILE, result)  # written last: marks the build complete
        return result
    finally:
        torch.set_num_threads(old_threads)


def _swap_in(built: Path, target: Path) -> None:
    """Put a finished folder at ``target`` with renames only (never a half-written folder)."""
    if target.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rename(target, trash / target.name)
        os.rename(built, target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(built, target)


def _build_locked(target: Path, **kwargs: Any) -> dict[str, Any]:
    # We hold the lock, so any earlier temp folder for this target is from a killed build.
    for stale in target.parent.glob(f".{target.name}.building-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the finished model is for every user of LABKIT_HOME
    try:
        result = _pretrain_into(tmp, **kwargs)
        _swap_in(tmp, target)
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def pretrain_tiny(
    out_dir: str | Path | None = None,
    *,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seq_len: int = DEFAULT_SEQ_LEN,
    lr: float = DEFAULT_LR,
    seed: int = 0,
    progress: bool = True,
    callback: Callable[[dict[str, Any]], None] | None = None,
    eval_every: int | None = None,
    num_threads: int | None = None,
    sample_prompts: tuple[str, ...] = SAMPLE_PROMPTS,
    induction_circuit: bool = True,
    copy_fraction: float = COPY_FRACTION,
) -> dict[str, Any]:
    """Pretrain ``tiny`` from scratch (real next-token training) and save it into ``out_dir``.

    ``out_dir`` defaults to the shared ``LABKIT_HOME/models/tiny``. The folder gets
    ``model.safetensors`` + config, the tokenizer, and ``pretraining.json`` (loss curve, val loss,
    timings, tokens seen, samples). It is built in a temporary folder and renamed into place under
    a file lock, so other processes never see half a model. ``callback(step_record)`` is called
    after every optimizer step (keys: step, loss, grad_norm, lr, tokens_seen, seconds, and
    val_loss on evaluation steps). ``sample_prompts`` are continued after training and the
    samples saved in the record (what the model learned to write). ``seed`` drives the initial
    weights and the batches (the corpus split and tokenizer are fixed): same seed and thread
    count → identical losses. ``induction_circuit=False`` starts from plain random weights and
    ``copy_fraction=0`` pretrains on text alone: the controls that show what each is for.
    """
    for name, value, low in (("steps", steps, 1), ("batch_size", batch_size, 1), ("seq_len", seq_len, 8)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name}: must be an integer >= {low}; got {value!r}")
    if seq_len > tiny_config().max_position_embeddings:
        raise ValueError(f"seq_len: must be <= 512 (tiny's max_position_embeddings); got {seq_len}")
    if not lr > 0:
        raise ValueError(f"lr: must be > 0; got {lr!r}")
    if not 0.0 <= copy_fraction <= 1.0:
        raise ValueError(f"copy_fraction: must be in [0, 1]; got {copy_fraction!r}")
    target = Path(out_dir) if out_dir is not None else default_tiny_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f".{target.name}.lock"):
        return _build_locked(
            target,
            steps=steps,
            batch_size=batch_size,
            seq_len=seq_len,
            lr=lr,
            seed=seed,
            progress=progress,
            callback=callback,
            eval_every=eval_every,
            num_threads=num_threads,
            sample_prompts=tuple(sample_prompts),
            induction_circuit=induction_circuit,
            copy_fraction=copy_fraction,
        )


def shipped_tiny() -> Path | None:
    """The default ``tiny`` shipped with labkit, if present and of today's recipe."""
    return SHIPPED_DIR if is_built(SHIPPED_DIR) else None


def _copy_locked(source: Path, target: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    tmp.chmod(0o755)
    try:
        for path in sorted(source.iterdir(), key=lambda p: p.name == RECORD_FILE):  # the record last
            if path.is_file():
                shutil.copyfile(path, tmp / path.name)
        _swap_in(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_tiny(progress: bool = True, from_scratch: bool | None = None) -> Path:
    """The shared ``tiny`` folder (``LABKIT_HOME/models/tiny``), made once, under a lock.

    It is a copy of the build shipped with labkit (the default recipe, pretrained once and the same
    on every machine), or with ``from_scratch`` (default: the ``LABKIT_TINY_FROM_SCRATCH=1``
    environment variable) pretrained here with the defaults: about 2 minutes on two CPU cores.
    """
    target = default_tiny_dir()
    if is_built(target):
        return target
    if from_scratch is None:
        from_scratch = os.environ.get(FROM_SCRATCH_ENV, "").strip() not in ("", "0")
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f".{target.name}.lock"):
        if not is_built(target):  # another process may have made it while we waited
            shipped = None if from_scratch else shipped_tiny()
            if shipped is not None:
                _copy_locked(shipped, target)
            else:
                _build_locked(
                    target,
                    steps=DEFAULT_STEPS,
                    batch_size=DEFAULT_BATCH_SIZE,
                    seq_len=DEFAULT_SEQ_LEN,
                    lr=DEFAULT_LR,
                    seed=0,
                    progress=progress,
                    callback=None,
                    eval_every=None,
                    num_threads=None,
                )
    return target
