"""Nothing lost, nothing twice (issue 5): the per-container lock, concurrent migrations, and
the two-phase hand-over under SIGKILL of the source and of the agent, settled by
`migrate recover`.

The source is stopped at a step with the ``source:wait:STEP`` fault hook: it writes its pid to
$MIGRATE_FAULT_MARK and waits until the test removes that file (or kills it meanwhile).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import AB

from migrate.checkpoint import criu
from migrate.checkpoint.staging import MEMORY_ROOT
from migrate.lab.config import migrate_executable, to_args

COUNTER = (
    "i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; "
    "sleep 0.1; done"
)
STAGING = Path("/var/lib/migrate/staging")
MEMORY_STAGING = MEMORY_ROOT / "staging"  # where the source stages when the images fit
LOCKS = Path("/run/migrate/locks")
SOURCE_JOURNALS = Path("/var/lib/migrate/journal/source")


def count(client: Any, name: str) -> int:
    out = client.containers.get(name).exec_run(["cat", "/tmp/count"]).output
    return int(out.decode().strip() or 0)


def start_counter(client: Any, image: str, name: str, env: dict[str, str] | None = None) -> int:
    client.containers.run(
        image, ["sh", "-c", COUNTER], name=name, detach=True, environment=env or {}
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            n = count(client, name)
            if n >= 5:
                return n
        except Exception:  # noqa: BLE001 - not written yet
            pass
        time.sleep(0.2)
    raise AssertionError("counter did not start")


def assert_counts_on(client: Any, name: str, at_least: int) -> None:
    c = client.containers.get(name)
    assert c.status == "running", c.status
    n = count(client, name)
    assert n >= at_least, f"state lost: count {n} < {at_least}"
    time.sleep(0.4)
    assert count(client, name) > n, "the counter does not run"


def absent(client: Any, name: str) -> bool:
    return not client.containers.list(all=True, filters={"name": f"^/{name}$"})


def wait_absent(client: Any, name: str, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if absent(client, name):
            return True
        time.sleep(0.5)
    return absent(client, name)


def start_run(
    lab: Any, name: str, args: list[str], mark: Path, fault: str, *, sigint_ignored: bool = False
) -> subprocess.Popen[str]:
    """``sigint_ignored``: start it as a non-interactive shell starts a background job."""
    return lab.host("a").popen(
        [str(migrate_executable()), "run", name, *args],
        env={**lab.env(), "MIGRATE_FAULTS": fault, "MIGRATE_FAULT_MARK": str(mark)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ignore_sigint if sigint_ignored else None,
    )


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def ended(proc: subprocess.Popen[str], mark: Path) -> Iterator[None]:
    """On the way out of a test's steps with the run ``proc`` held at a fault hook, whatever
    happened: the mark gone (the run goes on) and the run killed if it is still there."""
    try:
        yield
    finally:
        mark.unlink(missing_ok=True)
        if proc.poll() is None:
            proc.kill()


def wait_mark(mark: Path, proc: subprocess.Popen[str], seconds: float = 300) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if mark.exists():
            text = mark.read_text().split()
            if text:
                return int(text[0])
        if proc.poll() is not None:
            raise AssertionError(f"migrate exited early ({proc.returncode}): {proc.stderr.read()}")  # type: ignore[union-attr]
        time.sleep(0.05)
    raise AssertionError("the fault hook was never reached")


def recover(migrate_on_a: Any, name: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    """`migrate recover`, retried while it says in doubt because the agent that served the
    killed run has not yet noticed (it rolls back by itself within seconds)."""
    deadline = time.monotonic() + 60
    while True:
        p = migrate_on_a("recover", name, *args, "--json")
        if p.returncode != 4 or time.monotonic() > deadline:
            return p
        time.sleep(2)


def dest_checkpoints(lab: Any, migration_id: str) -> list[Path]:
    """The checkpoint images that migration placed on B (the agent names them after it):
    in Docker's directory, or staged in memory."""
    root = lab.config.paths("b").data_root / "containers"
    found = list(root.glob(f"*/checkpoints/migrate-{migration_id[:12]}"))
    return found + [p for p in [MEMORY_ROOT / "agent" / f"migrate-{migration_id}"] if p.exists()]


def source_staging(migration_id: str) -> list[Path]:
    """What that migration staged on A and left: on disk or in memory."""
    return [p for p in (STAGING / migration_id, MEMORY_STAGING / migration_id) if p.exists()]


def test_second_run_of_the_same_container_is_refused(
    lab: Any,
    ab: AB,
    tmp_path: Path,
) -> None:
    before = start_counter(ab.docker_a, ab.test_image, ab.container_name)
    mark = tmp_path / "mark"
    first = start_run(lab, ab.container_name, ab.migrate_args, mark, "source:wait:before_pause")
    try:
        pid = wait_mark(mark, first)
        second = ab.run()
        assert second.returncode == 3, second.stderr
        assert "already being migrated" in second.stderr
        assert f"pid {pid}" in second.stderr
        assert ab.docker_a.containers.get(ab.container_name).status == "running"
    finally:
        mark.unlink(missing_ok=True)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert_counts_on(ab.docker_b, ab.container_name, before)
    assert absent(ab.docker_a, ab.container_name)
    assert not any(LOCKS.glob("*.lock")) or all(
        p.read_text().strip() != str(pid) for p in LOCKS.glob("*.lock")
    ), "the lock file of the finished run was left"


