"""A dead link is noticed within seconds (SSH keep-alives + TCP_USER_TIMEOUT on the source,
ClientAlive in the destination's sshd) and rolled back (issue 5).

The link between the lab hosts (the `lab0` veth pair) is set down in the middle of the
checkpoint stream and up again later: the source must give up within a bounded time, resume
its container with its state, and nothing may be left on B.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import AB
from test_handover import (
    absent,
    assert_counts_on,
    dest_checkpoints,
    recover,
    start_counter,
    start_run,
    wait_absent,
    wait_mark,
)

from migrate.lab.network import LINK_IFACE

# Longer than the source's dead-peer timeout (15 s), or TCP would just resume the stream.
LINK_DOWN_S = 22.0
# Detection (~15 s) + rollback retries until the link is back + margin.
BOUND_S = 75.0


def set_link(lab: Any, up: bool) -> None:
    subprocess.run(
        ["ip", "-n", lab.host("a").netns, "link", "set", LINK_IFACE, "up" if up else "down"],
        check=True,
    )


@contextlib.contextmanager
def link_cut(lab: Any, mark: Path, proc: Any) -> Iterator[threading.Timer]:
    """For a test that cuts the link under the run ``proc``: a timer that brings it back up
    after LINK_DOWN_S once started, and on the way out, whatever happened, the link up, the
    fault mark gone and the run killed if it still runs."""
    restore = threading.Timer(LINK_DOWN_S, set_link, (lab, True))
    try:
        yield restore
    finally:
        mark.unlink(missing_ok=True)
        restore.cancel()
        set_link(lab, True)
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize(
    ("point", "rc"),
    [
        ("before_pause", 1),
        # Cut while the source is paused, before its CRIU dump: the dump is local and succeeds,
        # the first call after it meets the dead link.
        ("after_pause", 1),
        ("mid_stream", 1),
        # `commit` sent into the dead link: in doubt (exit 4), the source stays paused; once the
        # link is back, `migrate recover` finds no `committed` on B and resumes the source.
        ("before_commit", 4),
        # Committed and answered: only the `bye` is lost; the source retires its copy (exit 0),
        # B's agent loses its session and keeps the committed copy.
        ("after_commit", 0),
    ],
)
def test_link_cut_rolls_back_in_bounded_time(
    point: str,
    rc: int,
    lab: Any,
    ab: AB,
    tmp_path: Path,
) -> None:
    before = start_counter(ab.docker_a, ab.test_image, ab.container_name)
    mark = tmp_path / "mark"
    proc = start_run(lab, ab.container_name, ab.migrate_args, mark, f"source:wait:{point}")
    with link_cut(lab, mark, proc) as restore:
        wait_mark(mark, proc)
        migration_id = mark.read_text().split()[2]
        set_link(lab, False)
        t0 = time.monotonic()
        restore.start()
        mark.unlink()
        retired = None  # when the source copy was gone (after `committed`)
        while proc.poll() is None and time.monotonic() - t0 < BOUND_S + 60:
            if retired is None and rc == 0 and absent(ab.docker_a, ab.container_name):
                retired = time.monotonic() - t0
            time.sleep(0.5)
        _, err = proc.communicate(timeout=60)
        elapsed = time.monotonic() - t0
    print(
        f"{point}: exit {proc.returncode} after {elapsed:.1f} s with the link down"
        + (f", source copy retired after {retired:.1f} s" if retired is not None else "")
    )
    assert proc.returncode == rc, err
    assert elapsed < BOUND_S, f"the dead link took {elapsed:.0f} s to notice and roll back"
    if rc == 4:
        assert ab.docker_a.containers.get(ab.container_name).status == "paused"
        p = recover(ab.migrate_on_a, ab.container_name, ab.migrate_args)
        assert p.returncode == 0, p.stderr + p.stdout
    elif rc == 1:
        assert "Rolled back" in err
    here, gone = (ab.docker_b, ab.docker_a) if rc == 0 else (ab.docker_a, ab.docker_b)
    assert_counts_on(here, ab.container_name, before)
    assert wait_absent(gone, ab.container_name, 30), "a second copy was left"
    assert not dest_checkpoints(lab, migration_id), "checkpoint left on B"
    p = ab.migrate_on_a("recover", ab.container_name, *ab.migrate_args, "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["settled"] == [], p.stdout + p.stderr
