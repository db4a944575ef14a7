"""Instruction records as JSONL: round trip, and errors that name the file, line and field."""

from __future__ import annotations

import pytest

from labkit.data.records import RecordsError, file_digest, read_records, write_records

RECORDS = [
    {"instruction": "Write SQL.", "input": "How many artists?", "output": "SELECT COUNT(*) FROM Artist", "template": "x"},
    {"instruction": "Write SQL.", "input": "Ünïcode café?", "output": "", "template": "y"},
]


def test_round_trip_keeps_every_field_and_empty_strings(tmp_path):
    path = write_records(RECORDS, tmp_path / "sub" / "r.jsonl")
    assert read_records(path) == RECORDS
    assert len(path.read_text(encoding="utf-8").splitlines()) == 2


def test_digest_follows_the_content_not_the_path(tmp_path):
    a = write_records(RECORDS, tmp_path / "a.jsonl")
    b = write_records(RECORDS, tmp_path / "b.jsonl")
    assert file_digest(a) == file_digest(b)
    write_records(RECORDS[:1], b)
    assert file_digest(a) != file_digest(b)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"instruction": "a", "input": "b", "output": "c"}\n{not json\n', "line 2: not JSON"),
        ('["a", "b"]\n', "line 1: want a JSON object"),
        ('{"instruction": "a", "input": "b", "output": null}\n', "line 1: field 'output' must be a string"),
        ('{"instruction": "a", "output": "c"}\n', "line 1: field 'input' must be a string"),
        ("\n\n", "no records"),
    ],
)
def test_bad_files_name_the_line_and_the_field(tmp_path, text, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RecordsError, match=message):
        read_records(path)


def test_a_missing_file_says_what_is_wanted(tmp_path):
    with pytest.raises(RecordsError, match="no such file.*JSONL"):
        read_records(tmp_path / "nope.jsonl")