def test_three_containers_migrate_concurrently(
    lab: Any,
    migrate_args: list[str],
    docker_a: Any,
    docker_b: Any,
    test_image: str,
) -> None:
    import uuid

    from conftest import remove_containers

    names = [f"mt-{uuid.uuid4().hex[:10]}" for _ in range(3)]
    try:
        before = {n: start_counter(docker_a, test_image, n) for n in names}
        procs = {
            n: lab.host("a").popen(
                [str(migrate_executable()), "run", n, *migrate_args, "--json"],
                env=lab.env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for n in names
        }
        for n, p in procs.items():
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, f"{n}: {err}"
            assert json.loads(out)["status"] == "migrated"
        for n in names:
            assert_counts_on(docker_b, n, before[n])
            assert absent(docker_a, n)
    finally:
        for h in ("a", "b"):
            remove_containers(lab.host(h).docker_host, *names)


# (step the source is killed at, who holds the container afterwards)
KILL_POINTS = [
    ("before_pause", "a"),
    ("after_pause", "a"),  # paused, the CRIU dump about to start
    ("mid_stream", "a"),
    ("before_commit", "a"),  # `restored` journalled by the agent, `commit` never sent
    ("after_commit", "b"),  # the agent journalled `committed`: the point of no return
]


@pytest.mark.parametrize(("point", "winner"), KILL_POINTS)
def test_source_killed_then_recover(
    point: str,
    winner: str,
    lab: Any,
    ab: AB,
    tmp_path: Path,
) -> None:
    before = start_counter(ab.docker_a, ab.test_image, ab.container_name)
    mark = tmp_path / "mark"
    proc = start_run(lab, ab.container_name, ab.migrate_args, mark, f"source:wait:{point}")
    with ended(proc, mark):
        pid = wait_mark(mark, proc)
        os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    # A new run of that container is refused until the killed one is settled.
    if point != "after_commit" or not absent(ab.docker_a, ab.container_name):
        p = ab.run()
        assert p.returncode in (3, 4), p.stderr
        assert "recover" in p.stderr

    p = recover(ab.migrate_on_a, ab.container_name, ab.migrate_args)
    assert p.returncode == 0, p.stderr + p.stdout
    settled = json.loads(p.stdout)["settled"]
    assert len(settled) == 1
    assert settled[0]["outcome"] == ("committed" if winner == "b" else "rolled_back")

    here, gone = (ab.docker_a, ab.docker_b) if winner == "a" else (ab.docker_b, ab.docker_a)
    assert_counts_on(here, ab.container_name, before)
    assert wait_absent(gone, ab.container_name), "a second copy was left"
    # (other migrations may be staging at the same time on this machine: look at ours only)
    assert not source_staging(settled[0]["migration_id"]), "source staging left"
    assert not dest_checkpoints(lab, settled[0]["migration_id"]), "checkpoint left on B"
    # Settled: recover again has nothing to do, and a new migration is accepted.
    p = ab.migrate_on_a("recover", ab.container_name, *ab.migrate_args, "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["settled"] == [], p.stdout + p.stderr


@pytest.mark.parametrize(
    ("fault", "winner"),
    [
        ("agent:exit_before_commit", "a"),  # the agent dies with `commit` unjournalled
        ("agent:exit_after_commit", "b"),  # ...with `committed` journalled, before answering
    ],
)
def test_agent_dies_at_commit_in_doubt_then_recover(
    fault: str,
    winner: str,
    ab: AB,
) -> None:
    before = start_counter(ab.docker_a, ab.test_image, ab.container_name)
    p = ab.run("--json", env_extra={"MIGRATE_FAULTS": fault})
    assert p.returncode == 4, p.stderr
    assert json.loads(p.stdout)["error"]["code"] == "handover.in_doubt"
    assert "migrate recover" in p.stderr
    # Never two running copies: the source waits, paused.
    assert ab.docker_a.containers.get(ab.container_name).status == "paused"
    again = ab.run()
    assert again.returncode == 4 and "recover" in again.stderr, again.stderr

    p = recover(ab.migrate_on_a, ab.container_name, ab.migrate_args)
    assert p.returncode == 0, p.stderr + p.stdout
    here, gone = (ab.docker_a, ab.docker_b) if winner == "a" else (ab.docker_b, ab.docker_a)
    assert_counts_on(here, ab.container_name, before)
    assert wait_absent(gone, ab.container_name)


AGENT_KILL_POINTS = [
    # (step, exit code of `migrate run`, who holds the container in the end)
    ("before_pause", 1, "a"),
    ("after_pause", 1, "a"),
    ("mid_stream", 1, "a"),
    ("before_commit", 4, "a"),  # `commit` meets a dead agent: in doubt, recover rolls back
    ("after_commit", 0, "b"),  # committed: losing the agent afterwards changes nothing
]


@pytest.mark.parametrize(("point", "rc", "winner"), AGENT_KILL_POINTS)
def test_agent_killed_from_outside(
    point: str,
    rc: int,
    winner: str,
    lab: Any,
    ab: AB,
    tmp_path: Path,
) -> None:
    before = start_counter(ab.docker_a, ab.test_image, ab.container_name)
    mark = tmp_path / "mark"
    proc = start_run(lab, ab.container_name, ab.migrate_args, mark, f"source:wait:{point}")
    try:
        wait_mark(mark, proc)
        migration_id = mark.read_text().split()[2]
        # The agent serving the migration holds its lock file, which names it.
        lock = Path("/var/lib/migrate/journal/agent") / f"{migration_id}.lock"
        agent_pid = int(lock.read_text().strip())
        os.kill(agent_pid, signal.SIGKILL)
    finally:
        mark.unlink(missing_ok=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == rc, err
    if rc == 4:
        assert ab.docker_a.containers.get(ab.container_name).status == "paused"
        p = recover(ab.migrate_on_a, ab.container_name, ab.migrate_args)
        assert p.returncode == 0, p.stderr + p.stdout
    here, gone = (ab.docker_a, ab.docker_b) if winner == "a" else (ab.docker_b, ab.docker_a)
    assert_counts_on(here, ab.container_name, before)
    assert wait_absent(gone, ab.container_name), "a second copy was left"
    assert not dest_checkpoints(lab, migration_id), "checkpoint left on B"


def restart_dockerd_b(lab: Any) -> None:
    """Stop B's dockerd (SIGTERM by its pidfile; its containers die with it: no live-restore)
    and bring it back with `lab up`, as an operator's `systemctl restart docker` would."""
    from migrate.lab.system import stop_pid

    pidfile = lab.config.paths("b").docker_pidfile
    stop_pid(int(pidfile.read_text().strip()), "dockerd b")
    lab.up()


def start_held(
    lab: Any, name: str, args: list[str], point: str, tmp_path: Path
) -> tuple[subprocess.Popen[str], Path]:
    """`migrate run` stopped at ``point``: a source step (``source:wait:POINT``) or
    ``restoring`` (the agent's hook: B's copy started, `restored` not journalled). Returns
    the process and the mark file to remove to let it go on."""
    if point == "restoring":
        mark = Path(f"/tmp/migrate-agent-wait-{name}")
        return start_run(lab, name, args, tmp_path / "unused", "agent:wait:restoring"), mark
    mark = tmp_path / "mark"
    return start_run(lab, name, args, mark, f"source:wait:{point}"), mark


def source_journal_settled(migrate_on_a: Any, name: str, args: list[str]) -> None:
    p = migrate_on_a("recover", name, *args, "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["settled"] == [], p.stdout + p.stderr


# (step, exit codes that hold the invariant): before `restored` the restart leaves B's created
# (not yet started) container in place and the migration may go on or roll back; from the
# start of the restore on it kills B's copy, and the agent refuses to commit a dead copy.
DOCKERD_RESTART_POINTS = [
    ("before_pause", (0, 1)),
    ("after_pause", (0, 1)),  # the source's CRIU dump runs while B's daemon restarts
    ("mid_stream", (0, 1)),
    ("restoring", (1,)),
    ("before_commit", (1,)),
    # Committed: B's copy is the container now; the restart kills it as it kills every
    # container of a daemon without live-restore, and the source copy is retired anyway.
    ("after_commit", (0,)),
]


@pytest.mark.parametrize(
    ("point", "rcs"), DOCKERD_RESTART_POINTS, ids=[p for p, _ in DOCKERD_RESTART_POINTS]
)
def test_destination_dockerd_restarted(
    point: str,
    rcs: tuple[int, ...],
    lab: Any,
    ab: AB,
    tmp_path: Path,
) -> None:
    """Exactly one copy of the container is left, on one host; it runs with its state on A
    after a rollback and on B after a migration that went on (after `committed` it is B's
    container, stopped by the restart like any other)."""
    import docker as docker_sdk

    before = start_counter(ab.docker_a, ab.test_image, ab.container_name)
    proc, mark = start_held(lab, ab.container_name, ab.migrate_args, point, tmp_path)
    try:
        wait_mark(mark, proc)
        migration_id = mark.read_text().split()[2] if point != "restoring" else None
        t0 = time.monotonic()
        restart_dockerd_b(lab)
        print(f"{point}: dockerd b restarted in {time.monotonic() - t0:.1f} s")
    finally:
        mark.unlink(missing_ok=True)
    _, err = proc.communicate(timeout=300)
    print(f"{point}: exit {proc.returncode}")
    client_b = docker_sdk.DockerClient(base_url=lab.host("b").docker_host, timeout=120)
    try:
        assert proc.returncode in rcs, err
        if proc.returncode == 1:
            assert "Rolled back" in err, err
            assert_counts_on(ab.docker_a, ab.container_name, before)
            assert wait_absent(client_b, ab.container_name), "a second copy was left on B"
        elif point == "after_commit":
            assert client_b.containers.get(ab.container_name).status == "exited"
            assert wait_absent(ab.docker_a, ab.container_name), "the source copy was left"
        else:
            assert_counts_on(client_b, ab.container_name, before)
            assert wait_absent(ab.docker_a, ab.container_name), "the source copy was left"
        if migration_id is not None:
            assert not dest_checkpoints(lab, migration_id), "checkpoint left on B"
            assert not source_staging(migration_id), "source staging left"
        source_journal_settled(ab.migrate_on_a, ab.container_name, ab.migrate_args)
    finally:
        client_b.close()


@pytest.fixture
def live_restore_lab(lab: Any) -> Iterator[Any]:
    """The test lab with both dockerds run with --live-restore (replaced now, and again,
    without it, afterwards: the other dockerd cells are measured without)."""
    from migrate.lab.hosts import Lab

    live = Lab(dataclasses.replace(lab.config, live_restore=True))
    live.up()
    try:
        yield live
    finally:
        lab.up()


# (step, restore path): from the start of the restore on, where a restart without
# live-restore kills B's copy (DOCKERD_RESTART_POINTS).
LIVE_RESTORE_POINTS = [
    ("restoring", "plain"),
    ("before_commit", "plain"),
    ("after_commit", "plain"),
    ("after_commit", "lazy_local"),
]


@pytest.mark.parametrize(
    ("point", "restore_mode"), LIVE_RESTORE_POINTS, ids=[f"{p}-{m}" for p, m in LIVE_RESTORE_POINTS]
)
def test_destination_dockerd_restarted_with_live_restore(
    point: str,
    restore_mode: str,
    live_restore_lab: Any,
    ab: AB,
    tmp_path: Path,
) -> None:
    """B's dockerd runs with live-restore and is restarted once B's copy runs: the container
    restored from the checkpoint (the plain restore, or with 48 MB of heap the default split
    restore with its local lazy-pages daemon) outlives the restart, the migration goes on
    (exit 0) and the copy counts on from its migrated state; nothing is left on A."""
    import docker as docker_sdk

    lab = live_restore_lab
    info = docker_sdk.DockerClient(base_url=lab.host("b").docker_host, timeout=120).info()
    assert info["LiveRestoreEnabled"] is True
    fill_heap = "x=$(head -c 48000000 /dev/zero | tr '\\0' x); "
    heap = fill_heap if restore_mode == "lazy_local" else ""
    ab.docker_a.containers.run(
        ab.test_image, ["sh", "-c", heap + COUNTER], name=ab.container_name, detach=True
    )
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(ValueError):
            if count(ab.docker_a, ab.container_name) >= 5:
                break
        assert time.monotonic() < deadline, "counter did not start"
        time.sleep(0.2)
    before = count(ab.docker_a, ab.container_name)
    proc, mark = start_held(lab, ab.container_name, ab.migrate_args, point, tmp_path)
    try:
        wait_mark(mark, proc)
        migration_id = mark.read_text().split()[2] if point != "restoring" else None
        if migration_id is not None:  # `restored` is journalled with the path it took
            journal = (SOURCE_JOURNALS / f"{migration_id}.jsonl").read_text()
            assert f'"restore_mode": "{restore_mode}"' in journal, journal
        client_b = docker_sdk.DockerClient(base_url=lab.host("b").docker_host, timeout=120)
        pid_before = client_b.containers.get(ab.container_name).attrs["State"]["Pid"]
        client_b.close()
        t0 = time.monotonic()
        restart_dockerd_b(lab)
        print(f"{point}, live-restore: dockerd b restarted in {time.monotonic() - t0:.1f} s")
    finally:
        mark.unlink(missing_ok=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    client_b = docker_sdk.DockerClient(base_url=lab.host("b").docker_host, timeout=120)
    try:
        c = client_b.containers.get(ab.container_name)
        # The same process, adopted by the new daemon: not a fresh start counting from 0.
        assert c.attrs["State"]["Pid"] == pid_before, (pid_before, c.attrs["State"])
        assert_counts_on(client_b, ab.container_name, before)
        assert wait_absent(ab.docker_a, ab.container_name), "the source copy was left"
        if migration_id is not None:
            assert not dest_checkpoints(lab, migration_id), "checkpoint left on B"
            assert not source_staging(migration_id), "source staging left"
        source_journal_settled(ab.migrate_on_a, ab.container_name, ab.migrate_args)
        # The adopted container is still fully managed: it stops on request.
        c.stop(timeout=2)
        assert client_b.containers.get(ab.container_name).status == "exited"
    finally:
        client_b.close()


def test_destination_disk_full_during_restore(
    lab: Any,
    ab: AB,
    tmp_path: Path,
) -> None:
    """The file system Docker restores from fills up: a 64 KiB tmpfs mounted on B's new
    container's checkpoints directory (in B's mount namespace, where B's agent and dockerd
    see it), where the agent moves (here: copies) the staged images when it starts the
    restore. DiskFull, rolled back, and the removal of B's copy takes the mount with it."""
    b = lab.host("b")

    def b_mounts() -> str:
        return str(b.run(["cat", "/proc/self/mountinfo"]).stdout)

    before = start_counter(ab.docker_a, ab.test_image, ab.container_name)
    mark = tmp_path / "mark"
    proc = start_run(lab, ab.container_name, ab.migrate_args, mark, "source:wait:before_pause")
    target = None
    try:
        wait_mark(mark, proc)
        cid = ab.docker_b.containers.get(ab.container_name).id
        target = lab.config.paths("b").data_root / "containers" / cid / "checkpoints"
        target.mkdir(exist_ok=True)
        b.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(target)])
    finally:
        mark.unlink(missing_ok=True)
    try:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, err
        assert "transfer.disk_full" in err or "No space left" in err, err
        assert "Rolled back" in err
        assert_counts_on(ab.docker_a, ab.container_name, before)
        assert wait_absent(ab.docker_b, ab.container_name), "the destination copy was left"
        assert str(target) not in b_mounts()
    finally:
        if target is not None and str(target) in b_mounts():
            b.run(["umount", "-l", str(target)], check=False)


def mountinfo(lab: Any, host: str) -> str:
    """The mount table of a lab host's own mount namespace."""
    return str(lab.host(host).run(["cat", "/proc/self/mountinfo"]).stdout)


@pytest.mark.parametrize(
    ("point", "extra"),
    [
        # pre-copied while the container runs: full before anything is frozen
        ("before_precopy", []),
        # captured frozen (no pre-copy): full in the middle of the paused transfer
        ("before_pause", ["--no-precopy"]),
    ],
    ids=["precopy", "frozen"],
)
def test_destination_disk_full_in_the_read_write_layer(
    point: str,
    extra: list[str],
    lab: Any,
    ab: AB,
    tmp_path: Path,
) -> None:
    """The read-write layer (1 MiB written in the container) streams into B's new container's
    upper directory, here a 64 KiB tmpfs (in B's mount namespace): DiskFull in the middle of
    that stream, rolled back, and the removal of B's copy (its layer) takes the mount with
    it."""
    before = start_counter(ab.docker_a, ab.test_image, ab.container_name)
    ab.docker_a.containers.get(ab.container_name).exec_run(
        ["dd", "if=/dev/zero", "of=/big", "bs=1024", "count=1024"]
    )
    mark = tmp_path / "mark"
    proc = start_run(
        lab, ab.container_name, [*ab.migrate_args, *extra], mark, f"source:wait:{point}"
    )
    b = lab.host("b")
    upper = None
    try:
        wait_mark(mark, proc)
        attrs = ab.docker_b.containers.get(ab.container_name).attrs
        upper = Path(attrs["GraphDriver"]["Data"]["UpperDir"])
        b.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(upper)])
    finally:
        mark.unlink(missing_ok=True)
    try:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, err
        assert "transfer.disk_full" in err or "No space left" in err, err
        assert "Rolled back" in err
        assert_counts_on(ab.docker_a, ab.container_name, before)
        assert wait_absent(ab.docker_b, ab.container_name), "the destination copy was left"
        assert f" {upper} " not in mountinfo(lab, "b"), "mount left"
        assert not upper.exists(), "the new container's layer was left"
    finally:
        if upper is not None and f" {upper} " in mountinfo(lab, "b"):
            b.run(["umount", "-l", str(upper)], check=False)


FILL = """
import sys
with open(sys.argv[1] + "/filler", "wb", buffering=0) as f:
    for block in (1 << 20, 4096, 1):
        try:
            while True:
                f.write(bytes(block))
        except OSError:
            pass
"""


def fill(lab: Any, host: str, directory: Path) -> None:
    """Fill the file system mounted on ``directory`` in that host's namespace to the last
    byte."""
    lab.host(host).run([sys.executable, "-c", FILL, str(directory)])


# (step, tmpfs size, what the test does there, exit code, who holds the container afterwards)
STAGING_FULL_POINTS = [
    ("start", "64k", "", 1, "a"),  # mounted before the run: the images overflow it mid-stream
    ("before_pause", "32m", "fill", 1, "a"),  # filled before anything is frozen
    ("after_pause", "32m", "fill", 1, "a"),  # filled during the CRIU dump
    # After `restored` the staged images are gone (copied into Docker's checkpoint directory,
    # then deleted): a full staging area changes nothing.
    ("before_commit", "32m", "fill", 0, "b"),
    ("after_commit", "32m", "fill", 0, "b"),
    # Not a full disk: the agent is killed with images half staged outside the container's
    # directory; the agent that rolls back from its journal must delete them too.
    ("mid_stream", "32m", "kill_agent", 1, "a"),
]


@pytest.mark.parametrize(
    ("point", "size", "action", "rc", "winner"),
    STAGING_FULL_POINTS,
    ids=[f"{p[0]}-{p[2]}" if p[2] else "mid_stream-overflow" for p in STAGING_FULL_POINTS],
)
def test_destination_staging_disk_full(
    point: str,
    size: str,
    action: str,
    rc: int,
    winner: str,
    lab: Any,
    migrate_on_a: Any,
    container_name: str,
    docker_a: Any,
    docker_b: Any,
    test_image: str,
    tmp_path: Path,
) -> None:
    """The agent stages the checkpoint images on a small file system of their own
    (`migrate agent --staging-dir`, a tmpfs) that is or becomes full: DiskFull, rolled back,
    nothing staged is left; after `committed` it changes nothing."""
    env = lab.env()
    b = lab.host("b")
    stage = Path(f"/tmp/mfault-stage-{container_name}")
    stage.mkdir()
    b.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(stage)])
    args = to_args(env, "b", f"{env['MIGRATE_AGENT_COMMAND']} --staging-dir {stage}")

    def staged() -> list[str]:
        """What the staging file system holds, seen from B (the test's filler aside)."""
        names = str(b.run(["ls", "-A", str(stage)]).stdout).split()
        return [n for n in names if n != "filler"]

    try:
        before = start_counter(docker_a, test_image, container_name)
        mark = tmp_path / "mark"
        proc = start_run(
            lab, container_name, args, mark, f"source:wait:{point}" if point != "start" else ""
        )
        if point != "start":
            try:
                wait_mark(mark, proc)
                if action == "fill":
                    fill(lab, "b", stage)
                else:
                    migration_id = mark.read_text().split()[2]
                    assert staged(), "nothing staged mid-stream"
                    lock = Path("/var/lib/migrate/journal/agent") / f"{migration_id}.lock"
                    os.kill(int(lock.read_text().strip()), signal.SIGKILL)
            finally:
                mark.unlink(missing_ok=True)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == rc, err
        if action == "kill_agent":
            assert "Rolled back" in err
        elif rc == 1:
            assert "transfer.disk_full" in err or "No space left" in err, err
            assert "Rolled back" in err
        here, gone = (docker_a, docker_b) if winner == "a" else (docker_b, docker_a)
        assert_counts_on(here, container_name, before)
        assert wait_absent(gone, container_name), "a second copy was left"
        assert staged() == [], "staging left"
        source_journal_settled(migrate_on_a, container_name, args)
    finally:
        b.run(["umount", "-l", str(stage)], check=False)
        stage.rmdir()


