"""Text-to-SQL scores as Spider's official evaluation defines them, on any SQLite database.

Lab 07 teaches "exact match vs execution accuracy", so the scores must mean what the field means.
Spider (Yu et al. 2018; the official script is ``evaluation.py`` in taoyds/spider and in
taoyds/test-suite-sql-eval, with ``process_sql.py`` and ``exec_eval.py``) scores a predicted query
three ways, and this module reproduces each rule on a real SQL parser (sqlglot, SQLite dialect):

* **exact set match** (:func:`exact_set_match`): both queries are parsed into clauses; aliases are
  resolved to tables; each clause is compared as a *set* (or multiset) where order does not
  matter, as ten components: ``select``, ``select(no AGG)``, ``where``, ``where(no OP)``,
  ``group(no Having)``, ``group``, ``order``, ``and/or``, ``IUEN`` (INTERSECT/UNION/EXCEPT/nested)
  and ``keywords``, plus the set of FROM tables. Spider masks every value (``DISABLE_VALUE``) and
  ignores DISTINCT (``DISABLE_DISTINCT``); ``values=True`` compares values too (labkit's addition).
* **partial component scores** (:func:`partial_scores`, :func:`summarize_components`): which
  clause a prediction got wrong, per pair and over a split.
* **execution accuracy** (:func:`execution_accuracy`): run both queries and compare the rows, a
  multiset unless the gold query has ``ORDER BY``. ``column_order="any"`` accepts a permutation of
  the columns (Spider's ``result_eq``); ``distinct="remove"`` deletes every DISTINCT from both
  queries before running them (Spider's default, ``--keep_distinct`` off). labkit's own
  ``execution_accuracy`` metric is ``column_order="strict", distinct="keep"``.

:func:`score_pair` and :func:`score_table` score (gold, predicted) pairs all ways side by side,
next to the plain string comparison (``exact_string``) that shows why string matching is the wrong
metric. Nothing here raises on a bad prediction: unparseable SQL, an empty answer or a query that
fails to run scores wrong, and ``reason`` says why.

Conventions where labkit differs from Spider's script
-----------------------------------------------------
1. Parser. Spider's hand-written tokenizer needs ``AS`` before a table alias (``FROM Track t``
   does not parse), knows no functions (``strftime``), no ``IN (list)``, ``IS NULL``, ``EXISTS``,
   ``LEFT JOIN``, comma joins, parenthesised conditions, CTEs, ``ORDER BY 1`` or ORDER BY a select
   alias, and turns every ``'`` into ``"`` so an escaped quote (``'Guns N'' Roses'``) breaks the
   query. labkit parses all of these with sqlglot: a function call is one opaque expression
   (columns resolved, its own literals kept), ``IN (list)`` is one value, ``IS NULL`` is the
   operator ``is``, join kinds are ignored (Spider compares only the set of FROM tables), an
   ordinal or a select alias in ORDER BY/GROUP BY stands for the select item, a CTE is refused
   (unparseable, as in Spider). Where Spider's parser succeeds the structures are the same.
2. Conditions are flattened left to right into Spider's ``[cond, 'and'/'or', cond, ...]`` list,
   ignoring parentheses (Spider cannot parse them at all).
3. Foreign keys. Spider maps a column joined by a foreign key to one representative
   (``kmap`` from ``tables.json``). The Chinook file declares no foreign keys, so labkit uses the
   canonical Chinook ones (:data:`CHINOOK_FOREIGN_KEYS`) plus any the database declares.
4. ``values=True`` (``exact_set_match_values``) compares literals and also the LIMIT number;
   Spider's parser reads every LIMIT as 1, so its exact match never compares LIMIT values.
5. Split-level component F1 (:func:`summarize_components`): Spider reports F1 = 1 when the
   averaged accuracy and recall are both 0, i.e. also when *every* pair got the clause wrong;
   labkit reports 1 only when no pair has the clause on either side, else 2·acc·rec/(acc+rec).
6. Execution: numbers are compared rounded to 4 decimals (``sqlexec.normalize_rows``), so a float
   sum in another order matches (Spider compares raw values); one database, not a test suite of
   databases; a read-only connection with a 1 s limit (Spider: 60 s); DISTINCT is removed with
   sqlglot's tokenizer, the same tokens Spider's sqlparse pass removes.
7. An unparseable prediction is compared as Spider's empty query, so it keeps the component
   verdicts Spider gives it (e.g. ``group`` right when the gold has no GROUP BY); its exact set
   match is always wrong.
"""

from __future__ import annotations

import functools
import itertools
import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlglot
from sqlglot import exp

from labkit.errors import LabkitError
from labkit.tasks.sqlexec import SQLResult, clean_sql, has_order_by, normalize_rows, rows_match, run_sql

# Spider's vocabularies (process_sql.py): ids are indexes into these tuples.
WHERE_OPS = ("not", "between", "=", ">", "<", ">=", "<=", "!=", "in", "like", "is", "exists")
UNIT_OPS = ("none", "-", "+", "*", "/")
AGG_OPS = ("none", "max", "min", "count", "sum", "avg")
COMPONENTS = ("select", "select(no AGG)", "where", "where(no OP)", "group(no Having)", "group", "order",
              "and/or", "IUEN", "keywords")
COLUMN_ORDERS = ("any", "strict")
DISTINCT_MODES = ("keep", "remove")
OPAQUE_OP = -1  # a condition outside Spider's grammar (a bare function call used as a boolean)

