"""The CLI's choice options are typer Enum choices: a bad value is a usage error (exit 2)
that names the option and lists its choices, before anything is touched (pure: no daemon)."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from migrate.cli.main import app

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("option", "choices"),
    [
        ("--strategy", "'cold', 'lazy', 'auto'"),
        ("--bulk", "'auto', 'openssh', 'paramiko'"),
        ("--staging", "'auto', 'memory', 'disk'"),
        ("--compression", "'adaptive', 'fixed'"),
        ("--bind-mounts", "'refuse', 'same-path', 'copy'"),
    ],
)
def test_a_bad_choice_is_a_usage_error_listing_the_choices(option: str, choices: str) -> None:
    res = CliRunner().invoke(app, ["run", "web", "--to", "local://", option, "bogus"])
    assert res.exit_code == 2
    words = " ".join(re.sub("[\u2500-\u257f]", " ", res.output).split())
    assert f"'{option}'" in words and choices in words, res.output


def test_the_choices_are_listed_in_help() -> None:
    res = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    assert "cold|lazy|auto" in res.output and "refuse|same-path|copy" in res.output
