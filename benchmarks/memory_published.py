"""labkit's estimate against published *measured* GPU peaks that nobody here wrote.

    python benchmarks/memory_published.py            # the matrix, the summary, the anchors
    python benchmarks/memory_published.py --markdown # the same table as Markdown (docs/memory.md)
    python benchmarks/memory_published.py --replay   # + the allocator replay of each row (about 4 min)
    python benchmarks/memory_published.py --peft-seq N   # PEFT's rows at their peak batch's real length
                                                         # (benchmarks/peft_lengths.py finds it, with the Hub)

Each row is one published measurement with its exact source (repository + path + commit, or URL),
what the figure is (``reserved``: ``torch.cuda.max_memory_reserved``; ``active``: the allocator's
``active_bytes.all.peak``, i.e. the allocated peak; ``limit``: the longest sequence that fit a card of
that size, read as "peak = card size at that length"), and the setup as the source states it. Where a
source leaves a setting unstated the row says what is assumed. labkit's point estimate is compared as
*reserved* (allocated peak + allocator slack, no CUDA context) on reserved rows, as everything the card
must hold (+ the CUDA context) on limit rows, and as its allocated peak on active rows; the upper bound (what ``fits`` is decided from) is shown beside it. accelerate's and
DeepSpeed's estimates (re-implemented in ``labkit/memory/anchors.py``) are given on the same rows.

Prints one row per setup, the median |error|, the worst under-estimate, whether every measurement
lies under labkit's upper bound, and the anchors' errors.

``--replay`` adds :func:`labkit.memory.reserved.simulate`: the row's real model run for two steps on
fake tensors at full size, every allocation replayed through PyTorch's caching-allocator rules. It is
compared as the figure says: ``reserved`` rows with the replay's ``max_memory_reserved``, ``active``
rows with its allocated peak, and ``limit`` rows with the smallest card the two steps run on (the
allocator empties its cache before it fails, so that is less than the unconstrained reserved peak)
plus the CUDA context.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GiB = 1024**3
PEFT = ("huggingface/peft", "method_comparison/MetaMathQA/results/{}.json", "51c2ff666")
UNSLOTH = ("unslothai/unsloth", "README.md (Context length benchmarks, 'Hugging Face + FA2' column)", "30a1878")
TORCHTUNE = ("pytorch/torchtune", "README.md (Optimization flags: '+ Packed Dataset')", "1814feb17")


@dataclass(frozen=True)
class Row:
    """One published measurement and the setup it was measured on."""

    key: str
    model: str  # labkit catalog name
    setup: dict[str, Any]
    measured: float  # GiB
    kind: str  # "reserved" | "active" | "limit"
    source: str
    notes: str = ""
    keeps_logits: bool | None = None  # does the source's loop hold the model output through backward?
    kv_repeat: bool | None = None  # does the source's attention save GQA K/V repeated to every query head?
    attn_mask: bool | None = None  # is SDPA handed a dense mask (padded batches through transformers)?
    use_cache: bool | None = None  # does the source's training forward build transformers' KV cache?
    seq_is_max: bool = False  # the source caps the length; its peak batch may have been shorter
    long_context: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    loss_path: str = "transformers>=4.49"  # the transformers loss the source's run took (estimate.LOSS_PATHS)


def _peft(name: str, measured_bytes: int, notes: str, **setup: Any) -> Row:
    repo, path, commit = PEFT
    base = dict(precision="bf16", optimizer="adamw", batch=4, seq=768, checkpointing=False, attn="sdpa")
    return Row(f"peft/{name}", "llama-3.2-3b", {**base, **setup}, measured_bytes / GiB, "reserved",
               f"{repo} {path.format(name)} @ {commit}", notes, keeps_logits=True, attn_mask=True,
               use_cache=True, seq_is_max=True)


PEFT_NOTE = ("L40S, torch 2.13.0+cu130, transformers 5.13.1, peft 0.19.2.dev0; accelerator_memory_max = "
             "max_memory_reserved over the run − reserved at start; batches padded to their longest sample, "
             "truncated at 768 tokens: the peak batch is at most 4×768 (the estimate is made at 768); run.py "
             "calls model(**batch) with the padded batch's attention_mask, so SDPA is handed a dense mask: every "
             "layer keeps it as a bias, and transformers repeats K/V to all 24 heads (use_gqa_in_sdpa needs "
             "mask-free attention on CUDA); run.py never sets use_cache and checkpointing is off, so the forward builds "
             "Llama-3.2-3B's KV cache (its config: use_cache true) and the held outputs keep it (+0.33 GiB at 4×768: "
             "the 8-head K/V beside the repeated ones)")


# What torch reports as an 80GB A100's total capacity (the CUDA context is inside it): "79.25 GiB total
# capacity" in the OOM messages of github.com/levihsu/OOTDiffusion/issues/235 and
# github.com/wbfwonderful/Vad-R1/issues/11 ("4 A100 80GB gpus"). Cards of other sizes report 1-4 % under
# their nominal GiB too (A100 40GB 39.50-39.59, RTX 4090 23.68, A10 23.70, A4000 16GB 15.61), but
# unsloth's 8B rows do not name their cards, so those rows keep the nominal size: the pessimistic reading.
A100_80GB_CAPACITY = 79.25


def _unsloth(gib: int, seq: int) -> Row:
    repo, path, commit = UNSLOTH
    setup = dict(method="qlora", rank=32, targets="all-linear", precision="amp-bf16", compute_dtype="bf16",
                 optimizer="adamw8bit", batch=1, seq=seq, checkpointing=True, attn="sdpa")
    return Row(f"unsloth/llama-3.1-8b@{gib}GB", "llama-3.1-8b", setup, float(gib), "limit",
               f"{repo} {path} @ {commit}",
               "Llama 3.1 8B Instruct, 4-bit QLoRA all linear r=32, batch 1, padded to the length; "
               "assumed (not stated): bf16 autocast, 8-bit AdamW, gradient checkpointing, card size in GiB "
               "(the card is not named; real cards report 1-4 % less to torch); "
               "the column is exactly linear (404.75 tokens/GB): a line through their measurements; the table "
               "appeared with Llama 3.3 (Dec 2024), when transformers 4.46-4.47 was current: its loss path; "
               "FA2 keeps K/V at the 8 key/value heads and takes no dense mask",
               long_context=True, loss_path="transformers-4.46", kv_repeat=False, attn_mask=False, use_cache=False)


ROWS: list[Row] = [
    _peft("full-finetuning--llama-3.2-3B-lr_0.00001", 38_868_615_168, PEFT_NOTE, method="full"),
    _peft("lora--llama-3.2-3B-rank32", 22_292_725_760, PEFT_NOTE, method="lora", rank=32,
          targets="q_proj,v_proj"),
    _peft("lora--llama-3.2-3B-rank64", 22_552_772_608, PEFT_NOTE, method="lora", rank=64,
          targets="q_proj,v_proj"),
    _peft("lora--llama-3.2-3B-rank64-rslora", 22_561_161_216, PEFT_NOTE + "; rsLoRA (scale only: same bytes)",
          method="lora", rank=64, targets="q_proj,v_proj"),
    _peft("lora--llama-3.2-3B-rank10-target-mlp", 24_698_159_104, PEFT_NOTE, method="lora", rank=10,
          targets="gate_proj,up_proj,down_proj"),
    _unsloth(12, 932), _unsloth(16, 2551), _unsloth(24, 5789), _unsloth(40, 12_264), _unsloth(48, 15_502),
    _unsloth(80, 28_454),
    Row("unsloth/llama-3.3-70b@80GB", "llama-3.1-70b",
        dict(method="qlora", rank=32, targets="all-linear", precision="amp-bf16", compute_dtype="bf16",
             optimizer="adamw8bit", batch=1, seq=6916, checkpointing=True, attn="sdpa"),
        A100_80GB_CAPACITY, "limit", f"{UNSLOTH[0]} {UNSLOTH[1]} @ {UNSLOTH[2]}",
        "Llama 3.3 70B Instruct (the 3.1-70B architecture) on an 80GB A100, 4-bit QLoRA all linear r=32, "
        "batch 1; same assumptions as the 8B rows; the card is named, so the limit is its capacity as torch "
        "reports it (79.25 GiB, CUDA context included), not a nominal 80 GiB", long_context=True, loss_path="transformers-4.46",
        kv_repeat=False, attn_mask=False),
    # torchtune's optimization-flags table: every later row turns on torch.compile, chunked cross-entropy,
    # checkpointing or activation offloading (not modelled here), so only the packed baseline is used.
    Row("torchtune/llama-3.2-3b-packed", "llama-3.2-3b",
        dict(method="full", precision="bf16", optimizer="adamw", batch=2, seq=4096, checkpointing=False,
             attn="sdpa"),
        60.0, "active", f"{TORCHTUNE[0]} {TORCHTUNE[1]} @ {TORCHTUNE[2]}",
        "full_finetune_single_device, Llama 3.2 3B, batch 2, packed to 4096 tokens, bf16 (weights and AdamW "
        "states), A100; 'Peak Memory Active (GiB)' = active_bytes.all.peak. Baseline flags as the table's later "
        "rows imply: torch AdamW, no optimizer-in-backward, no checkpointing, torch cross-entropy, no compile. "
        "torchtune's own Llama modules, not transformers': its attention expands GQA K/V to all 24 heads "
        "before flex attention (+1.75 GiB saved here beside K/V at 8 heads: kv_repeat); flex attention's "
        "block mask is sparse, no dense bias",
        keeps_logits=False, kv_repeat=True, attn_mask=False, use_cache=False, long_context=True),
]


def _estimate(row: Row, seq: int | None = None) -> tuple[Any, Any]:
    """(setup, labkit's Breakdown) for ``row`` — at ``seq`` tokens where given — under what the row states
    its source's run does (loop, loss path, attention route, KV cache)."""
    from labkit.memory.estimate import estimate
    from labkit.memory.setup import MemorySetup

    setup = MemorySetup(device="cuda", **(row.setup if seq is None else {**row.setup, "seq": seq}))
    return setup, estimate(row.model, setup, **_assumptions(row))


def _assumptions(row: Row) -> dict[str, Any]:
    """What the row states its source's run does, as ``estimate``'s keyword arguments."""
    return dict(keeps_logits=row.keeps_logits, loss_path=row.loss_path, kv_repeat=row.kv_repeat,
                attn_mask=row.attn_mask, use_cache=row.use_cache)


def per_token_slope(results: list[dict[str, Any]], key: str, prefix: str = "unsloth/llama-3.1-8b@") -> float:
    """MiB per token: the least-squares slope of ``key`` (``"measured"``, ``"estimate"``, ``"upper_total"``,
    ``"replay"``; GiB) against the sequence length over the rows of one model and setup at several lengths
    (unsloth's 8B column: what the issue read as "the measurements imply about 2.5 MiB per token")."""
    pts = [(x["row"].setup["seq"], x["row"].measured if key == "measured" else x[key])
           for x in results if x["row"].key.startswith(prefix)]
    return _slope([p[0] for p in pts], [p[1] for p in pts]) * 1024  # GiB per token → MiB per token


def _slope(xs: Any, ys: Any) -> float:
    """The least-squares slope of ``ys`` against ``xs``."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def longest_at_card(row: Row) -> dict[str, Any]:
    """For a ``limit`` row (the longest sequence that fit a card): the longest sequence labkit says fits that
    card (:func:`labkit.memory.advice.longest_fit`) — by the upper bound, what a "fits" verdict promises (it
    must not exceed the published limit), and by the point estimate — beside the published length."""
    from labkit.memory.advice import longest_fit
    from labkit.memory.setup import MemorySetup

    found = longest_fit(row.model, MemorySetup(device="cuda", **row.setup), int(row.measured * GiB),
                        assumptions=_assumptions(row))
    published = row.setup["seq"]
    return {"published": published, "upper": found["upper"], "point": found["point"],
            "upper_error": (found["upper"] - published) / published * 100,
            "point_error": (found["point"] - published) / published * 100}


def _figure(row: Row, r: Any) -> float:
    """labkit's estimate as the row's kind of figure (GiB), like for like: the allocated peak (active),
    reserved (reserved), or everything the card holds (limit: the CUDA context too, as the replay's smallest
    card is compared)."""
    return {"active": r.peak, "reserved": r.info["reserved"], "limit": r.total}[row.kind] / GiB


def _first_length(reaches: Any) -> int:
    """The least sequence length at which ``reaches(seq)`` holds (it grows with the length): one past the
    longest that does not (:func:`labkit.memory.advice.largest_where`, the search ``longest_fit`` makes)."""
    from labkit.memory.advice import LONGEST_LIMITS, largest_where

    return largest_where(lambda seq: not reaches(seq), LONGEST_LIMITS["seq"]) + 1


def evaluate(row: Row) -> dict[str, Any]:
    """labkit's point estimate (as the row's figure), its upper bound, and the anchors, for one row."""
    from labkit.memory.anchors import accelerate_estimate, deepspeed_estimate

    setup, r = _estimate(row)
    upper = r.info["upper"]
    est = _figure(row, r)
    up = {"active": upper["peak"], "reserved": upper["reserved"], "limit": upper["total"]}[row.kind] / GiB
    acc = accelerate_estimate(row.model, setup)["training_adam"] / GiB
    ds = deepspeed_estimate(row.model, setup)["chosen"] / GiB
    m = row.measured
    return {"row": row, "estimate": est, "allocated": r.peak / GiB, "upper_reserved": up,
            "upper_total": upper["total"] / GiB, "error": (est - m) / m * 100,
            "upper_error": (up - m) / m * 100, "moment": r.info["peak_moment"],
            "accelerate": acc, "accelerate_error": (acc - m) / m * 100,
            "deepspeed": ds, "deepspeed_error": (ds - m) / m * 100}


def matching_length(row: Row) -> int:
    """The sequence length at which labkit's point estimate equals the measurement (as the row's kind of
    figure). For a row whose length is only a cap (``seq_is_max``) this is a diagnostic, not a fit: rows
    that agree on one length say the estimate's shape is right and only the peak length is unknown."""
    return _first_length(lambda seq: _figure(row, _estimate(row, seq)[1]) >= row.measured)


