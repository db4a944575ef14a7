"""Panel labels and help text in English and Korean.

Each panel module registers its strings once with :func:`register`; views call :func:`t`.
``labkit.set_language("ko")`` switches every panel built afterwards.
"""

from __future__ import annotations

LANGUAGES = ("en", "ko")
_strings: dict[str, dict[str, str]] = {}
_language = "en"


def set_language(language: str) -> None:
    """Choose the language of panels built from now on: ``"en"`` or ``"ko"``."""
    global _language
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {', '.join(LANGUAGES)}; got {language!r}")
    _language = language


def get_language() -> str:
    """The current panel language."""
    return _language


def register(strings: dict[str, tuple[str, str]]) -> None:
    """Add ``{key: (english, korean)}`` strings; a key registered twice must agree."""
    for key, (en, ko) in strings.items():
        _strings[key] = {"en": en, "ko": ko}


def t(key: str, **fmt: object) -> str:
    """The registered string for ``key`` in the current language (English if missing)."""
    entry = _strings.get(key)
    if entry is None:
        raise KeyError(f"no panel string registered under {key!r}")
    text = entry.get(_language) or entry["en"]
    return text.format(**fmt) if fmt else text


def all_strings() -> dict[str, dict[str, str]]:
    """Every registered string (for tests that check both languages are filled in)."""
    return {k: dict(v) for k, v in _strings.items()}