@pytest.mark.parametrize(
    ("fault", "rc"), [("source_killed", -9), ("agent_killed", 1), ("link_cut", 1)]
)
def test_fault_during_restore(
    fault: str,
    rc: int,
    lab: Any,
    ab: AB,
) -> None:
    """The copy on B has just started from the checkpoint; B has not journalled `restored`."""
    from test_link_cut import set_link

    before = start_counter(ab.docker_a, ab.test_image, ab.container_name)
    mark = Path(f"/tmp/migrate-agent-wait-{ab.container_name}")
    proc = lab.host("a").popen(
        [str(migrate_executable()), "run", ab.container_name, *ab.migrate_args],
        env={**lab.env(), "MIGRATE_FAULTS": "agent:wait:restoring"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        agent_pid = wait_mark(mark, proc)
        assert ab.docker_b.containers.get(ab.container_name).status == "running"
        if fault == "source_killed":
            os.kill(proc.pid, signal.SIGKILL)
        elif fault == "agent_killed":
            os.kill(agent_pid, signal.SIGKILL)
        else:
            set_link(lab, False)
            threading.Timer(22, set_link, (lab, True)).start()
        t_cut = time.monotonic()
    finally:
        mark.unlink(missing_ok=True)
    _, err = proc.communicate(timeout=300)
    if fault == "link_cut":
        time.sleep(max(0.0, 23 - (time.monotonic() - t_cut)))  # the timer brings it up
        set_link(lab, True)
    assert proc.returncode == rc, err
    if fault == "source_killed":
        p = recover(ab.migrate_on_a, ab.container_name, ab.migrate_args)
        assert p.returncode == 0, p.stderr + p.stdout
    assert_counts_on(ab.docker_a, ab.container_name, before)
    assert wait_absent(ab.docker_b, ab.container_name, 45), "a second copy was left"


def test_source_disk_full_during_the_checkpoint(
    lab: Any,
    ab: AB,
) -> None:
    """A's staging area (where CRIU writes the dump) is a 64 KiB tmpfs, in A's mount namespace
    where the source runs: the dump of the paused container fails with ENOSPC. Rolled back:
    the container runs on A with its state (paused by Docker, possibly thawed by the failed
    dump behind Docker's back: unpause settles both), nothing staged, nothing on B."""
    a = lab.host("a")
    before = start_counter(ab.docker_a, ab.test_image, ab.container_name)
    a.run(["mkdir", "-p", str(STAGING)])
    a.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(STAGING)])
    try:
        # On disk by choice: in memory (the default when it fits) this area is not used.
        p = ab.run("--staging", "disk", "--json")
        assert p.returncode == 1, p.stderr
        err = json.loads(p.stdout)["error"]
        assert err["details"]["cause"] == "criu.dump_failed", err
        assert "Rolled back" in err["message"]
        assert "is full" in err["hint"], err["hint"]
        assert_counts_on(ab.docker_a, ab.container_name, before)
        assert wait_absent(ab.docker_b, ab.container_name), "the destination copy was left"
        assert str(a.run(["ls", "-A", str(STAGING)]).stdout).split() == [], "staging left"
        source_journal_settled(ab.migrate_on_a, ab.container_name, ab.migrate_args)
    finally:
        a.run(["umount", "-l", str(STAGING)], check=False)