def difference_length(a: Row, b: Row) -> int:
    """The sequence length at which labkit's point estimates of two rows of one kind *differ* by what their
    measurements differ by. For two runs on the same batches that differ only in what the adapters save
    (PEFT's MLP-target and attention-target LoRA rows), every shared term — weights, logits, attention, the
    allocator's 5 % on the shared part — cancels: a second reading of the peak length beside
    :func:`matching_length`."""
    def gap(seq: int) -> float:
        return _figure(a, _estimate(a, seq)[1]) - _figure(b, _estimate(b, seq)[1])

    return _first_length(lambda seq: gap(seq) >= a.measured - b.measured)


def simulate_row(row: Row, lengths: list[int] | None = None, empty_cache_after: tuple[int, ...] | list[int] = ()
                 ) -> dict[str, int]:
    """:func:`labkit.memory.reserved.simulate` of ``row`` under what it states its source's run does: two steps
    of its setup, or one step per entry of ``lengths`` with the cache emptied after ``empty_cache_after``."""
    from labkit.memory.reserved import simulate
    from labkit.memory.setup import MemorySetup

    setup = MemorySetup(device="cuda", **({**row.setup, "seq": max(lengths)} if lengths else row.setup))
    return simulate(row.model, setup, loss_path=row.loss_path, keeps_logits=bool(row.keeps_logits),
                    kv_repeat=row.kv_repeat, attn_mask=bool(row.attn_mask), use_cache=bool(row.use_cache),
                    lengths=lengths, empty_cache_after=empty_cache_after)


