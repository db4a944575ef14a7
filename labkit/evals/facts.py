"""Multiple-choice questions built from Chinook facts (who recorded an album, a track's genre, ...).

Each fact type is a *template*: a question pattern, the SQL that lists its (subject, answer)
facts, and the pool of wrong answers. Questions get three distractors drawn from the same pool.
``held_out_templates`` keeps whole templates out of a contamination fine-tune.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
from dataclasses import dataclass
from typing import Any

from labkit.data.chinook import chinook_db


@dataclass(frozen=True)
class FactTemplate:
    id: str
    question: str  # with {s}
    statement: str  # with {s} and {a}: the fact as a sentence (for perplexity and contamination)
    facts_sql: str  # rows (subject, answer)
    pool_sql: str  # all possible answers


FACT_TEMPLATES = (
    FactTemplate("album_artist", "Who recorded the album {s}?", "The album {s} was recorded by {a}.",
                 "SELECT al.Title, ar.Name FROM Album al JOIN Artist ar ON al.ArtistId = ar.ArtistId",
                 "SELECT DISTINCT Name FROM Artist"),
    FactTemplate("track_genre", "What genre is the track {s}?", "The track {s} is {a}.",
                 "SELECT t.Name, g.Name FROM Track t JOIN Genre g ON t.GenreId = g.GenreId",
                 "SELECT DISTINCT Name FROM Genre"),
    FactTemplate("customer_country", "Which country is the customer {s} from?", "The customer {s} is from {a}.",
                 "SELECT FirstName || ' ' || LastName, Country FROM Customer", "SELECT DISTINCT Country FROM Customer"),
    FactTemplate("customer_city", "In which city does {s} live?", "{s} lives in {a}.",
                 "SELECT FirstName || ' ' || LastName, City FROM Customer", "SELECT DISTINCT City FROM Customer"),
)
TEMPLATE_IDS = tuple(t.id for t in FACT_TEMPLATES)


def _rows(sql: str) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(f"{chinook_db().resolve().as_uri()}?mode=ro", uri=True)) as conn:
        return conn.execute(sql).fetchall()


def build_questions(per_template: int = 20, seed: int = 0, n_choices: int = 4,
                    templates: tuple[str, ...] = TEMPLATE_IDS) -> list[dict[str, Any]]:
    """``{"question", "choices", "gold", "answer", "statement", "template"}`` records.

    Subjects with more than one answer (a track name on two albums of other genres) are skipped,
    so each question has exactly one right choice.
    """
    if not isinstance(per_template, int) or per_template < 1:
        raise ValueError(f"per_template: must be an integer >= 1; got {per_template!r}")
    if not isinstance(n_choices, int) or not 2 <= n_choices <= 10:
        raise ValueError(f"n_choices: must be an integer in [2, 10]; got {n_choices!r}")
    unknown = [t for t in templates if t not in TEMPLATE_IDS]
    if unknown:
        raise ValueError(f"templates: must be among {', '.join(TEMPLATE_IDS)}; got {unknown[0]!r}")
    out = []
    for template in (t for t in FACT_TEMPLATES if t.id in templates):
        rng = random.Random(f"{seed}-{template.id}")
        answers: dict[str, set[str]] = {}
        for subject, answer in _rows(template.facts_sql):
            if subject and answer:
                answers.setdefault(str(subject), set()).add(str(answer))
        pool = sorted({str(r[0]) for r in _rows(template.pool_sql) if r[0]})
        subjects = sorted(s for s, a in answers.items() if len(a) == 1)
        rng.shuffle(subjects)
        for subject in subjects[:per_template]:
            answer = next(iter(answers[subject]))
            choices = rng.sample([p for p in pool if p != answer], n_choices - 1) + [answer]
            rng.shuffle(choices)
            out.append({"question": template.question.format(s=subject), "choices": choices,
                        "gold": choices.index(answer), "answer": answer, "template": template.id,
                        "statement": template.statement.format(s=subject, a=answer)})
    return out
