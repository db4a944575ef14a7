"""Text-to-SQL on Chinook: questions from templates × entity values taken from the database.

Every question is one template filled with one entity value (a genre, a country, an artist, ...),
answered by a short gold SQL query. Two honest splits, both fixed by the seed:

* ``split="entity"``: for each entity type a share of the values is held out; eval questions use
  only values that never occur in train (the template is familiar, the value is new).
* ``split="template"``: whole templates are held out; eval questions have a SQL shape the model
  never saw (much harder — the field notes show why both numbers must be reported).

Records: ``instruction`` (task + the schema of the tables the question needs), ``input`` (the
question), ``output`` (gold SQL), plus ``template``, ``entity``, ``entity_type``, ``tables``.
"""

from __future__ import annotations

import contextlib
import functools
import random
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labkit.data.chinook import chinook_db, table_columns
from labkit.tasks import spider
from labkit.tasks.sqlexec import clean_sql

NAME = "text2sql"
SPLITS = ("entity", "template")
EVAL_FRACTION = 0.2
MAX_TRAIN_PER_TEMPLATE = 60
MAX_EVAL_PER_TEMPLATE = 15
HELD_OUT_TEMPLATES = 5  # template split

INSTRUCTION = "Write one SQLite query.\nTables: "

# Entity type -> SQL listing its values (distinct, non-empty).
ENTITY_SOURCES: dict[str, str] = {
    "genre": "SELECT DISTINCT Name FROM Genre",
    "country": "SELECT DISTINCT Country FROM Customer",
    "city": "SELECT DISTINCT City FROM Customer",
    "artist": "SELECT DISTINCT Name FROM Artist WHERE ArtistId IN (SELECT ArtistId FROM Album)",
    "album": "SELECT DISTINCT Title FROM Album",
    "media_type": "SELECT DISTINCT Name FROM MediaType",
    "playlist": "SELECT DISTINCT Name FROM Playlist",
    "year": "SELECT DISTINCT strftime('%Y', InvoiceDate) FROM Invoice",
}


@dataclass(frozen=True)
class Template:
    """One question pattern: phrasings with ``{e}``, gold SQL with ``{v}`` (the escaped literal)."""

    id: str
    entity_type: str
    questions: tuple[str, ...]
    sql: str
    tables: tuple[str, ...]
    tie_check: str = ""  # for ORDER BY ... LIMIT k: SQL returning the sort keys, LIMIT k+1
    limit: int = 0


