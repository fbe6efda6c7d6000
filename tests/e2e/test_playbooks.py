"""The Ansible playbooks, run for real against the two lab hosts over SSH: prepare.yml twice
(the second run changes nothing), evacuate.yml drains host A."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from migrate.lab.config import ansible_inventory
from migrate.lab.hosts import Lab

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RECAP = re.compile(
    r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M
)
COUNT = (
    "i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new "
    "/tmp/count; sleep 0.1; done"
)


@pytest.fixture
def inventory(lab: Lab, tmp_path: Path) -> Path:
    inv = tmp_path / "inventory.yml"
    inv.write_text(ansible_inventory(lab.config))
    return inv


def play(
    playbook: str, inventory: Path, *extra: str, cwd: Path
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
    }
    return subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            str(inventory),
            str(ROOT / "playbooks" / playbook),
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


def recap(out: str) -> dict[str, dict[str, int]]:
    return {
        m[0]: {"ok": int(m[1]), "changed": int(m[2]), "unreachable": int(m[3]), "failed": int(m[4])}
        for m in RECAP.findall(out)
    }


def _count(client: Any, name: str) -> int:
    return int(client.containers.get(name).exec_run(["cat", "/tmp/count"]).output.decode() or 0)


def test_prepare_twice_second_run_changes_nothing(inventory: Path, tmp_path: Path) -> None:
    first = play("prepare.yml", inventory, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    r1 = recap(first.stdout)
    assert set(r1) == {"a", "b"} and all(h["failed"] == h["unreachable"] == 0 for h in r1.values())
    # it really went through every host and checked each peer's agent
    assert "Check this host and every peer's agent" in first.stdout
    second = play("prepare.yml", inventory, cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    r2 = recap(second.stdout)
    assert set(r2) == {"a", "b"}
    assert all(h["changed"] == 0 and h["failed"] == 0 for h in r2.values()), second.stdout


def test_evacuate_playbook_drains_a(
    inventory: Path, tmp_path: Path, docker_a: Any, docker_b: Any, test_image: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    movers = [f"mt-pb-{tag}-{i}" for i in range(2)]
    pinned = f"mt-pb-{tag}-bind"
    (tmp_path / "data").mkdir()
    try:
        for n in movers:
            docker_a.containers.run(
                test_image, ["sh", "-c", COUNT], name=n, detach=True, labels={"mt-pb": tag}
            )
        docker_a.containers.run(
            test_image,
            ["sleep", "1000"],
            name=pinned,
            detach=True,
            labels={"mt-pb": tag},
            volumes={str(tmp_path / "data"): {"bind": "/data", "mode": "rw"}},
        )
        time.sleep(1.0)
        before = {n: _count(docker_a, n) for n in movers}
        p = play(
            "evacuate.yml",
            inventory,
            "-e",
            "migrate_drain=a",
            "-e",
            f"migrate_label=mt-pb={tag}",
            cwd=tmp_path,
        )
        # The bind-mounted container had to stay: the play reports it and fails.
        assert p.returncode != 0, p.stdout + p.stderr
        assert "1 container(s) stayed on a" in p.stdout, p.stdout
        assert "status partial: moved 2, left 1" in p.stdout, p.stdout
        assert f"{pinned}: refused" in p.stdout
        for n in movers:
            assert f"{n}: migrated -> ssh://root@" in p.stdout
            assert docker_b.containers.get(n).status == "running"
            assert _count(docker_b, n) >= before[n], "state lost"
            assert not docker_a.containers.list(all=True, filters={"name": n})
        assert docker_a.containers.get(pinned).status == "running"
        # With migrate_allow_partial the same situation is a success (nothing left to move).
        p = play(
            "evacuate.yml",
            inventory,
            "-e",
            "migrate_drain=a",
            "-e",
            f"migrate_label=mt-pb={tag}",
            "-e",
            "migrate_allow_partial=true",
            cwd=tmp_path,
        )
        assert p.returncode == 0, p.stdout + p.stderr
        assert "status partial: moved 0, left 1" in p.stdout
    finally:
        for client in (docker_a, docker_b):
            for c in client.containers.list(all=True, filters={"name": f"mt-pb-{tag}"}):
                c.remove(force=True)


def test_evacuate_playbook_needs_a_host(inventory: Path, tmp_path: Path) -> None:
    p = play("evacuate.yml", inventory, cwd=tmp_path)
    assert p.returncode != 0
    assert "-e migrate_drain=HOST" in p.stdout


def test_drill_playbook_fetches_the_reports(
    inventory: Path, tmp_path: Path, docker_a: Any, docker_b: Any, test_image: str
) -> None:
    import json

    name = f"mt-pbd-{uuid.uuid4().hex[:8]}"
    fetch = tmp_path / "reports"
    try:
        docker_a.containers.run(test_image, ["sh", "-c", COUNT], name=name, detach=True)
        time.sleep(1.0)
        p = play(
            "drill.yml",
            inventory,
            "-e",
            "migrate_drill_source=a",
            "-e",
            "migrate_standby=b",
            "-e",
            json.dumps({"migrate_drill_containers": [name]}),
            "-e",
            "migrate_drill_verify_cmd=cat /tmp/count",
            "-e",
            f"migrate_drill_fetch_dir={fetch}",
            cwd=tmp_path,
        )
        assert p.returncode == 0, p.stdout + p.stderr
        report = json.loads((fetch / "a" / f"{name}.json").read_text())
        assert "PASSED" in (fetch / "a" / f"{name}.md").read_text()
        assert report["passed"] is True and report["verification"]["exit_code"] == 0, report
        assert f"{name}: passed" in p.stdout
        # The source kept running; nothing of the drill is left on B.
        assert docker_a.containers.get(name).status == "running"
        assert not [c.name for c in docker_b.containers.list(all=True) if name in c.name]
    finally:
        for client in (docker_a, docker_b):
            for c in client.containers.list(all=True):
                if name in c.name:
                    c.remove(force=True)
