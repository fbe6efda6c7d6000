"""`migrate run` with a bind mount: refused by default, `same-path`, `copy` (issue 7).

Most of the lab's filesystem is shared by its two hosts (they are namespaces of one machine),
but each host binds a directory of its own at LOCAL_DIR (/srv/migrate-lab-local) in its mount
namespace, where its dockerd, its sshd (hence the agent) and the source's `migrate run` all
live: a path under it exists on A and not on B, or with other content, as on two machines.
So `copy` really transfers here, and `same-path` really uses B's own data."""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors
import docker.types
import pytest
from conftest import AB

from migrate.lab.config import LOCAL_DIR
from migrate.lab.hosts import Lab

WRITER = "i=0; while true; do i=$((i+1)); echo $i > /shared/count; sleep 0.1; done"
# Appends one numbered line per tick: after the move B's file must go on from where A's stopped.
APPENDER = "i=0; while true; do i=$((i+1)); echo $i >> /shared/log; sleep 0.1; done"
WAIT_S = 30.0


@dataclass(frozen=True)
class LocalPath:
    """One path under LOCAL_DIR as the container sees it (``path``) and the same path's
    content on each host, reached from the root namespace through the host's directory."""

    path: Path
    on_a: Path
    on_b: Path


@pytest.fixture
def local_path(lab: Lab) -> Iterator[LocalPath]:
    name = f"mt-bind-{uuid.uuid4().hex[:10]}"
    lp = LocalPath(
        LOCAL_DIR / name, lab.config.paths("a").local / name, lab.config.paths("b").local / name
    )
    yield lp
    for d in (lp.on_a, lp.on_b):
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def bind_dir() -> Iterator[Path]:
    """A directory in the shared part of the filesystem (the same on both hosts)."""
    d = Path(f"/tmp/mt-bind-{uuid.uuid4().hex[:10]}")
    d.mkdir()
    (d / "seed").write_text("seeded\n")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _start(docker_a: Any, name: str, image: str, src: Path, cmd: str = WRITER) -> None:
    docker_a.containers.run(
        image,
        ["sh", "-c", cmd],
        name=name,
        detach=True,
        mounts=[docker.types.Mount("/shared", str(src), type="bind")],
    )


def _wait(cond: Any, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _lines(p: Path) -> list[int]:
    """The complete numbered lines of an appended log (a line being written is left out)."""
    text = p.read_text() if p.exists() else ""
    return [int(x) for x in text[: text.rfind("\n") + 1].split()]


def _fill(root: Path) -> None:
    """Files of several kinds, modes and owners (the container adds ``log``)."""
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "seed").write_text("seeded on a\n")
    (root / "sub" / "deep").write_bytes(bytes(range(256)) * 64)
    (root / "sub" / "deeper" / "empty").touch()
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "link").symlink_to("sub/deep")
    (root / "dangling").symlink_to("/nowhere/at/all")
    os.chmod(root / "seed", 0o640)
    os.chmod(root / "run.sh", 0o755)
    os.chmod(root / "sub" / "deep", 0o600)
    os.chmod(root / "sub", 0o750)
    os.chmod(root / "sub" / "deeper", 0o1777)
    os.chown(root / "sub" / "deep", 1234, 2345)
    os.lchown(root / "link", 1234, 1234)


def _tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root``: type, permission bits, owner, and content or target."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                what: Any = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                what = p.read_bytes()
            else:
                what = None
            out[str(p.relative_to(root))] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                what,
            )
    st = root.lstat()
    out["."] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, None)
    return out


def test_hosts_have_their_own_local_dir(
    lab: Lab, run_on_a: Any, run_on_b: Any, local_path: LocalPath
) -> None:
    """The premise of the tests below: A's path under LOCAL_DIR is not B's."""
    local_path.on_a.mkdir()
    (local_path.on_a / "who").write_text("a\n")
    assert run_on_a(["cat", f"{local_path.path}/who"]).stdout == "a\n"
    r = run_on_b(["cat", f"{local_path.path}/who"])
    assert r.returncode != 0 and "No such file" in r.stderr
    assert not local_path.path.exists()  # the root namespace has neither
    r = run_on_a(lab.ssh_argv("b", f"test -e {local_path.path} || echo absent"))
    assert r.stdout == "absent\n", r.stderr  # what the agent on B sees


