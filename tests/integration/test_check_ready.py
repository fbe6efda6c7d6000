"""`migrate check --json` against a real dockerd and the installed CRIU: the host is ready."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MIGRATE = ROOT / ".venv" / "bin" / "migrate"


@pytest.fixture(scope="module")
def docker_host(lab) -> str:  # type: ignore[no-untyped-def]
    """Lab host A's daemon (or MIGRATE_TEST_DOCKER_HOST to point at another one)."""
    return os.environ.get("MIGRATE_TEST_DOCKER_HOST") or lab.host("a").docker_host


def test_check_ready_against_real_dockerd(docker_host: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MIGRATE_CRIU"}
    env["DOCKER_HOST"] = docker_host
    exe = [str(MIGRATE)] if MIGRATE.exists() else [sys.executable, "-m", "migrate"]
    p = subprocess.run(
        [*exe, "check", "--json"], check=False, capture_output=True, text=True, env=env, timeout=180
    )
    data = json.loads(p.stdout)
    failed = [c for c in data["checks"] if c["required"] and not c["ok"]]
    assert not failed, json.dumps(failed, indent=1)
    assert data["ready"] is True
    assert p.returncode == 0, p.stderr
    names = {c["name"] for c in data["checks"]}
    assert {"criu", "criu_check", "docker", "docker_experimental", "storage_driver"} <= names
