"""Crash-safe sweeps and run store (issue 17): ``kill -9`` mid-point and mid-record-write, then
rerun; two processes sweeping into one store at once; the per-run-key lock.

The subprocess runs ``labkit sweep`` through a small wrapper (written below) that can hold the
process still at a chosen moment, so the kill lands there deterministically: inside a training
step of the point with LoRA rank ``HANG_RANK``, or after that point's record was written to its
temporary file and before the rename. The wrapper writes a marker file when it gets there, then
waits for a ``go`` file (a kill arrives first). Nothing in labkit itself knows about these hooks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

WRAPPER = r'''
import json, os, sys, time
from pathlib import Path

marks = Path(os.environ["CS_MARKS"])
hang_rank = int(os.environ.get("CS_HANG_RANK", "0"))
modes = os.environ.get("CS_MODE", "").split(",")


def hold(name):
    (marks / name).write_text(str(os.getpid()))
    deadline = time.time() + 120
    while not (marks / "go").exists() and time.time() < deadline:
        time.sleep(0.05)


import labkit.train.engine as engine

current = {"rank": None, "steps": 0}
real_loop = engine._Run.loop


def loop(self, record):
    current["rank"], current["steps"] = self.config.rank, 0
    return real_loop(self, record)


engine._Run.loop = loop
real_step = engine.train_step


def train_step(*args, **kwargs):
    current["steps"] += 1
    if "step" in modes and current["rank"] == hang_rank and current["steps"] == 2:
        hold("in_step")
    return real_step(*args, **kwargs)


engine.train_step = train_step
real_replace = os.replace


def replace(src, dst, *args, **kwargs):
    if "replace" in modes and str(dst).endswith("record.json"):
        if json.loads(Path(src).read_text())["config"]["rank"] == hang_rank:
            hold("before_rename")
    return real_replace(src, dst, *args, **kwargs)


os.replace = replace

if "wait_lock" in modes:
    from labkit.train.store import RunStore

    real_lock = RunStore.lock

    def lock(self, config):
        (marks / "at_lock").touch()
        return real_lock(self, config)

    RunStore.lock = lock

from labkit.cli import main

sys.exit(main(sys.argv[1:]))
'''

SWEEP = ["sweep", "--model", "tiny", "--task", "text2sql", "--ranks", "1,2", "--steps", "3",
         "--eval-examples", "0", "--batch", "2", "--seq", "64", "--train-examples", "8", "--json"]


def _start(tmp: Path, runs: Path, marks: Path, mode: str = "", hang_rank: int = 2) -> subprocess.Popen:
    wrapper = tmp / "wrapper.py"
    wrapper.write_text(WRAPPER)
    marks.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CS_MARKS": str(marks), "CS_MODE": mode, "CS_HANG_RANK": str(hang_rank),
           "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, str(wrapper), *SWEEP, "--runs", str(runs)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"process ended before {path.name}: {proc.stderr.read()[-2000:]}")
        assert time.time() < deadline, f"timed out waiting for {path.name}"
        time.sleep(0.05)


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    return json.loads(out)


def _records(runs: Path) -> dict[int, tuple[Path, bytes]]:
    """rank -> (record.json, its bytes) for every finished record in the store."""
    found = {}
    for path in runs.glob("*/record.json"):
        data = path.read_bytes()
        found[json.loads(data)["config"]["rank"]] = (path, data)
    return found


def test_kill_9_mid_point_and_mid_write_then_rerun_and_a_concurrent_sweep(tmp_path, tiny):
    """(``tiny``: built in this process first, so no subprocess spends its time pretraining it.)"""
    runs = tmp_path / "runs"

    # 1. Killed inside a training step of the second point (rank 2): rank 1 is stored, rank 2 is not.
    proc = _start(tmp_path, runs, tmp_path / "m1", "step")
    _wait_for(tmp_path / "m1" / "in_step", proc)
    _kill(proc)
    stored = _records(runs)
    assert set(stored) == {1}
    first_path, first_bytes = stored[1]
    assert json.loads(first_bytes)["status"] == "ok"

    # 2. Rerun, killed after rank 2's record went to its temporary file, before the rename.
    proc = _start(tmp_path, runs, tmp_path / "m2", "replace")
    _wait_for(tmp_path / "m2" / "before_rename", proc)
    temps = list(runs.glob("*/.record.json.*.tmp"))
    assert len(temps) == 1 and json.loads(temps[0].read_text())["config"]["rank"] == 2
    _kill(proc)
    assert set(_records(runs)) == {1}  # the whole temporary record is there, but never read
    assert first_path.read_bytes() == first_bytes

    # 3. Rerun twice at once. Whichever process takes rank 2's lock first holds still mid-training;
    #    the other, which meanwhile reached that lock, waits and afterwards reuses its record.
    a = _start(tmp_path, runs, tmp_path / "ma", "step,wait_lock")
    b = _start(tmp_path, runs, tmp_path / "mb", "step,wait_lock")
    deadline = time.time() + 240
    while True:  # one process in rank 2's training step, the other at rank 2's lock
        states = [{p.name for p in (tmp_path / m).iterdir()} for m in ("ma", "mb")]
        if any("in_step" in mine and "at_lock" in theirs for mine, theirs in (states, states[::-1])):
            break
        for proc in (a, b):
            assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < deadline, f"never both at rank 2: {states}"
        time.sleep(0.1)
    time.sleep(1.0)  # the waiter is blocked on the lock the holder keeps
    assert not list(runs.glob("*/.record.json.*.tmp")), "the killed writer's temporary file is cleared"
    if "in_step" not in states[0]:
        a, b = b, a  # a: the holder, b: the waiter
    for m in ("ma", "mb"):
        (tmp_path / m / "go").touch()
    result_a, result_b = _finish(a), _finish(b)

    assert [p["reused"] for p in result_a["points"]] == [True, False]
    assert [p["reused"] for p in result_b["points"]] == [True, True]
    assert result_a["trained"] + result_b["trained"] == 1
    final = _records(runs)
    assert set(final) == {1, 2}
    assert final[1] == (first_path, first_bytes)  # the finished point: untouched, byte for byte
    assert json.loads(final[2][1])["status"] == "ok"
    assert result_b["points"][1]["seconds"] == json.loads(final[2][1])["seconds"]  # B read A's record
    assert not list(runs.glob("*/.record.json.*.tmp"))


# --------------------------------------------------------------------------------------
# The lock itself, in one process (fast)
# --------------------------------------------------------------------------------------
def test_lock_serialises_one_run_key_and_not_others(tmp_path):
    from labkit.train.config import TrainConfig
    from labkit.train.store import RunStore

    store = RunStore(tmp_path)
    one, other = TrainConfig(model="tiny", steps=2), TrainConfig(model="tiny", steps=3)
    order: list[str] = []
    held = threading.Event()

    def first() -> None:
        with store.lock(one):
            held.set()
            time.sleep(0.5)
            order.append("first done")

    thread = threading.Thread(target=first)
    thread.start()
    held.wait(5)
    with store.lock(other):  # another key: not blocked
        order.append("other key")
    with store.lock(one):  # the same key: waits for the first holder
        order.append("second")
    thread.join()
    assert order == ["other key", "first done", "second"]


def test_lock_clears_a_killed_writers_temporary_file_and_get_ignores_it(tmp_path):
    from labkit.train.config import TrainConfig
    from labkit.train.store import RunStore

    store = RunStore(tmp_path)
    config = TrainConfig(model="tiny", steps=2)
    folder = store.run_dir(config)
    folder.mkdir(parents=True)
    stray = folder / ".record.json.abc123.tmp"
    stray.write_text('{"status": "ok", "config": {')  # half a record, as a killed writer leaves it
    (folder / "record.json").write_text('{"status": "ok", "conf')  # even a torn record.json is not read
    assert store.get(config) is None
    with store.lock(config):
        assert not stray.exists()


@pytest.mark.parametrize("reuse", [False, True])
def test_train_under_the_lock_reuses_what_another_holder_stored(tmp_path, tiny, reuse):
    """train() waits for the key's lock and then reads the store again (never trains twice)."""
    from labkit.train import train
    from labkit.train.config import TrainConfig
    from labkit.train.store import RunStore

    store = RunStore(tmp_path)
    config = TrainConfig(model="tiny", task="text2sql", method="lora", rank=1, steps=2, eval_examples=0,
                         batch_size=2, seq_len=64, train_examples=8)
    result: dict = {}
    with store.lock(config):
        thread = threading.Thread(target=lambda: result.update(r=train(config, base=tiny, store=store,
                                                                       progress=False)))
        thread.start()
        time.sleep(0.5)
        assert thread.is_alive() and not result  # waiting on the lock
        if reuse:  # the holder stores a finished record meanwhile
            done = train(config, base=tiny, store=None, progress=False)
            store.put(done)
    thread.join(60)
    assert result["r"].status == "ok"
    assert result["r"].reused is reuse
