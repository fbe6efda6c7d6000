"""The drill's verdict and its reports (pure logic: migrate/source/drill.py)."""

from __future__ import annotations

import json

import pytest

from migrate.core.errors import ProtocolError
from migrate.source.drill import DrillReport, Verification, _verdict
from migrate.wire.messages import validate_request


def _report(**kw: object) -> DrillReport:
    base: dict[str, object] = dict(
        status="passed",
        container="db",
        source_host="a",
        destination="ssh://root@b",
        drill_id="abc",
        drill_name="db-drill-abc",
        started="t0",
        finished="t1",
        total_s=2.5,
    )
    base.update(kw)
    return DrillReport(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("v", "reason"),
    [
        (Verification(5, None, running=True, status="running"), None),
        (Verification(5, ("true",), running=True, exit_code=0), None),
        (Verification(5, ("false",), running=True, exit_code=1), "exited with 1"),
        (Verification(5, ("sleep", "9"), running=True, timed_out=True), "did not finish within 60"),
        (
            Verification(2, ("true",), running=False, status="exited"),
            "was exited, not running, after 2 s",
        ),
    ],
)
def test_verdict(v: Verification, reason: str | None) -> None:
    got = _verdict(v, 60)
    assert (got is None) if reason is None else (got is not None and reason in got)


def test_json_report_has_the_audit_fields() -> None:
    r = _report(
        recovery_point="2026-01-01T00:00:00+00:00",
        recovery_time_s=1.23456,
        restore_s=0.5,
        sizes={"bundle": 10},
        verification=Verification(1, ("sh", "-c", "x"), True, "running", 0),
    )
    d = json.loads(json.dumps(r.to_json()))
    assert d["recovery_point"] == "2026-01-01T00:00:00+00:00" and d["recovery_time_s"] == 1.235
    assert d["verification"]["command"] == ["sh", "-c", "x"] and d["verification"]["exit_code"] == 0
    assert d["status"] == "passed" and d["passed"] is True and d["reason"] is None
    assert d["sizes"] == {"bundle": 10}


def test_markdown_keeps_one_row_per_field_and_shows_why() -> None:
    err = {
        "code": "criu.restore_failed",
        "message": "m",
        "hint": "fix it",
        "details": {"criu_log": "line 1\nError (x): boom"},
    }
    r = _report(
        status="failed",
        reason="restore | failed\nlong log here",
        error=err,
        verification=Verification(0, ("a|b",), True, "running", 3, output="out\n"),
    )
    md = r.to_markdown()
    assert md.startswith("# Drill of `db` to ssh://root@b: FAILED")
    assert "| reason | restore \\| failed |" in md and "long log here" not in md.split("```")[0]
    assert "| fix | fix it |" in md and "`a\\|b`: exit 3" in md
    assert "Error (x): boom" in md and "out" in md
    rows = [line for line in md.splitlines() if line.startswith("|")]
    assert all(line.endswith("|") for line in rows)


def test_drill_methods_are_validated() -> None:
    ok = {
        "type": "request",
        "id": 1,
        "method": "drill_verify",
        "args": {"drill_id": "x", "settle_s": 1, "argv": ["true"], "timeout_s": 2.5},
    }
    assert validate_request(ok)[1].name == "drill_verify"
    bad = {**ok, "args": {**ok["args"], "settle_s": True}}
    with pytest.raises(ProtocolError, match="settle_s"):
        validate_request(bad)
    with pytest.raises(ProtocolError, match="keep"):
        validate_request(
            {
                "type": "request",
                "id": 2,
                "method": "drill_remove",
                "args": {"drill_id": "x", "keep": "yes"},
            }
        )
