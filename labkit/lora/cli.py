"""``labkit sweep`` (the LoRA rank sweep) and ``labkit lora-serving`` (merged vs attached adapters).

``labkit sweep --model tiny --task text2sql --ranks 1,2,4,8,16,64 --full --json`` prints
``{"points": [...]}``, each point a run record in the shape ``labkit train --json`` prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from labkit.lora.params import TARGET_SETS, LoRAError

__all__ = ["add_parser", "run", "parse_list"]

DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps (default: the best one here)"

# TrainConfig fields `labkit sweep` exposes (besides --model/--task): shared by every point.
SHARED_OPTIONS = (
    "steps", "seed", "lr", "batch_size", "seq_len", "precision", "optimizer", "schedule", "warmup_steps",
    "quant_type", "train_examples", "eval_examples", "max_new_tokens",
)


def parse_list(text: str, option: str, cast: Any = str) -> list[Any]:
    """``"1,2,4"`` → ``[1, 2, 4]``; a bad item raises LoRAError naming the option."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return [cast(t) for t in items]
    except ValueError:
        raise LoRAError(f"--{option}: must be a comma-separated list of {cast.__name__}; got {text!r}") from None


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``sweep`` and ``lora-serving`` on the ``labkit`` command."""
    from labkit.cli_options import add_dataclass_options, add_store_options, device_name
    from labkit.train.config import ALPHA_POLICIES, TrainConfig

    p = subparsers.add_parser("sweep", help="train a task at several LoRA ranks (+ full FT) and compare")
    add_dataclass_options(p, TrainConfig, only=("model", "task"))
    p.add_argument("--ranks", default="1,2,4,8,16,64", help="comma-separated LoRA ranks")
    p.add_argument("--full", action="store_true", help="add full fine-tuning as the baseline")
    p.add_argument("--qlora", action="store_true", help="also sweep the same ranks over a 4-bit base")
    p.add_argument("--alpha-policies", default="2r", help=f"comma-separated: {','.join(ALPHA_POLICIES)}")
    p.add_argument("--targets", default="attention", help=f"comma-separated target sets: {','.join(TARGET_SETS)}")
    # The TrainConfig options every point shares; left unset, TrainConfig's defaults apply (so
    # `labkit train` and `labkit sweep` agree), except the sweep's shorter default --steps.
    add_dataclass_options(p, TrainConfig, only=SHARED_OPTIONS, defaults={"steps": 100, "seed": 0}, unset=True)
    p.add_argument("--device", default=None, type=device_name, help=DEVICE_HELP)
    add_store_options(p, "points", 'print {"points": [...]} as JSON')

    s = subparsers.add_parser("lora-serving", help="latency, storage and switching: merged vs attached adapters")
    s.add_argument("--model", default="tiny")
    s.add_argument("--rank", type=int, default=8)
    s.add_argument("--targets", default="attention", choices=list(TARGET_SETS))
    s.add_argument("--adapters", type=int, default=4, help="how many task adapters share one base")
    s.add_argument("--new-tokens", type=int, default=32)
    s.add_argument("--prompt-len", type=int, default=16)
    s.add_argument("--batch-size", type=int, default=1)
    s.add_argument("--repeats", type=int, default=5)
    s.add_argument("--device", default=None, type=device_name, help=DEVICE_HELP)
    s.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    """Run ``sweep`` or ``lora-serving``; a bad option prints one line and returns 2."""
    try:
        if args.command == "lora-serving":
            return _run_serving(args)
        return _run_sweep(args)
    except LoRAError as error:
        print(f"labkit {args.command}: error: {error}", file=sys.stderr)
        return 2


def _run_sweep(args: argparse.Namespace) -> int:
    from labkit.lora.sweep import format_table, run_sweep, sweep_table
    from labkit.train import RunStore

    from labkit.cli import check_model
    from labkit.train.config import ALPHA_POLICIES

    ranks = parse_list(args.ranks, "ranks", int)
    bad = [r for r in ranks if not 1 <= r <= 4096]
    if bad:
        raise LoRAError(f"--ranks: each must be an integer in [1, 4096]; got {bad[0]!r}")
    if not ranks and not args.full:
        raise LoRAError(f"--ranks: give at least one rank (or --full); got {args.ranks!r}")
    policies = parse_list(args.alpha_policies, "alpha-policies")
    for policy in policies:
        if policy not in ALPHA_POLICIES:
            raise LoRAError(f"--alpha-policies: each must be one of {', '.join(ALPHA_POLICIES)}; got {policy!r}")
    target_sets = parse_list(args.targets, "targets")
    for t in target_sets:
        if t not in TARGET_SETS:
            raise LoRAError(f"--targets: each must be one of {', '.join(TARGET_SETS)}; got {t!r}")
    _check_task(args.task)
    check_model(args.model)
    store: Any = False if args.no_store else (RunStore(args.runs) if args.runs else None)
    # Options left unset are absent here, so the points keep TrainConfig's defaults.
    from labkit.cli_options import values_from_args
    from labkit.train.config import TrainConfig

    given = values_from_args(args, TrainConfig)
    for name in ("model", "task", "steps", "seed"):
        given.pop(name)
    result = run_sweep(
        args.model, args.task, ranks,
        full=args.full, alpha_policies=policies, target_sets=target_sets, qlora=args.qlora,
        steps=args.steps, seed=args.seed, store=store, progress=not args.json or sys.stderr.isatty(),
        device=args.device, **given,
    )
    if args.json:
        from labkit.train.store import json_safe

        print(json.dumps(json_safe(result), allow_nan=False, default=str))
    else:
        print(format_table(sweep_table(result)))
        ratio = result["overhead_ratio"]
        print(f"\nwall {result['wall_seconds']:.1f} s; trained {result['trained']} points in "
              f"{result['trained_seconds']:.1f} s; reused {result['reused']}; base load "
              f"{result['base_load_seconds']:.1f} s" + (f"; overhead ×{ratio:.3f}" if ratio else ""))
    # A point that crashed (not one that diverged or ran out of memory: those are results) fails the command.
    failed = [p for p in result["points"] if p.get("status") == "error"]
    if failed:
        first = " ".join(str(failed[0].get("error") or failed[0].get("status")).split())[:300]
        print(f"labkit sweep: {len(failed)} of {len(result['points'])} points did not finish; "
              f"{failed[0]['sweep']['label']}: {first}", file=sys.stderr)
    return 130 if result["interrupted"] else (1 if failed else 0)


def _check_task(task: str) -> None:
    try:
        from labkit.tasks import TASKS
    except ImportError:  # pragma: no cover - tasks package missing
        return
    for name in task.split("+"):
        if name not in TASKS:
            raise LoRAError(f"--task: must be one of {'|'.join(TASKS)} (or several joined with +); got {name!r}")


def _run_serving(args: argparse.Namespace) -> int:
    from labkit.cli import check_model
    from labkit.lora.serving import measure_serving

    for option, value, low in (("rank", args.rank, 1), ("adapters", args.adapters, 1), ("new-tokens", args.new_tokens, 2),
                               ("prompt-len", args.prompt_len, 1), ("batch-size", args.batch_size, 1),
                               ("repeats", args.repeats, 1)):
        if value < low:
            raise LoRAError(f"--{option}: must be an integer >= {low}; got {value}")
    check_model(args.model)

    result = measure_serving(
        args.model, rank=args.rank, targets=args.targets, n_adapters=args.adapters, new_tokens=args.new_tokens,
        prompt_len=args.prompt_len, batch_size=args.batch_size, repeats=args.repeats, device=args.device,
    )
    if args.json:
        print(json.dumps(result, default=str))
        return 0
    lat, st, sw = result["latency_ms_per_token"], result["storage"], result["switch_seconds"]
    print(f"model {result['model']} on {result['device']}, LoRA r={result['rank']} on {','.join(result['targets'])}")
    print(f"latency per token: base {lat['base']:.2f} ms, attached {lat['attached']:.2f} ms, merged {lat['merged']:.2f} ms")
    print(f"merged vs attached max |Δlogit| {result['max_logit_diff_merged_vs_attached']:.2e}")
    n = result["n_adapters"]
    print(f"storage for {n} tasks: one base + {n} adapters {st['separate_total_bytes'] / 2**20:.2f} MiB "
          f"vs {n} merged models {st['merged_total_bytes'] / 2**20:.2f} MiB "
          f"(adapter {st['adapter_bytes'] / 2**10:.1f} KiB, model {st['merged_model_bytes'] / 2**20:.2f} MiB)")
    print(f"switch task: set_adapter {1e3 * sw['set_adapter']:.3f} ms, unmerge+merge {1e3 * sw['unmerge_merge']:.2f} ms, "
          f"load a merged model {1e3 * sw['load_merged_model']:.1f} ms")
    return 0
