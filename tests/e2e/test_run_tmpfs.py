"""tmpfs mounts and /dev/shm keep their content and options across `migrate run` (issue 7)."""

from __future__ import annotations

from typing import Any

from conftest import AB

SETUP = "echo scratch-data > /scratch/f && echo shm-data > /dev/shm/seg && echo ready; sleep 100000"


def _sh(client: Any, name: str, cmd: str) -> str:
    res = client.containers.get(name).exec_run(["sh", "-c", cmd])
    assert res.exit_code == 0, res.output
    return str(res.output.decode())


def test_tmpfs_and_dev_shm_content_survive(
    ab: AB,
) -> None:
    import time

    ab.docker_a.containers.run(
        ab.test_image,
        ["sh", "-c", SETUP],
        name=ab.container_name,
        detach=True,
        tmpfs={"/scratch": "size=8m,mode=1770"},
    )
    deadline = time.monotonic() + 20
    while b"ready" not in ab.docker_a.containers.get(ab.container_name).logs():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    p = ab.run()
    assert p.returncode == 0, p.stderr
    assert _sh(ab.docker_b, ab.container_name, "cat /scratch/f") == "scratch-data\n"
    assert _sh(ab.docker_b, ab.container_name, "cat /dev/shm/seg") == "shm-data\n"
    mounts = _sh(ab.docker_b, ab.container_name, "grep -E ' /scratch | /dev/shm ' /proc/mounts")
    scratch = next(line for line in mounts.splitlines() if " /scratch " in line)
    assert "tmpfs" in scratch and "size=8192k" in scratch and "mode=1770" in scratch, mounts