@pytest.mark.parametrize(
    ("sig", "sigint_ignored"),
    [
        (signal.SIGKILL, False),
        (signal.SIGINT, False),
        # Started with SIGINT ignored (a script's `migrate run ... &`, or a test runner
        # started that way): Python then leaves Ctrl-C ignored, and the run went on to exit
        # 0. `migrate run` handles SIGINT itself.
        (signal.SIGINT, True),
        (signal.SIGTERM, False),
    ],
    ids=["SIGKILL", "SIGINT", "SIGINT-inherited-ignored", "SIGTERM"],
)
def test_source_killed_during_the_criu_dump_then_recover(
    sig: int,
    sigint_ignored: bool,
    lab: Any,
    ab: AB,
    tmp_path: Path,
) -> None:
    """The source gets SIGKILL (then `migrate recover` at once) or SIGINT/SIGTERM (it rolls
    back by itself; it kills its runc child, CRIU goes on) while runc/CRIU dump the paused
    container (128 MiB in a tmpfs make the dump last long enough to be caught). The orphaned
    dump may still be going: the container must end up running on A with its state, not
    frozen again by the dump's end, and nothing may be left staged."""
    ab.docker_a.containers.run(
        ab.test_image,
        ["sh", "-c", COUNTER],
        name=ab.container_name,
        detach=True,
        tmpfs={"/big": "size=200m"},
    )
    c = ab.docker_a.containers.get(ab.container_name)
    res = c.exec_run(["dd", "if=/dev/urandom", "of=/big/f", "bs=1048576", "count=128"])
    assert res.exit_code == 0, res.output
    before = count(ab.docker_a, ab.container_name)
    mark = tmp_path / "mark"
    proc = start_run(
        lab,
        ab.container_name,
        ab.migrate_args,
        mark,
        "source:wait:after_pause",
        sigint_ignored=sigint_ignored,
    )
    with ended(proc, mark):
        pid = wait_mark(mark, proc)
        migration_id = mark.read_text().split()[2]
        # In memory (the default: the counter fits) or on disk if the host is short of memory.
        places = (MEMORY_STAGING / migration_id, STAGING / migration_id)
        mark.unlink()
        deadline = time.monotonic() + 60
        while not any((p / "work" / "dump.log").exists() for p in places):
            assert time.monotonic() < deadline and proc.poll() is None, "no dump started"
            time.sleep(0.01)
        staging = next(p for p in places if p.exists())
        os.kill(pid, sig)
        # (neither signal reaches CRIU: whether it still dumps says when the signal came)
        dumping = criu.processes_using(staging)
        _, err = proc.communicate(timeout=300)
    if sig == signal.SIGKILL:
        # (128 MiB take CRIU about a second to write: the kill lands in the middle of it)
        assert criu.processes_using(staging), "the dump had ended before the kill"
        p = recover(ab.migrate_on_a, ab.container_name, ab.migrate_args)
        assert p.returncode == 0, p.stderr + p.stdout
    else:
        when = "during" if dumping else "after"
        assert proc.returncode == 1, f"exit {proc.returncode}, signal {when} the dump: {err}"
        assert "Rolled back" in err and signal.Signals(sig).name in err, err
    # Let any orphaned dump end, then look.
    deadline = time.monotonic() + 120
    while criu.processes_using(staging) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not criu.processes_using(staging), "the orphaned dump still runs"
    time.sleep(1)
    assert_counts_on(ab.docker_a, ab.container_name, before)
    assert wait_absent(ab.docker_b, ab.container_name), "a copy was left on B"
    assert not staging.exists(), "source staging left"
    source_journal_settled(ab.migrate_on_a, ab.container_name, ab.migrate_args)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_after_the_point_of_no_return_completes_and_says_so(
    sig: int,
    lab: Any,
    ab: AB,
    tmp_path: Path,
) -> None:
    """Ctrl-C (or SIGTERM) once the agent has journalled `committed`: no rollback exists, so
    the migration completes, and says that the interrupt came too late: exit 128 + signal
    (a calling script stops too), never 0 as if no interrupt had come."""
    before = start_counter(ab.docker_a, ab.test_image, ab.container_name)
    mark = tmp_path / "mark"
    args = [*ab.migrate_args, "--json"]
    proc = start_run(lab, ab.container_name, args, mark, "source:wait:after_commit")
    with ended(proc, mark):
        pid = wait_mark(mark, proc)
        os.kill(pid, sig)
        time.sleep(0.5)  # handled while it waits at the hook
        mark.unlink()
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, err
    assert "point of no return" in err and signal.Signals(sig).name in err, err
    report = json.loads(out)
    assert report["status"] == "migrated", out
    assert report["interrupted_after_commit"] == signal.Signals(sig).name, out
    assert_counts_on(ab.docker_b, ab.container_name, before)
    assert wait_absent(ab.docker_a, ab.container_name), "the source copy was left"


