"""Shared test infrastructure.

Markers come from the directory: tests/unit -> ``unit``, tests/integration -> ``integration``,
tests/e2e -> ``e2e`` (``pytest -m unit`` runs only the pure tests).

The lab fixtures use a lab of their own (name ``mtest``, subnet ``10.213.8.0/24``; override with
MIGRATE_TEST_LAB / MIGRATE_TEST_LAB_SUBNET), so a developer's ``mlab`` is never touched. The
first test that asks for ``lab`` brings it up (``Lab.up`` is idempotent and repairs leftovers
of earlier runs); it is left up at the end so the next run starts in a second. Set
MIGRATE_TEST_LAB_DOWN=1 to bring it down after the session. Tests never rely on what an
earlier run left: every container gets a fresh unique name and is removed afterwards.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from migrate.lab.config import LabConfig, migrate_executable, to_args
from migrate.lab.dockerd import docker_client
from migrate.lab.hosts import Lab
from migrate.lab.images import BUSYBOX_TAG, TEST_LABEL, ensure_busybox_image

TESTS_DIR = Path(__file__).resolve().parent
KINDS = ("unit", "integration", "e2e")
TEST_LAB_NAME = os.environ.get("MIGRATE_TEST_LAB", "mtest")
TEST_LAB_SUBNET = os.environ.get("MIGRATE_TEST_LAB_SUBNET", "10.213.8.0/24")
MIGRATE_TIMEOUT_S = 300.0
# Prefixed to the agent command of the tests: the agent obeys the fault points a test sends
# (MIGRATE_FAULTS=agent:...) only with this in its own environment (migrate/core/faults.py).
AGENT_FAULTS_ON = "env MIGRATE_AGENT_FAULTS=1"

RunFn = Callable[..., "subprocess.CompletedProcess[str]"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            kind = item.path.resolve().relative_to(TESTS_DIR).parts[0]
        except (ValueError, IndexError):
            continue
        if kind in KINDS:
            item.add_marker(getattr(pytest.mark, kind))


@pytest.fixture(scope="session")
def lab_config() -> LabConfig:
    return LabConfig(name=TEST_LAB_NAME, subnet=TEST_LAB_SUBNET)


@pytest.fixture(scope="session")
def lab(lab_config: LabConfig) -> Iterator[Lab]:
    """The test lab, up and healthy (``lab.env()``, ``lab.host("a").run([...])``)."""
    if os.geteuid() != 0:
        pytest.fail("the lab needs root: run the suite as root (make test)")
    the_lab = Lab(lab_config)
    the_lab.up()
    yield the_lab
    if os.environ.get("MIGRATE_TEST_LAB_DOWN") == "1":
        the_lab.down()


@pytest.fixture(scope="session")
def lab_env(lab: Lab) -> dict[str, str]:
    """MIGRATE_LAB_* variables and MIGRATE_AGENT_COMMAND for the test lab."""
    return lab.env()


@pytest.fixture(scope="session")
def docker_a(lab: Lab) -> Iterator[Any]:
    """Docker SDK client on lab host A."""
    client = docker_client(lab.host("a").docker_host, timeout=120)
    yield client
    client.close()


@pytest.fixture(scope="session")
def docker_b(lab: Lab) -> Iterator[Any]:
    """Docker SDK client on lab host B."""
    client = docker_client(lab.host("b").docker_host, timeout=120)
    yield client
    client.close()


@pytest.fixture(scope="session")
def test_image(lab: Lab) -> str:
    """The busybox test image on host A (imported offline); returns its tag."""
    return ensure_busybox_image(lab.host("a").docker_host, BUSYBOX_TAG).tag


def _runner(lab: Lab, host: str) -> RunFn:
    h = lab.host(host)
    env = lab.env()

    def run(
        cmd: Sequence[str],
        *,
        env_extra: dict[str, str] | None = None,
        check: bool = False,
        timeout: float = MIGRATE_TIMEOUT_S,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return h.run(
            cmd, env={**env, **(env_extra or {})}, check=check, timeout=timeout, input=input
        )

    return run


@pytest.fixture(scope="session")
def run_on_a(lab: Lab) -> RunFn:
    """``run_on_a([argv...], check=False, timeout=..., env_extra={...})``: run a command in
    host A's network namespace with DOCKER_HOST=A and the MIGRATE_LAB_* variables set."""
    return _runner(lab, "a")


@pytest.fixture(scope="session")
def run_on_b(lab: Lab) -> RunFn:
    """Same as ``run_on_a``, on host B."""
    return _runner(lab, "b")


@pytest.fixture(scope="session")
def migrate_on_a(run_on_a: RunFn) -> RunFn:
    """``migrate_on_a("run", NAME, "--to", url, ...)``: the project's ``migrate`` CLI as a
    subprocess on host A (its netns, its DOCKER_HOST). Returns the CompletedProcess."""
    exe = str(migrate_executable())

    def migrate(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return run_on_a([exe, *args], **kwargs)

    return migrate


@pytest.fixture
def migrate_args(lab_env: dict[str, str]) -> list[str]:
    """The options that point ``migrate run`` at host B: ``--to`` URL, key, known_hosts and
    the agent command (one that obeys the fault points tests send)."""
    return to_args(lab_env, "b", f"{AGENT_FAULTS_ON} {lab_env['MIGRATE_AGENT_COMMAND']}")


@pytest.fixture
def container_name(lab: Lab) -> Iterator[str]:
    """A fresh container name; whatever has that name on A or B is removed afterwards."""
    name = f"mt-{uuid.uuid4().hex[:10]}"
    yield name
    for h in ("a", "b"):
        remove_containers(lab.host(h).docker_host, name)


@dataclass(frozen=True)
class AB:
    """What a test that moves one container from lab host A to B works with: the fixtures of
    the same names, in one (most e2e tests need all of them)."""

    migrate_on_a: RunFn
    migrate_args: list[str]
    container_name: str
    docker_a: Any
    docker_b: Any
    test_image: str

    def run(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """``migrate run`` of the container to B with ``args`` (``kwargs``: see ``run_on_a``)."""
        return self.migrate_on_a("run", self.container_name, *self.migrate_args, *args, **kwargs)


@pytest.fixture
def ab(
    migrate_on_a: RunFn,
    migrate_args: list[str],
    container_name: str,
    docker_a: Any,
    docker_b: Any,
    test_image: str,
) -> AB:
    """``ab.migrate_on_a("run", ab.container_name, *ab.migrate_args)``: see ``AB``."""
    return AB(migrate_on_a, migrate_args, container_name, docker_a, docker_b, test_image)


@pytest.fixture
def volume_name(docker_a: Any, docker_b: Any, container_name: str) -> Iterator[str]:
    """A fresh volume name; afterwards the container named ``container_name`` (on A and B)
    and the volume are removed, the container first since it holds the volume."""
    import docker.errors

    name = f"mtv-{uuid.uuid4().hex[:10]}"
    yield name
    for client in (docker_a, docker_b):
        for c in client.containers.list(all=True, filters={"name": container_name}):
            c.remove(force=True, v=True)
        try:
            client.volumes.get(name).remove(force=True)
        except docker.errors.NotFound:
            pass


def remove_containers(docker_host: str, *names: str) -> None:
    import docker.errors

    client = docker_client(docker_host, timeout=60)
    try:
        for n in names:
            try:
                ctr = client.containers.get(n)
            except docker.errors.NotFound:
                continue
            if ctr.status == "paused":
                ctr.unpause()
            ctr.remove(force=True)
    finally:
        client.close()


TEST_LABELS = {TEST_LABEL: "1"}