def test_bind_mount_refused_by_default_with_the_hint(
    ab: AB,
    bind_dir: Path,
) -> None:
    _start(ab.docker_a, ab.container_name, ab.test_image, bind_dir)
    _wait(lambda: (bind_dir / "count").exists(), "the first count")
    p = ab.run()
    assert p.returncode == 3, p.stderr
    assert str(bind_dir) in p.stderr and "--bind-mounts same-path" in p.stderr
    assert "--bind-mounts copy" in p.stderr
    assert ab.docker_a.containers.get(ab.container_name).status == "running"
    assert not ab.docker_b.containers.list(all=True, filters={"name": ab.container_name})


def test_copy_moves_the_directory_and_the_writer_goes_on_there(
    ab: AB,
    local_path: LocalPath,
) -> None:
    local_path.on_a.mkdir(mode=0o711)
    _fill(local_path.on_a)
    _start(ab.docker_a, ab.container_name, ab.test_image, local_path.path, APPENDER)
    _wait(lambda: len(_lines(local_path.on_a / "log")) >= 10, "10 lines on A")
    assert not local_path.on_b.exists()

    p = ab.run("--bind-mounts", "copy", "--json")
    assert p.returncode == 0, p.stderr
    # Copied while the container ran, then the delta in the freeze (migrate/fs/precopy.py).
    assert json.loads(p.stdout)["bytes"]["volumes_precopy"] > 16384

    c = ab.docker_b.containers.get(ab.container_name)
    assert c.status == "running"
    assert [m["Source"] for m in c.attrs["Mounts"]] == [str(local_path.path)]
    with pytest.raises(docker.errors.NotFound):
        ab.docker_a.containers.get(ab.container_name)
    # A's directory is left as it was when the container was frozen: its writer is gone.
    a_full = _tree(local_path.on_a)
    a_tree = {k: v for k, v in a_full.items() if k != "log"}
    a_log = _lines(local_path.on_a / "log")
    assert a_log == list(range(1, len(a_log) + 1)) and len(a_log) >= 10
    # B's copy is identical (types, modes, owners, content, symlink targets), but for the log
    # its writer went on appending to: the same lines, then the next numbers, none lost.
    _wait(lambda: len(_lines(local_path.on_b / "log")) >= len(a_log) + 10, "10 more lines on B")
    b_tree = {k: v for k, v in _tree(local_path.on_b).items() if k != "log"}
    assert b_tree == a_tree
    b_log = _lines(local_path.on_b / "log")
    assert b_log[: len(a_log)] == a_log
    assert b_log == list(range(1, len(b_log) + 1)), "lines lost or repeated across the move"
    # The container on B sees it through its bind; A's directory no longer changes.
    out = c.exec_run(
        ["sh", "-c", "cat /shared/seed; readlink /shared/link; wc -c < /shared/sub/deep"]
    ).output.decode()
    assert out.split() == ["seeded", "on", "a", "sub/deep", "16384"]
    assert _tree(local_path.on_a) == a_full


