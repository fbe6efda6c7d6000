"""Process state survives `migrate run` (issue 7, Build: "Process state that real programs
use"). One container runs tests/e2e/progs/pstate.c (compiled statically here with gcc), which
sets up every feature, is migrated from A to B once, and is then told (a /trigger file) to check
each feature against what it recorded and the data it queued before the move. Each feature is
its own test, so a failure names the state that was lost.

A restarted (instead of restored) program would set everything up again and could pass the
checks: it draws a new token at start-up and reports every feature as failed when it finds the
/ready file of an earlier run, and the token the program reports after the move must be the one
it wrote before.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import remove_containers

from migrate.lab.config import to_args
from migrate.lab.images import build_image

PROG = Path(__file__).resolve().parent / "progs" / "pstate.c"
TAG = "migrate-test/pstate:1"
# The features pstate.c knows, in its order (its FEATURES table).
FEATURES = [
    "process_tree",
    "sessions_pgroups",
    "threads",
    "pipe",
    "fifo",
    "unix_socket",
    "socketpair",
    "eventfd",
    "signalfd",
    "timerfd",
    "posix_timer",
    "interval_timer",
    "signal_handlers_mask",
    "sysv_shm",
    "sysv_sem",
    "sysv_msg",
    "deleted_open_file",
    "file_locks",
    "mmap_image_file",
    "mmap_rw_layer_file",
    "cwd",
    "umask",
    "rlimits",
]
# The file pstate maps from the image: 8 KiB of a..z.
IMAGE_DATA = bytes(ord("a") + i % 26 for i in range(8192))


def compile_static(src: Path, out: Path) -> bytes:
    subprocess.run(
        ["gcc", "-O1", "-Wall", "-static", "-pthread", "-o", str(out), str(src)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out.read_bytes()


@pytest.fixture(scope="module")
def pstate_image(lab: Any, test_image: str, tmp_path_factory: Any) -> str:
    binary = compile_static(PROG, tmp_path_factory.mktemp("pstate") / "pstate")
    build_image(
        lab.host("a").docker_host,
        TAG,
        base=test_image,
        files={"/usr/local/bin/pstate": binary, "/usr/local/share/pstate/data": IMAGE_DATA},
        run=["chmod 755 /usr/local/bin/pstate"],
        extra=['CMD ["/usr/local/bin/pstate"]'],
    )
    return TAG


def _cat(client: Any, name: str, path: str) -> str | None:
    r = client.containers.get(name).exec_run(["cat", path])
    return r.output.decode() if r.exit_code == 0 else None


def _wait_file(client: Any, name: str, path: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = _cat(client, name, path)
        if text:
            return text
        time.sleep(0.2)
    logs = client.containers.get(name).logs().decode(errors="replace")
    raise AssertionError(f"{path} did not appear in {name}; logs:\n{logs}")


def run_checks_after_move(
    docker_a: Any,
    docker_b: Any,
    migrate_on_a: Any,
    args: list[str],
    name: str,
    image: str,
    features: list[str] | None = None,
) -> tuple[str, str, dict[str, str]]:
    """Start pstate on A, migrate it, trigger the checks on B. Returns the token written
    before, the one reported after, and feature -> "ok" / "FAIL why"."""
    docker_a.containers.run(
        image, ["/usr/local/bin/pstate", *(features or [])], name=name, detach=True
    )
    before = _wait_file(docker_a, name, "/ready").strip()
    time.sleep(0.5)  # let the timers fire a few times first
    p = migrate_on_a("run", name, *args)
    assert p.returncode == 0, p.stderr
    c = docker_b.containers.get(name)
    assert c.exec_run(["touch", "/trigger"]).exit_code == 0
    lines = _wait_file(docker_b, name, "/results").splitlines()
    after = lines[0].removeprefix("token ").strip()
    results = {}
    for ln in lines[1:]:
        feat, _, rest = ln.partition(" ")
        results[feat] = rest
    return before, after, results


@pytest.fixture(scope="module")
def moved(
    lab: Any,
    lab_env: dict[str, str],
    docker_a: Any,
    docker_b: Any,
    migrate_on_a: Any,
    pstate_image: str,
) -> Iterator[tuple[str, str, dict[str, str]]]:
    """One pstate container with every feature, migrated A -> B once for the whole module."""
    name = f"mt-ps-{uuid.uuid4().hex[:8]}"
    args = to_args(lab_env)
    try:
        yield run_checks_after_move(docker_a, docker_b, migrate_on_a, args, name, pstate_image)
    finally:
        for h in ("a", "b"):
            remove_containers(lab.host(h).docker_host, name)


def test_restored_not_restarted(moved: tuple[str, str, dict[str, str]]) -> None:
    before, after, results = moved
    assert before and after == before, "pstate was restarted on B instead of restored"
    assert sorted(results) == sorted(FEATURES)


@pytest.mark.parametrize("feature", FEATURES)
def test_state_survives(feature: str, moved: tuple[str, str, dict[str, str]]) -> None:
    _, _, results = moved
    assert results.get(feature) == "ok", f"{feature}: {results.get(feature)}"


def test_restart_is_detected(
    docker_a: Any,
    container_name: str,
    pstate_image: str,
) -> None:
    """The control: the same program restarted (not restored) fails every check, so the
    tests above cannot pass on a container that merely started again."""
    c = docker_a.containers.run(pstate_image, name=container_name, detach=True)
    _wait_file(docker_a, container_name, "/ready")
    c.restart(timeout=1)
    assert c.exec_run(["touch", "/trigger"]).exit_code == 0
    lines = _wait_file(docker_a, container_name, "/results").splitlines()[1:]
    assert len(lines) == len(FEATURES)
    assert all("FAIL the program was restarted" in ln for ln in lines), lines