def replay(row: Row) -> dict[str, Any]:
    """The allocator replay of ``row``, as the row's kind of figure (GiB) and its error."""
    from labkit.memory.estimate import CUDA_CONTEXT

    sim = simulate_row(row)
    value = {"reserved": sim["reserved"], "active": sim["allocated"],
             "limit": sim["needs"] + CUDA_CONTEXT}[row.kind] / GiB
    return {"replay": value, "replay_error": (value - row.measured) / row.measured * 100,
            "replay_raw": {k: v / GiB for k, v in sim.items() if k != "segments"}}


# A second published figure of PEFT's runs, measured after every optimizer step: run.py logs
# torch.cuda.memory_allocated() there ("mem allocated avg", a mean over each 250 steps; the median of the 20
# below). zero_grad runs at the start of the next step and ``outputs`` is still bound, so it is weights +
# gradients + optimizer states + the held output — bf16 logits and, where the forward built one, the KV cache —
# + cuBLAS workspaces (allocated through the caching allocator: 4096·1024·2 + 16·1024·8 B per cuBLAS handle on
# an L40S, sm89, per torch's CublasHandlePool.cpp; one for the forward's thread, one for autograd's).
# Same commit, same data: 4,198,051 tokens over 20,000 samples (one EOS each counted).
PEFT_AFTER_STEP = {
    "full-finetuning--llama-3.2-3B-lr_0.00001": 26_063_083_651, "lora--llama-3.2-3B-rank32": 6_923_951_607,
    "lora--llama-3.2-3B-rank64": 7_070_776_398, "lora--llama-3.2-3B-rank64-rslora": 7_070_752_247,
    "lora--llama-3.2-3B-rank10-target-mlp": 6_928_054_403,
}
PEFT_TOKENS, PEFT_SAMPLES = 4_198_051, 20_000
CUBLAS_WORKSPACES = 2 * (4096 * 1024 * 2 + 16 * 1024 * 8)


