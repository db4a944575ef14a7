"""A preference dataset built offline from the tasks: chosen = the gold answer, rejected = a wrong one.

**text2sql.** Each record (one template × one entity value, split by entity like the SFT task) gives
up to four pairs, one per *rule* that makes a plausible wrong query out of the gold one:

* ``wrong_column``   — a selected column swapped for another column of the same table;
* ``missing_where``  — the ``WHERE`` condition dropped (the query answers for every entity);
* ``invented_table`` — a table renamed to one that does not exist (``Track`` → ``Tracks``);
* ``wrong_literal``  — the entity value replaced by another value of the same type.

Every rejected query is *verified wrong by execution* (it fails, or it returns other rows than
the gold query); a rule whose result happens to return the gold rows is dropped for that record.

**json_extract** (:func:`json_pairs_for`, ``build_pairs(task="json_extract")``). Each record gives up
to five pairs, one per rule in :data:`JSON_RULES`:

* ``missing_brace``  — the closing brace cut off (an answer that stopped early);
* ``unquoted_key``   — one key written without its quotes (``{name: ...``);
* ``trailing_comma`` — a comma before the closing brace;
* ``missing_field``  — one required field dropped (valid JSON, incomplete object);
* ``wrong_value``    — one field's value taken from another record of the same split.

Every rejected answer is *verified worse by the task's own scorer*
(:func:`labkit.tasks.json_extract.score_one`): it does not parse, or its field accuracy is lower
than the chosen answer's; a rule whose result scores as well as the gold is dropped for that record.

Records use the ``prompt`` / ``chosen`` / ``rejected`` format of preference datasets (TRL's),
plus ``instruction`` / ``input`` for the chat template and the ``rule`` that made the pair.
Pairs made from the model's own samples are in :mod:`labkit.prefs.sampled`.
"""

from __future__ import annotations

import functools
import json
import random
import re
from typing import Any, Callable, Mapping, Sequence

from labkit.data.chinook import table_columns
from labkit.tasks import json_extract, text2sql
from labkit.tasks.sqlexec import execution_match

RULES = ("wrong_column", "missing_where", "invented_table", "wrong_literal")
JSON_RULES = ("missing_brace", "unquoted_key", "trailing_comma", "missing_field", "wrong_value")
TASK_RULES: dict[str, tuple[str, ...]] = {"text2sql": RULES, "json_extract": JSON_RULES}
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


def make_pair(record: Mapping[str, Any], chosen: str, rejected: str, rule: str) -> dict[str, Any]:
    """One preference record for a task record: the same keys whatever the task or rule, so pairs
    from several rules (or :mod:`labkit.prefs.sampled`) can go into one ``datasets.Dataset``."""
    return {
        "prompt": [{"role": "system", "content": record["instruction"]},
                   {"role": "user", "content": record["input"]}],
        "chosen": chosen, "rejected": rejected, "rule": rule,
        "instruction": record["instruction"], "input": record["input"],
        "template": record["template"], "entity": record["entity"],
        "entity_type": record.get("entity_type", "customer"),  # json_extract's entity is a customer
    }


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
            out.append(make_pair(record, record["output"], rejected, rule))
    return out


# --- json_extract ------------------------------------------------------------------------------


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) and obj else None


def missing_brace(text: str, rng: random.Random) -> str | None:
    """The closing brace cut off, as in an answer that stopped early: it no longer parses."""
    out = text.rstrip()
    return out[:-1].rstrip() if out.endswith("}") else None


def unquoted_key(text: str, rng: random.Random) -> str | None:
    """One key written without its quotes (``{name: ...``), a JavaScript habit JSON refuses."""
    obj = _json_object(text)
    if obj is None:
        return None
    key = rng.choice(list(obj))
    quoted = json.dumps(key, ensure_ascii=False) + ":"
    return text.replace(quoted, f"{key}:", 1) if quoted in text else None


def trailing_comma(text: str, rng: random.Random) -> str | None:
    """A comma before the closing brace (``..., "total": 5.94,}``), which JSON refuses."""
    out = text.rstrip()
    if not out.endswith("}") or _json_object(out) is None:
        return None
    return out[:-1].rstrip() + ",}"


def missing_field(text: str, rng: random.Random) -> str | None:
    """Valid JSON with one required field dropped (an incomplete object)."""
    obj = _json_object(text)
    if obj is None or len(obj) < 2:
        return None
    del obj[rng.choice(list(obj))]
    return json.dumps(obj, ensure_ascii=False)


def wrong_value(text: str, rng: random.Random, *, pools: Mapping[str, Sequence[Any]] | None = None) -> str | None:
    """Valid JSON with one field's value replaced by that field's value in another record
    (``pools``: ``{field: values}`` from the same split, so an eval pair brings no training name in)."""
    obj = _json_object(text)
    if obj is None:
        return None
    choices = {key: [v for v in (pools or {}).get(key, ()) if v != value] for key, value in obj.items()}
    keys = [key for key, others in choices.items() if others]
    if not keys:
        return None
    key = rng.choice(keys)
    obj[key] = rng.choice(choices[key])
    return json.dumps(obj, ensure_ascii=False)


