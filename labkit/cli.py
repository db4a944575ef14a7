"""The ``labkit`` command: ``lab``, ``doctor``, ``train``, ``fetch``, ``estimate``, ``measure``, ``sweep``, ``report``.

Bad options print one line that names the option and what is allowed, and exit with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any, Callable, Sequence

from labkit.train.config import (
    ALPHA_POLICIES,
    COMPUTE_DTYPES,
    METHODS,
    OPTIMIZERS,
    PARALLEL,
    PRECISIONS,
    QUANT_TYPES,
    SCHEDULES,
    ConfigError,
)
from labkit.tasks.evaluate import MAX_NEW_TOKENS


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the option (exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)


# --------------------------------------------------------------------------------------
# labkit train
# --------------------------------------------------------------------------------------
def add_train_options(parser: argparse.ArgumentParser) -> None:
    """The TrainConfig options, shared by ``train`` and ``sweep``."""
    parser.add_argument("--model", default="tiny", help="tiny, smollm2-135m, a Hugging Face id or a local path")
    parser.add_argument("--task", default="text2sql", help="text2sql, json_extract, or both joined with +")
    parser.add_argument("--method", choices=METHODS, default="lora")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=None)
    parser.add_argument("--alpha-policy", choices=ALPHA_POLICIES, default="2r")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj", help="module names, or all-linear")
    parser.add_argument("--quant-type", choices=QUANT_TYPES, default="nf4")
    parser.add_argument("--no-double-quant", dest="double_quant", action="store_false")
    parser.add_argument("--compute-dtype", choices=COMPUTE_DTYPES, default="fp32")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--schedule", choices=SCHEDULES, default="cosine")
    parser.add_argument("--warmup-steps", type=int, default=10)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", "--batch", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--seq-len", "--seq", type=int, default=256)
    parser.add_argument("--checkpointing", dest="grad_checkpointing", action="store_true")
    parser.add_argument("--parallel", choices=PARALLEL, default="ddp",
                        help="under torchrun/accelerate: ddp (a replica per process) or fsdp (sharded)")
    parser.add_argument("--loss-multiplier", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-seed", type=int, default=0, help="fixes the train/eval split")
    parser.add_argument("--split", choices=("entity", "template"), default="entity",
                        help="entity: unseen values in eval; template: unseen question templates")
    parser.add_argument("--train-examples", type=int, default=None)
    parser.add_argument("--train-file", default=None,
                        help="JSONL of instruction/input/output records to train on (the task still evaluates)")
    parser.add_argument("--eval-examples", type=int, default=40)
    parser.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    parser.add_argument("--runs", default=None, help="run store folder (default: LABKIT_HOME/runs)")
    parser.add_argument("--no-store", action="store_true", help="neither reuse nor save runs")
    parser.add_argument("--json", action="store_true", help="print the run record as JSON")


def config_from_args(args: argparse.Namespace, **overrides: Any):
    """Build a TrainConfig from parsed options (raises ConfigError on a bad value)."""
    from labkit.train.config import TrainConfig

    targets: Any = args.targets
    if targets != "all-linear":
        targets = tuple(t.strip() for t in targets.split(",") if t.strip())
    fields = dict(
        model=args.model,
        task=args.task,
        method=args.method,
        rank=args.rank,
        alpha=args.alpha,
        alpha_policy=args.alpha_policy,
        dropout=args.dropout,
        targets=targets,
        quant_type=args.quant_type,
        double_quant=args.double_quant,
        compute_dtype=args.compute_dtype,
        precision=args.precision,
        optimizer=args.optimizer,
        lr=args.lr,
        schedule=args.schedule,
        warmup_steps=args.warmup_steps,
        steps=args.steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        seq_len=args.seq_len,
        grad_checkpointing=args.grad_checkpointing,
        parallel=args.parallel,
        loss_multiplier=args.loss_multiplier,
        seed=args.seed,
        data_seed=args.data_seed,
        split=args.split,
        train_examples=args.train_examples,
        train_file=args.train_file,
        eval_examples=args.eval_examples,
        max_new_tokens=args.max_new_tokens,
    )
    fields.update(overrides)
    return TrainConfig(**fields)


def store_from_args(args: argparse.Namespace):
    from labkit.train.store import RunStore

    return None if args.no_store else RunStore(args.runs)


def check_task(task: str) -> None:
    """Refuse an unknown task before any model is loaded."""
    from labkit.tasks import TASKS

    for name in task.split("+"):
        if name not in TASKS:
            raise ConfigError("task", "one of " + "|".join(TASKS) + " (or several joined with +)", name)


def run_train(args: argparse.Namespace) -> int:
    from labkit.train import distributed, train

    config = config_from_args(args)
    check_task(config.task)
    record = train(config, store=store_from_args(args), progress=not args.json or sys.stderr.isatty())
    records = distributed.gather_to_main(record)  # under torchrun: rank 0 prints every rank's record
    distributed.finish()
    if args.json:
        for rank_record in records:
            print(json.dumps(rank_record, allow_nan=False, default=str), flush=True)
    elif records:  # the main process (or the only one) prints the summary
        _print_summary(record)
    return 0 if record["status"] == "ok" else 1


def _print_summary(record: dict[str, Any]) -> None:
    losses = record["losses"]
    first, last = (losses[0], losses[-1]) if losses else (float("nan"), float("nan"))
    print(f"status      {record['status']}" + (" (reused from the run store)" if record.get("reused") else ""))
    print(f"loss        {first:.4f} → {last:.4f} over {len(losses)} steps")
    print(f"params      {record['params']['trainable']:,} trainable of {record['params']['total']:,}")
    print(f"peak memory {record['peak_memory_bytes'] / 2**20:.1f} MiB   {record['tokens_per_s']:.0f} tokens/s")
    for key, value in record.get("eval", {}).items():
        print(f"eval {key:<14} {value}")


# --------------------------------------------------------------------------------------
# labkit doctor / lab / fetch
# --------------------------------------------------------------------------------------
def run_doctor(args: argparse.Namespace) -> int:
    from labkit.doctor import report

    print(report())
    return 0


def run_lab(args: argparse.Namespace) -> int:
    from labkit.launch import launch_lab

    return launch_lab(args.dir, port=args.port, dry_run=args.dry_run)


FETCHABLE = ("tiny", "smollm2-135m", "chinook", "shakespeare", "all")


def run_fetch(args: argparse.Namespace) -> int:
    from labkit.home import OfflineError

    names = ("tiny", "smollm2-135m", "chinook", "shakespeare") if args.name == "all" else (args.name,)
    for name in names:
        try:
            if name in ("tiny", "smollm2-135m"):
                from labkit.models import fetch_model

                path = fetch_model(name)
            elif name == "chinook":
                from labkit.data.chinook import chinook_db

                path = chinook_db()
            else:
                from labkit.data.corpus import shakespeare_texts

                texts = shakespeare_texts()
                path = f"{len(texts)} texts"
        except OfflineError as error:
            print(f"labkit fetch: {error}", file=sys.stderr)
            return 1
        print(f"{name}: {path}")
    return 0


# --------------------------------------------------------------------------------------
# Wiring
# --------------------------------------------------------------------------------------
# Subcommands that live with their feature: (module, add_parser function, run function).
FEATURE_COMMANDS = {
    "estimate": ("labkit.memory.cli", "add_estimate_parser", "run_estimate"),
    "measure": ("labkit.memory.cli", "add_measure_parser", "run_measure"),
    "sweep": ("labkit.lora.cli", "add_parser", "run"),
    "report": ("labkit.report", "add_parser", "run"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="labkit", description="An interactive lab for learning how LLMs are fine-tuned.")
    sub = _subparsers(parser)

    lab = sub.add_parser("lab", help="open JupyterLab on the labs (localhost, with a token)")
    lab.add_argument("--dir", default=None, help="folder of notebooks (default: the labs/ folder)")
    lab.add_argument("--port", type=int, default=8888)
    lab.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    lab.set_defaults(handler=run_lab)

    sub.add_parser("doctor", help="versions, device, precision support, cache").set_defaults(handler=run_doctor)

    train = sub.add_parser("train", help="run one fine-tuning and print its record")
    add_train_options(train)
    train.set_defaults(handler=run_train)

    fetch = sub.add_parser("fetch", help="prepare a model or data set ahead of a workshop")
    fetch.add_argument("name", choices=FETCHABLE)
    fetch.set_defaults(handler=run_fetch)

    for name, (module_name, add_name, run_name) in FEATURE_COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        add: Callable = getattr(module, add_name)
        handler: Callable = getattr(module, run_name)
        before = set(sub.choices)
        add(sub)
        for added in set(sub.choices) - before:
            sub.choices[added].set_defaults(handler=handler)
    return parser


def _quiet_libraries() -> None:
    """No weight-loading bars from transformers: the CLI's stderr carries labkit's own messages."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries()
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except ConfigError as error:
        print(f"labkit {args.command}: error: {error}", file=sys.stderr)
        return 2
    except ValueError as error:
        if type(error).__name__.endswith(("ConfigError", "SetupError", "ParameterError")):
            print(f"labkit {args.command}: error: {error}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