def after_step(row: Row) -> dict[str, float]:
    """PEFT's after-step allocated figure against labkit: what is left over labkit's weights, gradients and
    optimizer states (and the cuBLAS workspaces) is the held output, so it gives the mean padded batch length
    with the KV cache held and with the logits alone — to compare with the data's mean length (bucketed
    batches pad a few per cent over it)."""
    from labkit.memory.estimate import estimate
    from labkit.memory.setup import MemorySetup

    measured = PEFT_AFTER_STEP[row.key.split("/", 1)[1]]
    one = MemorySetup(device="cuda", **{**row.setup, "seq": 1})
    est = estimate(row.model, one, keeps_logits=True, use_cache=True, attn_mask=True)
    static = est.bytes["weights"] + est.bytes["gradients"] + est.bytes["optimizer"]
    logits, cache = (one.batch * n for n in held_per_position(row))  # per padded position of the whole batch
    held = measured - static - CUBLAS_WORKSPACES
    return {"held_mib": held / 2**20, "length_with_cache": held / (logits + cache), "length_logits_only": held / logits,
            "data_mean": PEFT_TOKENS / PEFT_SAMPLES - 1}


# The same figure per window of 250 steps ("mem allocated avg", to the byte), and the tokens each window trained
# on (its "tokens / sec" × "train time": exact integers, one EOS per sample counted), from the same results files
# at the same commit (PEFT above). run.py does not shuffle: every run trains on the same 1,000
# samples per window in the data's stored order, so the tokens are the same for all five rows, while what is held
# after a step grows with that step's padded length. Regressed on the tokens, the static part drops out.
PEFT_WINDOW_TOKENS = (211_719, 207_995, 214_401, 208_336, 208_538, 209_331, 209_355, 207_696, 214_948, 205_967,
                      211_881, 208_731, 210_901, 209_750, 216_703, 204_373, 211_389, 207_818, 209_939, 208_280)
