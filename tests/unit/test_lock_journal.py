"""Locks, journals and the wire spec's schema check (pure logic; issue 5)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from migrate.core.errors import Busy
from migrate.core.journal import Journal, unsettled
from migrate.core.lock import ContainerLock
from migrate.engines.base import ContainerSpec, MountSpec, PortBinding

CID = "ab" * 32


def test_second_lock_of_a_container_is_refused_naming_the_holder(tmp_path: Path) -> None:
    first = ContainerLock(CID, "web", tmp_path)
    first.acquire()
    with pytest.raises(Busy) as e:
        ContainerLock(CID, "web", tmp_path).acquire()
    assert e.value.exit_code == 3
    assert f"pid {os.getpid()}" in e.value.message and "web" in e.value.message
    with ContainerLock("cd" * 32, "other", tmp_path):  # another container: fine
        pass
    first.release()
    assert not list(tmp_path.iterdir()), "the lock file outlived its holder"
    with ContainerLock(CID, "web", tmp_path):  # free again
        pass


def test_lock_dies_with_its_process(tmp_path: Path) -> None:
    code = (
        "import os, sys; from pathlib import Path; from migrate.core.lock import ContainerLock; "
        f"ContainerLock({CID!r}, 'x', Path({str(tmp_path)!r})).acquire(); "
        "os.kill(os.getpid(), 9)"
    )
    p = subprocess.run([sys.executable, "-c", code], check=False)
    assert p.returncode == -9
    with ContainerLock(CID, "x", tmp_path):  # the kernel dropped the flock
        pass


def test_only_container_ids_name_lock_files(tmp_path: Path) -> None:
    for bad in ("../../etc/passwd", "web", "AB" * 32, ""):
        with pytest.raises(ValueError):
            ContainerLock(bad, "x", tmp_path)


def test_unsettled_journals(tmp_path: Path) -> None:
    def journal(mid: str, *events: str) -> None:
        j = Journal.for_migration("source", mid, tmp_path)
        j.append(
            "precheck",
            container=CID,
            name="web",
            destination="ssh://b",
            dest_name="web",
            keep_source=False,
        )
        for ev in events:
            j.append(ev)

    journal("a1", "prepared", "done")
    journal("a2", "prepared", "rolled_back")
    journal("a3", "prepared", "pausing")  # killed while paused
    journal("a4", "committing", "in_doubt")
    journal("a5", "rollback_incomplete")
    journal("a6", "in_doubt", "recovered")
    # A torn last line: the step it announced did not happen.
    j = Journal.for_migration("source", "a7", tmp_path)
    j.append("precheck", container=CID, name="web", destination="ssh://b")
    with j.path.open("a") as f:
        f.write('{"event": "done", "ti')
    got = {p.migration_id: p.last for p in unsettled(tmp_path)}
    assert got == {"a3": "pausing", "a4": "in_doubt", "a5": "rollback_incomplete", "a7": "precheck"}
    assert all(p.container_id == CID and p.name == "web" for p in unsettled(tmp_path))


def _spec() -> ContainerSpec:
    return ContainerSpec(
        id="a",
        name="b",
        image_ref="c",
        image_id="d",
        hostname="h",
        env=("K=v",),
        cmd=("x",),
        entrypoint=(),
        working_dir="",
        user="",
        labels={"a": "b"},
        restart_policy="no",
        network_mode="bridge",
        ports=(PortBinding("80/tcp", "", "8080"),),
        memory=0,
        nano_cpus=0,
        mounts=(MountSpec("tmpfs", "", "/x", rw=False),),
        tty=False,
        raw={"Config": {}},
    )


def test_spec_round_trips_and_hostile_shapes_are_refused() -> None:
    s = _spec()
    assert ContainerSpec.from_wire(s.to_wire()) == s
    w = s.to_wire()
    bad = [
        {"id": "a"},
        {**w, "evil": 1},
        {**w, "env": "K=v"},
        {**w, "env": [1]},
        {**w, "labels": {"a": 1}},
        {**w, "ports": [1]},
        {**w, "ports": [{"container_port": 80}]},
        {**w, "mounts": [{"type": "bind", "nope": "x"}]},
        {**w, "memory": True},
        {**w, "memory": -1},
        {**w, "tty": "yes"},
        {**w, "raw": [1]},
        {**w, "name": None},
    ]
    for b in bad:
        with pytest.raises(ValueError):
            ContainerSpec.from_wire(b)
