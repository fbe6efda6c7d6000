"""The read-write layer arrives exactly: an opaque directory (deleted from the image, then
recreated), hard links, a sparse file, a FIFO, symlinks, modes and owners, a deleted image file
(`migrate run` A -> B over SSH, real overlay2 on both daemons)."""

from __future__ import annotations

import time
from typing import Any

import pytest

SETUP = " && ".join(
    [
        "rm -rf /data && mkdir /data && echo fresh > /data/new",  # opaque: old1/old2 must not return
        "rm /keep/gone",  # plain whiteout
        "echo linked > /hl1 && ln /hl1 /hl2",  # one inode, two names
        "dd if=/dev/zero of=/sparse bs=1 count=1 seek=33554431 2>/dev/null",  # 32 MiB, ~4 KiB used
        "mkfifo /fifo && chmod 0640 /fifo",
        "ln -s /data/new /link && ln -s ../nowhere /dangling",
        "mkdir -p /owned && echo o > /owned/f && chown -R 1234:5678 /owned && chmod 0751 /owned",
        "echo ready > /tmp/ready",
    ]
)

CHECK = [
    ("ls -A /data", "new\n"),
    ("cat /data/new", "fresh\n"),
    ("ls -A /keep", "stay\n"),
    ("stat -c %i /hl1", None),  # compared with /hl2 below
    ("cat /hl2", "linked\n"),
    ("stat -c %s /sparse", "33554432\n"),
    ("stat -c %F:%a /fifo", "fifo:640\n"),
    ("readlink /link", "/data/new\n"),
    ("readlink /dangling", "../nowhere\n"),
    ("stat -c %u:%g:%a /owned", "1234:5678:751\n"),
    ("stat -c %u:%g /owned/f", "1234:5678\n"),
]


@pytest.fixture
def rootfs_image(lab: Any, test_image: str) -> str:
    from migrate.lab.images import build_image

    tag = "migrate-test/rootfs:1"
    build_image(
        lab.host("a").docker_host,
        tag,
        base=test_image,
        files={
            "/data/old1": b"1\n",
            "/data/old2": b"2\n",
            "/keep/gone": b"x\n",
            "/keep/stay": b"s\n",
        },
    )
    return tag


def _sh(container: Any, cmd: str) -> str:
    res = container.exec_run(["sh", "-c", cmd])
    assert res.exit_code == 0, (cmd, res.output)
    return str(res.output.decode())


def test_rw_layer_arrives_exactly(
    migrate_on_a: Any,
    migrate_args: list[str],
    container_name: str,
    docker_a: Any,
    docker_b: Any,
    rootfs_image: str,
) -> None:
    c = docker_a.containers.run(
        rootfs_image, ["sh", "-c", SETUP + " && exec sleep 1000"], name=container_name, detach=True
    )
    deadline = time.monotonic() + 20
    while c.exec_run(["cat", "/tmp/ready"]).exit_code != 0:
        assert time.monotonic() < deadline, c.logs()
        time.sleep(0.1)
    before = {cmd: _sh(c, cmd) for cmd, _ in CHECK}
    p = migrate_on_a("run", container_name, *migrate_args, "--json")
    assert p.returncode == 0, p.stderr
    b = docker_b.containers.get(container_name)
    for cmd, want in CHECK:
        got = _sh(b, cmd)
        if want is not None:
            assert got == want, cmd
            assert before[cmd] == want, f"test setup: {cmd} on A gave {before[cmd]!r}"
    assert _sh(b, "stat -c %i /hl1") == _sh(b, "stat -c %i /hl2"), "hard link became a copy"
    # The sparse file stays sparse (a few KiB allocated, not 32 MiB).
    assert int(_sh(b, "stat -c %b /sparse")) * 512 < 1 << 20