TEMPLATES: tuple[Template, ...] = (
    Template("genre_count", "genre",
             ("How many tracks are in the {e} genre?", "Count the {e} tracks."),
             "SELECT COUNT(*) FROM Track t JOIN Genre g ON t.GenreId = g.GenreId WHERE g.Name = '{v}'",
             ("Track", "Genre")),
    Template("genre_longest", "genre",
             ("What is the longest {e} track?", "Which {e} track runs the longest?"),
             "SELECT t.Name FROM Track t JOIN Genre g ON t.GenreId = g.GenreId WHERE g.Name = '{v}' "
             "ORDER BY t.Milliseconds DESC LIMIT 1",
             ("Track", "Genre"),
             tie_check="SELECT t.Milliseconds FROM Track t JOIN Genre g ON t.GenreId = g.GenreId "
                       "WHERE g.Name = '{v}' ORDER BY t.Milliseconds DESC LIMIT 2", limit=1),
    Template("genre_avg_ms", "genre",
             ("What is the average length in milliseconds of {e} tracks?",
              "On average, how many milliseconds long is a {e} track?"),
             "SELECT AVG(t.Milliseconds) FROM Track t JOIN Genre g ON t.GenreId = g.GenreId WHERE g.Name = '{v}'",
             ("Track", "Genre")),
    Template("genre_revenue", "genre",
             ("How much money did {e} tracks earn?", "What are the total sales of {e} tracks?"),
             "SELECT SUM(il.UnitPrice * il.Quantity) FROM InvoiceLine il JOIN Track t ON il.TrackId = t.TrackId "
             "JOIN Genre g ON t.GenreId = g.GenreId WHERE g.Name = '{v}'",
             ("InvoiceLine", "Track", "Genre")),
    Template("country_customers", "country",
             ("List the first and last names of customers from {e}.", "Who are our customers in {e}?"),
             "SELECT FirstName, LastName FROM Customer WHERE Country = '{v}'",
             ("Customer",)),
    Template("country_customer_count", "country",
             ("How many customers live in {e}?", "What is the number of customers in {e}?"),
             "SELECT COUNT(*) FROM Customer WHERE Country = '{v}'",
             ("Customer",)),
    Template("country_sales", "country",
             ("What is the total of all invoices billed to {e}?", "How much was invoiced in {e} in total?"),
             "SELECT SUM(Total) FROM Invoice WHERE BillingCountry = '{v}'",
             ("Invoice",)),
    Template("country_invoice_count", "country",
             ("How many invoices were billed to {e}?", "Count the invoices from {e}."),
             "SELECT COUNT(*) FROM Invoice WHERE BillingCountry = '{v}'",
             ("Invoice",)),
    Template("country_avg_invoice", "country",
             ("What is the average invoice total in {e}?", "How much is an invoice from {e} on average?"),
             "SELECT AVG(Total) FROM Invoice WHERE BillingCountry = '{v}'",
             ("Invoice",)),
    Template("country_city_counts", "country",
             ("How many customers are there in each city of {e}?", "Count customers per city in {e}."),
             "SELECT City, COUNT(*) FROM Customer WHERE Country = '{v}' GROUP BY City",
             ("Customer",)),
    Template("country_top_customer", "country",
             ("Which customer from {e} spent the most?", "Who is the biggest spender in {e}?"),
             "SELECT c.FirstName, c.LastName FROM Customer c JOIN Invoice i ON c.CustomerId = i.CustomerId "
             "WHERE c.Country = '{v}' GROUP BY c.CustomerId ORDER BY SUM(i.Total) DESC LIMIT 1",
             ("Customer", "Invoice"),
             tie_check="SELECT ROUND(SUM(i.Total), 2) FROM Customer c JOIN Invoice i ON c.CustomerId = i.CustomerId "
                       "WHERE c.Country = '{v}' GROUP BY c.CustomerId ORDER BY 1 DESC LIMIT 2", limit=1),
    Template("city_customers", "city",
             ("Which customers live in {e}?", "Name the customers based in {e}."),
             "SELECT FirstName, LastName FROM Customer WHERE City = '{v}'",
             ("Customer",)),
    Template("city_max_invoice", "city",
             ("What is the largest invoice total billed to {e}?", "What was the biggest invoice in {e}?"),
             "SELECT MAX(Total) FROM Invoice WHERE BillingCity = '{v}'",
             ("Invoice",)),
    Template("artist_albums", "artist",
             ("List the albums by {e}.", "Which albums did {e} release?"),
             "SELECT al.Title FROM Album al JOIN Artist ar ON al.ArtistId = ar.ArtistId WHERE ar.Name = '{v}'",
             ("Album", "Artist")),
    Template("artist_album_count", "artist",
             ("How many albums does {e} have?", "Count the albums by {e}."),
             "SELECT COUNT(*) FROM Album al JOIN Artist ar ON al.ArtistId = ar.ArtistId WHERE ar.Name = '{v}'",
             ("Album", "Artist")),
    Template("artist_track_count", "artist",
             ("How many tracks by {e} are in the store?", "How many songs does {e} have?"),
             "SELECT COUNT(*) FROM Track t JOIN Album al ON t.AlbumId = al.AlbumId "
             "JOIN Artist ar ON al.ArtistId = ar.ArtistId WHERE ar.Name = '{v}'",
             ("Track", "Album", "Artist")),
    Template("artist_top3", "artist",
             ("What are the three longest tracks by {e}?", "Name the 3 longest songs of {e}."),
             "SELECT t.Name FROM Track t JOIN Album al ON t.AlbumId = al.AlbumId JOIN Artist ar "
             "ON al.ArtistId = ar.ArtistId WHERE ar.Name = '{v}' ORDER BY t.Milliseconds DESC LIMIT 3",
             ("Track", "Album", "Artist"),
             tie_check="SELECT t.Milliseconds FROM Track t JOIN Album al ON t.AlbumId = al.AlbumId JOIN Artist ar "
                       "ON al.ArtistId = ar.ArtistId WHERE ar.Name = '{v}' ORDER BY t.Milliseconds DESC LIMIT 4",
             limit=3),
    Template("album_tracks", "album",
             ("List the tracks on the album {e}.", "Which songs are on {e}?"),
             "SELECT t.Name FROM Track t JOIN Album al ON t.AlbumId = al.AlbumId WHERE al.Title = '{v}'",
             ("Track", "Album")),
    Template("album_artist", "album",
             ("Who recorded the album {e}?", "Which artist made {e}?"),
             "SELECT ar.Name FROM Artist ar JOIN Album al ON ar.ArtistId = al.ArtistId WHERE al.Title = '{v}'",
             ("Artist", "Album")),
    Template("album_length", "album",
             ("What is the total length of {e} in milliseconds?", "How many milliseconds does {e} last?"),
             "SELECT SUM(t.Milliseconds) FROM Track t JOIN Album al ON t.AlbumId = al.AlbumId WHERE al.Title = '{v}'",
             ("Track", "Album")),
    Template("media_count", "media_type",
             ("How many tracks are stored as {e}?", "Count the tracks in the {e} format."),
             "SELECT COUNT(*) FROM Track t JOIN MediaType m ON t.MediaTypeId = m.MediaTypeId WHERE m.Name = '{v}'",
             ("Track", "MediaType")),
    Template("playlist_count", "playlist",
             ("How many tracks are on the {e} playlist?", "Count the tracks in the playlist {e}."),
             "SELECT COUNT(*) FROM PlaylistTrack pt JOIN Playlist p ON pt.PlaylistId = p.PlaylistId "
             "WHERE p.Name = '{v}'",
             ("PlaylistTrack", "Playlist")),
    Template("year_sales", "year",
             ("What were the total sales in {e}?", "How much did the store invoice in {e}?"),
             "SELECT SUM(Total) FROM Invoice WHERE strftime('%Y', InvoiceDate) = '{v}'",
             ("Invoice",)),
    Template("year_invoice_count", "year",
             ("How many invoices were issued in {e}?", "Count the invoices from the year {e}."),
             "SELECT COUNT(*) FROM Invoice WHERE strftime('%Y', InvoiceDate) = '{v}'",
             ("Invoice",)),
)
TEMPLATE_IDS = tuple(t.id for t in TEMPLATES)


