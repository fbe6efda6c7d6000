"""`migrate evacuate` drains lab host A: three containers arrive on B intact, one with a bind
mount is reported and left running on A; a target that refuses is skipped for the next."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

COUNT = (
    "i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new "
    "/tmp/count; sleep 0.1; done"
)


def _count(client: Any, name: str) -> int:
    out = client.containers.get(name).exec_run(["cat", "/tmp/count"]).output
    return int(out.decode().strip() or 0)


def test_evacuate_moves_all_and_leaves_the_unmovable(
    lab_env: dict[str, str],
    migrate_on_a: Any,
    migrate_args: list[str],
    docker_a: Any,
    docker_b: Any,
    test_image: str,
    tmp_path: Path,
) -> None:
    tag = uuid.uuid4().hex[:8]
    label = {"mt-evacuate": tag}
    movers = [f"mt-ev-{tag}-{i}" for i in range(3)]
    pinned = f"mt-ev-{tag}-bind"
    bystander = f"mt-ev-{tag}-other"  # no label: must not move
    (tmp_path / "data").mkdir()
    try:
        for n in movers:
            docker_a.containers.run(
                test_image, ["sh", "-c", COUNT], name=n, detach=True, labels=label
            )
        docker_a.containers.run(
            test_image,
            ["sleep", "1000"],
            name=pinned,
            detach=True,
            labels=label,
            volumes={str(tmp_path / "data"): {"bind": "/data", "mode": "rw"}},
        )
        docker_a.containers.run(test_image, ["sleep", "1000"], name=bystander, detach=True)
        time.sleep(1.0)
        before = {n: _count(docker_a, n) for n in movers}
        assert all(v > 0 for v in before.values()), before
        # Two targets: A itself first (it refuses: the names are taken there), then B.
        args = list(migrate_args)
        i = args.index("--to") + 1
        args[i] = f"ssh://root@{lab_env['MIGRATE_LAB_A_ADDR']},{args[i]}"
        p = migrate_on_a(
            "evacuate", *args, "--label", f"mt-evacuate={tag}", "--parallel", "2", "--json"
        )
        assert p.returncode == 1, p.stdout + p.stderr  # one container was left behind
        res = json.loads(p.stdout)
        assert res["status"] == "partial" and res["moved"] == 3 and res["left"] == 1
        by = {c["container"]: c for c in res["containers"]}
        assert set(by) == {*movers, pinned}  # the unlabelled one was not considered
        for n in movers:
            assert by[n]["status"] == "migrated", by[n]
            assert by[n]["target"] == migrate_args[migrate_args.index("--to") + 1]
            assert by[n]["downtime_s"] > 0
            # Two at a time, each over its own OpenSSH bulk connection (--bulk auto).
            assert by[n]["report"]["stream_channel"] == "openssh", by[n]["report"]
            assert docker_b.containers.get(n).status == "running"
            assert _count(docker_b, n) >= before[n], "state lost"
            assert not docker_a.containers.list(all=True, filters={"name": n})
        assert by[pinned]["status"] == "refused"
        assert "bind" in by[pinned]["error"]["message"] and by[pinned]["error"]["hint"]
        assert docker_a.containers.get(pinned).status == "running"
        assert docker_a.containers.get(bystander).status == "running"
        assert not docker_b.containers.list(all=True, filters={"name": pinned})
    finally:
        for client in (docker_a, docker_b):
            for c in client.containers.list(all=True, filters={"name": f"mt-ev-{tag}"}):
                c.remove(force=True)


def test_evacuate_nothing_reachable_is_refused(
    lab_env: dict[str, str], migrate_on_a: Any, migrate_args: list[str]
) -> None:
    args = list(migrate_args)
    args[args.index("--to") + 1] = f"ssh://root@{lab_env['MIGRATE_LAB_B_ADDR']}:2999"
    p = migrate_on_a("evacuate", *args, "--label", "mt-evacuate=none")
    assert p.returncode == 3, p.stdout + p.stderr
    assert "no target host is reachable" in p.stderr


def test_evacuate_passes_bulk_to_each_migration(
    migrate_on_a: Any,
    migrate_args: list[str],
    docker_a: Any,
    docker_b: Any,
    test_image: str,
) -> None:
    tag = uuid.uuid4().hex[:8]
    name = f"mt-ev-{tag}-0"
    try:
        docker_a.containers.run(
            test_image, ["sh", "-c", COUNT], name=name, detach=True, labels={"mt-evacuate": tag}
        )
        time.sleep(0.5)
        p = migrate_on_a(
            "evacuate",
            *migrate_args,
            "--label",
            f"mt-evacuate={tag}",
            "--bulk",
            "paramiko",
            "--json",
        )
        assert p.returncode == 0, p.stdout + p.stderr
        (only,) = json.loads(p.stdout)["containers"]
        assert only["status"] == "migrated", only
        # auto would have taken OpenSSH here (the test above): the choice reached the migration.
        assert only["report"]["stream_channel"] == "paramiko", only["report"]
        assert docker_b.containers.get(name).status == "running"
    finally:
        for client in (docker_a, docker_b):
            for c in client.containers.list(all=True, filters={"name": name}):
                c.remove(force=True)