PEFT_WINDOW_ALLOCATED = {
    "full-finetuning--llama-3.2-3B-lr_0.00001": (
        26068364077, 26061405362, 26070556328, 26063041151, 26061311988, 26065064344, 26063653665, 26060900622,
        26073120012, 26057388192, 26067884014, 26062585563, 26064543638, 26062997438, 26074783977, 26055840195,
        26066954185, 26062572698, 26063126151, 26061298555),
    "lora--llama-3.2-3B-rank32": (
        6927565711, 6920367839, 6930618810, 6921513771, 6922133557, 6923913468, 6925390952, 6921081668,
        6931682327, 6918721761, 6927712508, 6923989748, 6926692076, 6923455881, 6934523007, 6915686580,
        6927717122, 6921419323, 6924414108, 6920560835),
    "lora--llama-3.2-3B-rank64": (
        7074164984, 7066997365, 7077333008, 7068124658, 7068944243, 7070709553, 7072138832, 7067894260,
        7078475831, 7065402839, 7074573451, 7070843245, 7073412401, 7070407143, 7081463124, 7062667280,
        7074403895, 7068177549, 7071170142, 7067138955),
    "lora--llama-3.2-3B-rank64-rslora": (
        7074366351, 7067168479, 7077419450, 7068314411, 7068934197, 7070714108, 7072191592, 7067882308,
        7078482967, 7065522401, 7074513148, 7070790388, 7073492716, 7070256521, 7081323647, 7062487220,
        7074517762, 7068219963, 7071214748, 7067361475),
    "lora--llama-3.2-3B-rank10-target-mlp": (
        6931834006, 6925262383, 6935577633, 6926310695, 6926327480, 6927772183, 6929135348, 6924608348,
        6936651676, 6922327798, 6933217315, 6927345052, 6929776484, 6928336624, 6939337990, 6920106967,
        6930464334, 6925929083, 6928703939, 6926279631),
}
PEFT_WINDOW_STEPS = 250


