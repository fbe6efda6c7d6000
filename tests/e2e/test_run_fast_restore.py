"""A cold migration whose memory skips Docker's restore path (lazy_pages.py) keeps every byte
of the container's memory: real CRIU, real dockerd and sshd on the two lab hosts."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from conftest import AB

from migrate.engines.docker.runc_conf import RUNC_CRIU_CONF

# 48 MiB of random text held by one awk process, in 8 KiB strings (above the agent's 16 MiB
# threshold for the split restore). On request (a line written to the FIFO /tmp/ask) awk
# writes what it holds to /tmp/dump: the checksum of that file is a checksum of the process's
# memory. awk waits for requests in open() of the FIFO and never forks: a process polling
# with system("sleep") is caught mid-vfork now and then by the pause (the parent waits in D
# state for a frozen child) and CRIU cannot seize it ("Unseizable non-zombie ... state D").
HOLDER = (
    "mkfifo /tmp/ask && tr -dc a-z0-9 </dev/urandom | head -c 50331648 | fold -w 8192 | awk '"
    '{ a[NR] = $0 } END { print "ready" > "/tmp/ready"; close("/tmp/ready"); '
    'while (1) { if ((getline x < "/tmp/ask") > 0) { '
    'for (i = 1; i <= NR; i++) print a[i] > "/tmp/dump"; '
    'close("/tmp/dump"); print "done" > "/tmp/dumped"; close("/tmp/dumped") } '
    'close("/tmp/ask") } }\''
)


def _sh(client: Any, name: str, cmd: str) -> str:
    res = client.containers.get(name).exec_run(["sh", "-c", cmd])
    assert res.exit_code == 0, res.output
    return str(res.output.decode().strip())


def _wait_file(client: Any, name: str, path: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.containers.get(name).exec_run(["test", "-e", path]).exit_code == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"{path} did not appear in {name}")


def _memory_sum(client: Any, name: str) -> str:
    """md5 of what the awk process holds in memory (it writes it out on request)."""
    _sh(client, name, "rm -f /tmp/dump /tmp/dumped; echo go > /tmp/ask")
    _wait_file(client, name, "/tmp/dumped")
    out = _sh(client, name, "md5sum /tmp/dump; wc -c < /tmp/dump; rm -f /tmp/dump /tmp/dumped")
    digest, _, rest = out.partition(" ")
    assert int(rest.split()[-1]) == 50331648 + 6144  # 6144 lines of 8 KiB, newline each
    return digest


def start_holder(client: Any, name: str, image: str) -> str:
    """Run HOLDER as ``name`` and return the checksum of its memory once it is ready."""
    client.containers.run(image, ["sh", "-c", HOLDER], name=name, detach=True)
    _wait_file(client, name, "/tmp/ready")
    return _memory_sum(client, name)


def test_memory_survives_split_restore(
    ab: AB,
) -> None:
    before = start_holder(ab.docker_a, ab.container_name, ab.test_image)
    # The administrator's runc.conf (make setup writes `file-locks` there) must not stop the
    # split restore, and must be exactly as it was afterwards.
    admin_conf = RUNC_CRIU_CONF.read_text() if RUNC_CRIU_CONF.exists() else None

    p = ab.run("--json")
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert rep["status"] == "migrated"
    # The agent took the split path: Docker got the checkpoint without the lazy memory.
    assert "restore_memory_fill" in rep["phases"], rep["phases"]
    assert 0 < rep["downtime_s"]

    assert ab.docker_b.containers.get(ab.container_name).status == "running"
    assert _memory_sum(ab.docker_b, ab.container_name) == before
    # runc.conf is the administrator's again; no lazy-pages work directory is left behind.
    assert (RUNC_CRIU_CONF.read_text() if RUNC_CRIU_CONF.exists() else None) == admin_conf
    assert not RUNC_CRIU_CONF.with_name("runc.conf.migrate-saved").exists()
    # Ours only: other sessions on this machine restore with their own work directories.
    assert not (Path("/run/migrate") / f"lazy-{rep['migration_id'][:12]}").exists()
