"""Streams through the OpenSSH bulk connection (issue 8 goal 4), over the real lab: it carries
the container's state, `--bulk paramiko` still works, a bulk connection that cannot log in
falls back under auto and is refused under openssh, a bulk connection killed mid-stream rolls
back with the source running; and nothing of it (ssh, sink, socket, known_hosts) outlives a
migration.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import AB
from test_handover import (
    assert_counts_on,
    dest_checkpoints,
    ended,
    start_counter,
    wait_absent,
    wait_mark,
)

from migrate.lab.config import migrate_executable

BULK_ROOT = Path("/run/migrate")  # where agents put their one-shot bulk sockets


def _netns_inode(path: str) -> int:
    return os.stat(path).st_ino


def _procs_in_netns(netns: str, needle: str) -> list[int]:
    """Processes in that network namespace whose command line contains ``needle``."""
    ino = _netns_inode(f"/run/netns/{netns}")
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if os.stat(d / "ns" / "net").st_ino != ino:
                continue
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmd:
            found.append(int(d.name))
    return found


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _bulk_dirs() -> set[str]:
    return {p.name for p in BULK_ROOT.glob("bulk-*")} if BULK_ROOT.is_dir() else set()


def _assert_nothing_left(lab: Any, tmp: Path, dirs_before: set[str]) -> None:
    """No ssh client on A and no sink on B from this lab, no known_hosts copy in the
    source's TMPDIR, no socket directory of this test on B (other labs' agents may be
    creating their own meanwhile: only new ones that stay count)."""
    a_ns, b_ns = lab.host("a").netns, lab.host("b").netns
    deadline = time.monotonic() + 30
    while True:
        ssh = _procs_in_netns(a_ns, "--sink")
        sinks = _procs_in_netns(b_ns, "--sink")
        new_dirs = _bulk_dirs() - dirs_before
        if not ssh and not sinks and not new_dirs:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"left behind: ssh {ssh}, sinks {sinks}, dirs {new_dirs}")
        time.sleep(0.5)
    assert not list(tmp.glob("migrate-bulk-*")), "known_hosts copy left behind"


def _run(
    lab: Any, ab: AB, tmp: Path, *extra: str, faults: str = "", mark: Path | None = None
) -> subprocess.Popen[str]:
    env = {**lab.env(), "TMPDIR": str(tmp)}
    if faults:
        env["MIGRATE_FAULTS"] = faults
    if mark is not None:
        env["MIGRATE_FAULT_MARK"] = str(mark)
    return lab.host("a").popen(
        [str(migrate_executable()), "run", ab.container_name, *ab.migrate_args, "--json", *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def src_tmp(tmp_path: Path) -> Path:
    d = tmp_path / "srctmp"
    d.mkdir()
    return d


@pytest.mark.parametrize("bulk", ["auto", "openssh", "paramiko"])
def test_state_arrives_over_the_chosen_channel(
    bulk: str,
    lab: Any,
    ab: AB,
    src_tmp: Path,
) -> None:
    before_dirs = _bulk_dirs()
    before = start_counter(ab.docker_a, ab.test_image, ab.container_name)
    proc = _run(lab, ab, src_tmp, "--bulk", bulk)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    rep = json.loads(out)
    assert rep["status"] == "migrated"
    assert rep["stream_channel"] == ("paramiko" if bulk == "paramiko" else "openssh"), rep
    assert rep["bytes"]["checkpoint"] > 0
    assert_counts_on(ab.docker_b, ab.container_name, before)
    assert wait_absent(ab.docker_a, ab.container_name)
    _assert_nothing_left(lab, src_tmp, before_dirs)


def test_bulk_that_cannot_log_in_falls_back_under_auto(
    lab: Any,
    ab: AB,
    src_tmp: Path,
) -> None:
    before_dirs = _bulk_dirs()
    before = start_counter(ab.docker_a, ab.test_image, ab.container_name)
    proc = _run(lab, ab, src_tmp, faults="source:bulk_no_key")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    rep = json.loads(out)
    assert rep["stream_channel"] == "paramiko", rep
    assert "Permission denied" in rep["stream_channel_note"], rep["stream_channel_note"]
    assert_counts_on(ab.docker_b, ab.container_name, before)
    _assert_nothing_left(lab, src_tmp, before_dirs)


def test_bulk_that_cannot_log_in_is_refused_under_openssh(
    lab: Any,
    ab: AB,
    src_tmp: Path,
) -> None:
    before_dirs = _bulk_dirs()
    before = start_counter(ab.docker_a, ab.test_image, ab.container_name)
    proc = _run(lab, ab, src_tmp, "--bulk", "openssh", faults="source:bulk_no_key")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 3, err
    e = json.loads(out)["error"]
    assert e["code"] == "precheck.bulk_unavailable", e
    assert "Permission denied" in e["message"] and "--bulk paramiko" in e["hint"], e
    assert_counts_on(ab.docker_a, ab.container_name, before)
    assert not ab.docker_b.containers.list(all=True, filters={"name": f"^/{ab.container_name}$"})
    _assert_nothing_left(lab, src_tmp, before_dirs)


def test_bulk_killed_mid_stream_rolls_back(
    lab: Any,
    ab: AB,
    src_tmp: Path,
    tmp_path: Path,
) -> None:
    before_dirs = _bulk_dirs()
    before = start_counter(ab.docker_a, ab.test_image, ab.container_name)
    mark = tmp_path / "mark"
    proc = _run(lab, ab, src_tmp, "--bulk", "openssh", faults="source:wait:mid_stream", mark=mark)
    with ended(proc, mark):
        pid = wait_mark(mark, proc)
        migration_id = mark.read_text().split()[2]
        ssh = [c for c in _children(pid) if b"--sink" in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert len(ssh) == 1, f"expected one ssh child of {pid}, found {ssh}"
        os.kill(ssh[0], signal.SIGKILL)  # the bulk connection dies in the middle of the stream
        mark.unlink()
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert "Rolled back" in err, err
    assert_counts_on(ab.docker_a, ab.container_name, before)
    assert wait_absent(ab.docker_b, ab.container_name, 30), "a copy was left on B"
    assert not dest_checkpoints(lab, migration_id), "checkpoint left on B"
    _assert_nothing_left(lab, src_tmp, before_dirs)
    p = ab.migrate_on_a("recover", ab.container_name, *ab.migrate_args, "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["settled"] == [], p.stdout + p.stderr
