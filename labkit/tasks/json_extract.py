"""JSON extraction: read a sentence about a purchase, answer with a JSON object of its fields.

A second skill with a different output format from text-to-SQL, so two specialists can be
trained and merged. Sentences are made from Chinook's customer and invoice rows with varied
sentence templates (some add distractors: dates, invoice numbers). Split by customer, so eval
sentences are about people never seen in training (``split="template"`` holds out whole
sentence templates instead).
"""

from __future__ import annotations

import contextlib
import json
import random
import sqlite3
from pathlib import Path
from typing import Any

from labkit.data.chinook import chinook_db

NAME = "json_extract"
SPLITS = ("entity", "template")
FIELDS = ("name", "city", "country", "total")
EVAL_FRACTION = 0.2
TRAIN_TEMPLATES_PER_INVOICE = 2
HELD_OUT_TEMPLATES = 3

INSTRUCTION = "Give the customer's name, city, country and invoice total as JSON."

SENTENCES: tuple[str, ...] = (
    "{name} from {city}, {country} paid ${total} on {date}.",
    "On {date}, {name} ({city}, {country}) was billed {total} dollars.",
    "Invoice #{id}: customer {name}, billed to {city} in {country}, total {total}.",
    "A purchase of ${total} was made by {name}, who lives in {city}, {country}.",
    "{country} customer {name} of {city} spent {total} USD on {date}.",
    "Billing address: {city}, {country}. Customer: {name}. Amount due: ${total}.",
    "We charged {name} ${total} for an order billed to {city} ({country}).",
    "Receipt {id}: {total} USD, {name}, {city}, {country}.",
    "{name} in {city} bought music worth ${total}; the invoice went to {country}.",
    "Total ${total} from {city}, {country}, paid by {name} on {date}.",
)
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December")


def _rows(db: Path) -> list[dict[str, Any]]:
    sql = (
        "SELECT i.InvoiceId, c.CustomerId, c.FirstName, c.LastName, i.BillingCity, i.BillingCountry, "
        "i.InvoiceDate, i.Total FROM Invoice i JOIN Customer c ON c.CustomerId = i.CustomerId ORDER BY i.InvoiceId"
    )
    with contextlib.closing(sqlite3.connect(f"{Path(db).resolve().as_uri()}?mode=ro", uri=True)) as conn:
        rows = conn.execute(sql).fetchall()
    keys = ("invoice_id", "customer_id", "first", "last", "city", "country", "date", "total")
    return [dict(zip(keys, r)) for r in rows]


def _date_text(iso: str) -> str:
    year, month, day = (int(x) for x in iso[:10].split("-"))
    return f"{_MONTHS[month - 1]} {day}, {year}"


def gold_fields(row: dict[str, Any]) -> dict[str, Any]:
    """The JSON answer for one invoice row (key order fixed: name, city, country, total)."""
    return {
        "name": f"{row['first']} {row['last']}",
        "city": row["city"],
        "country": row["country"],
        "total": round(float(row["total"]), 2),
    }


def make_record(row: dict[str, Any], template_index: int) -> dict[str, Any]:
    """One instruction/input/output record: a sentence about ``row`` and its JSON answer."""
    gold = gold_fields(row)
    sentence = SENTENCES[template_index].format(
        name=gold["name"], city=gold["city"], country=gold["country"], total=f"{gold['total']:.2f}",
        date=_date_text(row["date"]), id=row["invoice_id"],
    )
    return {
        "instruction": INSTRUCTION,
        "input": sentence,
        "output": json.dumps(gold, ensure_ascii=False),
        "template": f"sentence_{template_index}",
        "entity": gold["name"],
        "customer_id": int(row["customer_id"]),
        "invoice_id": int(row["invoice_id"]),
    }


def held_out_templates(seed: int) -> tuple[int, ...]:
    """Sentence template indices held out by ``split="template"``."""
    return tuple(sorted(random.Random(f"{seed}-json-templates").sample(range(len(SENTENCES)), HELD_OUT_TEMPLATES)))


def build_records(seed: int = 0, split: str = "entity") -> dict[str, list[dict[str, Any]]]:
    """``{"train": [...], "eval": [...]}``: 2 sentences per train invoice, 1 per eval invoice."""
    if split not in SPLITS:
        raise ValueError(f"split: must be one of {', '.join(SPLITS)}; got {split!r}")
    rows = _rows(chinook_db())
    customers = sorted({r["customer_id"] for r in rows})
    rng = random.Random(f"{seed}-json-customers")
    rng.shuffle(customers)
    eval_customers = set(customers[: max(1, round(EVAL_FRACTION * len(customers)))])
    held = set(held_out_templates(seed)) if split == "template" else set()
    train_ids = [i for i in range(len(SENTENCES)) if i not in held]
    out: dict[str, list[dict[str, Any]]] = {"train": [], "eval": []}
    rng = random.Random(f"{seed}-json-sentences")
    for row in rows:
        if split == "entity":
            is_eval = row["customer_id"] in eval_customers
            pool = train_ids
        else:
            is_eval = rng.random() < EVAL_FRACTION
            pool = sorted(held) if is_eval else train_ids
        k = 1 if is_eval else TRAIN_TEMPLATES_PER_INVOICE
        for t in rng.sample(pool, k):
            out["eval" if is_eval else "train"].append(make_record(row, t))
    for name in out:
        random.Random(f"{seed}-json-{name}-order").shuffle(out[name])
    return out


def parse_json(text: str) -> dict[str, Any] | None:
    """The first JSON object in a model's answer (it may be wrapped in prose or a code block)."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            obj, _ = decoder.raw_decode(text, start)
        except (json.JSONDecodeError, ValueError):
            start = text.find("{", start + 1)
            continue
        if isinstance(obj, dict):
            return obj
        start = text.find("{", start + 1)
    return None


def _field_ok(key: str, pred: Any, gold: Any) -> bool:
    if key == "total":
        try:
            return abs(float(str(pred).lstrip("$")) - float(gold)) < 0.005
        except (TypeError, ValueError):
            return False
    return isinstance(pred, str) and pred.strip() == str(gold).strip()  # Chinook has "Edinburgh " (trailing space)


def score_one(prediction: str, gold_output: str) -> dict[str, float]:
    """``json_valid`` (0/1), ``field_accuracy`` (share of the gold fields right), ``exact_match``."""
    gold = json.loads(gold_output)
    pred = parse_json(prediction)
    if pred is None:
        return {"json_valid": 0.0, "field_accuracy": 0.0, "exact_match": 0.0}
    right = sum(key in pred and _field_ok(key, pred[key], value) for key, value in gold.items())
    exact = right == len(gold) and set(pred) == set(gold)
    return {"json_valid": 1.0, "field_accuracy": right / len(gold), "exact_match": float(exact)}


def evaluate(predictions: list[str], examples: list[dict[str, Any]]) -> dict[str, float]:
    """Mean ``json_valid``, ``field_accuracy``, ``exact_match`` (all fields right, no extra keys).

    The headline ``accuracy`` is ``exact_match``: the share of sentences extracted perfectly.
    """
    totals = {"json_valid": 0.0, "field_accuracy": 0.0, "exact_match": 0.0}
    for pred, ex in zip(predictions, examples):
        for key, value in score_one(pred, ex["output"]).items():
            totals[key] += value
    n = max(len(examples), 1)
    metrics = {k: v / n for k, v in totals.items()}
    metrics["accuracy"] = metrics["exact_match"]
    return metrics
