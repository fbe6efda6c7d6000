"""Pure parts of `migrate evacuate`: target and label parsing, the memory ledger."""

from __future__ import annotations

import pytest

from migrate.core.errors import UsageError
from migrate.source.evacuate import Ledger, parse_labels, parse_targets


def test_parse_targets() -> None:
    assert parse_targets("b, ssh://u@c:2222,b") == ["ssh://root@b", "ssh://u@c:2222"]
    with pytest.raises(UsageError):
        parse_targets(" , ")


def test_parse_labels() -> None:
    assert parse_labels(["a=1", "b="]) == {"a": "1", "b": ""}
    with pytest.raises(UsageError, match="KEY=VALUE"):
        parse_labels(["novalue"])


def test_ledger_places_on_most_available_and_debits() -> None:
    led = Ledger({"x": 100, "y": 300, "z": 300})
    assert led.order() == ["y", "z", "x"]  # ties keep the command-line order
    led.debit("y", 250)
    assert led.order() == ["z", "x", "y"]
    assert led.order(exclude=["z"]) == ["x", "y"]
    led.credit("y", 250)
    assert led.order()[0] == "y"