def test_copy_rollback_removes_what_it_created_on_b(
    ab: AB,
    local_path: LocalPath,
) -> None:
    """The bind is two levels below a directory B lacks: the copy creates both, the rollback
    (restore fails on B) removes the topmost one; A's container runs on, writing its dir."""
    src_a = local_path.on_a / "data"
    src_a.mkdir(parents=True)
    _fill(src_a)
    _start(ab.docker_a, ab.container_name, ab.test_image, local_path.path / "data", APPENDER)
    _wait(lambda: len(_lines(src_a / "log")) >= 5, "5 lines on A")
    before = _tree(src_a)
    p = ab.run(
        "--bind-mounts",
        "copy",
        env_extra={"MIGRATE_FAULTS": "agent:restore_fail"},
    )
    assert p.returncode == 1, p.stderr
    assert "Rolled back" in p.stderr
    assert ab.docker_a.containers.get(ab.container_name).status == "running"
    assert not ab.docker_b.containers.list(all=True, filters={"name": ab.container_name})
    assert not local_path.on_b.exists(), "the copy's directories were left on B"
    # A's directory: untouched but for its writer, which goes on.
    n = len(_lines(src_a / "log"))
    _wait(lambda: len(_lines(src_a / "log")) >= n + 5, "5 more lines on A")
    after = _tree(src_a)
    assert {k: v for k, v in after.items() if k != "log"} == {
        k: v for k, v in before.items() if k != "log"
    }


def test_copy_refuses_a_path_with_content_on_b(
    ab: AB,
    local_path: LocalPath,
) -> None:
    local_path.on_a.mkdir()
    local_path.on_b.mkdir()
    (local_path.on_b / "theirs").write_text("b's own\n")
    _start(ab.docker_a, ab.container_name, ab.test_image, local_path.path)
    _wait(lambda: (local_path.on_a / "count").exists(), "the first count")
    p = ab.run("--bind-mounts", "copy")
    assert p.returncode == 3, p.stderr
    assert "not empty" in p.stderr and "same-path" in p.stderr
    assert ab.docker_a.containers.get(ab.container_name).status == "running"
    assert sorted(os.listdir(local_path.on_b)) == ["theirs"]
    assert (local_path.on_b / "theirs").read_text() == "b's own\n"
    assert not ab.docker_b.containers.list(all=True, filters={"name": ab.container_name})


def test_same_path_uses_bs_own_data(
    ab: AB,
    local_path: LocalPath,
) -> None:
    """B holds its own data at the path beforehand (as on shared or replicated storage):
    nothing is copied, B's container reads B's data and writes there; A's stays A's."""
    for d, who in ((local_path.on_a, "a"), (local_path.on_b, "b")):
        d.mkdir()
        (d / "seed").write_text(f"prepared on {who}\n")
    _start(ab.docker_a, ab.container_name, ab.test_image, local_path.path)
    _wait(lambda: (local_path.on_a / "count").exists(), "the first count")
    p = ab.run("--bind-mounts", "same-path")
    assert p.returncode == 0, p.stderr
    c = ab.docker_b.containers.get(ab.container_name)
    assert [m["Source"] for m in c.attrs["Mounts"]] == [str(local_path.path)]
    assert c.exec_run(["cat", "/shared/seed"]).output == b"prepared on b\n"
    _wait(lambda: (local_path.on_b / "count").exists(), "B's copy writing to B's directory")
    n = int((local_path.on_b / "count").read_text() or 0)
    _wait(lambda: int((local_path.on_b / "count").read_text() or 0) > n, "B's count growing")
    assert sorted(os.listdir(local_path.on_b)) == ["count", "seed"]
    assert (local_path.on_a / "seed").read_text() == "prepared on a\n"
    a_count = (local_path.on_a / "count").read_text()
    time.sleep(0.5)
    assert (local_path.on_a / "count").read_text() == a_count  # nobody writes A's any more


def test_same_path_refuses_a_path_missing_on_b(
    ab: AB,
    local_path: LocalPath,
) -> None:
    local_path.on_a.mkdir()
    _start(ab.docker_a, ab.container_name, ab.test_image, local_path.path)
    _wait(lambda: (local_path.on_a / "count").exists(), "the first count")
    p = ab.run("--bind-mounts", "same-path")
    assert p.returncode == 3, p.stderr
    assert "does not exist on the destination" in p.stderr
    assert ab.docker_a.containers.get(ab.container_name).status == "running"
    assert not local_path.on_b.exists()
    assert not ab.docker_b.containers.list(all=True, filters={"name": ab.container_name})
