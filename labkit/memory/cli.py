"""``labkit estimate`` and ``labkit measure``: the same options, the same JSON shape.

The lead wires these into ``labkit/cli.py``::

    add_estimate_parser(subparsers); add_measure_parser(subparsers)
    # each sets ``func`` (run_estimate / run_measure) as the subparser default

Bad values print one line naming the option and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from labkit.memory.breakdown import COMPONENTS, fmt_bytes, parse_size
from labkit.memory.setup import MemorySetup, SetupError
from labkit.train.config import AUTO_LOSS_CHUNK

EXIT_BAD_INPUT = 2


def _add_setup_options(p: argparse.ArgumentParser, device_help: str) -> None:
    """Every option is parsed as text and validated by MemorySetup, so errors are one line."""
    p.add_argument("--model", default="tiny", help="catalog name, built-in, HF id, local folder or config.json")
    p.add_argument("--method", default="full", help="full|lora|qlora")
    p.add_argument("--rank", default="8", help="LoRA rank")
    p.add_argument("--targets", default=None, help="peft target modules, e.g. q_proj,v_proj or all-linear")
    p.add_argument("--quant-type", default="nf4", help="QLoRA: nf4|fp4")
    p.add_argument("--no-double-quant", action="store_true", help="QLoRA: no double quantization")
    p.add_argument("--compute-dtype", default="fp32", help="QLoRA: fp32|bf16|fp16")
    p.add_argument("--precision", default="fp32", help="fp32|fp16|bf16|amp-fp16|amp-bf16")
    p.add_argument("--optimizer", default="adamw", help="adamw|sgd|adamw8bit|paged-adamw8bit")
    p.add_argument("--batch", default="1", help="micro-batch size")
    p.add_argument("--seq", default="512", help="sequence length (tokens)")
    p.add_argument("--grad-accum", default="1", help="gradient accumulation steps")
    p.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    p.add_argument("--attn", default="sdpa", help="eager|sdpa")
    p.add_argument("--gpus", default="1", help="number of GPUs (data parallel)")
    p.add_argument("--zero", default="0", help="ZeRO stage 0-3 (FSDP: 3 = FULL_SHARD, 2 = SHARD_GRAD_OP)")
    p.add_argument("--mode", default="train", help="train|inference")
    p.add_argument("--gen-len", default="0", help="inference: tokens generated after the prompt")
    p.add_argument("--device", default=None, help=device_help)
    p.add_argument("--gpu-mem", default=None, help="e.g. 24GB: adds fits / does not fit and by how much")
    p.add_argument("--json", action="store_true", help="print the breakdown as JSON")


def add_estimate_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("estimate", help="estimate training/inference memory (no weights needed)")
    _add_setup_options(p, "cuda|cpu: the device the estimate is for (default: cuda, a GPU's allocator slack and "
                          "CUDA context included, wherever you run it; with --calibrate: this machine)")
    p.add_argument("--activations", default="formula", help="formula|trace (exact, fake-tensor forward)")
    p.add_argument("--loop", default="unknown",
                   help="unknown|drops-output|keeps-output|labkit: does the training loop hold the model output "
                        "through backward (out = model(...), then backward on out.loss)? Trainer drops it; labkit: "
                        "labkit's engine by default (no full logits: the answer-only loss head, 1024 rows a chunk)")
    p.add_argument("--kv-repeat", default="unknown",
                   help="unknown|yes|no: does attention save GQA's K/V repeated to every query head? yes: "
                        "transformers' SDPA with an attention mask (padded batches, packing), torchtune; no: "
                        "flash-attention 2, SDPA without a mask (unknown: the upper bound carries it)")
    p.add_argument("--attn-mask", default="unknown",
                   help="unknown|yes|no: is SDPA handed a dense attention mask (batches padded to their longest "
                        "row, through transformers)? yes: every layer keeps the mask as a b*s*s bias and K/V "
                        "repeated (unknown: the upper bound carries both)")
    p.add_argument("--use-cache", default="unknown",
                   help="unknown|yes|no: does the training forward build transformers' KV cache? yes: a plain "
                        "model(**batch) without gradient checkpointing on a config with use_cache true (most "
                        "causal LMs); no: checkpointing on, use_cache=False, labkit's engine (unknown: the upper "
                        "bound carries it)")
    p.add_argument("--calibrate", action="store_true",
                   help="run real steps at 1/8 and 1/4 of --seq on this machine, fit the residual, show both")
    p.add_argument("--replay", action="store_true",
                   help="run the model for two steps on fake tensors at full size and replay every allocation "
                        "through PyTorch's caching-allocator rules: allocated, reserved, and the smallest card "
                        "the steps fit (seconds; no memory used). Two steps of one length: a packed or fixed-"
                        "length run; for varied lengths, labkit.memory.reserved.simulate(..., lengths=[...])")
    p.add_argument("--loss-path", default=None,
                   help="transformers>=4.49|transformers-4.46|transformers<4.46|trainer-label-smoothing: the "
                        "transformers loss the run takes (default: the installed version's; trainer-label-smoothing: "
                        "HF Trainer with label_smoothing_factor > 0)")
    p.set_defaults(func=run_estimate)
    return p


def add_measure_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("measure", help="run the same setup for real and measure it")
    _add_setup_options(p, "cuda|cpu (default: this machine)")
    p.add_argument("--steps", default="3", help="optimizer steps to run (>= 3 recommended)")
    p.add_argument("--padded", action="store_true",
                   help="pad the batches (one padding token in the first row): the attention mask reaches the "
                        "model, as with batches padded to their longest row (compare: estimate --attn-mask yes)")
    p.add_argument("--largest-batch", action="store_true",
                   help="CUDA: search the largest micro-batch that really runs (catches real OOMs)")
    p.add_argument("--smallest-card", action="store_true",
                   help="CUDA: search the least memory torch must be allowed for the steps to run (the allocator "
                        "capped with set_per_process_memory_fraction; real OOMs) — what a smaller card needs")
    p.set_defaults(func=run_measure)
    return p


def _int(option: str, text: Any) -> int:
    try:
        return int(str(text))
    except ValueError:
        raise SetupError(option, "an integer", text) from None


def setup_from_args(args: argparse.Namespace, *, on_this_machine: bool = True) -> MemorySetup:
    """Build and validate the setup; raises SetupError naming the option. ``--device`` left out means
    this machine's device for real steps (``on_this_machine``), else MemorySetup's own default (cuda)."""
    import torch

    kw: dict[str, Any] = dict(
        method=args.method, rank=_int("rank", args.rank), quant_type=args.quant_type,
        double_quant=not args.no_double_quant, compute_dtype=args.compute_dtype, precision=args.precision,
        optimizer=args.optimizer, batch=_int("batch", args.batch), seq=_int("seq", args.seq),
        grad_accum=_int("grad_accum", args.grad_accum), checkpointing=bool(args.checkpointing),
        attn=args.attn, gpus=_int("gpus", args.gpus), zero=_int("zero", args.zero), mode=args.mode,
        gen_len=_int("gen_len", args.gen_len))
    if args.device or on_this_machine:
        kw["device"] = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.targets:
        kw["targets"] = args.targets
    return MemorySetup(**kw)


def _print(result: Any, args: argparse.Namespace, gpu_mem: int | None) -> None:
    data = result.to_json(gpu_mem)
    data.pop("inventory", None)
    if args.json:
        print(json.dumps(data, indent=1, default=str))
        return
    print(f"{data.get('source', '')} memory per device — model {args.model}")
    for key in COMPONENTS:
        print(f"  {key:12s} {fmt_bytes(data['bytes'][key]):>12s}")
    print(f"  {'peak':12s} {fmt_bytes(data['peak']):>12s}  (allocated, at {data.get('peak_moment', 'max over the step')})")
    if "reserved" in data and data.get("source") == "estimate" and data["reserved"] != data["peak"]:
        print(f"  {'reserved':12s} {fmt_bytes(data['reserved']):>12s}  (allocated + allocator slack; + CUDA context = total)")
    print(f"  params: {data['params']['total']:,} total, {data['params']['trainable']:,} trainable")
    if "max_memory_allocated" in data:
        print(f"  torch.cuda.max_memory_allocated {fmt_bytes(data['max_memory_allocated'])}, "
              f"reserved {fmt_bytes(data['max_memory_reserved'])}")
    upper = data.get("upper")
    assumes = data.get("assumes")
    if isinstance(assumes, dict):
        loop = {None: "unknown (point: dropped; upper: kept in fp32)", True: "keeps its output",
                False: "drops its output"}[assumes.get("keeps_logits")]
        kv = {None: "unknown (point: at the key/value heads; upper: repeated)", True: "repeated to every head",
              False: "at the key/value heads"}[assumes.get("kv_repeat")]
        mask = {None: "unknown (point: none; upper: kept)", True: "kept by every layer as a bias",
                False: "none"}[assumes.get("attn_mask")]
        cache = {None: "unknown (point: none; upper: built and held)", True: "built (held with the output)",
                 False: "none"}[assumes.get("use_cache")]
        print(f"  assumes: {assumes['loss_path'].split(':')[0]}; training loop {loop}; GQA K/V saved {kv}; "
              f"dense attention mask {mask}; KV cache in training {cache}")
    if isinstance(upper, dict):
        terms = ", ".join(f"{k} +{fmt_bytes(v)}" for k, v in upper["terms"].items() if v > 0) or "none"
        print(f"  upper bound  {fmt_bytes(upper['total']):>12s}  (point {fmt_bytes(data['peak'] + data['bytes']['overhead'])}"
              f" + uncertain terms: {terms})")
    rep = data.get("replay")
    if isinstance(rep, dict):
        by_replay = ""
        if "fits" in rep and gpu_mem is not None:
            by_replay = (f"; by the replay it {'fits' if rep['fits'] else 'does not fit'} in {fmt_bytes(gpu_mem)} "
                         f"(the verdict below stays with the upper bound)")
        print(f"  replay       allocated {fmt_bytes(rep['allocated'])}, reserved {fmt_bytes(rep['reserved'])}, "
              f"smallest card {fmt_bytes(rep['card'])} (two steps on fake tensors through the caching allocator)"
              f"{by_replay}")
    if gpu_mem is not None:
        verdict = "fits" if data["fits"] else "does not fit"
        basis = " — judged on the upper bound" if isinstance(upper, dict) else ""
        print(f"  {verdict} in {fmt_bytes(gpu_mem)} (margin {fmt_bytes(data['margin'])}{basis})")
    longest = data.get("longest_seq")
    if isinstance(longest, dict):
        more = " or more (the search's limit)" if longest["at_limit"] else ""
        print(f"  longest sequence at batch {longest['batch']} that fits {fmt_bytes(longest['gpu_mem'])}: "
              f"{longest['upper']:,} tokens by the upper bound (what 'fits' promises), {longest['point']:,}{more} "
              f"by the point estimate")


def _fail(message: str) -> int:
    print(f"labkit: {message}".splitlines()[0], file=sys.stderr)
    return EXIT_BAD_INPUT


def run_estimate(args: argparse.Namespace) -> int:
    from labkit.memory.advice import fixes, longest_fit
    from labkit.memory.arch import ArchError
    from labkit.memory.estimate import estimate

    try:
        # An estimate answers "will it fit on my GPU?", also when asked from a laptop: without --device
        # it is made for CUDA (MemorySetup's default, as in the panel), or the CPU's cheaper bound would
        # say "fits" where the GPU runs out (llama-3.1-8b QLoRA at 5,789 tokens: upper bound 22.8 GiB on
        # cpu, 28.9 on cuda). Calibration runs real steps, so it stays on this machine.
        setup = setup_from_args(args, on_this_machine=getattr(args, "calibrate", False))
        gpu_mem = parse_size(args.gpu_mem) if args.gpu_mem else None
        method = getattr(args, "activations", "formula")
        if method not in ("formula", "trace"):
            raise SetupError("activations", "formula|trace", method)
        loops = {"unknown": None, "drops-output": False, "keeps-output": True, "labkit": False}
        loop = getattr(args, "loop", "unknown")
        if loop not in loops:
            raise SetupError("loop", "|".join(loops), loop)
        chunk = AUTO_LOSS_CHUNK if loop == "labkit" else 0
        loss_path = getattr(args, "loss_path", None)
        from labkit.memory.estimate import LOSS_PATHS

        if loss_path is not None and loss_path not in LOSS_PATHS:
            raise SetupError("loss-path", "|".join(LOSS_PATHS), loss_path)
        known = {"unknown": None, "yes": True, "no": False}
        kv, mask = getattr(args, "kv_repeat", "unknown"), getattr(args, "attn_mask", "unknown")
        cache = getattr(args, "use_cache", "unknown")
        for option, value in (("kv-repeat", kv), ("attn-mask", mask), ("use-cache", cache)):
            if value not in known:
                raise SetupError(option, "|".join(known), value)
        assumptions = {"keeps_logits": loops[loop], "loss_chunk": chunk, "loss_path": loss_path,
                       "kv_repeat": known[kv], "attn_mask": known[mask], "use_cache": known[cache]}
        result = estimate(args.model, setup, activations=method, **assumptions)
        if getattr(args, "replay", False):
            if chunk:
                raise SetupError("replay", "a transformers loss (not with --loop labkit)", "--loop labkit")
            from labkit.memory.estimate import CUDA_CONTEXT
            from labkit.memory.reserved import simulate

            sim = simulate(args.model, setup, loss_path=loss_path, keeps_logits=bool(loops[loop]),
                           kv_repeat=known[kv], attn_mask=bool(known[mask]), use_cache=bool(known[cache]))
            result.info["replay"] = {**sim, "card": sim["needs"] + CUDA_CONTEXT}
    except (SetupError, ArchError, ValueError) as exc:
        return _fail(str(exc))
    if gpu_mem is not None and not result.fits(gpu_mem):
        result.info["fixes"] = [f.to_dict() | {"text": f.text()}
                                for f in fixes(args.model, setup, gpu_mem, assumptions=assumptions)[:5]]
    if gpu_mem is not None and isinstance(result.info.get("replay"), dict):  # beside the verdict, never instead
        result.info["replay"]["fits"] = result.info["replay"]["card"] <= gpu_mem
    if gpu_mem is not None:  # "how long can I go on this card?": the other half of the verdict
        result.info["longest_seq"] = longest_fit(args.model, setup, gpu_mem, assumptions=assumptions)
    if getattr(args, "calibrate", False):
        from labkit.memory.calibrate import calibrate

        try:
            cal = calibrate(args.model, setup, device=setup.device)
        except (SetupError, ArchError, ValueError) as exc:
            return _fail(str(exc))
        result.info["calibration"] = cal.to_json()
        if not args.json:
            _print(result, args, gpu_mem)
            print(f"  calibrated   {fmt_bytes(cal.calibrated_peak):>12s}  vs uncalibrated "
                  f"{fmt_bytes(cal.uncalibrated.peak)} (peak; {cal.source})")
            for pt in cal.points:
                print(f"    s={pt['seq']}: measured {fmt_bytes(pt['measured'])}, estimated {fmt_bytes(pt['estimated'])}")
            return 0
    _print(result, args, gpu_mem)
    return 0


def run_measure(args: argparse.Namespace) -> int:
    from labkit.memory.arch import ArchError
    from labkit.memory.measure import MeasureRefused, measure

    try:
        setup = setup_from_args(args)
        gpu_mem = parse_size(args.gpu_mem) if args.gpu_mem else None
        steps = _int("steps", args.steps)
        if steps < 1:
            raise SetupError("steps", "an integer >= 1", steps)
        if getattr(args, "largest_batch", False):
            from labkit.memory.measure import largest_batch

            found = largest_batch(args.model, setup, device=setup.device, steps=max(2, min(steps, 3)))
            print(json.dumps(found) if args.json else f"largest micro-batch that runs: {found['batch']} "
                  f"(estimate said {found['estimate']}; tried {[t['batch'] for t in found['tried']]})")
            return 0
        if getattr(args, "smallest_card", False):
            from labkit.memory.estimate import CUDA_CONTEXT
            from labkit.memory.measure import smallest_card

            found = smallest_card(args.model, setup, device=setup.device, steps=max(2, min(steps, 3)))
            found["card"] = found["needs"] + found["context"]
            print(json.dumps(found) if args.json else
                  f"smallest allocator cap that runs: {fmt_bytes(found['needs'])} (+ this card's CUDA context "
                  f"{fmt_bytes(found['context'])}: a {fmt_bytes(found['card'])} card; labkit assumes "
                  f"{fmt_bytes(CUDA_CONTEXT)}); uncapped max_memory_allocated {fmt_bytes(found['allocated'])}, "
                  f"max_memory_reserved {fmt_bytes(found['reserved'])}; {len(found['tried'])} capped tries")
            return 0
        result = measure(args.model, setup, steps=steps, device=setup.device, padded=getattr(args, "padded", False))
    except MeasureRefused as exc:  # first: a LabkitError, so a ValueError too, but a runtime refusal (exit 1)
        print(f"labkit: {exc}", file=sys.stderr)
        return 1
    except (SetupError, ArchError, ValueError) as exc:
        return _fail(str(exc))
    _print(result, args, gpu_mem)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m labkit.memory.cli estimate ...``) until the lead wires it."""
    parser = argparse.ArgumentParser(prog="labkit")
    sub = parser.add_subparsers(dest="command", required=True)
    add_estimate_parser(sub)
    add_measure_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
