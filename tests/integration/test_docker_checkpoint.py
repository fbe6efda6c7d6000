"""Docker's own checkpoint/restore on lab host A keeps a process's memory.

Acceptance: a container counting in a shell variable is checkpointed (`docker checkpoint
create`) and restored (`docker start --checkpoint`); the count continues from where it was
instead of starting again at 1. The count is read with `docker cp` (no `docker exec`: an exec
session in the container would make CRIU refuse the dump).

Docker 20.10 race (docs/lab.md): `checkpoint create` leaves containerd's copy of the checkpoint
tar in the content store until containerd's garbage collector runs; `docker start --checkpoint`
on the same daemon re-tars the same directory into a byte-identical blob and fails with
"commit failed: content sha256:...: already exists" until then. The start is retried for that
error only.
"""

from __future__ import annotations

import io
import tarfile
import time
from typing import Any

from docker.errors import NotFound

from migrate.lab.dockerd import DOCKER_CLI
from migrate.lab.hosts import Lab, LabHost

# The file is replaced atomically, so a dump between two writes never sees it half-written.
COUNTER = (
    "i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count;"
    " sleep 0.1; done"
)
MIN_COUNT = 15  # about 1.5 s of counting before the checkpoint
WAIT_S = 30.0
GC_RACE = "already exists"
START_ATTEMPTS = 20


def docker(host: LabHost, *args: str) -> None:
    r = host.run([str(DOCKER_CLI), *args], check=False, timeout=120)
    assert r.returncode == 0, f"docker {' '.join(args)}: {r.stderr}"


def start_from_checkpoint(host: LabHost, container: str, checkpoint: str) -> int:
    """``docker start --checkpoint``; returns how many attempts the GC race cost."""
    argv = [str(DOCKER_CLI), "start", "--checkpoint", checkpoint, container]
    for attempt in range(1, START_ATTEMPTS + 1):
        r = host.run(argv, check=False, timeout=120)
        if r.returncode == 0:
            return attempt
        assert GC_RACE in r.stderr, r.stderr
        time.sleep(0.25 * attempt)
    raise AssertionError(f"docker start --checkpoint kept failing: {r.stderr}")


def read_count(container: Any) -> int:
    """The counter file's value, 0 if it cannot be read yet."""
    try:
        stream, _ = container.get_archive("/tmp/count")
    except NotFound:  # not written yet: the shell may not have ticked once
        return 0
    try:
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.extractfile("count")
            text = member.read().decode().strip() if member else ""
    except tarfile.ReadError:
        return 0
    return int(text) if text.isdigit() else 0


def wait_count(container: Any, above: int) -> int:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        n = read_count(container)
        if n > above:
            return n
        time.sleep(0.1)
    raise AssertionError(f"the count did not pass {above} within {WAIT_S} s")


def next_count(container: Any, current: int) -> int:
    """The first value written after ``current`` (polled faster than the counter ticks)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        n = read_count(container)
        if n not in (0, current):
            return n
        time.sleep(0.02)
    raise AssertionError(f"the count stayed at {current} for {WAIT_S} s")


def test_checkpoint_restore_keeps_memory(
    lab: Lab, docker_a: Any, test_image: str, container_name: str
) -> None:
    a = lab.host("a")
    ctr = docker_a.containers.run(
        test_image,
        ["sh", "-c", COUNTER],
        name=container_name,
        detach=True,
        labels={"org.migrate.test": "1"},
    )
    wait_count(ctr, MIN_COUNT)

    docker(a, "checkpoint", "create", container_name, "cp1")
    ctr.reload()
    assert ctr.status == "exited"
    at_checkpoint = read_count(ctr)
    assert at_checkpoint >= MIN_COUNT

    start_from_checkpoint(a, container_name, "cp1")
    ctr.reload()
    assert ctr.status == "running"
    # A restarted shell would overwrite the file with 1, 2, 3...; the restored one goes on.
    after = next_count(ctr, at_checkpoint)
    assert at_checkpoint < after <= at_checkpoint + 5, (at_checkpoint, after)
    later = wait_count(ctr, after + 5)
    assert later > after
