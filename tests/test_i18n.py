"""Panels speak English and Korean; the glossary covers the terms the labs use."""

from __future__ import annotations

import importlib
import pkgutil
import re

import pytest

import labkit.panels
from labkit import glossary, i18n


def _import_all_panels() -> list[str]:
    names = []
    for info in pkgutil.iter_modules(labkit.panels.__path__, prefix="labkit.panels."):
        importlib.import_module(info.name)
        names.append(info.name)
    return names


@pytest.fixture
def english():
    yield
    i18n.set_language("en")


def test_every_registered_string_has_english_and_korean():
    _import_all_panels()
    strings = i18n.all_strings()
    missing = [k for k, v in strings.items() if not v.get("en", "").strip() or not v.get("ko", "").strip()]
    assert not missing, f"panel strings without both languages: {missing}"
    hangul = re.compile(r"[\uac00-\ud7a3]")
    # A Korean string identical to the English one is a forgotten translation, unless it is a
    # symbol, formula or a term Korean keeps in Latin letters (LoRA, NF4, ...): require Hangul
    # whenever the English has at least two ordinary lower-case words outside placeholders.
    def words(text: str) -> list[str]:
        text = re.sub(r"{[^}]*}|\S*_\S*", " ", text)
        return re.findall(r"\b[a-z]{3,}\b", text)

    untranslated = [k for k, v in strings.items() if len(words(v["en"])) >= 2 and not hangul.search(v["ko"])]
    assert not untranslated, f"Korean text without Hangul (untranslated?): {untranslated}"


def test_placeholders_match_between_languages():
    _import_all_panels()
    for key, v in i18n.all_strings().items():
        en = set(re.findall(r"{(\w*)}", v["en"]))
        ko = set(re.findall(r"{(\w*)}", v["ko"]))
        assert en == ko, f"{key}: placeholders differ ({en} vs {ko})"


def test_set_language_switches(english):
    i18n.register({"test.greeting": ("Learning rate {x}", "학습률 {x}")})
    i18n.set_language("en")
    assert i18n.t("test.greeting", x=3) == "Learning rate 3"
    i18n.set_language("ko")
    assert i18n.get_language() == "ko"
    assert i18n.t("test.greeting", x=3) == "학습률 3"
    with pytest.raises(ValueError, match="language must be one of en, ko"):
        i18n.set_language("fr")
    assert i18n.get_language() == "ko"


def test_set_language_is_exposed_at_package_level():
    import labkit

    if not hasattr(labkit, "set_language"):
        pytest.skip("labkit/__init__.py does not re-export set_language yet (lead's file)")
    assert labkit.set_language is i18n.set_language


# --- glossary ---------------------------------------------------------------------------------


def test_glossary_entries_complete_and_unique():
    seen_en, seen_ko = set(), set()
    hangul = re.compile(r"[\uac00-\ud7a3]")
    for term in glossary.GLOSSARY:
        assert term.en and term.ko and term.definition_en and term.definition_ko, term
        assert term.topic in glossary.TOPICS, term
        assert hangul.search(term.definition_ko), f"Korean definition of {term.en} has no Hangul"
        assert term.en.lower() not in seen_en and term.ko not in seen_ko, term
        seen_en.add(term.en.lower())
        seen_ko.add(term.ko)
    for topic in glossary.TOPICS:
        assert glossary.terms(topic), f"no glossary terms for {topic}"


@pytest.mark.parametrize(
    "word",
    ["LoRA (low-rank adaptation)", "quantization", "gradient accumulation", "mixed precision", "SLERP",
     "learning rate", "catastrophic forgetting", "execution accuracy", "RAG (retrieval-augmented generation)",
     "gradient checkpointing", "NF4 (4-bit NormalFloat)", "task vector", "warmup"],
)
def test_glossary_covers_the_seed_terms(word):
    assert glossary.lookup(word).en == word


def test_lookup_either_language():
    assert glossary.lookup("양자화").en == "quantization"
    assert glossary.lookup("QUANTIZATION").ko == "양자화"
    with pytest.raises(KeyError, match="no glossary entry"):
        glossary.lookup("flux capacitor")


def test_glossary_renders():
    md = glossary.glossary_markdown("lora")
    assert md.splitlines()[0].startswith("| English | 한국어 |")
    assert len(md.splitlines()) == 2 + len(glossary.terms("lora"))
    page = glossary.glossary_html(definitions="ko")
    assert page.count("<tr>") == 1 + len(glossary.GLOSSARY)
    assert "양자화" in page and "<script" not in page
    with pytest.raises(ValueError, match="topic must be one of"):
        glossary.terms("cooking")