def window_slope(row: Row) -> dict[str, float]:
    """PEFT's after-step allocated memory window by window, against the tokens each window trained on: the
    least-squares slope is what the held output costs per token, with the weights, gradients, optimizer states
    and workspaces — every static byte — cancelled. A window's mean held output is c·(1 + p)·(unpadded tokens)
    / steps, c the held bytes per padded position of a batch row and p the padding, so the slope gives 1 + p
    once labkit says what c is: bf16 logits + the KV cache the forward builds, or the logits alone. A reading
    of ``use_cache`` that does not lean on labkit's static part (:func:`after_step` does)."""
    slope = _slope(PEFT_WINDOW_TOKENS, PEFT_WINDOW_ALLOCATED[row.key.split("/", 1)[1]])  # bytes per token
    logits, cache = held_per_position(row)
    per_position = slope * PEFT_WINDOW_STEPS  # c·(1 + p)
    return {"bytes_per_token": slope, "padding_with_cache": per_position / (logits + cache) - 1,
            "padding_logits_only": per_position / logits - 1}


def held_per_position(row: Row) -> tuple[int, int]:
    """Bytes a held model output keeps per padded position of one batch row: its bf16 logits, and the KV cache
    the forward builds (``training_cache_bytes`` at one token of one row)."""
    from labkit.memory.arch import arch_info
    from labkit.memory.estimate import training_cache_bytes
    from labkit.memory.setup import MemorySetup

    arch = arch_info(row.model)
    return arch.vocab * 2, training_cache_bytes(arch, MemorySetup(device="cuda", **{**row.setup, "batch": 1, "seq": 1}))


def at_peft_length(seq: int) -> list[Row]:
    """The matrix with PEFT's rows at ``seq`` tokens — their peak batch's real length, once known — instead of
    the cap: no longer a cap, so no longer a row whose length is only bounded."""
    if not 1 <= seq <= 768:
        raise ValueError(f"--peft-seq: PEFT truncates at 768 tokens; got {seq}")
    return [replace(r, setup={**r.setup, "seq": seq}, seq_is_max=False,
                    notes=r.notes + f"; estimated at the peak batch's length, {seq} tokens")
            if r.key.startswith("peft/") else r for r in ROWS]


def _setup_text(row: Row) -> str:
    s = row.setup
    m = s.get("method", "full")
    parts = [m if m == "full" else f"{m} r{s['rank']} {s['targets']}", s["precision"], s["optimizer"],
             f"b{s['batch']}×s{s['seq']}"]
    if s.get("checkpointing"):
        parts.append("ckpt")
    return ", ".join(parts)


