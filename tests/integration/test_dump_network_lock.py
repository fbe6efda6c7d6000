"""migrate's own dumps skip CRIU's network lock (engines/docker/runc_conf.py, dump_env), on a real
runc + CRIU dump of a container on lab host A, and the restore follows: CRIU records the
method in the images, so Docker's restore (which migrate cannot give options) lifts no lock.
A container with an established TCP connection is still refused by the dump (the lock would
have protected it): that is why skipping it is safe."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from migrate.core.errors import CheckpointFailed
from migrate.engines.docker.engine import DockerEngine
from migrate.engines.docker.runc_conf import DUMP_CONF
from migrate.lab.hosts import Lab

# CRIU's NETWORK_LOCK_SKIP as inventory.img stores it (a uint32: iptables 0, nftables 1, skip 2;
# criu/include/cr_options.h).
SKIP = 2


def _inventory_lock(img: Path) -> Any:
    from pycriu.images import load

    with open(img / "inventory.img", "rb") as f:
        return load(f)["entries"][0].get("network_lock_method")


def test_checkpoint_skips_the_network_lock(
    lab: Lab, docker_a: Any, container_name: str, test_image: str
) -> None:
    docker_a.containers.run(test_image, ["sleep", "3600"], name=container_name, detach=True)
    engine = DockerEngine(lab.host("a").docker_host)
    engine.pause(container_name)
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        img, work = Path(tmp) / "img", Path(tmp) / "work"
        engine.checkpoint(container_name, img, work)
        assert (work / DUMP_CONF).read_text().split() == ["network-lock", "skip"]
        assert _inventory_lock(img) == SKIP
    engine.unpause(container_name)
    assert docker_a.containers.get(container_name).status == "running"


# A TCP connection inside the container, kept open: busybox nc listens, another nc connects
# (both fed by a sleep: nc ends its side of the connection at the end of its input).
TCP_PAIR = (
    "sleep 3600 | nc -l -p 7777 >/tmp/got & sleep 0.5; "
    "(echo hello; sleep 3600) | nc 127.0.0.1 7777 & sleep 3600"
)


def _established(pid: int) -> bool:
    """A TCP connection in state ESTABLISHED (01) in the network namespace of ``pid``."""
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        if any(r.split()[3] == "01" for r in rows if len(r.split()) > 3):
            return True
    return False


def test_established_tcp_is_still_refused(
    lab: Lab, docker_a: Any, container_name: str, test_image: str
) -> None:
    docker_a.containers.run(test_image, ["sh", "-c", TCP_PAIR], name=container_name, detach=True)
    pid = docker_a.containers.get(container_name).attrs["State"]["Pid"]
    deadline = time.monotonic() + 30
    while not _established(pid):
        assert time.monotonic() < deadline, "the TCP connection in the container never came up"
        time.sleep(0.1)
    engine = DockerEngine(lab.host("a").docker_host)
    engine.pause(container_name)
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        with pytest.raises(CheckpointFailed) as e:
            engine.checkpoint(container_name, Path(tmp) / "img", Path(tmp) / "work")
        assert "tcp-established" in str(e.value) or "TCP" in str(e.value), e.value
    engine.unpause(container_name)
    assert docker_a.containers.get(container_name).status == "running"