_JSON_RULE_FNS: dict[str, Callable[..., str | None]] = {
    "missing_brace": missing_brace, "unquoted_key": unquoted_key, "trailing_comma": trailing_comma,
    "missing_field": missing_field, "wrong_value": wrong_value,
}


def json_worse(rejected: str, chosen: str, gold: str) -> bool:
    """Whether ``rejected`` scores worse than ``chosen`` by json_extract's own scorer: it does not
    parse where the chosen does, or it gets fewer of the gold fields right."""
    r, c = json_extract.score_one(rejected, gold), json_extract.score_one(chosen, gold)
    return r["json_valid"] < c["json_valid"] or r["field_accuracy"] < c["field_accuracy"]


def json_rejected_for(record: Mapping[str, Any], rule: str, rng: random.Random,
                      pools: Mapping[str, Sequence[Any]] | None = None) -> str | None:
    """A worse JSON answer for ``record`` made by ``rule``, verified by the task's scorer (None if none)."""
    if rule not in _JSON_RULE_FNS:
        raise ValueError(f"rule: must be one of {', '.join(JSON_RULES)}; got {rule!r}")
    gold = record["output"]
    kwargs = {"pools": pools} if rule == "wrong_value" else {}
    wrong = _JSON_RULE_FNS[rule](gold, rng, **kwargs)
    if wrong is None or wrong == gold or not json_worse(wrong, gold, gold):
        return None
    return wrong


def json_pairs_for(records: list[dict[str, Any]], seed: int, rules: tuple[str, ...] = JSON_RULES
                   ) -> list[dict[str, Any]]:
    """Preference pairs for json_extract ``records`` (one per record and rule that gives a worse answer).

    ``wrong_value`` draws its replacement from the values of the same split, so an eval pair never
    brings a training customer's name in.
    """
    pools: dict[str, set[Any]] = {}
    for r in records:
        for key, value in json.loads(r["output"]).items():
            pools.setdefault(key, set()).add(value)
    sorted_pools = {key: tuple(sorted(values)) for key, values in pools.items()}
    out = []
    for i, record in enumerate(records):
        rng = random.Random(f"{seed}-json-pairs-{i}")
        for rule in rules:
            rejected = json_rejected_for(record, rule, rng, sorted_pools)
            if rejected is not None:
                out.append(make_pair(record, record["output"], rejected, rule))
    return out


_PAIRS_FOR: dict[str, Callable[..., list[dict[str, Any]]]] = {"text2sql": pairs_for, "json_extract": json_pairs_for}
_RECORDS: dict[str, Callable[[int, str], dict[str, list[dict[str, Any]]]]] = {
    "text2sql": text2sql.build_records, "json_extract": json_extract.build_records}


def task_pairs_for(task: str, records: list[dict[str, Any]], seed: int,
                   rules: tuple[str, ...] | list[str] | None = None) -> list[dict[str, Any]]:
    """:func:`pairs_for` or :func:`json_pairs_for` by task name (``rules``: all of the task's when None)."""
    return _PAIRS_FOR[_check_task(task)](records, seed, _check_rules(task, rules))


def _check_task(task: str) -> str:
    if task not in TASK_RULES:
        raise ValueError(f"task: must be one of {', '.join(TASK_RULES)}; got {task!r}")
    return task


def _check_rules(task: str, rules: tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    allowed = TASK_RULES[task]
    rules = allowed if rules is None else tuple(rules)
    bad = [r for r in rules if r not in allowed]
    if bad or not rules:
        raise ValueError(f"rules: must be a non-empty subset of {', '.join(allowed)}; got {list(rules)!r}")
    return rules


@functools.lru_cache(maxsize=8)
def _build(seed: int, split: str, rules: tuple[str, ...], task: str = "text2sql") -> dict[str, list[dict[str, Any]]]:
    records = _RECORDS[task](seed, split)
    return {name: _PAIRS_FOR[task](rows, seed, rules) for name, rows in records.items()}


def build_pairs(seed: int = 0, split: str = "entity", rules: tuple[str, ...] | list[str] | None = None, *,
                task: str = "text2sql") -> dict[str, list[dict[str, Any]]]:
    """``{"train": [...], "eval": [...]}`` preference pairs from ``task``'s records of the same split.

    The eval pairs come from the eval records only (entity values, or json_extract's customers,
    never seen in train). ``rules``: a subset of the task's (:data:`TASK_RULES`); all of them when None.
    """
    _check_task(task)
    splits = {"text2sql": text2sql.SPLITS, "json_extract": json_extract.SPLITS}[task]
    if split not in splits:
        raise ValueError(f"split: must be one of {', '.join(splits)}; got {split!r}")
    rules = _check_rules(task, rules)
    built = _build(int(seed), split, rules, task)
    return {name: [dict(p) for p in rows] for name, rows in built.items()}


def load_prefs(seed: int = 0, split: str = "entity", rules: tuple[str, ...] | list[str] | None = None, *,
               task: str = "text2sql") -> Any:
    """:func:`build_pairs` as a ``datasets.DatasetDict`` (what TRL's ``DPOTrainer`` takes)."""
    from datasets import Dataset, DatasetDict

    return DatasetDict({k: Dataset.from_list(v) for k, v in build_pairs(seed, split, rules, task=task).items()})