@pytest.mark.parametrize("victim", ["agent", "source", "dockerd"])
def test_killed_while_docker_restores_the_checkpoint(
    victim: str,
    lab: Any,
    migrate_on_a: Any,
    migrate_args: list[str],
    container_name: str,
    docker_a: Any,
    docker_b: Any,
    test_image: str,
    tmp_path: Path,
) -> None:
    """The agent or the source is SIGKILLed, or B's dockerd restarted, while B's `docker
    start --checkpoint` is still restoring (128 MiB in a tmpfs make it last seconds; the agent
    has journalled `restoring`): dockerd finishes (or drops) the start on its own, so whoever
    rolls back must not leave that copy running next to the resumed source."""
    docker_a.containers.run(
        test_image,
        ["sh", "-c", COUNTER],
        name=container_name,
        detach=True,
        tmpfs={"/big": "size=200m"},
    )
    c = docker_a.containers.get(container_name)
    res = c.exec_run(["dd", "if=/dev/urandom", "of=/big/f", "bs=1048576", "count=128"])
    assert res.exit_code == 0, res.output
    before = count(docker_a, container_name)
    mark = tmp_path / "mark"
    proc = start_run(lab, container_name, migrate_args, mark, "source:wait:after_pause")
    try:
        wait_mark(mark, proc)
        migration_id = mark.read_text().split()[2]
        journal = Path("/var/lib/migrate/journal/agent") / f"{migration_id}.jsonl"
        lock = journal.with_suffix(".lock")
        mark.unlink()
        deadline = time.monotonic() + 120
        while '"restoring"' not in (journal.read_text() if journal.exists() else ""):
            assert time.monotonic() < deadline and proc.poll() is None, "no restore started"
            time.sleep(0.01)
        if victim == "dockerd":
            state_at_kill = docker_b.containers.get(container_name).status
            restart_dockerd_b(lab)
        else:
            os.kill(
                int(lock.read_text().strip()) if victim == "agent" else proc.pid, signal.SIGKILL
            )
            state_at_kill = docker_b.containers.get(container_name).status
    finally:
        mark.unlink(missing_ok=True)
    _, err = proc.communicate(timeout=300)
    if victim == "dockerd":
        import docker as docker_sdk

        docker_b = docker_sdk.DockerClient(base_url=lab.host("b").docker_host, timeout=120)
    print(f"{victim} killed; B's copy was {state_at_kill}; migrate exited {proc.returncode}")
    if victim == "source":
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode in (1, 4), err
    if proc.returncode != 1:
        p = recover(migrate_on_a, container_name, migrate_args)
        assert p.returncode == 0, p.stderr + p.stdout
    assert_counts_on(docker_a, container_name, before)
    assert wait_absent(docker_b, container_name, 60), "a second copy was left on B"
    time.sleep(3)  # a restore that completes late would show now
    assert absent(docker_b, container_name), "a second copy appeared on B"
    assert not dest_checkpoints(lab, migration_id), "checkpoint left on B"
    assert not (STAGING / migration_id).exists(), "source staging left"
    source_journal_settled(migrate_on_a, container_name, migrate_args)


