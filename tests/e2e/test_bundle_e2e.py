"""`migrate export` on A, the file copied, `migrate import` on B (issue 4, acceptance 1-2)."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import remove_containers
from test_run import _count, _start_counter, counter_image  # noqa: F401 - fixture

from migrate.lab import migrate_executable


@pytest.fixture
def other_names(lab: Any) -> Iterator[list[str]]:
    names = [f"mt-{uuid.uuid4().hex[:10]}" for _ in range(2)]
    yield names
    remove_containers(lab.host("b").docker_host, *names)


def test_export_copy_import_twice(
    migrate_on_a: Any, run_on_b: Any, container_name: str, other_names: list[str],
    docker_a: Any, docker_b: Any, counter_image: str, tmp_path: Path,  # noqa: F811
) -> None:
    _start_counter(docker_a, container_name, counter_image)
    bundle_a = tmp_path / "a" / "c.tar.zst"
    bundle_a.parent.mkdir()
    p = migrate_on_a("export", container_name, "-o", str(bundle_a), "--leave-running", "--json")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["source"] == "running" and res["bundle_bytes"] > 0
    assert docker_a.containers.get(container_name).status == "running"
    at_export = _count(docker_a, container_name)
    bundle_b = tmp_path / "b" / "c.tar.zst"  # "copied to B by any means"
    bundle_b.parent.mkdir()
    shutil.copyfile(bundle_a, bundle_b)
    exe = str(migrate_executable())
    for name in other_names:
        p = run_on_b([exe, "import", str(bundle_b), "--name", name, "--json"])
        assert p.returncode == 0, p.stderr
        c = docker_b.containers.get(name)
        assert c.status == "running"
        after = _count(docker_b, name)
        assert 20 <= after <= at_export + 5, "the counter restarted instead of continuing"
        time.sleep(0.5)
        assert _count(docker_b, name) > after, "the counter stopped"
        assert c.exec_run(["cat", "/created"]).output == b"new\n"
        assert c.exec_run(["cat", "/etc/motd"]).output == b"hello\nchanged\n"
        assert c.exec_run(["ls", "/etc/deleteme"]).exit_code != 0
        assert "SECRET=s3" in c.attrs["Config"]["Env"]


def test_tampered_bundle_creates_nothing(
    migrate_on_a: Any, run_on_b: Any, container_name: str, other_names: list[str],
    docker_a: Any, docker_b: Any, counter_image: str, tmp_path: Path,  # noqa: F811
) -> None:
    _start_counter(docker_a, container_name, counter_image)
    path = tmp_path / "c.tar.zst"
    p = migrate_on_a("export", container_name, "-o", str(path), "--leave-running")
    assert p.returncode == 0, p.stderr
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    before = {c.id for c in docker_b.containers.list(all=True)}
    p = run_on_b([str(migrate_executable()), "import", str(path), "--name", other_names[0]])
    assert p.returncode == 2, p.stderr
    assert "bundle.invalid" in p.stderr
    assert {c.id for c in docker_b.containers.list(all=True)} == before
