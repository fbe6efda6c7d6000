"""Checkpoint images staged in memory (tmpfs) or on disk (migrate/checkpoint/staging.py), on real lab
hosts over SSH: the container's memory arrives either way, nothing is left in the staging
areas, and a memory staging area that fills up during the dump falls back to disk."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from conftest import AB
from test_run_fast_restore import _memory_sum, start_holder

from migrate.checkpoint.staging import MEMORY_ROOT
from migrate.lab.config import migrate_executable


def _gone(run: Any, path: Path) -> bool:
    return run(["test", "-e", str(path)], check=False).returncode != 0


def _no_leftovers(run_on_a: Any, run_on_b: Any, rep: dict[str, Any]) -> None:
    mid = rep["migration_id"]
    assert mid
    assert _gone(run_on_a, MEMORY_ROOT / "staging" / mid)
    assert _gone(run_on_b, MEMORY_ROOT / "agent" / f"migrate-{mid}")


def test_memory_staging_on_both_ends_keeps_the_memory(
    ab: AB,
    run_on_a: Any,
    run_on_b: Any,
) -> None:
    before = start_holder(ab.docker_a, ab.container_name, ab.test_image)
    p = ab.run("--json")
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert rep["staging"] == {"source": "memory", "destination": "memory"}, rep["staging"]
    # Split restore from the memory staging area (its pages served by the lazy daemon).
    assert "restore_memory_fill" in rep["phases"], rep["phases"]
    assert _memory_sum(ab.docker_b, ab.container_name) == before
    _no_leftovers(run_on_a, run_on_b, rep)


def test_disk_staging_when_asked(
    ab: AB,
    run_on_a: Any,
    run_on_b: Any,
) -> None:
    before = start_holder(ab.docker_a, ab.container_name, ab.test_image)
    p = ab.run("--staging", "disk", "--json")
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert rep["staging"] == {"source": "disk", "destination": "disk"}, rep["staging"]
    assert _memory_sum(ab.docker_b, ab.container_name) == before
    _no_leftovers(run_on_a, run_on_b, rep)


def test_bad_staging_value_is_a_usage_error(migrate_on_a: Any, migrate_args: list[str]) -> None:
    p = migrate_on_a("run", "whatever", *migrate_args, "--staging", "ram")
    assert p.returncode == 2
    # typer's usage error, in a box wrapped at the terminal's width: compare its words.
    words = " ".join(re.sub("[\u2500-\u257f]", " ", p.stderr).split())
    assert "'--staging'" in words and "'auto', 'memory', 'disk'" in words, p.stderr


def test_memory_staging_that_fills_during_the_dump_falls_back_to_disk(
    lab: Any,
    ab: AB,
    run_on_a: Any,
    tmp_path: Path,
) -> None:
    """A 160 MiB tmpfs fits the 48 MiB container when the run decides; the test fills it
    while the run waits just before the pause, so CRIU's dump into it fails with ENOSPC. The
    run dumps again on disk (the container is still paused and intact) and migrates."""
    before = start_holder(ab.docker_a, ab.container_name, ab.test_image)
    small = tmp_path / "small-tmpfs"
    small.mkdir()
    # Mounted in A's mount namespace, where the source runs (not visible from here).
    p = run_on_a(["mount", "-t", "tmpfs", "-o", "size=160m,mode=0700", "tmpfs", str(small)])
    assert p.returncode == 0, p.stderr
    mark = tmp_path / "mark"
    try:
        proc = lab.host("a").popen(
            [str(migrate_executable()), "run", ab.container_name, *ab.migrate_args, "--json"],
            env={
                **lab.env(),
                "MIGRATE_MEMORY_STAGING": str(small),
                "MIGRATE_FAULTS": "source:wait:before_pause",
                "MIGRATE_FAULT_MARK": str(mark),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while not mark.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run never reached the pause"
            time.sleep(0.1)
        # The run chose memory; now leave it no room for the images.
        p = run_on_a(["sh", "-c", f"head -c 150M /dev/zero > {small}/filler; ls {small}"])
        assert "staging" in p.stdout, (p.stdout, p.stderr)
        os.unlink(mark)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        rep = json.loads(out)
        assert rep["staging"]["source"] == "disk", rep["staging"]
        assert "dumping again on disk" in err
        assert _memory_sum(ab.docker_b, ab.container_name) == before
        p = run_on_a(["sh", "-c", f"ls -A {small}; echo --; ls -A {small}/staging"])
        assert p.stdout.split() == ["filler", "staging", "--"], p.stdout
    finally:
        run_on_a(["umount", str(small)])
