"""Command-line options generated from a dataclass's fields, so an option is written once.

A field's ``metadata`` says how it appears on the command line (see :func:`option`); its type
and default come from the field itself. ``labkit train`` and ``labkit sweep`` both build their
``TrainConfig`` options here, and :func:`values_from_args` reads them back into field values.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Callable, Iterable, Mapping, Union

__all__ = [
    "option", "cli_fields", "add_dataclass_options", "values_from_args", "add_store_options", "comma_list",
    "number_or_none", "on_off_auto", "int_or_auto", "device_name",
]


def option(
    help: str,
    *,
    flags: tuple[str, ...] | None = None,
    choices: Iterable[str] | None = None,
    parse: Callable[[str], Any] | None = None,
    metavar: str | None = None,
) -> dict[str, Any]:
    """A field's CLI metadata: ``field(default=..., metadata=option("what it is", ...))``.

    ``flags``: the option strings (default ``--field-name``; a bool field's one flag flips its
    default); ``choices``: the allowed values; ``parse``: text → value (default: from the type).
    """
    meta: dict[str, Any] = {"help": help}
    if flags is not None:
        meta["flags"] = tuple(flags)
    if choices is not None:
        meta["choices"] = tuple(choices)
    if parse is not None:
        meta["parse"] = parse
    if metavar is not None:
        meta["metavar"] = metavar
    return meta


def comma_list(text: str) -> tuple[str, ...]:
    """``"q_proj, v_proj"`` → ``("q_proj", "v_proj")`` (empty items dropped)."""
    return tuple(t.strip() for t in text.split(",") if t.strip())


def number_or_none(text: str) -> float | None:
    """A float, or ``none``/``off`` for None (e.g. no gradient clipping)."""
    if text.strip().lower() in ("none", "off"):
        return None
    return float(text)


number_or_none.__name__ = "number (or none)"  # argparse names the type in "invalid ... value"


def on_off_auto(text: str) -> bool | None:
    """``on``/``off`` (also true/false, yes/no, 1/0) → True/False; ``auto`` → None (labkit decides)."""
    word = text.strip().lower()
    values = {"on": True, "true": True, "yes": True, "1": True, "off": False, "false": False, "no": False,
              "0": False, "auto": None}
    if word not in values:
        raise argparse.ArgumentTypeError(f"must be auto, on or off; got {text!r}")
    return values[word]


def int_or_auto(text: str) -> int | None:
    """An integer, or ``auto`` for None (labkit decides)."""
    if text.strip().lower() == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be auto or an integer; got {text!r}") from None


def device_name(text: str) -> str:
    """``--device``: auto, cpu, cuda, cuda:N or mps, and available on this machine."""
    import re

    import torch

    name = text.strip().lower()
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda, cuda:N or mps; got {text!r}")
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.partition(":")[2] or 0)
        if index >= count:
            raise argparse.ArgumentTypeError(f"{text!r} is not available here ({count} CUDA devices); try cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise argparse.ArgumentTypeError("'mps' is not available here; try cpu or auto")
    return name


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def cli_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` that have a CLI option (all but those with ``metadata={"cli": False}``)."""
    fields = [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]
    for f in fields:
        if "help" not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name}: give it metadata=option(help=...) or {{'cli': False}}")
    return fields


def _parser_for(cls: type, f: dataclasses.Field) -> Callable[[str], Any]:
    if "parse" in f.metadata:
        return f.metadata["parse"]
    hint = typing.get_type_hints(cls)[f.name]
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"{cls.__name__}.{f.name}: type {hint} needs metadata parse=")
        hint = args[0]
    if hint in (int, float, str):  # range checks are the dataclass's own (its message names the range)
        return hint
    raise TypeError(f"{cls.__name__}.{f.name}: type {hint} needs metadata parse=")


def add_dataclass_options(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    only: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    defaults: Mapping[str, Any] | None = None,
    unset: bool = False,
) -> None:
    """Add one option per CLI field of ``cls`` to ``parser`` (in field order, or in ``only``'s).

    ``defaults`` replaces a field's default on this parser; with ``unset=True`` every other
    option is left out of the parsed namespace unless given, so the dataclass's own default applies.
    """
    by_name = {f.name: f for f in cli_fields(cls)}
    names = list(only) if only is not None else list(by_name)
    unknown = [n for n in [*names, *(defaults or {})] if n not in by_name]
    if unknown:
        raise TypeError(f"{cls.__name__} has no CLI field {unknown[0]!r}")
    defaults = dict(defaults or {})
    names = [n for n in names if n not in exclude]
    key = _added_key(cls)  # which fields this parser has options for (values_from_args reads only those)
    parser.set_defaults(**{key: (*(parser.get_default(key) or ()), *names)})
    for name in names:
        f = by_name[name]
        meta = f.metadata
        flags = meta.get("flags", ("--" + name.replace("_", "-"),))
        default = defaults.get(name, _default(f))
        help_text = meta["help"]
        kwargs: dict[str, Any] = {"dest": name}
        if unset and name not in defaults:
            kwargs["default"] = argparse.SUPPRESS
            if "default:" not in help_text:
                help_text += f" (default: {cls.__name__}'s, {_default(f)!r})"
        else:
            kwargs["default"] = default
        kwargs["help"] = help_text
        if isinstance(_default(f), bool):
            kwargs["action"] = "store_false" if _default(f) else "store_true"
        else:
            kwargs["type"] = _parser_for(cls, f)
            if "choices" in meta:
                kwargs["choices"] = meta["choices"]
            if "metavar" in meta:
                kwargs["metavar"] = meta["metavar"]
        parser.add_argument(*flags, **kwargs)


def values_from_args(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The field values of ``cls`` given in ``args`` (options left unset with ``unset=True`` are absent).

    Only the fields :func:`add_dataclass_options` added are read, so a subcommand's own option that
    shares a field's name (``sweep --targets`` names target sets) is not taken for that field.
    """
    added = getattr(args, _added_key(cls), None)
    names = added if added is not None else [f.name for f in cli_fields(cls)]
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def add_store_options(parser: argparse.ArgumentParser, what: str, json_help: str) -> None:
    """``--runs``, ``--no-store`` and ``--json``, shared by ``labkit train`` and ``labkit sweep``."""
    parser.add_argument("--runs", default=None, help="run store folder (default: LABKIT_HOME/runs)")
    parser.add_argument("--no-store", action="store_true", help=f"neither reuse nor save {what}")
    parser.add_argument("--json", action="store_true", help=json_help)


def _added_key(cls: type) -> str:
    return f"_{cls.__name__}_options"