def _errors_summary(results: list[dict[str, Any]], key: str) -> dict[str, float]:
    errs = [x[key] for x in results]
    long = [x[key] for x in results if x["row"].long_context]
    return {"median_abs": statistics.median(abs(e) for e in errs), "worst_under": min(errs),
            "long_max_abs": max((abs(e) for e in long), default=0.0)}


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Median |error|, worst under-estimate, long-context rows, and whether the upper bound holds
    (and the same errors for the allocator replay, where it was run)."""
    out = _errors_summary(results, "error")
    if all("replay_error" in x for x in results):
        out["replay"] = _errors_summary(results, "replay_error")
    return {**out, "rows": len(results), "sources": len({x["row"].source.split()[0] for x in results}),
            "under_upper": sum(x["row"].measured <= x["upper_reserved"] for x in results),
            "accelerate_median_abs": statistics.median(abs(x["accelerate_error"]) for x in results),
            "deepspeed_median_abs": statistics.median(abs(x["deepspeed_error"]) for x in results)}


def markdown(results: list[dict[str, Any]]) -> str:
    rep = all("replay" in x for x in results)
    lines = ["| setup (model; method; precision; optimizer; batch×seq) | measured GiB (kind) | labkit "
             "GiB (as the kind) | error | " + ("allocator replay GiB (error) | " if rep else "") +
             "labkit upper GiB | accelerate (error) | DeepSpeed (error) | source |",
             "|---|---|---|---|" + ("---|" if rep else "") + "---|---|---|---|"]
    for x in results:
        r = x["row"]
        cell = f"{x['replay']:.2f} ({x['replay_error']:+.1f} %) | " if rep else ""
        lines.append(f"| {r.model}; {_setup_text(r)} | {r.measured:.2f} ({r.kind}) | {x['estimate']:.2f} | "
                     f"{x['error']:+.1f} % | {cell}{x['upper_reserved']:.2f} | {x['accelerate']:.1f} "
                     f"({x['accelerate_error']:+.0f} %) | {x['deepspeed']:.1f} ({x['deepspeed_error']:+.0f} %) | "
                     f"`{r.source}` |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    ap.add_argument("--replay", action="store_true",
                    help="also replay each row's step through the caching allocator (fake tensors, ~4 min)")
    ap.add_argument("--peft-seq", type=int, metavar="N",
                    help="estimate PEFT's rows at their real peak batch length N instead of the 768-token cap "
                         "(benchmarks/peft_lengths.py finds N where the Hub is reachable)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    try:
        rows = ROWS if args.peft_seq is None else at_peft_length(args.peft_seq)
    except ValueError as exc:
        ap.error(str(exc))
    results = [evaluate(r) for r in rows]
    if args.replay:
        for x in results:
            x.update(replay(x["row"]))
    if args.markdown:
        print(markdown(results))
    else:
        print(f"{'row':38s} {'setup':58s} {'meas':>7s} {'kind':8s} {'labkit':>7s} {'err':>7s} {'upper':>7s} "
              f"{'accel':>7s} {'err':>6s} {'dspeed':>7s} {'err':>6s}  peak at")
        for x in results:
            r = x["row"]
            print(f"{r.key[:38]:38s} {_setup_text(r)[:58]:58s} {r.measured:7.2f} {r.kind:8s} {x['estimate']:7.2f} "
                  f"{x['error']:+6.1f}% {x['upper_reserved']:7.2f} {x['accelerate']:7.1f} {x['accelerate_error']:+5.0f}% "
                  f"{x['deepspeed']:7.1f} {x['deepspeed_error']:+5.0f}%  {x['moment']}"
                  + (f"  replay {x['replay']:6.2f} {x['replay_error']:+5.1f}%" if "replay" in x else ""))
    s = summary(results)
    print(f"\n{s['rows']} published setups from {s['sources']} sources (GiB; error = (labkit − measured)/measured)")
    print(f"  labkit point estimate: median |error| {s['median_abs']:.1f} %, worst under-estimate "
          f"{s['worst_under']:+.1f} %, long-context rows max |error| {s['long_max_abs']:.1f} %")
    if "replay" in s:
        r = s["replay"]
        print(f"  allocator replay (as each figure is: reserved / allocated / smallest card): median |error| "
              f"{r['median_abs']:.1f} %, worst under-estimate {r['worst_under']:+.1f} %, long-context rows max "
              f"|error| {r['long_max_abs']:.1f} %")
    print(f"  labkit upper bound (what 'fits' uses) covers {s['under_upper']}/{s['rows']} measurements")
    capped = [x["row"] for x in results if x["row"].seq_is_max]
    if capped:
        print("  rows whose length is only a cap: the length at which labkit's point estimate equals the "
              "measurement")
        for r in capped:
            print(f"    {r.key[:46]:46s} {matching_length(r):5d} tokens (cap {r.setup['seq']})")
    limits = [x["row"] for x in results if x["row"].kind == "limit"]
    if limits:
        print("  rows that are a card's limit: the longest sequence labkit says fits that card, by the upper bound "
              "(what 'fits' promises) and by the point estimate, against the published limit")
        for r in limits:
            a = longest_at_card(r)
            print(f"    {r.key[:46]:46s} published {a['published']:6d}; upper bound {a['upper']:6d} "
                  f"({a['upper_error']:+5.0f} %); point {a['point']:6d} ({a['point_error']:+5.0f} %)")
    if sum(x["row"].key.startswith("unsloth/llama-3.1-8b@") for x in results) >= 2:
        measured = per_token_slope(results, "measured")
        cols = [("labkit point", "estimate"), ("upper bound", "upper_total")]
        cols += [("allocator replay", "replay")] if all("replay" in x for x in results) else []
        slopes = {name: per_token_slope(results, key) for name, key in cols}
        text = "; ".join(f"{name} {v:.2f} ({(v - measured) / measured * 100:+.0f} %)" for name, v in slopes.items())
        print(f"  unsloth 8B rows, MiB per token (least squares over the cards): measured {measured:.2f}; {text}")
    by_key = {x["row"].key: x["row"] for x in results}
    mlp, attn = by_key.get("peft/lora--llama-3.2-3B-rank10-target-mlp"), by_key.get("peft/lora--llama-3.2-3B-rank32")
    if mlp and attn:
        print(f"  PEFT r10 MLP − r32 attention LoRA ({mlp.measured - attn.measured:.2f} GiB measured; every shared term "
              f"cancels): labkit's difference equals it at {difference_length(mlp, attn)} tokens")
    peft = [x["row"] for x in results if x["row"].key.split("/", 1)[1] in PEFT_AFTER_STEP]
    if peft:
        print("  PEFT's after-step memory_allocated (output still held): left over labkit's weights + gradients + "
              "states + cuBLAS workspaces, and the mean padded length it implies")
        for r in peft:
            a = after_step(r)
            print(f"    {r.key[:46]:46s} {a['held_mib']:6.1f} MiB: {a['length_with_cache']:5.1f} tokens with the KV "
                  f"cache held, {a['length_logits_only']:5.1f} with the logits alone (data mean "
                  f"{a['data_mean']:.1f} unpadded)")
    if peft:
        print("  PEFT's after-step memory_allocated window by window (20 × 250 steps) against the tokens each trained "
              "on: the slope (static bytes cancel) and the padding it implies")
        for r in peft:
            w = window_slope(r)
            print(f"    {r.key[:46]:46s} {w['bytes_per_token'] / 1024:5.2f} KiB per token: padding "
                  f"{w['padding_with_cache'] * 100:+5.1f} % with the KV cache held, "
                  f"{w['padding_logits_only'] * 100:+5.1f} % with the logits alone")
    print(f"  accelerate 'Training using Adam': median |error| {s['accelerate_median_abs']:.0f} %; "
          f"DeepSpeed model states: median |error| {s['deepspeed_median_abs']:.0f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
