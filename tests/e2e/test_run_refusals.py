"""`migrate run` refuses before touching anything (exit 3, with the fix): a container that is
not running, a destination daemon without experimental features or with another CPU; and
`migrate check --to DEST` reporting the destination."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import AB

from migrate.lab.config import DOCKERD
from migrate.lab.dockerd import docker_client
from migrate.lab.system import read_pid, stop_pid

UNSHARE = "/usr/bin/unshare"


def _nothing_on(client: Any, name: str) -> bool:
    return not client.containers.list(all=True, filters={"name": name})


@pytest.mark.parametrize("state", ["exited", "created", "paused"])
def test_container_not_running_is_refused(
    state: str,
    ab: AB,
) -> None:
    if state == "created":
        ab.docker_a.containers.create(ab.test_image, ["sleep", "1000"], name=ab.container_name)
    else:
        c = ab.docker_a.containers.run(
            ab.test_image, ["sleep", "1000"], name=ab.container_name, detach=True
        )
        if state == "exited":
            c.kill()
            c.wait(timeout=30)
        else:
            c.pause()
    p = ab.run()
    assert p.returncode == 3, p.stderr
    assert f"is {state}" in p.stderr and "only running containers migrate" in p.stderr
    assert "docker start" in p.stderr or "unpause" in p.stderr  # the fix
    assert ab.docker_a.containers.get(ab.container_name).status == state  # untouched
    assert _nothing_on(ab.docker_b, ab.container_name)


@pytest.fixture
def plain_dockerd_b(lab: Any) -> Iterator[str]:
    """A second dockerd for host B, started WITHOUT --experimental: its own data root, exec
    root and socket, and a network namespace of its own (dockerd owns docker0 in its
    namespace: `--bridge none` in B's would delete B's bridge). The agent reaches it through
    the unix socket. Yields its DOCKER_HOST; stopped by pidfile afterwards."""
    root = Path(f"/run/migrate-test-plain-{lab.config.name}")
    if root.exists():  # leftovers of an interrupted run
        _stop_plain(root)
        shutil.rmtree(root, ignore_errors=True)
    for d in ("data", "exec"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "daemon.json").write_text("{}\n")
    sock = root / "docker.sock"
    argv = [
        str(DOCKERD),
        "--config-file",
        str(root / "daemon.json"),
        "--data-root",
        str(root / "data"),
        "--exec-root",
        str(root / "exec"),
        "-H",
        f"unix://{sock}",
        "--pidfile",
        str(root / "docker.pid"),
        "--iptables=false",
        "--ip-masq=false",
    ]
    with open(root / "dockerd.log", "ab") as logf:
        subprocess.Popen(
            [UNSHARE, "--net", "--", *argv],
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    host = f"unix://{sock}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(Exception):
                client = docker_client(host, timeout=5)
                try:
                    if client.ping():
                        break
                finally:
                    client.close()
            if time.monotonic() > deadline:
                raise AssertionError((root / "dockerd.log").read_text()[-2000:])
            time.sleep(0.3)
        yield host
    finally:
        _stop_plain(root)
        shutil.rmtree(root, ignore_errors=True)


def _stop_plain(root: Path) -> None:
    # dockerd stops its containerd on SIGTERM; a containerd left by a killed dockerd is
    # stopped from its own pidfile.
    for pidfile in (root / "docker.pid", root / "exec" / "containerd" / "containerd.pid"):
        pid = read_pid(pidfile)
        if pid is not None:
            stop_pid(pid, f"test dockerd ({pidfile.name})")


def test_destination_daemon_not_experimental_is_refused(
    plain_dockerd_b: str,
    ab: AB,
) -> None:
    ab.docker_a.containers.run(
        ab.test_image, ["sleep", "1000"], name=ab.container_name, detach=True
    )
    p = ab.run("--dest-docker-host", plain_dockerd_b)
    assert p.returncode == 3, p.stderr
    assert "not running with experimental features" in p.stderr
    assert "experimental" in p.stderr.split("not running with experimental features", 1)[1]
    assert ab.docker_a.containers.get(ab.container_name).status == "running"
    client = docker_client(plain_dockerd_b, timeout=30)
    try:
        assert client.containers.list(all=True) == []
        assert client.images.list() == []  # not even the image was sent
    finally:
        client.close()


def _criu_saying_cpu_differs(tmp_path: Path) -> Path:
    """The real CRIU, except that `cpuinfo check` answers as on a host lacking a CPU feature
    (both lab hosts share this machine's CPU, so a real mismatch cannot happen here)."""
    real = shutil.which("criu", path="/usr/local/sbin:/usr/sbin:/usr/bin")
    assert real
    fake = tmp_path / "criu"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = cpuinfo ] && [ "$2" = check ]; then\n'
        "  echo 'Error (criu/cpu.c:1): cpu: CPU has no avx512f' >&2; exit 1\n"
        "fi\n"
        f'exec {real} "$@"\n'
    )
    fake.chmod(0o755)
    return fake


def test_destination_cpu_mismatch_is_refused(
    ab: AB,
    tmp_path: Path,
) -> None:
    ab.docker_a.containers.run(
        ab.test_image, ["sleep", "1000"], name=ab.container_name, detach=True
    )
    args = list(ab.migrate_args)
    i = args.index("--agent-command") + 1
    args[i] = f"env MIGRATE_CRIU={_criu_saying_cpu_differs(tmp_path)} {args[i]}"
    p = ab.migrate_on_a("run", ab.container_name, *args)
    assert p.returncode == 3, p.stderr
    assert "CPU lacks features" in p.stderr and "same CPU features" in p.stderr
    assert ab.docker_a.containers.get(ab.container_name).status == "running"
    assert _nothing_on(ab.docker_b, ab.container_name)


def test_check_to_destination(
    migrate_on_a: Any, migrate_args: list[str], plain_dockerd_b: str, tmp_path: Path
) -> None:
    p = migrate_on_a("check", *migrate_args, "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    data = json.loads(p.stdout)
    assert data["ready"] is True
    dest = {c["name"]: c for c in data["destination"]["checks"]}
    for name in ("agent", "criu", "criu_check", "docker", "docker_experimental", "cpu", "bulk"):
        assert dest[name]["ok"], dest[name]
    # The same destination with a daemon lacking experimental features: not ready, with the fix.
    p = migrate_on_a("check", *migrate_args, "--dest-docker-host", plain_dockerd_b, "--json")
    assert p.returncode == 3, p.stdout + p.stderr
    dest = {c["name"]: c for c in json.loads(p.stdout)["destination"]["checks"]}
    assert dest["docker_experimental"]["status"] == "fail"
    assert "experimental" in dest["docker_experimental"]["fix"]
    # And a human-readable table naming the destination.
    p = migrate_on_a("check", *migrate_args)
    assert p.returncode == 0 and "destination ssh://" in p.stdout, p.stdout + p.stderr
