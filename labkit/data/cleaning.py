"""Data-cleaning helpers for lab 07 ("Data and evaluation"): noise, dedup, augmentation.

Pure functions on lists of instruction records (``{"instruction", "input", "output", ...}``).
Every function returns ``(records, report)``; the report counts what happened, so a lab can
say "removed 37 near-duplicates" and show which ones. Near-duplicate detection is hand-written
MinHash + LSH banding because that IS the lesson; :func:`jaccard` is the exact reference it is
tested against.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from labkit.data.records import FIELDS

Record = dict[str, Any]
NOISE_KINDS = ("typo", "corrupt_output", "missing_field", "duplicate", "near_duplicate")
AUGMENT_KINDS = ("paraphrase", "entity_swap")

_WS = re.compile(r"\s+")


def _check_rate(name: str, value: float) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name}: must be between 0 and 1; got {value!r}")
    return float(value)


# --- noise ------------------------------------------------------------------------------

def _typo(text: str, rng: random.Random) -> str:
    """One character-level edit (swap, drop, double or replace) inside a word of 3+ letters."""
    words = [m for m in re.finditer(r"[A-Za-z]{3,}", text)]
    if not words:
        return text + text[-1:] if text else "x"
    m = rng.choice(words)
    w = m.group(0)
    i = rng.randrange(len(w) - 1)
    op = rng.choice(("swap", "drop", "double", "replace"))
    if op == "swap":
        new = w[:i] + w[i + 1] + w[i] + w[i + 2:]
    elif op == "drop":
        new = w[:i] + w[i + 1:]
    elif op == "double":
        new = w[:i] + w[i] + w[i:]
    else:
        new = w[:i] + rng.choice("abcdefghijklmnopqrstuvwxyz".replace(w[i].lower(), "")) + w[i + 1:]
    if new == w:  # swapping two equal letters changes nothing: drop one instead
        new = w[:i] + w[i + 1:]
    return text[: m.start()] + new + text[m.end():]


def inject_noise(
    records: Sequence[Record], rate: float, seed: int = 0, kinds: Sequence[str] = NOISE_KINDS
) -> tuple[list[Record], dict[str, Any]]:
    """Corrupt about ``rate`` of the records, one kind of damage each, and say what was done.

    Kinds: ``typo`` (a misspelt word in the input), ``corrupt_output`` (answer truncated, or
    swapped with another record's answer), ``missing_field`` (input or output emptied),
    ``duplicate`` (an exact copy appended), ``near_duplicate`` (a copy with one typo appended).
    Report: ``changed``, ``by_kind``, and ``changes``
    (``{"index", "source", "kind", "field", "detail"}``; ``index`` is in the returned list).
    """
    _check_rate("rate", rate)
    bad = [k for k in kinds if k not in NOISE_KINDS]
    if bad or not kinds:
        raise ValueError(f"kinds: must be a non-empty subset of {', '.join(NOISE_KINDS)}; got {list(kinds)!r}")
    rng = random.Random(seed)
    out = [dict(r) for r in records]
    changes: list[dict[str, Any]] = []
    appended: list[Record] = []
    for i, rec in enumerate(out):
        if rng.random() >= rate:
            continue
        kind = rng.choice(list(kinds))
        change = {"index": i, "source": i, "kind": kind, "field": "", "detail": ""}
        if kind == "typo":
            rec["input"] = _typo(str(rec.get("input") or ""), rng)
            change.update(field="input", detail=rec["input"])
        elif kind == "corrupt_output":
            text = str(rec.get("output") or "")
            others = [j for j in range(len(records)) if records[j].get("output") != rec.get("output")]
            if others and rng.random() < 0.5:
                j = rng.choice(others)
                rec["output"] = records[j].get("output")
                change.update(field="output", detail=f"swapped with record {j}")
            else:
                rec["output"] = text[: max(1, len(text) // 2)]
                change.update(field="output", detail="truncated")
        elif kind == "missing_field":
            field = rng.choice(("input", "output"))
            rec[field] = ""  # what a broken export writes; still a valid record to train on
            change.update(field=field, detail="emptied")
        elif kind == "duplicate":
            appended.append(dict(rec))
            change.update(index=len(out) + len(appended) - 1, detail=f"copy of record {i}")
        else:  # near_duplicate: a copy with one typo in the input
            copy = dict(rec)
            copy["input"] = _typo(str(rec.get("input") or ""), rng)
            appended.append(copy)
            change.update(index=len(out) + len(appended) - 1, field="input", detail=f"near copy of record {i}")
        changes.append(change)
    out.extend(appended)
    by_kind = {k: sum(c["kind"] == k for c in changes) for k in kinds}
    return out, {"changed": len(changes), "by_kind": by_kind, "changes": changes, "n_in": len(records), "n_out": len(out)}


# --- missing and exact duplicates --------------------------------------------------------

def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def drop_missing(records: Sequence[Record], required: Sequence[str] = FIELDS) -> tuple[list[Record], dict[str, Any]]:
    """Remove records with a missing or blank required field. Report: ``removed``, ``kept``, indices."""
    kept, removed = [], []
    for i, rec in enumerate(records):
        (removed if any(_blank(rec.get(f)) for f in required) else kept).append(i)
    return [dict(records[i]) for i in kept], {"removed": len(removed), "kept": len(kept), "removed_indices": removed}


def _norm(text: Any) -> str:
    return _WS.sub(" ", str(text if text is not None else "")).strip()


def exact_dedup(records: Sequence[Record], fields: Sequence[str] = FIELDS) -> tuple[list[Record], dict[str, Any]]:
    """Keep the first of records whose ``fields`` are identical (up to whitespace).

    Report: ``removed``, ``kept``, ``removed_indices`` and ``duplicate_of`` ({removed: kept index}).
    """
    first: dict[tuple[str, ...], int] = {}
    kept, dup_of = [], {}
    for i, rec in enumerate(records):
        key = tuple(_norm(rec.get(f)) for f in fields)
        if key in first:
            dup_of[i] = first[key]
        else:
            first[key] = i
            kept.append(i)
    return [dict(records[i]) for i in kept], {
        "removed": len(dup_of), "kept": len(kept), "removed_indices": sorted(dup_of), "duplicate_of": dup_of,
    }


# --- near duplicates: shingles, exact Jaccard, MinHash + LSH ------------------------------

def shingles(text: str, k: int = 5) -> set[str]:
    """Character ``k``-grams of the case-folded, whitespace-collapsed text."""
    t = _norm(text).casefold()
    if len(t) <= k:
        return {t} if t else set()
    return {t[i:i + k] for i in range(len(t) - k + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    """|A ∩ B| / |A ∪ B| (1.0 for two empty sets)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _hash64(shingle: str) -> int:
    return int.from_bytes(hashlib.blake2b(shingle.encode("utf-8"), digest_size=8).digest(), "little")


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a strong 64-bit bit mixer (wrapping uint64 arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def minhash_signatures(sets: Sequence[set[str]], num_perm: int = 128, seed: int = 0) -> np.ndarray:
    """``(n, num_perm)`` MinHash signatures: per hash function, the minimum over the set.

    Hash function k is ``mix64(h ^ s_k)`` with a random 64-bit salt ``s_k``: a fresh
    pseudo-random order of all shingles per k. P(two signatures agree in one position) =
    Jaccard of the two sets, so the share of equal positions estimates it, standard error
    ≈ sqrt(J(1-J)/num_perm). (The textbook ``(a·h + b) mod p`` is only right with exact
    128-bit arithmetic; with a small ``a`` it stays nearly monotone in h, every "permutation"
    picks the same minimum, and the estimate is biased upwards — we measured +0.15.)
    """
    rng = np.random.default_rng(seed)
    salts = rng.integers(0, np.iinfo(np.uint64).max, size=num_perm, dtype=np.uint64, endpoint=True)
    sig = np.full((len(sets), num_perm), np.iinfo(np.uint64).max, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for row, s in enumerate(sets):
            if not s:
                continue
            h = np.array([_hash64(x) for x in s], dtype=np.uint64)[:, None]
            sig[row] = _mix64(h ^ salts).min(axis=0)
    return sig


def _text(rec: Record, fields: Sequence[str]) -> str:
    return " \n ".join(_norm(rec.get(f)) for f in fields)


def lsh_bands(num_perm: int, threshold: float, margin: float = 0.1, recall: float = 0.995) -> int:
    """How many LSH bands so a pair with Jaccard ``threshold - margin`` becomes a candidate with
    probability ≥ ``recall``: P = 1 - (1 - J^r)^b for b bands of r rows. Fewer, longer bands
    propose fewer (but miss more) pairs; this picks the longest bands that still find them."""
    j = max(threshold - margin, 0.01)
    for rows in sorted((r for r in range(1, num_perm + 1) if num_perm % r == 0), reverse=True):
        b = num_perm // rows
        if 1.0 - (1.0 - j**rows) ** b >= recall:
            return b
    return num_perm


def near_duplicate_pairs(
    records: Sequence[Record],
    threshold: float = 0.9,
    *,
    fields: Sequence[str] = ("input", "output"),
    k: int = 5,
    method: str = "minhash",
    num_perm: int = 128,
    bands: int | None = None,
    seed: int = 0,
) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, similarity)`` with ``i < j`` and similarity ≥ ``threshold``.

    ``method="exact"``: every pair's Jaccard (O(n²), the reference). ``"minhash"``: LSH bands of
    the signatures propose candidates (pairs agreeing on a whole band; ``bands`` defaults to
    :func:`lsh_bands`), and the signature agreement scores them — near-linear in n.
    """
    _check_rate("threshold", threshold)
    sets = [shingles(_text(r, fields), k) for r in records]
    pairs: list[tuple[int, int, float]] = []
    if method == "exact":
        for i in range(len(sets)):
            for j in range(i + 1, len(sets)):
                sim = jaccard(sets[i], sets[j])
                if sim >= threshold:
                    pairs.append((i, j, sim))
        return pairs
    if method != "minhash":
        raise ValueError(f"method: must be minhash or exact; got {method!r}")
    bands = bands or lsh_bands(num_perm, threshold)
    if num_perm % bands:
        raise ValueError(f"bands: must divide num_perm={num_perm}; got {bands}")
    sig = minhash_signatures(sets, num_perm, seed)
    rows = num_perm // bands
    candidates: set[tuple[int, int]] = set()
    for band in range(bands):
        buckets: dict[bytes, list[int]] = {}
        for i in range(len(sets)):
            buckets.setdefault(sig[i, band * rows:(band + 1) * rows].tobytes(), []).append(i)
        for members in buckets.values():
            for x in range(len(members)):
                for y in range(x + 1, len(members)):
                    candidates.add((members[x], members[y]))
    for i, j in sorted(candidates):
        sim = float((sig[i] == sig[j]).mean())
        if sim >= threshold:
            pairs.append((i, j, sim))
    return pairs


def near_dedup(
    records: Sequence[Record], threshold: float = 0.9, **kwargs: Any
) -> tuple[list[Record], dict[str, Any]]:
    """Drop records that are near-duplicates (Jaccard of character shingles ≥ ``threshold``) of an
    earlier kept record. Keyword options as in :func:`near_duplicate_pairs`.

    Report: ``removed``, ``kept``, ``removed_indices``, ``pairs`` (all similar pairs found),
    ``duplicate_of`` ({removed: kept index}).
    """
    pairs = near_duplicate_pairs(records, threshold, **kwargs)
    neighbours: dict[int, list[int]] = {}
    for i, j, _ in pairs:
        neighbours.setdefault(i, []).append(j)
    removed: dict[int, int] = {}
    for i in range(len(records)):
        if i in removed:
            continue
        for j in neighbours.get(i, []):
            removed.setdefault(j, i)
    kept = [i for i in range(len(records)) if i not in removed]
    return [dict(records[i]) for i in kept], {
        "removed": len(removed), "kept": len(kept), "removed_indices": sorted(removed),
        "duplicate_of": removed, "pairs": pairs,
    }


# --- augmentation ------------------------------------------------------------------------

_PREFIXES = ("Please tell me: ", "Question: ", "I would like to know: ", "Quick question: ", "Can you check: ")
_WORD_SWAPS = ((r"^List\b", "Show"), (r"^Which\b", "What"), (r"^Count\b", "Tell me the number of"),
               (r"^Who\b", "Which person"))


_OPENERS = {"How", "What", "Which", "List", "Count", "Who", "Name", "On", "A", "An", "The", "Total", "Invoice",
            "Billing", "We", "Receipt", "Show", "Tell", "Give", "In", "Please"}


def paraphrase(question: str, rng: random.Random) -> str:
    """A meaning-preserving rewording: a leading-word swap or a polite prefix."""
    q = question.strip()
    swaps = [(pat, rep) for pat, rep in _WORD_SWAPS if re.search(pat, q)]
    if swaps and rng.random() < 0.5:
        pat, rep = rng.choice(swaps)
        return re.sub(pat, rep, q, count=1)
    prefix = rng.choice(_PREFIXES)
    first = q.split(" ", 1)[0]
    # lower-case only ordinary sentence openers; names ("Luís", "USA", "AC/DC") keep their capitals
    return prefix + (q[:1].lower() + q[1:] if first in _OPENERS else q)


def _literal_forms(value: str) -> list[str]:
    return ["'" + value.replace("'", "''") + "'", json.dumps(value, ensure_ascii=False), value]


def entity_swap(rec: Record, new_value: str) -> Record | None:
    """``rec`` with its ``entity`` replaced by ``new_value`` in input and output, or None if it
    does not occur in both (then a swap would make the answer disagree with the question)."""
    old = rec.get("entity")
    if not old or old == new_value or old not in str(rec.get("input", "")):
        return None
    out = str(rec.get("output", ""))
    for old_form, new_form in zip(_literal_forms(old), _literal_forms(new_value)):
        if old_form in out:
            new = dict(rec)
            new["input"] = str(rec["input"]).replace(old, new_value)
            new["output"] = out.replace(old_form, new_form)
            new["entity"] = new_value
            return new
    return None


def augment(
    records: Sequence[Record], seed: int = 0, *, per_record: int = 1, kinds: Sequence[str] = AUGMENT_KINDS
) -> tuple[list[Record], dict[str, Any]]:
    """The records plus ``per_record`` augmented copies of each (paraphrase or entity swap).

    Entity swaps draw new values only from ``records`` themselves (same ``entity_type``), so
    augmenting a train split never brings in an eval entity. Added records carry
    ``augmented`` = the kind. Report: ``added``, ``by_kind``, ``n_in``, ``n_out``.
    """
    bad = [k for k in kinds if k not in AUGMENT_KINDS]
    if bad or not kinds:
        raise ValueError(f"kinds: must be a non-empty subset of {', '.join(AUGMENT_KINDS)}; got {list(kinds)!r}")
    if per_record < 0:
        raise ValueError(f"per_record: must be 0 or more; got {per_record!r}")
    rng = random.Random(seed)
    pools: dict[Any, list[str]] = {}
    for rec in records:
        if rec.get("entity"):
            pools.setdefault(rec.get("entity_type"), [])
            if rec["entity"] not in pools[rec.get("entity_type")]:
                pools[rec.get("entity_type")].append(rec["entity"])
    added: list[Record] = []
    for rec in records:
        for _ in range(per_record):
            kind = rng.choice(list(kinds))
            new = None
            if kind == "entity_swap":
                pool = [v for v in pools.get(rec.get("entity_type"), []) if v != rec.get("entity")]
                new = entity_swap(rec, rng.choice(pool)) if pool else None
                if new is None and "paraphrase" in kinds:
                    kind = "paraphrase"
            if kind == "paraphrase":
                new = dict(rec)
                new["input"] = paraphrase(str(rec.get("input", "")), rng)
            if new is not None:
                new["augmented"] = kind
                added.append(new)
    base = [{**dict(r), "augmented": r.get("augmented", "")} for r in records]
    by_kind = {k: sum(r["augmented"] == k for r in added) for k in kinds}
    return base + added, {"added": len(added), "by_kind": by_kind, "n_in": len(records), "n_out": len(base) + len(added)}


def augment_train_only(dsdict: Any, seed: int = 0, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """Augment the ``train`` split of a DatasetDict (or ``{"train": [...], "eval": [...]}``) only.

    The guard: eval is returned untouched, and any augmented record whose question or entity
    appears in eval is dropped (an augmentation must never leak eval data into training).
    Report as :func:`augment`, plus ``dropped_leaks``.
    """
    if "train" not in dsdict:
        raise ValueError(f"dsdict: needs a 'train' split; got {sorted(dsdict)}")
    train = records_of(dsdict["train"])
    held = [records_of(dsdict[name]) for name in dsdict if name != "train"]
    eval_inputs = {_norm(r.get("input")) for part in held for r in part}
    eval_entities = {(r.get("entity_type"), r.get("entity")) for part in held for r in part if r.get("entity")}
    augmented, report = augment(train, seed, **kwargs)
    kept, leaks = [], 0
    for rec in augmented:
        leak = rec["augmented"] and (
            _norm(rec.get("input")) in eval_inputs or (rec.get("entity_type"), rec.get("entity")) in eval_entities
        )
        if leak:
            leaks += 1
        else:
            kept.append(rec)
    report.update(dropped_leaks=leaks, added=report["added"] - leaks, n_out=len(kept))
    out: dict[str, Any] = {}
    if hasattr(dsdict["train"], "to_list"):
        from datasets import Dataset, DatasetDict

        out = DatasetDict({name: dsdict[name] for name in dsdict})
        out["train"] = Dataset.from_list(kept)
    else:
        out = {name: list(dsdict[name]) for name in dsdict}
        out["train"] = kept
    return out, report


def summarize(report: dict[str, Any], action: str) -> str:
    """A one-line message for a report, e.g. ``"removed 12 duplicates (kept 700)"``."""
    if "removed" in report:
        return f"removed {report['removed']} {action} (kept {report['kept']})"
    if "added" in report:
        return f"added {report['added']} {action} ({report['n_out']} records now)"
    return f"changed {report.get('changed', 0)} records ({action})"


def records_of(split: Iterable[Record] | Any) -> list[Record]:
    """A list of plain dicts from a Dataset or any iterable of records."""
    return split.to_list() if hasattr(split, "to_list") else [dict(r) for r in split]
