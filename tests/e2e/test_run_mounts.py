"""`migrate run` with volumes and log history between the lab hosts (issue 7)."""

from __future__ import annotations

import json
import time
from typing import Any

import docker.errors
import docker.types
import pytest
from conftest import AB

# Writes a counter into the named volume and one into the anonymous volume (the shell's
# memory holds the same value), and logs a line per tick. Each file is replaced by a rename:
# a reader never sees one truncated (CI read an empty /anon/count under load).
WRITER = (
    "echo before-move-marker; i=0; while true; do i=$((i+1)); "
    "echo $i > /data/count.new; mv /data/count.new /data/count; "
    "echo $i > /anon/count.new; mv /anon/count.new /anon/count; "
    "echo tick $i; sleep 0.1; done"
)
SETUP = (
    "mkdir -p /data/sub && echo hello > /data/sub/file && chown 1234:5678 /data/sub/file "
    "&& chmod 0640 /data/sub/file && ln -s sub/file /data/link && echo anon > /anon/keep"
)


def _exec(client: Any, name: str, cmd: str) -> str:
    res = client.containers.get(name).exec_run(["sh", "-c", cmd])
    assert res.exit_code == 0, res.output
    return str(res.output.decode())


def _start(docker_a: Any, name: str, image: str, volume: str) -> None:
    docker_a.volumes.create(volume, labels={"team": "storage"})
    docker_a.containers.run(
        image,
        ["sh", "-c", f"{SETUP} && {WRITER}"],
        name=name,
        detach=True,
        volumes={volume: {"bind": "/data", "mode": "rw"}},
        mounts=[docker.types.Mount("/anon", None, type="volume")],
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if int(_exec(docker_a, name, "cat /data/count").strip() or 0) >= 10:
                return
        except (AssertionError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError("writer did not start")


def _anon_name(client: Any, name: str) -> str:
    mounts = client.api.inspect_container(name)["Mounts"]
    return str(next(m["Name"] for m in mounts if m["Destination"] == "/anon"))


def test_volumes_and_logs_move_to_b(
    ab: AB,
    volume_name: str,
) -> None:
    _start(ab.docker_a, ab.container_name, ab.test_image, volume_name)
    anon = _anon_name(ab.docker_a, ab.container_name)
    p = ab.run("--json")
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert rep["bytes"]["volumes"] > 0 and rep["bytes"]["logs"] > 0

    # The same volumes (named one with its labels, anonymous one by its name) back it on B.
    assert ab.docker_b.volumes.get(volume_name).attrs["Labels"] == {"team": "storage"}
    assert _anon_name(ab.docker_b, ab.container_name) == anon
    # The content moved with owners, modes and links; the anonymous volume too.
    stat = _exec(ab.docker_b, ab.container_name, "stat -c '%u:%g %a' /data/sub/file").strip()
    assert stat == "1234:5678 640"
    assert _exec(ab.docker_b, ab.container_name, "cat /data/link").strip() == "hello"
    assert _exec(ab.docker_b, ab.container_name, "cat /anon/keep").strip() == "anon"
    # Captured frozen: the counter in the volume and the one in memory continue together
    # (a lost or stale volume would show a missing file or a jump back).
    first = int(_exec(ab.docker_b, ab.container_name, "cat /data/count").strip())
    time.sleep(1.0)
    later = int(_exec(ab.docker_b, ab.container_name, "cat /data/count").strip())
    assert later > first >= 10
    assert int(_exec(ab.docker_b, ab.container_name, "cat /anon/count").strip()) >= later
    # The log history moved: lines from A, then lines written on B.
    logs = ab.docker_b.containers.get(ab.container_name).logs().decode()
    assert logs.startswith("before-move-marker\n"), logs[:200]
    ticks = [int(x.split()[1]) for x in logs.splitlines() if x.startswith("tick ")]
    assert ticks[0] == 1 and ticks[-1] >= later - 1
    assert ticks == list(range(1, len(ticks) + 1)), "log lines lost or repeated"


def test_volume_with_other_content_on_b_is_refused(
    ab: AB,
    volume_name: str,
) -> None:
    ab.docker_b.volumes.create(volume_name)
    ab.docker_b.containers.run(
        ab.test_image,
        ["sh", "-c", "echo theirs > /v/mine"],
        remove=True,
        volumes={volume_name: {"bind": "/v", "mode": "rw"}},
    )
    _start(ab.docker_a, ab.container_name, ab.test_image, volume_name)
    p = ab.run()
    assert p.returncode == 3, p.stderr
    assert "not empty" in p.stderr and "docker volume rm" in p.stderr
    assert ab.docker_a.containers.get(ab.container_name).status == "running"
    out = ab.docker_b.containers.run(
        ab.test_image,
        ["ls", "/v"],
        remove=True,
        volumes={volume_name: {"bind": "/v", "mode": "ro"}},
    )
    assert out.decode().split() == ["mine"]
    with pytest.raises(docker.errors.NotFound):
        ab.docker_b.containers.get(ab.container_name)


def test_rollback_removes_the_volumes_it_made(
    ab: AB,
    volume_name: str,
) -> None:
    _start(ab.docker_a, ab.container_name, ab.test_image, volume_name)
    anon = _anon_name(ab.docker_a, ab.container_name)
    p = ab.run(
        env_extra={"MIGRATE_FAULTS": "agent:restore_fail"},
    )
    assert p.returncode == 1, p.stderr
    assert ab.docker_a.containers.get(ab.container_name).status == "running"
    for v in (volume_name, anon):
        with pytest.raises(docker.errors.NotFound):
            ab.docker_b.volumes.get(v)
    # The source's volume is untouched and still written to.
    assert int(_exec(ab.docker_a, ab.container_name, "cat /data/count").strip()) > 10
