"""`migrate demo`: a counter container on lab host a, migrated live to host b over SSH."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from migrate.core.errors import LabError, MigrateError
from migrate.lab.config import migrate_executable, to_args
from migrate.lab.dockerd import docker_client
from migrate.lab.hosts import Lab
from migrate.lab.images import ensure_busybox_image

DEMO_NAME = "migrate-demo"
# The count lives in the shell's memory; the file only mirrors it for people to read, and
# busybox httpd serves it, so the state is visible from outside the container.
DEMO_CMD = (
    "mkdir -p /www; httpd -p 80 -h /www; i=0; while true; do i=$((i+1)); "
    "echo $i > /www/count.new; mv /www/count.new /www/index.html; sleep 0.1; done"
)


@dataclass(frozen=True)
class DemoResult:
    count_before: int
    count_after: int
    count_later: int
    report: dict[str, Any]


def _count(client: Any, name: str) -> int:
    out = client.containers.get(name).exec_run(["cat", "/www/index.html"]).output
    return int(out.decode().strip() or 0)


def run_demo(lab: Lab) -> DemoResult:
    a, b = lab.host("a"), lab.host("b")
    image = ensure_busybox_image(a.docker_host).tag
    ca, cb = docker_client(a.docker_host, timeout=120), docker_client(b.docker_host, timeout=120)
    for client in (ca, cb):  # a second demo starts from scratch
        try:
            client.containers.get(DEMO_NAME).remove(force=True)
        except Exception:  # noqa: BLE001 - absent is fine
            pass
    ca.containers.run(image, ["sh", "-c", DEMO_CMD], name=DEMO_NAME, detach=True)
    deadline = time.monotonic() + 20
    before = 0
    while time.monotonic() < deadline and before < 20:
        time.sleep(0.3)
        try:
            before = _count(ca, DEMO_NAME)
        except ValueError:
            pass
    env = lab.env()
    p = a.run(
        [
            str(migrate_executable()),
            "run",
            DEMO_NAME,
            *to_args(env),
            "--json",
        ],
        check=False,
        timeout=600,
    )
    if p.returncode != 0:
        try:
            err = json.loads(p.stdout).get("error") or {}
        except ValueError:
            err = {}
        raise LabError(
            f"the demo migration failed: {err.get('message') or p.stderr[-2000:]}",
            hint=err.get("hint") or "run `migrate lab status`; see the message above",
        )
    report = json.loads(p.stdout)
    after = _count(cb, DEMO_NAME)
    time.sleep(1.0)
    later = _count(cb, DEMO_NAME)
    if later <= after:
        raise MigrateError("the demo container on host b is not counting")
    return DemoResult(before, after, later, report)
