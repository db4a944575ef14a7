"""A preference dataset built offline from text2sql: chosen = the gold query, rejected = a wrong one.

Each text2sql record (one template × one entity value, split by entity like the SFT task) gives
up to four pairs, one per *rule* that makes a plausible wrong query out of the gold one:

* ``wrong_column``   — a selected column swapped for another column of the same table;
* ``missing_where``  — the ``WHERE`` condition dropped (the query answers for every entity);
* ``invented_table`` — a table renamed to one that does not exist (``Track`` → ``Tracks``);
* ``wrong_literal``  — the entity value replaced by another value of the same type.

Every rejected query is *verified wrong by execution* (it fails, or it returns other rows than
the gold query); a rule whose result happens to return the gold rows is dropped for that record.
Records use the ``prompt`` / ``chosen`` / ``rejected`` format of preference datasets (TRL's),
plus ``instruction`` / ``input`` for the chat template and the ``rule`` that made the pair.
"""

from __future__ import annotations

import functools
import random
import re
from typing import Any, Callable

from labkit.data.chinook import table_columns
from labkit.tasks import text2sql
from labkit.tasks.sqlexec import execution_match

RULES = ("wrong_column", "missing_where", "invented_table", "wrong_literal")
INVENTED = {"Track": "Tracks", "Genre": "Genres", "Customer": "Customers", "Invoice": "Invoices",
            "Album": "Albums", "Artist": "Artists", "InvoiceLine": "InvoiceItem", "MediaType": "Media",
            "PlaylistTrack": "PlaylistTracks", "Playlist": "Playlists"}
_CLAUSE_END = r"(?=\s+(?:GROUP|ORDER|LIMIT)\b|$)"


def _aliases(sql: str) -> dict[str, str]:
    """``{alias: table}`` from ``FROM/JOIN Table alias``; a table without alias maps to itself."""
    out = {}
    for table, alias in re.findall(r"\b(?:FROM|JOIN)\s+(\w+)(?:\s+(\w+))?", sql):
        if alias and alias.upper() not in {"ON", "WHERE", "JOIN", "GROUP", "ORDER", "LIMIT"}:
            out[alias] = table
        out[table] = table
    return out


def wrong_column(sql: str, rng: random.Random) -> str | None:
    """The first column of the SELECT list replaced by another column of its table."""
    head = re.match(r"SELECT\s+(.*?)\s+FROM\b", sql)
    if head is None:
        return None
    aliases = _aliases(sql)
    tables = list(dict.fromkeys(aliases.values()))
    for match in re.finditer(r"\b(?:(\w+)\.)?([A-Z]\w*)\b", head.group(1)):
        alias, column = match.group(1), match.group(2)
        table = aliases.get(alias) if alias else next((t for t in tables if column in table_columns(t)), None)
        if table is None or column not in table_columns(table):
            continue
        others = [c for c in table_columns(table) if c != column and not c.endswith("Id")]
        if not others:
            continue
        start = head.start(1) + match.start(2)
        return sql[:start] + rng.choice(others) + sql[start + len(column):]
    return None


def missing_where(sql: str, rng: random.Random) -> str | None:
    """The WHERE clause removed."""
    out = re.sub(r"\s+WHERE\s+.*?" + _CLAUSE_END, "", sql, count=1)
    return out if out != sql else None


def invented_table(sql: str, rng: random.Random) -> str | None:
    """One table renamed to a plausible table that does not exist."""
    tables = [t for t in dict.fromkeys(_aliases(sql).values()) if t in INVENTED]
    if not tables:
        return None
    table = rng.choice(tables)
    return re.sub(rf"\b(FROM|JOIN)\s+{table}\b", lambda m: f"{m.group(1)} {INVENTED[table]}", sql, count=1)


