"""Security checks kept as tests (issue 17).

- Model-written SQL cannot write, attach, load extensions, read files or run past its time limit
  (tests/test_sqlexec.py has the hostile-statement table; here: one case per threat, with a real
  file to steal where there is one).
- Model folders load only safetensors: a folder with only a pickled ``pytorch_model.bin`` is refused
  by labkit's loader with a clear message, and the pickle's payload never runs.
- A report exported from a notebook embeds no local file path and no environment variable value.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path

import nbformat
import pytest

from labkit.tasks.sqlexec import run_sql

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- model SQL
@pytest.fixture()
def dbs(tmp_path: Path) -> tuple[Path, Path]:
    """The task database, and a second one beside it holding a secret a query must not reach."""
    main, other = tmp_path / "task.sqlite", tmp_path / "secret.sqlite"
    with sqlite3.connect(main) as conn:
        conn.execute("CREATE TABLE Genre (GenreId INTEGER PRIMARY KEY, Name TEXT)")
        conn.executemany("INSERT INTO Genre VALUES (?, ?)", [(1, "Rock"), (2, "Jazz")])
        conn.execute("CREATE TABLE N (x INTEGER)")
        conn.executemany("INSERT INTO N VALUES (?)", [(i,) for i in range(3000)])
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE s (v TEXT)")
        conn.execute("INSERT INTO s VALUES ('TOP-SECRET-ROW')")
    (tmp_path / "passwd.txt").write_text("TOP-SECRET-FILE")
    return main, other


THREATS = {
    "write: insert": "INSERT INTO Genre VALUES (9, 'Pop')",
    "write: create": "CREATE TABLE x AS SELECT 1",
    "write: update returning": "UPDATE Genre SET Name = 'x' RETURNING *",
    "write: delete returning": "DELETE FROM Genre RETURNING *",
    "write: vacuum into": "VACUUM INTO '{dir}/copy.sqlite'",
    "write: pragma": "PRAGMA journal_mode = DELETE",
    "attach a real database": "ATTACH DATABASE '{other}' AS o",
    "attach then read": "SELECT * FROM o.s",
    "read through a CTE alias of attach": "WITH t AS (SELECT * FROM pragma_database_list) SELECT * FROM t",
    "load an extension": "SELECT load_extension('{dir}/evil')",
    "read a file: readfile()": "SELECT readfile('{dir}/passwd.txt')",
    "read a file: fsdir()": "SELECT name FROM fsdir('{dir}')",
    "read a file: edit()": "SELECT edit('x', 'cat {dir}/passwd.txt')",
    "read pages: sqlite_dbpage": "SELECT data FROM sqlite_dbpage",
}


@pytest.mark.parametrize("threat", list(THREATS))
def test_model_sql_cannot_write_attach_load_or_read_files(dbs, threat):
    main, other = dbs
    before = {p.name: p.read_bytes() for p in main.parent.iterdir()}
    sql = THREATS[threat].format(dir=main.parent, other=other)
    result = run_sql(main, sql)
    assert not result.ok and result.error, (threat, result)
    assert "TOP-SECRET" not in repr(result.rows) + result.error
    assert {p.name: p.read_bytes() for p in main.parent.iterdir()} == before  # nothing written or created


def test_model_sql_stops_at_its_time_limit(dbs):
    main, _ = dbs
    start = time.perf_counter()
    result = run_sql(main, "SELECT count(*) FROM N a, N b, N c", timeout_s=0.3)
    assert not result.ok and "time limit" in result.error
    assert time.perf_counter() - start < 3.0


def test_the_plain_query_still_runs(dbs):
    """The threats above fail because they are threats: a read of the task database works."""
    result = run_sql(dbs[0], "SELECT Name FROM Genre ORDER BY GenreId")
    assert result.ok and result.rows == [("Rock",), ("Jazz",)]


# --------------------------------------------------------------------------- safetensors only
def _tiny_folder() -> Path:
    from labkit.models.registry import resolve_model

    return Path(resolve_model("tiny"))


def test_a_pickle_only_model_folder_is_refused_and_its_payload_never_runs(tmp_path):
    from labkit.errors import LabkitError
    from labkit.models import load_model

    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(_tiny_folder() / "config.json", folder / "config.json")
    sentinel = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (sentinel,))

    import pickle

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"model.embed_tokens.weight": Payload()}))
    with pytest.raises(LabkitError) as refused:
        load_model(str(folder))
    message = str(refused.value)
    assert message.startswith("model:") and "safetensors" in message and "pytorch_model.bin" in message
    assert "\n" not in message
    assert not sentinel.exists()


def test_a_folder_with_both_loads_the_safetensors_and_ignores_the_pickle(tmp_path):
    from labkit.models import load_model

    folder = tmp_path / "both"
    shutil.copytree(_tiny_folder(), folder)
    sentinel = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (sentinel,))

    import pickle

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"x": Payload()}))
    model = load_model(str(folder))
    assert sum(p.numel() for p in model.parameters()) > 0
    assert not sentinel.exists()


def test_load_model_asks_transformers_for_safetensors_only(monkeypatch):
    """Hub ids and built-in names go through ``use_safetensors=True`` too."""
    from labkit.models import registry

    seen: dict = {}

    def fake_load(loader, name, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(registry, "_load", fake_load)
    with pytest.raises(RuntimeError, match="stop here"):
        registry.load_model("some-org/some-model")
    assert seen.get("use_safetensors") is True
    assert seen.get("trust_remote_code", False) is False


# --------------------------------------------------------------------------- report export
SECRET = "labkit-secret-value-91c7"


def test_report_html_embeds_no_local_path_and_no_environment_value(tmp_path, monkeypatch):
    from labkit.report import run_report

    labkit_home = os.environ.get("LABKIT_HOME") or str(Path.home() / ".cache" / "labkit")
    monkeypatch.setenv("LABKIT_TEST_API_TOKEN", SECRET)
    src = tmp_path / "work" / "leaky.ipynb"
    src.parent.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell("SMOKE = True", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(
            "import os, sys, warnings, labkit\n"
            "from labkit.home import labkit_home\n"
            "print('cwd', os.getcwd())\n"
            "print('home', os.path.expanduser('~'))\n"
            "print('pkg', labkit.__file__, sys.executable)\n"
            "print('cache', labkit_home())\n"
            "print('token', os.environ['LABKIT_TEST_API_TOKEN'])\n"
            "warnings.warn('a warning names its file')"
        ),
        nbformat.v4.new_code_cell("open(os.path.join(os.getcwd(), 'missing.txt'))"),  # a traceback with paths
    ]
    nbformat.write(nb, src)
    result = run_report(src, {"SMOKE": True}, tmp_path / "out", show_code=True, timeout=120)
    page = result.html.read_text(encoding="utf-8")
    assert "a warning names its file" in page and "FileNotFoundError" in page  # the outputs are there

    leaks = {
        "$HOME": str(Path.home()),
        "repository": str(ROOT),
        "LABKIT_HOME": labkit_home,
        "python prefix": sys.prefix,
        "notebook folder": str(src.parent),
        "tmp folder": str(tmp_path),
        "env value": SECRET,
    }
    found = {what: value for what, value in leaks.items() if value and value in page}
    assert found == {}
    # the executed notebook, too, is what a participant shares
    assert SECRET not in result.notebook.read_text(encoding="utf-8")
    assert json.loads(result.notebook.read_text(encoding="utf-8"))["cells"]