def sql_literal(value: str) -> str:
    """``value`` escaped for a single-quoted SQL string (``'`` doubled)."""
    return value.replace("'", "''")


def _readonly(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{Path(db).resolve().as_uri()}?mode=ro", uri=True)


def entity_values(db: Path, entity_type: str) -> list[str]:
    """Sorted distinct values of one entity type in the database."""
    with contextlib.closing(_readonly(db)) as conn:
        rows = conn.execute(ENTITY_SOURCES[entity_type]).fetchall()
    return sorted({str(r[0]) for r in rows if r[0] is not None and str(r[0]).strip()})


def _valid(conn: sqlite3.Connection, template: Template, value: str) -> bool:
    """The gold query returns something non-NULL, and a LIMIT query has no tie at the cut."""
    rows = conn.execute(template.sql.format(v=sql_literal(value))).fetchall()
    if not rows or all(v is None for row in rows for v in row):
        return False
    if template.tie_check:
        keys = [r[0] for r in conn.execute(template.tie_check.format(v=sql_literal(value))).fetchall()]
        if len(keys) > template.limit and keys[template.limit - 1] == keys[template.limit]:
            return False
    return True


@functools.lru_cache(maxsize=8)
def valid_values(db: str) -> dict[str, tuple[str, ...]]:
    """``{template id: entity values whose gold answer is non-empty and unambiguous}``."""
    out: dict[str, tuple[str, ...]] = {}
    with contextlib.closing(_readonly(Path(db))) as conn:
        for template in TEMPLATES:
            values = entity_values(Path(db), template.entity_type)
            out[template.id] = tuple(v for v in values if _valid(conn, template, v))
    return out


_KEYWORDS = {"ON", "WHERE", "JOIN", "GROUP", "ORDER", "LIMIT", "AS", "INNER", "LEFT"}


def schema_hint(template: Template) -> str:
    """The tables a question needs, each with only the columns its gold query uses.

    Short on purpose: a 4k-vocabulary model spends ~2 tokens per CamelCase identifier, and the
    whole example must fit the training sequence length.
    """
    sql = template.sql
    aliases = dict((a, t) for t, a in re.findall(r"\b(?:FROM|JOIN)\s+(\w+)\s+(\w+)\b", sql)
                   if a.upper() not in _KEYWORDS)
    if aliases:
        used: dict[str, set[str]] = {}
        for alias, col in re.findall(r"\b(\w+)\.(\w+)\b", sql):
            used.setdefault(aliases.get(alias, alias), set()).add(col)
    else:  # one table, no aliases: every identifier belongs to it
        used = {t: set(re.findall(r"\w+", sql)) for t in template.tables}
    parts = []
    for table in template.tables:
        cols = [c for c in table_columns(table) if c in used.get(table, ())]
        parts.append(f"{table}({', '.join(cols)})")
    return "; ".join(parts)


def make_record(template: Template, value: str, rng: random.Random) -> dict[str, Any]:
    """One instruction/input/output record for ``template`` filled with ``value``."""
    return {
        "instruction": INSTRUCTION + schema_hint(template),
        "input": rng.choice(template.questions).format(e=value),
        "output": template.sql.format(v=sql_literal(value)),
        "template": template.id,
        "entity": value,
        "entity_type": template.entity_type,
        "tables": ",".join(template.tables),
    }


def _split_values(values: list[str], seed: int, entity_type: str) -> tuple[set[str], set[str]]:
    rng = random.Random(f"{seed}-{entity_type}")
    shuffled = list(values)
    rng.shuffle(shuffled)
    n_eval = max(1, round(EVAL_FRACTION * len(shuffled)))
    return set(shuffled[n_eval:]), set(shuffled[:n_eval])


def _mentions_any(text: str, values: set[str]) -> bool:
    """Whether ``text`` contains one of ``values`` as a whole phrase (not inside a word)."""
    return any(re.search(rf"(?<!\w){re.escape(v)}(?!\w)", text) for v in values if v in text)


def held_out_templates(seed: int) -> tuple[str, ...]:
    """The template ids held out by ``split="template"`` for this seed."""
    rng = random.Random(f"{seed}-templates")
    return tuple(sorted(rng.sample(TEMPLATE_IDS, HELD_OUT_TEMPLATES)))


def build_records(seed: int = 0, split: str = "entity") -> dict[str, list[dict[str, Any]]]:
    """``{"train": [...], "eval": [...]}`` records for one split, deterministic for a seed."""
    if split not in SPLITS:
        raise ValueError(f"split: must be one of {', '.join(SPLITS)}; got {split!r}")
    db = chinook_db()
    values = {etype: entity_values(db, etype) for etype in ENTITY_SOURCES}
    valid = valid_values(str(db))
    parts = {etype: _split_values(vals, seed, etype) for etype, vals in values.items()}
    # A value held out for one type is held out everywhere ("TV Shows" is a genre and a playlist).
    eval_values = set().union(*(ev for _, ev in parts.values()))
    parts = {etype: (tr - eval_values, ev) for etype, (tr, ev) in parts.items()}
    eval_templates = set(held_out_templates(seed)) if split == "template" else set()
    out: dict[str, list[dict[str, Any]]] = {"train": [], "eval": []}
    for template in TEMPLATES:
        rng = random.Random(f"{seed}-{template.id}")
        vals = list(valid[template.id])
        rng.shuffle(vals)
        if split == "entity":
            train_vals, eval_vals = parts[template.entity_type]
            chosen = {
                "train": [v for v in vals if v in train_vals][:MAX_TRAIN_PER_TEMPLATE],
                "eval": [v for v in vals if v in eval_vals][:MAX_EVAL_PER_TEMPLATE],
            }
        elif template.id in eval_templates:
            chosen = {"train": [], "eval": vals[:MAX_EVAL_PER_TEMPLATE]}
        else:
            chosen = {"train": vals[:MAX_TRAIN_PER_TEMPLATE], "eval": []}
        for name, vs in chosen.items():
            out[name] += [make_record(template, v, rng) for v in vs]
    if split == "entity":
        out["train"] = [r for r in out["train"] if not _mentions_any(r["input"], eval_values)]
    for name in out:  # interleave templates, reproducibly
        random.Random(f"{seed}-{name}-order").shuffle(out[name])
    return out


_WS = re.compile(r"\s+")
_LITERAL = re.compile(r"('(?:[^']|'')*')")  # a single-quoted SQL string ('' escapes a quote)


def normalize_sql(sql: str) -> str:
    """Whitespace-collapsed, case-folded outside string literals, no trailing semicolon."""
    text = clean_sql(sql)
    pieces = _LITERAL.split(text)
    return "".join(p if p.startswith("'") else _WS.sub(" ", p).lower() for p in pieces).strip()


def sql_shape(sql: str) -> str:
    """:func:`normalize_sql` with every string literal replaced by ``'?'``: the query's shape.

    Comparing shapes is Spider's "exact match without values": did the model write the right
    query, whatever value it put in the ``WHERE``?
    """
    return _LITERAL.sub("'?'", normalize_sql(sql))


def evaluate(predictions: list[str], examples: list[dict[str, Any]]) -> dict[str, float]:
    """``exact_match`` (normalized SQL text), ``exact_match_no_values`` (same SQL up to string
    literals) and ``execution_accuracy`` (same result rows), plus Spider's metrics.

    A model that writes the right query with the wrong entity value scores on the second and
    not on the others: the gap between them is the copying the model could not do.

    The Spider-named keys (:mod:`labkit.tasks.spider`): ``exact_string`` (the same string match
    as ``exact_match``, named for the lab's comparison), ``exact_set_match`` (Spider's official
    clause-by-clause set match, values masked), ``exact_set_match_values`` (values compared),
    ``execution_accuracy_any_order`` (any column order), ``execution_accuracy_spider`` (any column
    order, DISTINCT removed, as Spider's script) and ``partial_<component>`` (Spider's component
    F1 over the split). ``execution_accuracy`` stays labkit's: columns in order, DISTINCT kept.
    """
    db = chinook_db()
    exact = shape = execution = 0
    scores = []
    for pred, ex in zip(predictions, examples):
        exact += normalize_sql(pred) == normalize_sql(ex["output"])
        shape += sql_shape(pred) == sql_shape(ex["output"])
        scored = spider.score_pair(ex["output"], pred, db)
        if scored.gold_error:  # a broken task record, not a bad answer: say so loudly
            raise ValueError(f"{scored.gold_error}: {ex['output']}")
        execution += scored.verdicts["execution_strict"]
        scores.append(scored)
    n = max(len(examples), 1)
    return {
        "exact_match": exact / n,
        "exact_match_no_values": shape / n,
        "execution_accuracy": execution / n,
        "accuracy": execution / n,
        **spider.evaluate_pairs(scores),
    }