_AGG = {exp.Max: 1, exp.Min: 2, exp.Count: 3, exp.Sum: 4, exp.Avg: 5}
_UNIT = {exp.Sub: 1, exp.Add: 2, exp.Mul: 3, exp.Div: 4}
_CMP = {exp.EQ: 2, exp.GT: 3, exp.LT: 4, exp.GTE: 5, exp.LTE: 6, exp.NEQ: 7, exp.Like: 9}
_SET_OPS = {exp.Intersect: "intersect", exp.Union: "union", exp.Except: "except"}

# The canonical Chinook schema's foreign keys (the file labkit builds declares none).
CHINOOK_FOREIGN_KEYS: tuple[tuple[str, str], ...] = (
    ("album.artistid", "artist.artistid"),
    ("track.albumid", "album.albumid"),
    ("track.genreid", "genre.genreid"),
    ("track.mediatypeid", "mediatype.mediatypeid"),
    ("playlisttrack.playlistid", "playlist.playlistid"),
    ("playlisttrack.trackid", "track.trackid"),
    ("invoiceline.trackid", "track.trackid"),
    ("invoiceline.invoiceid", "invoice.invoiceid"),
    ("invoice.customerid", "customer.customerid"),
    ("customer.supportrepid", "employee.employeeid"),
    ("employee.reportsto", "employee.employeeid"),
)


class SpiderParseError(LabkitError):
    """SQL that Spider's grammar (as labkit parses it) cannot represent; scored wrong, not raised."""


def conventions() -> str:
    """The numbered list of every convention where labkit differs from Spider's script (for lab 07)."""
    text = (__doc__ or "").split("-----------------------------------------------------\n", 1)[-1]
    return text.strip()