@pytest.mark.parametrize("moment", ["daemon_started", "runc_conf_written"])
def test_agent_killed_during_a_lazy_local_restore(
    moment: str,
    lab: Any,
    ab: AB,
    tmp_path: Path,
) -> None:
    """The agent is SIGKILLed while it restores with its local lazy-pages daemon (48 MB of
    heap in the counter's shell make the restore lazy): once the daemon runs, or once runc's
    host-wide CRIU configuration names it (while Docker starts the task). Rolled back; no
    daemon, work directory, lazy runc configuration or copy left on B."""
    from migrate.engines.docker.runc_conf import RUNC_CRIU_CONF

    def conf_names(work: Path) -> bool:
        try:
            return f"work-dir {work}" in RUNC_CRIU_CONF.read_text()
        except OSError:
            return False

    fill_heap = "x=$(head -c 48000000 /dev/zero | tr '\\0' x); "
    ab.docker_a.containers.run(
        ab.test_image, ["sh", "-c", fill_heap + COUNTER], name=ab.container_name, detach=True
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            if count(ab.docker_a, ab.container_name) >= 5:
                break
        except ValueError:
            pass
        assert time.monotonic() < deadline, "counter did not start"
        time.sleep(0.2)
    before = count(ab.docker_a, ab.container_name)
    mark = tmp_path / "mark"
    proc = start_run(lab, ab.container_name, ab.migrate_args, mark, "source:wait:after_pause")
    try:
        wait_mark(mark, proc)
        migration_id = mark.read_text().split()[2]
        lock = Path("/var/lib/migrate/journal/agent") / f"{migration_id}.lock"
        work = Path("/run/migrate") / f"lazy-{migration_id[:12]}"
        mark.unlink()
        deadline = time.monotonic() + 120
        while not (work.exists() if moment == "daemon_started" else conf_names(work)):
            assert time.monotonic() < deadline and proc.poll() is None, "no lazy restore"
            time.sleep(0.002)
        os.kill(int(lock.read_text().strip()), signal.SIGKILL)
    finally:
        mark.unlink(missing_ok=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert "Rolled back" in err
    assert_counts_on(ab.docker_a, ab.container_name, before)
    assert wait_absent(ab.docker_b, ab.container_name, 60), "a second copy was left on B"
    deadline = time.monotonic() + 30
    while (work.exists() or criu.processes_using(work)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not criu.processes_using(work), "the lazy-pages daemon was left running"
    assert not work.exists(), "the lazy-pages work directory was left"
    assert not conf_names(work), "runc's CRIU configuration still names the dead restore"
    assert not dest_checkpoints(lab, migration_id), "checkpoint left on B"
