"""Incremental protocols and object ordering."""

from __future__ import annotations

import pytest

from model.errors import InputError
from model.evaluation.protocols import PAPER_ORDER, order_objects, parse_protocol, protocol_steps

TEN = list(PAPER_ORDER)


def test_paper_protocols():
    assert protocol_steps("10-0", TEN) == [TEN]
    assert protocol_steps("9-1", TEN) == [TEN[:9], ["tire"]]
    assert protocol_steps("6-4", TEN) == [TEN[:6], TEN[6:]]
    assert protocol_steps("6-1x4", TEN) == [TEN[:6], ["peach"], ["potato"], ["rope"], ["tire"]]


def test_general_forms():
    five = ["a", "b", "c", "d", "e"]
    assert protocol_steps("3-1x2", five) == [["a", "b", "c"], ["d"], ["e"]]
    assert protocol_steps("1-1x4", five) == [["a"], ["b"], ["c"], ["d"], ["e"]]
    assert protocol_steps("1-2x2", five) == [["a"], ["b", "c"], ["d", "e"]]
    assert protocol_steps("3-2", five) == [["a", "b", "c"], ["d", "e"]]
    assert protocol_steps("5-0", five) == [five]
    assert parse_protocol(" 6-1x4 ") == (6, 1, 4)
    assert parse_protocol("10-0") == (10, 0, 0)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("10-0", "uses 10 objects but 5 were selected"),
        ("3-1x3", "uses 6 objects"),
        ("0-5", "base step"),
        ("3-0x2", "at least one object each"),
        ("six-four", "unknown protocol"),
        ("6_1x4", "unknown protocol"),
    ],
)
def test_protocols_that_do_not_fit(name, message):
    with pytest.raises(InputError, match=message):
        protocol_steps(name, ["a", "b", "c", "d", "e"])


def test_default_order_is_the_papers_then_alphabetical():
    shuffled = ["tire", "zebra", "bagel", "rope", "apple", "carrot"]
    assert order_objects(shuffled) == ["bagel", "carrot", "rope", "tire", "apple", "zebra"]
    assert order_objects(["ring", "disc", "tile"]) == ["disc", "ring", "tile"]


def test_requested_order_is_kept_and_validated():
    available = ["disc", "ring", "tile"]
    assert order_objects(available, ["tile", "disc"]) == ["tile", "disc"]
    with pytest.raises(InputError, match="unknown object.*bagel.*available: disc, ring, tile"):
        order_objects(available, ["disc", "bagel"])
    with pytest.raises(InputError, match="more than once: disc"):
        order_objects(available, ["disc", "disc"])
    with pytest.raises(InputError, match="no objects"):
        order_objects(available, [" "])
    with pytest.raises(InputError, match="no objects"):
        order_objects([])
