"""`migrate run` with a bind mount: refused by default, `same-path`, `copy` (issue 7).

The lab's two hosts share one filesystem (they are network namespaces), so a path is always
present "on B" with A's content: `copy` can only be shown refusing here (the path exists
with content on the destination); its planning is unit-tested (test_bind_plan.py)."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.types
import pytest

WRITER = "i=0; while true; do i=$((i+1)); echo $i > /shared/count; sleep 0.1; done"


@pytest.fixture
def bind_dir() -> Iterator[Path]:
    d = Path(f"/tmp/mt-bind-{uuid.uuid4().hex[:10]}")
    d.mkdir()
    (d / "seed").write_text("seeded\n")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _start(docker_a: Any, name: str, image: str, src: Path) -> None:
    docker_a.containers.run(image, ["sh", "-c", WRITER], name=name, detach=True,
                            mounts=[docker.types.Mount("/shared", str(src), type="bind")])  # fmt: skip
    deadline = time.monotonic() + 20
    while not (src / "count").exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def test_bind_mount_refused_by_default_with_the_hint(
    migrate_on_a: Any, migrate_args: list[str], container_name: str, docker_a: Any,
    docker_b: Any, test_image: str, bind_dir: Path,
) -> None:  # fmt: skip
    _start(docker_a, container_name, test_image, bind_dir)
    p = migrate_on_a("run", container_name, *migrate_args)
    assert p.returncode == 3, p.stderr
    assert str(bind_dir) in p.stderr and "--bind-mounts same-path" in p.stderr
    assert "--bind-mounts copy" in p.stderr
    assert docker_a.containers.get(container_name).status == "running"
    assert not docker_b.containers.list(all=True, filters={"name": container_name})


def test_same_path_keeps_using_the_path_on_b(
    migrate_on_a: Any, migrate_args: list[str], container_name: str, docker_a: Any,
    docker_b: Any, test_image: str, bind_dir: Path,
) -> None:  # fmt: skip
    _start(docker_a, container_name, test_image, bind_dir)
    p = migrate_on_a("run", container_name, *migrate_args, "--bind-mounts", "same-path")
    assert p.returncode == 0, p.stderr
    c = docker_b.containers.get(container_name)
    assert c.attrs["Mounts"][0]["Source"] == str(bind_dir)
    assert c.exec_run(["cat", "/shared/seed"]).output == b"seeded\n"
    n = int((bind_dir / "count").read_text())
    time.sleep(0.8)
    assert int((bind_dir / "count").read_text()) > n  # B's copy writes through the bind


def test_same_path_refuses_a_path_missing_on_b(
    migrate_on_a: Any, migrate_args: list[str], container_name: str, docker_a: Any,
    test_image: str, bind_dir: Path,
) -> None:  # fmt: skip
    _start(docker_a, container_name, test_image, bind_dir)
    # Shared filesystem: remove the path after the container mounted it (A still has it in
    # its mount namespace; the destination's check sees it gone).
    shutil.rmtree(bind_dir)
    p = migrate_on_a("run", container_name, *migrate_args, "--bind-mounts", "same-path")
    assert p.returncode == 3, p.stderr
    assert "does not exist on the destination" in p.stderr
    assert docker_a.containers.get(container_name).status == "running"


def test_copy_refuses_a_path_with_content_on_b(
    migrate_on_a: Any, migrate_args: list[str], container_name: str, docker_a: Any,
    docker_b: Any, test_image: str, bind_dir: Path,
) -> None:  # fmt: skip
    _start(docker_a, container_name, test_image, bind_dir)
    p = migrate_on_a("run", container_name, *migrate_args, "--bind-mounts", "copy")
    assert p.returncode == 3, p.stderr
    assert "not empty" in p.stderr and "same-path" in p.stderr
    assert docker_a.containers.get(container_name).status == "running"
    assert (bind_dir / "seed").read_text() == "seeded\n"
    assert not docker_b.containers.list(all=True, filters={"name": container_name})