def wrong_literal(sql: str, rng: random.Random, *, value: str = "", pool: tuple[str, ...] = ()) -> str | None:
    """The entity literal replaced by another value of the same entity type."""
    literal = f"'{text2sql.sql_literal(value)}'"
    others = [v for v in pool if v != value]
    if literal not in sql or not others:
        return None
    return sql.replace(literal, f"'{text2sql.sql_literal(rng.choice(others))}'")


_RULE_FNS: dict[str, Callable[..., str | None]] = {
    "wrong_column": wrong_column, "missing_where": missing_where,
    "invented_table": invented_table, "wrong_literal": wrong_literal,
}


def rejected_for(record: dict[str, Any], rule: str, rng: random.Random, pool: tuple[str, ...] = ()) -> str | None:
    """A wrong query for ``record`` made by ``rule``, verified wrong by execution (None if none)."""
    if rule not in _RULE_FNS:
        raise ValueError(f"rule: must be one of {', '.join(RULES)}; got {rule!r}")
    gold = record["output"]
    kwargs = {"value": record["entity"], "pool": pool} if rule == "wrong_literal" else {}
    wrong = _RULE_FNS[rule](gold, rng, **kwargs)
    if wrong is None or wrong == gold or execution_match(wrong, gold):
        return None
    return wrong


def pairs_for(records: list[dict[str, Any]], seed: int, rules: tuple[str, ...] = RULES) -> list[dict[str, Any]]:
    """Preference pairs for ``records`` (one per record and rule that gives a verified-wrong query).

    ``wrong_literal`` draws its replacement from the values of the same split and type, so an eval
    pair never brings a training entity in.
    """
    pools: dict[str, list[str]] = {}
    for r in records:
        pools.setdefault(r["entity_type"], [])
        if r["entity"] not in pools[r["entity_type"]]:
            pools[r["entity_type"]].append(r["entity"])
    out = []
    for i, record in enumerate(records):
        rng = random.Random(f"{seed}-pairs-{i}")
        for rule in rules:
            rejected = rejected_for(record, rule, rng, tuple(sorted(pools[record["entity_type"]])))
            if rejected is None:
                continue
            out.append({
                "prompt": [{"role": "system", "content": record["instruction"]},
                           {"role": "user", "content": record["input"]}],
                "chosen": record["output"], "rejected": rejected, "rule": rule,
                "instruction": record["instruction"], "input": record["input"],
                "template": record["template"], "entity": record["entity"], "entity_type": record["entity_type"],
            })
    return out


@functools.lru_cache(maxsize=8)
def _build(seed: int, split: str, rules: tuple[str, ...]) -> dict[str, list[dict[str, Any]]]:
    records = text2sql.build_records(seed, split)
    return {name: pairs_for(rows, seed, rules) for name, rows in records.items()}


def build_pairs(seed: int = 0, split: str = "entity", rules: tuple[str, ...] | list[str] = RULES
                ) -> dict[str, list[dict[str, Any]]]:
    """``{"train": [...], "eval": [...]}`` preference pairs from text2sql's records of the same split.

    The eval pairs come from the eval questions only (entity values never seen in train).
    """
    if split not in text2sql.SPLITS:
        raise ValueError(f"split: must be one of {', '.join(text2sql.SPLITS)}; got {split!r}")
    rules = tuple(rules)
    bad = [r for r in rules if r not in RULES]
    if bad or not rules:
        raise ValueError(f"rules: must be a non-empty subset of {', '.join(RULES)}; got {list(rules)!r}")
    built = _build(int(seed), split, rules)
    return {name: [dict(p) for p in rows] for name, rows in built.items()}


def load_prefs(seed: int = 0, split: str = "entity", rules: tuple[str, ...] | list[str] = RULES) -> Any:
    """:func:`build_pairs` as a ``datasets.DatasetDict`` (what TRL's ``DPOTrainer`` takes)."""
    from datasets import Dataset, DatasetDict

    return DatasetDict({k: Dataset.from_list(v) for k, v in build_pairs(seed, split, rules).items()})
