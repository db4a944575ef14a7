"""The ``labkit`` command: ``lab``, ``doctor``, ``train``, ``fetch``, ``estimate``, ``measure``, ``sweep``,
``lora-serving``, ``report``.

Bad options print one line that names the option and what is allowed, and exit with code 2 (any
:class:`labkit.errors.LabkitError`; 1 for the runtime ones: offline, or refused on this machine).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from labkit.cli_options import add_dataclass_options, add_store_options
from labkit.errors import LabkitError
from labkit.train.config import ConfigError, TrainConfig


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
    """``labkit train``'s options: one per TrainConfig field (from its metadata), then the run store's."""
    add_dataclass_options(parser, TrainConfig)
    add_store_options(parser, "runs", "print the run record as JSON")


def config_from_args(args: argparse.Namespace, **overrides: Any) -> TrainConfig:
    """Build a TrainConfig from parsed options (raises ConfigError on a bad value)."""
    return TrainConfig.from_args(args, **overrides)


def store_from_args(args: argparse.Namespace):
    from labkit.train.store import RunStore

    return None if args.no_store else RunStore(args.runs)


def check_task(task: str) -> None:
    """Refuse an unknown task before any model is loaded."""
    from labkit.tasks import TASKS

    for name in task.split("+"):
        if name not in TASKS:
            raise ConfigError("task", "one of " + "|".join(TASKS) + " (or several joined with +)", name)


def check_model(name: str) -> None:
    """Refuse a local model folder that cannot load (missing, a file, no config, no safetensors) up front.

    Built-in names and hub ids pass (they are resolved when loaded); labkit loads weights only
    from safetensors, never pickle, so a folder with only ``*.bin`` weights is refused too.
    """
    from labkit.models.registry import BUILTIN_MODELS, ModelNotFoundError, _looks_like_path

    if name in BUILTIN_MODELS:
        return
    path = Path(name).expanduser()
    if not path.exists():
        if _looks_like_path(name):
            raise ModelNotFoundError(f"--model: no folder at {name}; give tiny, smollm2-135m, a hub id or a model folder")
        return
    if not path.is_dir():
        raise ModelNotFoundError(f"--model: must be a model folder (config.json + *.safetensors); {name} is a file")
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"--model: folder {name} has no config.json (not a Hugging Face model folder)")
    if not any(path.glob("*.safetensors")):
        raise ModelNotFoundError(f"--model: folder {name} has no *.safetensors weights (only safetensors are loaded)")


def report_failure(command: str, record: Any) -> None:
    """One stderr line for a run that ended with an error (the record holds the details)."""
    status = record["status"] if isinstance(record, dict) else getattr(record, "status", None)
    error = record.get("error") if isinstance(record, dict) else getattr(record, "error", None)
    if status not in ("ok", None):
        reason = " ".join(str(error or status).split())[:300]
        print(f"labkit {command}: the run did not finish ({status}): {reason}", file=sys.stderr)


def run_train(args: argparse.Namespace) -> int:
    from labkit.train import distributed, train

    config = config_from_args(args)
    check_task(config.task)
    check_model(config.model)
    record = train(config, store=store_from_args(args), progress=not args.json or sys.stderr.isatty())
    records = distributed.gather_to_main(record)  # under torchrun: rank 0 prints every rank's record
    distributed.finish()
    if args.json:
        for rank_record in records:
            from labkit.train.store import json_safe

            print(json.dumps(json_safe(rank_record), allow_nan=False, default=str), flush=True)
    elif records:  # the main process (or the only one) prints the summary
        _print_summary(record)
    report_failure("train", record)
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

    return launch_lab(args.dir, port=args.port, dry_run=args.dry_run, copy=args.copy, open_browser=args.open)


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
    "lora-serving": ("labkit.lora.cli", "add_parser", "run"),
    "report": ("labkit.report", "add_parser", "run"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="labkit", description="An interactive lab for learning how LLMs are fine-tuned.")
    sub = _subparsers(parser)

    lab = sub.add_parser("lab", help="open JupyterLab on the labs (localhost, with a token)")
    lab.add_argument("--dir", default=None, help="folder of notebooks (default: the labs/ folder)")
    lab.add_argument("--port", type=int, default=8888, help="port to ask for (a taken one: Jupyter picks the next free)")
    lab.add_argument("--copy", default=None, metavar="DIR",
                     help="write the lab notebooks into DIR (existing files kept) and open that folder")
    lab.add_argument("--open", action="store_true", help="start a browser where one exists (default: don't)")
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
        if name in sub.choices:  # registered by an earlier module (sweep brings lora-serving)
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:  # still listed: calling it says why, instead of "invalid choice"
            _add_unavailable(sub, name, error)
            continue
        add: Callable = getattr(module, add_name)
        handler: Callable = getattr(module, run_name)
        before = set(sub.choices)
        add(sub)
        for added in set(sub.choices) - before:
            sub.choices[added].set_defaults(handler=handler)
    return parser


def _add_unavailable(sub: argparse._SubParsersAction, name: str, error: ImportError) -> None:
    """List ``name`` with a handler that prints why its module did not import (exit 1)."""
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    # No option prefix: whatever follows the name is taken as text, so the call reaches the handler.
    unavailable = sub.add_parser(name, help=f"(unavailable: {reason})", add_help=False, prefix_chars="\0")
    unavailable.add_argument("rest", nargs="*")

    def handler(args: argparse.Namespace) -> int:
        print(f"labkit {name}: unavailable: {reason}", file=sys.stderr)
        return 1

    unavailable.set_defaults(handler=handler)


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
    except LabkitError as error:  # a user-facing error: its message names the option and what is allowed
        message = " ".join(str(error).split())  # one line, whatever the message holds
        print(f"labkit {args.command}: error: {message}", file=sys.stderr)
        return 1 if isinstance(error, RuntimeError) else 2  # offline, or refused to run here: not a usage error


if __name__ == "__main__":
    sys.exit(main())