def _check_option(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise LabkitError(f"{name}: must be one of {', '.join(allowed)}; got {value!r}")


# ----------------------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class Schema:
    """Lower-cased ``{table: columns}`` of a database and its foreign-key map (Spider's ``kmap``)."""

    tables: dict[str, frozenset[str]]
    order: tuple[str, ...]
    kmap: dict[str, str] = field(default_factory=dict)


def _kmap(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Spider's ``build_foreign_key_map``: every column of a foreign-key group -> one representative."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(f"__{a}__"), find(f"__{b}__")
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {col: find(col) for col in parent}


@functools.lru_cache(maxsize=8)
def _schema(path: str, mtime: float) -> Schema:
    conn = sqlite3.connect(f"{Path(path).as_uri()}?mode=ro", uri=True)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY rowid")]
        tables: dict[str, frozenset[str]] = {}
        declared: list[tuple[str, str]] = []
        for name in names:
            cols = [r[1] for r in conn.execute(f'PRAGMA table_info("{name}")')]
            tables[name.lower()] = frozenset(c.lower() for c in cols)
            for row in conn.execute(f'PRAGMA foreign_key_list("{name}")'):
                if row[4]:
                    declared.append((f"{name}.{row[3]}".lower(), f"{row[2]}.{row[4]}".lower()))
    finally:
        conn.close()

    def known(col: str) -> bool:
        table, _, column = col.partition(".")
        return column in tables.get(table, frozenset())

    pairs = declared + [p for p in CHINOOK_FOREIGN_KEYS if known(p[0]) and known(p[1])]
    return Schema(tables, tuple(n.lower() for n in names), _kmap(pairs))


def database_schema(db: str | Path | None = None) -> Schema:
    """The :class:`Schema` of a SQLite file (default: labkit's Chinook), cached per file version."""
    path = _db_path(db)
    return _schema(path, Path(path).stat().st_mtime)


def _db_path(db: str | Path | None) -> str:
    if db is None:
        from labkit.data.chinook import chinook_db

        db = chinook_db()
    return str(Path(db).resolve())


# ---------------------------------------------------------------------------------------- parsing


def _empty_sql() -> dict[str, Any]:
    """What Spider's ``evaluate`` compares an unparseable prediction as."""
    return {"select": (False, []), "from": {"table_units": [], "conds": []}, "where": [], "groupBy": [],
            "having": [], "orderBy": [], "limit": None, "intersect": None, "union": None, "except": None}


def _unparen(node: exp.Expression) -> exp.Expression:
    while isinstance(node, exp.Paren):
        node = node.this
    return node


class _Parser:
    """sqlglot tree -> Spider's ``sql`` dict (see the comment block atop Spider's process_sql.py)."""

    def __init__(self, schema: Schema, tree: exp.Expression) -> None:
        self.schema = schema
        # Spider's alias map is global to the whole statement (scan_alias over all tokens).
        self.aliases: dict[str, str] = {t: t for t in schema.tables}
        for table in tree.find_all(exp.Table):
            if table.alias:
                self.aliases.setdefault(table.alias.lower(), table.name.lower())

    # -- columns and units
    def column(self, node: exp.Column, scope: dict[str, Any]) -> str:
        name = node.name.lower()
        qualifier = node.table.lower()
        if qualifier:
            if qualifier in scope["derived"]:
                return f"__{qualifier}.{name}__"
            table = scope["aliases"].get(qualifier) or self.aliases.get(qualifier)
            if table is None:
                raise SpiderParseError(f"unknown table or alias {node.table!r}")
            if name not in self.schema.tables.get(table, frozenset()):
                raise SpiderParseError(f"unknown column {node.table}.{node.name}")
            return f"__{table}.{name}__"
        for table in scope["default_tables"]:
            if name in self.schema.tables.get(table, frozenset()):
                return f"__{table}.{name}__"
        raise SpiderParseError(f"unknown column {node.name!r}")

    def opaque(self, node: exp.Expression, scope: dict[str, Any]) -> str:
        """A function call or other expression outside Spider's grammar, columns resolved."""
        def resolve(n: exp.Expression) -> exp.Expression:
            if isinstance(n, exp.Column) and not isinstance(n.this, exp.Star):
                return exp.column(self.column(n, scope))
            return n

        return node.copy().transform(resolve).sql(dialect="sqlite")

    def col_id(self, node: exp.Expression, scope: dict[str, Any]) -> str:
        node = self.substitute(_unparen(node), scope)
        if isinstance(node, exp.Star):
            return "__all__"
        if isinstance(node, exp.Column):
            if isinstance(node.this, exp.Star):
                return "__all__"
            return self.column(node, scope)
        return self.opaque(node, scope)

    def col_unit(self, node: exp.Expression, scope: dict[str, Any]) -> tuple[int, str, bool]:
        node = self.substitute(_unparen(node), scope)
        agg = _AGG.get(type(node))
        if agg is not None:
            arg, distinct = node.this, False
            if isinstance(arg, exp.Distinct) and len(arg.expressions) == 1:
                arg, distinct = arg.expressions[0], True
            return agg, self.col_id(arg, scope), distinct
        if isinstance(node, exp.Distinct) and len(node.expressions) == 1:
            return 0, self.col_id(node.expressions[0], scope), True
        return 0, self.col_id(node, scope), False

    def val_unit(self, node: exp.Expression, scope: dict[str, Any]) -> tuple[Any, ...]:
        node = self.substitute(_unparen(node), scope)
        op = _UNIT.get(type(node))
        if op is not None:
            return op, self.col_unit(node.this, scope), self.col_unit(node.expression, scope)
        return 0, self.col_unit(node, scope), None

    def substitute(self, node: exp.Expression, scope: dict[str, Any]) -> exp.Expression:
        """A select alias or an ordinal in ORDER BY / GROUP BY / HAVING stands for the select item."""
        targets = scope.get("select_items")
        if not targets:
            return node
        if isinstance(node, exp.Column) and not node.table and node.name.lower() in scope["select_aliases"]:
            name = node.name.lower()
            if not any(name in self.schema.tables.get(t, frozenset()) for t in scope["default_tables"]):
                return scope["select_aliases"][name]
        if scope.get("ordinals") and isinstance(node, exp.Literal) and not node.is_string and node.this.isdigit():
            k = int(node.this)
            if 1 <= k <= len(targets):
                return targets[k - 1]
        return node

    # -- values and conditions
    def value(self, node: exp.Expression, scope: dict[str, Any]) -> Any:
        node = _unparen(node)
        if isinstance(node, exp.Subquery):
            return self.sql(node.this)
        if isinstance(node, (exp.Select, exp.Union, exp.Intersect, exp.Except)):
            return self.sql(node)
        if isinstance(node, exp.Literal):
            return f'"{node.this}"' if node.is_string else float(node.this)
        if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal) and not node.this.is_string:
            return -float(node.this.this)
        if isinstance(node, exp.Null):
            return "null"
        if isinstance(node, exp.Tuple):
            return tuple(self.value(e, scope) for e in node.expressions)
        return self.col_unit(node, scope)

    def condition(self, node: exp.Expression | None, scope: dict[str, Any]) -> list[Any]:
        out: list[Any] = []
        if node is not None:
            self._flatten(node, scope, out)
        return out

    def _flatten(self, node: exp.Expression, scope: dict[str, Any], out: list[Any]) -> None:
        node = _unparen(node)
        if isinstance(node, (exp.And, exp.Or)):
            self._flatten(node.this, scope, out)
            out.append("and" if isinstance(node, exp.And) else "or")
            self._flatten(node.expression, scope, out)
        else:
            out.append(self.cond_unit(node, scope))

    def cond_unit(self, node: exp.Expression, scope: dict[str, Any]) -> tuple[Any, ...]:
        not_op = False
        if isinstance(node, exp.Not):
            not_op, node = True, _unparen(node.this)
        if node.args.get("negate"):  # sqlglot >= 27 writes NOT LIKE / NOT IN as negate=True
            not_op = True
        if isinstance(node, exp.Between):
            return (not_op, 1, self.val_unit(node.this, scope), self.value(node.args["low"], scope),
                    self.value(node.args["high"], scope))
        if isinstance(node, exp.In):
            query = node.args.get("query")
            if query is not None:
                val: Any = self.value(query, scope)
            else:
                val = tuple(self.value(e, scope) for e in node.expressions)
            return not_op, 8, self.val_unit(node.this, scope), val, None
        if isinstance(node, exp.Is):
            return not_op, 10, self.val_unit(node.this, scope), self.value(node.expression, scope), None
        if isinstance(node, exp.Exists):
            return not_op, 11, None, self.value(node.this, scope), None
        op = _CMP.get(type(node))
        if op is not None:
            return not_op, op, self.val_unit(node.this, scope), self.value(node.expression, scope), None
        return not_op, OPAQUE_OP, self.val_unit(node, scope), None, None

    # -- queries
    def sql(self, node: exp.Expression) -> dict[str, Any]:
        node = _unparen(node)
        while isinstance(node, exp.Subquery):
            node = _unparen(node.this)
        if node.args.get("with") or node.args.get("with_"):
            raise SpiderParseError("WITH (a CTE) is outside Spider's grammar")
        op = _SET_OPS.get(type(node))
        if op is not None:
            left, right = self.sql(node.this), self.sql(node.expression)
            tail = left
            while any(tail[k] is not None for k in _SET_OPS.values()):
                tail = next(tail[k] for k in _SET_OPS.values() if tail[k] is not None)
            tail[op] = right
            if node.args.get("order") or node.args.get("limit"):  # Spider: they follow the last SELECT
                last = right
                while any(last[k] is not None for k in _SET_OPS.values()):
                    last = next(last[k] for k in _SET_OPS.values() if last[k] is not None)
                scope = self.scope_of(node.expression if isinstance(node.expression, exp.Select) else None)
                self.order_limit(node, scope, last)
            return left
        if not isinstance(node, exp.Select):
            raise SpiderParseError(f"not a SELECT query ({type(node).__name__})")
        return self.select(node)

    def scope_of(self, node: exp.Select | None) -> dict[str, Any]:
        scope: dict[str, Any] = {"aliases": {}, "default_tables": [], "derived": set(), "table_units": [],
                                 "select_aliases": {}, "select_items": []}
        if node is None:
            return scope
        from_ = node.args.get("from") or node.args.get("from_")
        sources = ([from_.this] if from_ is not None else []) + [j.this for j in node.args.get("joins") or []]
        for src in sources:
            if isinstance(src, exp.Table):
                if src.args.get("db"):
                    raise SpiderParseError(f"table {src.sql()} names another database")
                table = src.name.lower()
                if table not in self.schema.tables:
                    raise SpiderParseError(f"unknown table {src.name!r}")
                scope["table_units"].append(("table_unit", f"__{table}__"))
                scope["default_tables"].append(table)
                if src.alias:
                    scope["aliases"][src.alias.lower()] = table
            elif isinstance(src, exp.Subquery):
                scope["table_units"].append(("sql", self.sql(src.this)))
                if src.alias:
                    scope["derived"].add(src.alias.lower())
            else:
                raise SpiderParseError(f"FROM {src.sql()} is outside Spider's grammar")
        items = [e.this if isinstance(e, exp.Alias) else e for e in node.expressions]
        scope["select_items"] = items
        scope["select_aliases"] = {e.alias.lower(): e.this for e in node.expressions if isinstance(e, exp.Alias)}
        return scope

    def select(self, node: exp.Select) -> dict[str, Any]:
        scope = self.scope_of(node)
        plain = {**scope, "select_items": []}  # no alias substitution inside SELECT, FROM and WHERE
        items = []
        for item in scope["select_items"]:
            item = _unparen(item)
            agg = _AGG.get(type(item))  # Spider: (agg_id, val_unit) with the aggregate outside the unit
            items.append((agg, self.val_unit(item.this, plain)) if agg else (0, self.val_unit(item, plain)))
        conds: list[Any] = []
        for join in node.args.get("joins") or []:
            on = join.args.get("on")
            if on is not None:
                if conds:
                    conds.append("and")
                conds.extend(self.condition(on, plain))
        where = node.args.get("where")
        group = node.args.get("group")
        having = node.args.get("having")
        late = {**scope, "ordinals": True}
        sql: dict[str, Any] = {
            "select": (node.args.get("distinct") is not None, items),
            "from": {"table_units": scope["table_units"], "conds": conds},
            "where": self.condition(where.this if where else None, plain),
            "groupBy": [self.col_unit(e, late) for e in (group.expressions if group else [])],
            "having": self.condition(having.this if having else None, {**scope, "ordinals": False}),
            "orderBy": [], "limit": None, "intersect": None, "union": None, "except": None,
        }
        self.order_limit(node, late, sql)
        return sql

    def order_limit(self, node: exp.Expression, scope: dict[str, Any], sql: dict[str, Any]) -> None:
        order = node.args.get("order")
        if order is not None and order.expressions:
            direction, units = "asc", []
            for item in order.expressions:
                target = item.this if isinstance(item, exp.Ordered) else item
                if isinstance(item, exp.Ordered) and item.args.get("desc") is not None:
                    direction = "desc" if item.args["desc"] else "asc"  # Spider keeps the last one written
                units.append(self.val_unit(target, scope))
            sql["orderBy"] = (direction, units)
        limit = node.args.get("limit")
        if limit is not None:
            value = limit.args.get("expression")
            text = value.this if isinstance(value, exp.Literal) else ""
            sql["limit"] = int(text) if str(text).isdigit() else 1


def parse_sql(sql: str, db: str | Path | None = None, schema: Schema | None = None) -> dict[str, Any]:
    """Spider's ``sql`` dict for one SQLite query (raises :class:`SpiderParseError` with the reason)."""
    text = clean_sql(sql)
    if not text:
        raise SpiderParseError("empty answer")
    schema = schema or database_schema(db)
    try:
        trees = [t for t in sqlglot.parse(text, read="sqlite") if t is not None]
    except Exception as err:  # sqlglot's ParseError/TokenError, or anything else it may throw
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SpiderParseError(f"unparseable SQL ({first})") from None
    if len(trees) != 1:
        raise SpiderParseError("more than one statement" if trees else "empty answer")
    try:
        return _Parser(schema, trees[0]).sql(trees[0])
    except SpiderParseError:
        raise
    except Exception as err:  # a tree shape this converter does not know
        raise SpiderParseError(f"outside Spider's grammar ({type(err).__name__}: {err})") from None


# ----------------------------------------------------------------- Spider's rebuild and comparison


def _mask_cond(conds: list[Any]) -> list[Any]:
    out: list[Any] = []
    for i, unit in enumerate(conds):
        if i % 2:
            out.append(unit)
            continue
        not_op, op, val_unit, v1, v2 = unit
        out.append((not_op, op, val_unit, _mask_sql(v1) if isinstance(v1, dict) else None,
                    _mask_sql(v2) if isinstance(v2, dict) else None))
    return out


def _mask_sql(sql: dict[str, Any] | None) -> dict[str, Any] | None:
    """Spider's ``rebuild_sql_val`` (``DISABLE_VALUE``): every value in a condition becomes None."""
    if sql is None:
        return None
    return {**sql, "from": {**sql["from"], "conds": _mask_cond(sql["from"]["conds"])},
            "having": _mask_cond(sql["having"]), "where": _mask_cond(sql["where"]),
            "intersect": _mask_sql(sql["intersect"]), "except": _mask_sql(sql["except"]),
            "union": _mask_sql(sql["union"])}


def _valid_cols(sql: dict[str, Any], schema: Schema) -> set[str]:
    """Spider's ``build_valid_col_units``: the columns of the tables in the top-level FROM."""
    prefixes = {unit[1][:-2] for unit in sql["from"]["table_units"] if unit[0] == "table_unit"}
    return {f"__{t}.{c}__" for t, cols in schema.tables.items() for c in cols if f"__{t}" in prefixes}


def _rebuild_cols(sql: dict[str, Any] | None, valid: set[str], schema: Schema) -> dict[str, Any] | None:
    """Spider's ``rebuild_sql_col``: foreign-key columns -> one representative, DISTINCT dropped."""
    if sql is None:
        return None
    kmap = schema.kmap

    def col(unit: tuple[int, str, bool] | None) -> tuple[int, str, None] | None:
        if unit is None:
            return None
        agg, cid, _ = unit
        return agg, kmap[cid] if cid in kmap and cid in valid else cid, None

    def val(unit: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
        if unit is None:
            return None
        return unit[0], col(unit[1]), col(unit[2])

    def conds(cs: list[Any]) -> list[Any]:
        return [c if i % 2 else (c[0], c[1], val(c[2]), c[3], c[4]) for i, c in enumerate(cs)]

    order = sql["orderBy"]
    return {
        "select": (None, [(agg, val(v)) for agg, v in sql["select"][1]]),
        "from": {"table_units": [(k, col(u) if isinstance(u, tuple) else u) for k, u in sql["from"]["table_units"]],
                 "conds": conds(sql["from"]["conds"])},
        "where": conds(sql["where"]), "groupBy": [col(u) for u in sql["groupBy"]],
        "orderBy": (order[0], [val(v) for v in order[1]]) if order else order,
        "having": conds(sql["having"]), "limit": sql["limit"],
        "intersect": _rebuild_cols(sql["intersect"], valid, schema),
        "except": _rebuild_cols(sql["except"], valid, schema),
        "union": _rebuild_cols(sql["union"], valid, schema),
    }


def _prepare(sql: dict[str, Any], schema: Schema, values: bool) -> dict[str, Any]:
    """What Spider's ``evaluate`` compares: values masked (unless ``values``), then columns rebuilt."""
    masked = sql if values else _mask_sql(sql)
    assert masked is not None
    out = _rebuild_cols(masked, _valid_cols(masked, schema), schema)
    assert out is not None
    return out


def _scores(count: int, pred_total: int, label_total: int) -> int:
    """Spider's ``get_scores``, reduced to its F1 (1 only when both totals and the count agree)."""
    return int(pred_total == label_total and count == pred_total)


def _multiset_count(pred: list[Any], label: list[Any]) -> int:
    label = list(label)
    count = 0
    for unit in pred:
        if unit in label:
            count += 1
            label.remove(unit)
    return count


@dataclass(frozen=True)
class Component:
    """One component verdict: Spider's F1 for the pair (0 or 1) and how many units each side has."""

    f1: int
    pred_total: int
    label_total: int


def _component(count: int, pred_total: int, label_total: int) -> Component:
    return Component(_scores(count, pred_total, label_total), pred_total, label_total)


def _keywords(sql: dict[str, Any]) -> set[str]:
    """Spider's ``get_keywords``."""
    res = set()
    for key, name in (("where", "where"), ("groupBy", "group"), ("having", "having")):
        if sql[key]:
            res.add(name)
    if sql["orderBy"]:
        res |= {sql["orderBy"][0], "order"}
    if sql["limit"] is not None:
        res.add("limit")
    res |= {k for k in ("except", "union", "intersect") if sql[k] is not None}
    conds = sql["from"]["conds"] + sql["where"] + sql["having"]
    if "or" in conds[1::2]:
        res.add("or")
    units = conds[::2]
    if any(u[0] for u in units):
        res.add("not")
    if any(u[1] == 8 for u in units):
        res.add("in")
    if any(u[1] == 9 for u in units):
        res.add("like")
    return res


def _nested(pred: dict[str, Any] | None, label: dict[str, Any] | None, values: bool) -> tuple[int, int, int]:
    p, g = int(pred is not None), int(label is not None)
    cnt = int(pred is not None and label is not None and _exact(pred, label, values)[0])
    return g, p, cnt


def partial_components(pred: dict[str, Any], label: dict[str, Any], values: bool = False) -> dict[str, Component]:
    """Spider's ``eval_partial_match`` on two prepared (rebuilt) sql dicts."""
    res: dict[str, Component] = {}
    p_sel, g_sel = pred["select"][1], label["select"][1]
    res["select"] = _component(_multiset_count(p_sel, g_sel), len(p_sel), len(g_sel))
    res["select(no AGG)"] = _component(_multiset_count([u[1] for u in p_sel], [u[1] for u in g_sel]),
                                       len(p_sel), len(g_sel))
    p_w, g_w = pred["where"][::2], label["where"][::2]
    res["where"] = _component(_multiset_count(p_w, g_w), len(p_w), len(g_w))
    res["where(no OP)"] = _component(_multiset_count([u[2] for u in p_w], [u[2] for u in g_w]), len(p_w), len(g_w))

    def short(cid: str) -> str:  # eval_group compares column names without their table
        return cid.split(".")[1] if "." in cid else cid

    p_g, g_g = [u[1] for u in pred["groupBy"]], [u[1] for u in label["groupBy"]]
    res["group(no Having)"] = _component(_multiset_count([short(c) for c in p_g], [short(c) for c in g_g]),
                                         len(p_g), len(g_g))
    p_h, g_h = int(bool(p_g)), int(bool(g_g))
    res["group"] = _component(int(p_h == g_h == 1 and p_g == g_g and pred["having"] == label["having"]), p_h, g_h)
    p_o, g_o = int(bool(pred["orderBy"])), int(bool(label["orderBy"]))
    same_limit = (pred["limit"] is None) == (label["limit"] is None)
    if values:
        same_limit = pred["limit"] == label["limit"]
    res["order"] = _component(int(g_o == 1 and pred["orderBy"] == label["orderBy"] and same_limit), p_o, g_o)
    p_ao, g_ao = set(pred["where"][1::2]), set(label["where"][1::2])
    res["and/or"] = Component(int(p_ao == g_ao), len(p_ao), len(g_ao))
    totals = [_nested(pred[k], label[k], values) for k in ("intersect", "except", "union")]
    g_t, p_t, cnt = (sum(t[i] for t in totals) for i in range(3))
    res["IUEN"] = _component(cnt, p_t, g_t)
    p_k, g_k = _keywords(pred), _keywords(label)
    res["keywords"] = _component(len(p_k & g_k), len(p_k), len(g_k))
    return res


def _exact(pred: dict[str, Any], label: dict[str, Any], values: bool) -> tuple[bool, dict[str, Component]]:
    """Spider's ``eval_exact_match``: every component F1 is 1 and the FROM tables are the same set."""
    parts = partial_components(pred, label, values)
    if any(c.f1 != 1 for c in parts.values()):
        return False, parts
    if label["from"]["table_units"]:
        key = repr
        same = sorted(map(key, label["from"]["table_units"])) == sorted(map(key, pred["from"]["table_units"]))
        return same, parts
    return True, parts


# ------------------------------------------------------------------------------- public verdicts


@dataclass(frozen=True)
class Verdict:
    """A 0/1 verdict and, when it is 0 for a reason other than a plain mismatch, the reason."""

    match: bool
    reason: str = ""
    components: dict[str, Component] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.match


@functools.lru_cache(maxsize=4096)
def _parsed(sql: str, path: str, mtime: float) -> dict[str, Any] | str:
    """Parsed sql dict, or the reason it does not parse (cached: gold queries repeat)."""
    try:
        return parse_sql(sql, schema=_schema(path, mtime))
    except SpiderParseError as err:
        return str(err)


def _wrong_components(parts: dict[str, Component]) -> str:
    return ", ".join(name for name, c in parts.items() if c.f1 != 1)


def exact_set_match(pred_sql: str, gold_sql: str, db: str | Path | None = None, *, values: bool = False) -> Verdict:
    """Spider's exact set match of ``pred_sql`` against ``gold_sql`` on the schema of ``db``.

    ``values=False`` is Spider's official metric (values masked, DISTINCT ignored); ``values=True``
    also compares literals and the LIMIT number. Never raises: a bad prediction is a 0 with a reason.
    """
    path = _db_path(db)
    schema_key = (path, Path(path).stat().st_mtime)
    gold = _parsed(gold_sql, *schema_key)
    if isinstance(gold, str):
        return Verdict(False, f"gold: {gold}")
    pred = _parsed(pred_sql, *schema_key)
    schema = _schema(*schema_key)
    reason = ""
    if isinstance(pred, str):
        reason, pred = f"predicted: {pred}", _empty_sql()
    same, parts = _exact(_prepare(pred, schema, values), _prepare(gold, schema, values), values)
    if not same and not reason:
        wrong = _wrong_components(parts)
        reason = f"differs in {wrong}" if wrong else "differs in FROM tables"
    return Verdict(bool(same) and not reason, reason, parts)


def partial_scores(pred_sql: str, gold_sql: str, db: str | Path | None = None) -> dict[str, Component]:
    """Spider's per-component verdicts for one pair (values masked, as in its exact set match)."""
    return exact_set_match(pred_sql, gold_sql, db).components


def remove_distinct(sql: str) -> str:
    """``sql`` without its DISTINCT keywords (Spider's ``remove_distinct``, on sqlglot's tokens)."""
    try:
        tokens = sqlglot.Dialect.get_or_raise("sqlite").tokenize(sql)
    except Exception:
        return sql
    out, pos = [], 0
    for tok in tokens:
        if tok.token_type == sqlglot.TokenType.DISTINCT:
            out.append(sql[pos:tok.start])
            pos = tok.end + 1
    out.append(sql[pos:])
    return "".join(out)


@functools.lru_cache(maxsize=8192)
def _gold_rows(path: str, gold_sql: str, mtime: float) -> SQLResult:
    return run_sql(path, gold_sql, timeout_s=10.0)


def rows_match_any_order(pred: list[tuple[Any, ...]], gold: list[tuple[Any, ...]], *, ordered: bool) -> bool:
    """Spider's ``result_eq``: the same rows under some permutation of the predicted columns."""
    p, g = normalize_rows(pred), normalize_rows(gold)
    if not p and not g:
        return True
    if len(p) != len(g) or len(p[0]) != len(g[0]):
        return False
    n = len(g[0])
    if n == 1:
        return p == g if ordered else Counter(p) == Counter(g)
    p_cols = [Counter(r[j] for r in p) for j in range(n)]
    g_cols = [Counter(r[i] for r in g) for i in range(n)]
    candidates = [[j for j in range(n) if p_cols[j] == g_cols[i]] for i in range(n)]
    target = g if ordered else Counter(g)
    for perm in itertools.product(*candidates):
        if len(set(perm)) != n:
            continue
        permuted = [tuple(row[j] for j in perm) for row in p]
        if (permuted if ordered else Counter(permuted)) == target:
            return True
    return False


def _compare(pred: SQLResult, gold: SQLResult, ordered: bool, column_order: str) -> bool:
    if column_order == "strict":
        return rows_match(pred.rows, gold.rows, ordered=ordered)
    return rows_match_any_order(pred.rows, gold.rows, ordered=ordered)


def execution_accuracy(
    pred_sql: str,
    gold_sql: str,
    db: str | Path | None = None,
    *,
    column_order: str = "any",
    distinct: str = "remove",
) -> Verdict:
    """Whether ``pred_sql`` returns the gold rows on ``db`` (a multiset unless the gold has ORDER BY).

    Defaults are Spider's test-suite conventions (any column order, DISTINCT removed from both);
    ``column_order="strict", distinct="keep"`` is labkit's ``execution_accuracy``. Never raises.
    """
    _check_option("column_order", column_order, COLUMN_ORDERS)
    _check_option("distinct", distinct, DISTINCT_MODES)
    return _execution_verdicts(pred_sql, gold_sql, _db_path(db), ((column_order, distinct),))[0]


def _execution_verdicts(pred_sql: str, gold_sql: str, path: str,
                        modes: Sequence[tuple[str, str]]) -> list[Verdict]:
    """Each query runs once per distinct text; the rows are compared under every (column_order, distinct)."""
    mtime = Path(path).stat().st_mtime
    pred_runs: dict[str, SQLResult] = {}
    out = []
    for column_order, distinct in modes:
        gold_text, pred_text = gold_sql, pred_sql  # "keep": exactly what sqlexec.execution_match runs
        if distinct == "remove":
            cleaned = clean_sql(pred_sql)
            gold_clean = clean_sql(gold_sql)
            gold_text = gold_sql if remove_distinct(gold_clean) == gold_clean else remove_distinct(gold_clean)
            pred_text = pred_sql if remove_distinct(cleaned) == cleaned else remove_distinct(cleaned)
        gold = _gold_rows(path, gold_text, mtime)
        if pred_text not in pred_runs:
            pred_runs[pred_text] = run_sql(path, pred_text)
        pred = pred_runs[pred_text]
        if not gold.ok:
            out.append(Verdict(False, f"gold fails: {gold.error}"))
        elif not pred.ok:
            out.append(Verdict(False, f"predicted fails: {pred.error}"))
        else:
            same = _compare(pred, gold, has_order_by(gold_sql), column_order)
            out.append(Verdict(same, "" if same else "different rows"))
    return out


# --------------------------------------------------------------------------------- side by side

SCORE_COLUMNS = ("exact_string", "exact_string_no_values", "exact_set_match", "exact_set_match_values",
                 "execution_strict", "execution_any_order", "execution_spider")
_EXEC_MODES = (("strict", "keep"), ("any", "keep"), ("any", "remove"))


@dataclass(frozen=True)
class PairScore:
    """Every verdict for one (gold, predicted) pair; :meth:`row` flattens it for a table."""

    gold: str
    predicted: str
    verdicts: dict[str, bool]
    components: dict[str, Component]
    reason: str
    gold_error: str = ""  # set when the gold query itself fails to run (a broken task record)

    def row(self) -> dict[str, Any]:
        """``{"gold", "predicted", <7 metrics as 0/1>, <10 Spider components as 0/1>, "reason"}``."""
        out: dict[str, Any] = {"gold": self.gold, "predicted": self.predicted}
        out.update({k: int(v) for k, v in self.verdicts.items()})
        out.update({k: c.f1 for k, c in self.components.items()})
        out["reason"] = self.reason
        return out


def score_pair(gold_sql: str, pred_sql: str, db: str | Path | None = None) -> PairScore:
    """Score one pair all ways: strings, Spider's exact set match (with and without values),
    execution accuracy (labkit strict / any column order / Spider's DISTINCT removal), components."""
    from labkit.tasks.text2sql import normalize_sql, sql_shape  # text2sql imports this module

    path = _db_path(db)
    pred_sql = pred_sql if isinstance(pred_sql, str) else ""
    esm = exact_set_match(pred_sql, gold_sql, path)
    esm_values = exact_set_match(pred_sql, gold_sql, path, values=True)
    strict, any_order, spider = _execution_verdicts(pred_sql, gold_sql, path, _EXEC_MODES)
    verdicts = {
        "exact_string": normalize_sql(pred_sql) == normalize_sql(gold_sql),
        "exact_string_no_values": sql_shape(pred_sql) == sql_shape(gold_sql),
        "exact_set_match": esm.match,
        "exact_set_match_values": esm_values.match,
        "execution_strict": strict.match,
        "execution_any_order": any_order.match,
        "execution_spider": spider.match,
    }
    reasons = []
    if esm.reason:
        reasons.append(f"exact set match: {esm.reason}")
    elif esm_values.reason:
        reasons.append(f"with values: {esm_values.reason}")
    if not strict.match:
        if any_order.match:
            reasons.append("execution: same rows, columns in another order")
        elif spider.match:
            reasons.append("execution: same rows once DISTINCT is removed")
        else:
            reasons.append(f"execution: {strict.reason}")
    elif not spider.match:
        reasons.append("execution: rows differ once DISTINCT is removed")
    gold_error = strict.reason if strict.reason.startswith("gold") else ""
    return PairScore(gold_sql, pred_sql, verdicts, esm.components, "; ".join(reasons), gold_error)


def score_table(pairs: Iterable[tuple[str, str]], db: str | Path | None = None) -> list[dict[str, Any]]:
    """One flat row per (gold, predicted) pair, every metric side by side (see :func:`score_pair`).

    ``pd.DataFrame(score_table(pairs))`` shows where the string match, Spider's exact set match
    and execution accuracy disagree, and the ``reason`` column says why.
    """
    return [score_pair(gold, pred, db).row() for gold, pred in pairs]


def summarize_components(scores: Sequence[PairScore]) -> dict[str, dict[str, float]]:
    """Spider's split-level partial matching ``{component: {"acc", "rec", "f1"}}``.

    acc: mean verdict over pairs whose prediction has the component; rec: over pairs whose gold
    has it. F1 = 1 when no pair has it on either side (see convention 5 in the module docstring).
    """
    out: dict[str, dict[str, float]] = {}
    for name in COMPONENTS:
        parts = [s.components[name] for s in scores if name in s.components]
        with_pred = [c.f1 for c in parts if c.pred_total > 0]
        with_gold = [c.f1 for c in parts if c.label_total > 0]
        acc = sum(with_pred) / len(with_pred) if with_pred else 0.0
        rec = sum(with_gold) / len(with_gold) if with_gold else 0.0
        if not with_pred and not with_gold:
            f1 = 1.0
        else:
            f1 = 2 * acc * rec / (acc + rec) if acc + rec else 0.0
        out[name] = {"acc": acc, "rec": rec, "f1": f1}
    return out


def metric_key(component: str) -> str:
    """The metric-dict key of a Spider component: ``"select(no AGG)"`` -> ``"partial_select_no_agg"``."""
    slug = component.lower().replace("(no ", "_no_").replace(")", "").replace("/", "_").replace(" ", "_")
    return f"partial_{slug}"


def evaluate_pairs(scores: Sequence[PairScore]) -> dict[str, float]:
    """Split-level metrics for :mod:`labkit.tasks.text2sql`: Spider-named means and component F1s."""
    n = max(len(scores), 1)
    mean = {k: sum(s.verdicts[k] for s in scores) / n for k in SCORE_COLUMNS}
    out = {
        "exact_string": mean["exact_string"],
        "exact_set_match": mean["exact_set_match"],
        "exact_set_match_values": mean["exact_set_match_values"],
        "execution_accuracy_any_order": mean["execution_any_order"],
        "execution_accuracy_spider": mean["execution_spider"],
    }
    for name, value in summarize_components(scores).items():
        out[metric_key(name)] = value["f1"]
    return out


LESSON_GOLD = ("SELECT t.Name FROM Track t JOIN Genre g ON t.GenreId = g.GenreId WHERE g.Name = 'Jazz' "
               "ORDER BY t.Milliseconds DESC LIMIT 1")


def lesson_variants(gold: str = LESSON_GOLD) -> dict[str, str]:
    """Rewrites of one gold query that split the metrics apart (lab 07): same meaning, or one clause wrong."""
    return {
        "aliases renamed": gold.replace("t.", "tr.").replace("Track t", "Track tr"),
        "join order swapped": gold.replace("FROM Track t JOIN Genre g ON t.GenreId = g.GenreId",
                                           "FROM Genre g JOIN Track t ON g.GenreId = t.GenreId"),
        "another genre": gold.replace("'Jazz'", "'Blues'"),
        "LIMIT 3": gold.replace("LIMIT 1", "LIMIT 3"),
        "no ORDER BY": gold.replace(" ORDER BY t.Milliseconds DESC", ""),
        "wrong join column": gold.replace("ON t.GenreId", "ON t.MediaTypeId"),
    }


def side_by_side(named_pairs: dict[str, tuple[str, str]], db: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per named (gold, predicted) pair: the headline metrics and the clauses Spider calls wrong."""
    metrics = ("exact_string", "exact_set_match", "exact_set_match_values", "execution_strict",
               "execution_any_order", "execution_spider")
    rows = []
    for name, row in zip(named_pairs, score_table(named_pairs.values(), db)):
        rows.append({"pair": name, **{k: row[k] for k in metrics},
                     "wrong clauses": ", ".join(c for c in COMPONENTS if not row[c]), "reason": row["reason"]})
    return rows
