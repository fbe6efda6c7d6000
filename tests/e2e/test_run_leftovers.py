"""After a migration nothing is left behind: no staging directory on the source, and no copy
of the checkpoint in containerd's temporary directory on the destination (containerd unpacks
the images there for CRIU and never deletes them: a copy of the container's memory each time).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from conftest import AB

from migrate.checkpoint.staging import MEMORY_ROOT

TMP = Path("/tmp")


def _copies_with(marker: bytes) -> list[Path]:
    """containerd restore copies (in /tmp: the lab's containerd has no TMPDIR) whose memory
    pages hold ``marker``."""
    found = []
    for d in TMP.glob("ctrd-checkpoint*"):
        for pages in d.glob("pages-*.img"):
            try:
                if marker in pages.read_bytes():
                    found.append(d)
                    break
            except OSError:
                continue
    return found


def test_no_checkpoint_copies_or_staging_left(
    ab: AB,
) -> None:
    marker = f"MARK-{ab.container_name}-{time.time_ns()}"
    # The marker lives in the shell's memory (a variable), so it is in the dumped pages.
    ab.docker_a.containers.run(
        ab.test_image,
        ["sh", "-c", f'm="{marker}"; while true; do sleep 1; done'],
        name=ab.container_name,
        detach=True,
    )
    p = ab.run("--json")
    assert p.returncode == 0, p.stderr
    assert ab.docker_b.containers.get(ab.container_name).status == "running"
    assert _copies_with(marker.encode()) == [], "containerd's copy of the checkpoint was left"
    # Other sessions on this machine stage their own migrations: look at ours only, in every
    # place a stage can be (source on disk or in memory, destination in memory).
    mid = json.loads(p.stdout)["migration_id"]
    places = [
        Path("/var/lib/migrate/staging") / mid,
        MEMORY_ROOT / "staging" / mid,
        MEMORY_ROOT / "agent" / f"migrate-{mid}",
    ]
    assert [x for x in places if x.exists()] == [], "staging left"
