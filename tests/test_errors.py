"""Every user-facing error class in labkit derives from the one ``LabkitError`` base."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from labkit.errors import LabkitError

PACKAGE = Path(__file__).resolve().parents[1] / "labkit"


def _error_classes() -> list[tuple[str, str]]:
    """(module, class) for every ``class *Error`` / ``class *Refused`` defined under labkit/."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name.endswith(("Error", "Refused")):
                if node.name == "LabkitError":
                    continue
                rel = path.relative_to(PACKAGE.parent).with_suffix("")
                module = ".".join(rel.parts).removesuffix(".__init__")
                found.append((module, node.name))
    return found


ERRORS = _error_classes()


def test_the_scan_finds_the_known_classes() -> None:
    names = {name for _module, name in ERRORS}
    known = {"ConfigError", "SetupError", "RecordsError", "OfflineError", "LoRAError", "ArchError",
             "MeasureRefused", "MergeError", "ModelNotFoundError", "FormatError", "QuantError",
             "ReportError", "ParameterError", "UnknownTaskError"}
    assert known <= names, known - names


@pytest.mark.parametrize(("module", "name"), ERRORS, ids=[n for _m, n in ERRORS])
def test_every_error_class_is_a_labkit_error(module: str, name: str) -> None:
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, LabkitError), f"{module}.{name} does not derive from LabkitError"
    assert issubclass(cls, ValueError)


def test_runtime_errors_stay_catchable_as_runtime_errors() -> None:
    from labkit.home import OfflineError
    from labkit.memory.measure import MeasureRefused

    for cls in (OfflineError, MeasureRefused):
        assert issubclass(cls, RuntimeError)
        with pytest.raises(RuntimeError):
            raise cls("x")
