"""The labs' three sizes: SMOKE / SIZE resolve to one size, pick() returns that size's value."""

from __future__ import annotations

import pytest

from labkit.errors import LabkitError
from labkit.notebook import SIZES, pick, resolve_size, setup


@pytest.mark.parametrize("smoke, size, expected", [
    (False, None, "full"), (True, None, "smoke"), (False, "standard", "standard"),
    (False, "smoke", "smoke"), (True, "smoke", "smoke"), (False, "full", "full"),
])
def test_smoke_and_size_resolve_to_one_size(smoke, size, expected):
    assert resolve_size(smoke, size) == expected


@pytest.mark.parametrize("smoke, size, message", [
    (False, "medium", "SIZE: must be one of smoke, standard, full"),
    (True, "full", "SMOKE = True and SIZE = 'full' disagree"),
    (True, "standard", "SMOKE = True and SIZE = 'standard' disagree"),
])
def test_bad_sizes_name_the_parameter(smoke, size, message):
    with pytest.raises(LabkitError, match=message.replace("(", r"\(")):
        resolve_size(smoke, size)


def test_pick_returns_the_value_of_the_size():
    values = dict(smoke=1, standard=2, full=3)
    assert [pick(None, size=s, **values) for s in SIZES] == [1, 2, 3]
    assert pick(7, size="standard", **values) == 7  # a value given wins
    assert pick(None, smoke=1, full=3, size="standard") == 1  # no standard value: the smoke one
    assert pick(None, smoke=1, full=3, is_smoke=True) == 1 and pick(None, smoke=1, full=3, is_smoke=False) == 3


def test_setup_remembers_the_size_for_pick(capsys):
    env = setup(size="standard", quiet=True)
    assert env.size == "standard" and env.smoke is False
    assert pick(None, smoke="a", standard="b", full="c") == "b" == env.pick(None, smoke="a", standard="b", full="c")
    env = setup(True)
    assert env.size == "smoke" and env.smoke and "smoke size" in capsys.readouterr().out
    assert pick(None, smoke="a", standard="b", full="c") == "a"
    setup(False, quiet=True)
