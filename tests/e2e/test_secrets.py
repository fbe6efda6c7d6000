"""Secrets stay secret (issue 5): a container's environment values never appear in what the
tool prints (--json report, errors, --verbose logs) nor in the journals on either side, on
success and on a rolled-back failure."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from conftest import AB
from test_handover import start_counter

JOURNALS = Path("/var/lib/migrate/journal")


@pytest.mark.parametrize("fault", ["", "agent:restore_fail"])
def test_env_values_never_printed_or_journalled(
    fault: str,
    ab: AB,
) -> None:
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    start_counter(ab.docker_a, ab.test_image, ab.container_name, env={"DB_PASSWORD": secret})
    env = {"MIGRATE_FAULTS": fault} if fault else {}
    outputs = []
    dry = ab.migrate_on_a("-v", "run", ab.container_name, *ab.migrate_args, "--dry-run", "--json")
    outputs.append(dry.stdout + dry.stderr)
    p = ab.migrate_on_a("-v", "run", ab.container_name, *ab.migrate_args, "--json", env_extra=env)
    outputs.append(p.stdout + p.stderr)
    assert p.returncode == (1 if fault else 0), p.stderr
    for text in outputs:
        assert secret not in text
    # The secret did travel (the container needs it), only not into any report or log.
    where = ab.docker_b if not fault else ab.docker_a
    assert f"DB_PASSWORD={secret}" in where.containers.get(ab.container_name).attrs["Config"]["Env"]
    for j in JOURNALS.rglob("*.jsonl"):
        try:
            assert secret not in j.read_text(), f"secret in {j}"
        except FileNotFoundError:
            continue
