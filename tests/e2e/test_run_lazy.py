"""`migrate run --strategy lazy` (post-copy) across the two lab hosts over real SSH: the
container resumes on B before its memory has moved, every byte arrives (memory checksum), the
source copy is gone, and nothing is left behind (runc.conf, page server, lazy-pages daemon,
work and staging directories). Refusals exit 3 with the fix; a link lost mid post-copy gives
the documented outcome (exit 4, destination copy stopped, source copy kept paused)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import docker.errors
from conftest import AB
from test_handover import recover, start_run, wait_mark
from test_link_cut import BOUND_S, link_cut, set_link
from test_run_fast_restore import _memory_sum, start_holder

from migrate.checkpoint.staging import MEMORY_ROOT
from migrate.engines.docker.runc_conf import RUNC_CRIU_CONF, criu_config_lock

STAGING = Path("/var/lib/migrate/staging")


def _conf() -> str | None:
    # Under the host lock: another migration on this machine (the lab hosts share /etc) may
    # hold its own lazy settings there for a moment, which is not a leftover of ours.
    with criu_config_lock(exclusive=False):
        return RUNC_CRIU_CONF.read_text() if RUNC_CRIU_CONF.exists() else None


def _procs_mentioning(*needles: str) -> list[str]:
    """Command lines of live processes that mention any of ``needles`` (container ids)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if ("lazy-pages" in cmd or "page-server" in cmd) and any(n in cmd for n in needles):
            found.append(f"{d.name}: {cmd[:200]}")
    return found


def _migration_ids(container_id: str) -> list[str]:
    """Ids of the source journals that migrated this container."""
    found = []
    for j in Path("/var/lib/migrate/journal/source").glob("*.jsonl"):
        first = j.read_text().split("\n", 1)[0]
        if first and json.loads(first).get("data", {}).get("container") == container_id:
            found.append(j.stem)
    return found


def _gone(client: Any, name: str) -> bool:
    try:
        client.containers.get(name)
    except docker.errors.NotFound:
        return True
    return False


def test_lazy_migration_keeps_memory_and_leaves_nothing(
    ab: AB,
) -> None:
    before = start_holder(ab.docker_a, ab.container_name, ab.test_image)
    src_id = ab.docker_a.containers.get(ab.container_name).id
    admin_conf = _conf()

    p = ab.run("--strategy", "lazy", "--json")
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert rep["status"] == "migrated" and rep["strategy"] == "lazy", rep
    assert rep["source_action"] == "removed"
    pc = rep["postcopy"]
    assert pc is not None and pc["postcopy_s"] > 0, rep
    # The awk holds 48 MiB: the daemon moved at least that many pages, on demand or pushed.
    assert pc["pages_total"] >= (48 << 20) // 4096, pc
    assert pc["pages_on_demand"] + pc["pages_background"] >= pc["pages_total"] * 0.9, pc
    # Only the non-memory images went through the protocol stream.
    assert rep["bytes"]["checkpoint"] < 16 << 20, rep["bytes"]
    assert 0 < rep["downtime_s"] < rep["total_s"]

    dst = ab.docker_b.containers.get(ab.container_name)
    assert dst.status == "running"
    assert _memory_sum(ab.docker_b, ab.container_name) == before
    assert _gone(ab.docker_a, ab.container_name)
    assert _conf() == admin_conf
    assert not RUNC_CRIU_CONF.with_name("runc.conf.migrate-saved").exists()
    # Ours only: other sessions on this machine run post-copies of their own.
    assert not (Path("/run/migrate") / f"post-{rep['migration_id'][:12]}").exists()
    deadline = time.monotonic() + 30  # the source's runc may still be exiting
    while (left := _procs_mentioning(src_id, dst.id)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == []
    # Other sessions on this machine stage their own migrations here: look at ours only.
    ours = _migration_ids(src_id)
    assert len(ours) == 1, ours
    assert not (STAGING / ours[0]).exists(), "staging left on the source"
    assert not (MEMORY_ROOT / "staging" / ours[0]).exists(), "memory staging left on the source"
    assert not (MEMORY_ROOT / "agent" / f"migrate-{ours[0]}").exists(), "memory staging left on B"
    dst_dir = Path(dst.attrs["LogPath"]).parent
    assert not list(dst_dir.glob("migrate-*")) and not list(dst_dir.glob("checkpoints/*"))


def test_lazy_refused_when_destination_runc_conf_sets_work_dir(
    ab: AB,
) -> None:
    """A runc.conf whose administrator set work-dir would fight post-copy's own settings:
    --strategy lazy is refused before anything is touched (exit 3, the fix named); auto
    falls back to cold and says why."""
    ab.docker_a.containers.run(
        ab.test_image, ["sleep", "3600"], name=ab.container_name, detach=True
    )
    # Hold the host lock while the file is the administrator's "own" (the lab hosts share
    # /etc): no migrate on this machine writes it meanwhile.
    # (Held for the seconds of a dry run only: every checkpoint on this machine waits.)
    with criu_config_lock(exclusive=True):
        original = RUNC_CRIU_CONF.read_text() if RUNC_CRIU_CONF.exists() else None
        RUNC_CRIU_CONF.parent.mkdir(parents=True, exist_ok=True)
        RUNC_CRIU_CONF.write_text((original or "") + "work-dir /var/tmp/admin-criu-work\n")
        try:
            p = ab.run("--strategy", "lazy", "--dry-run")
        finally:
            if original is None:
                RUNC_CRIU_CONF.unlink()
            else:
                RUNC_CRIU_CONF.write_text(original)
    assert p.returncode == 3, (p.stdout, p.stderr)
    assert "--strategy lazy is impossible" in p.stderr and "work-dir" in p.stderr, p.stderr
    assert "--strategy cold" in p.stderr  # the fix
    assert ab.docker_a.containers.get(ab.container_name).status == "running"
    assert _gone(ab.docker_b, ab.container_name)


def test_auto_is_lazy_where_possible(
    ab: AB,
) -> None:
    ab.docker_a.containers.run(
        ab.test_image, ["sleep", "3600"], name=ab.container_name, detach=True
    )
    p = ab.run("--strategy", "auto", "--json")
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert rep["strategy"] == "lazy" and rep["postcopy"], rep
    assert ab.docker_b.containers.get(ab.container_name).status == "running"


def test_source_lost_mid_postcopy(
    ab: AB,
    lab: Any,
    tmp_path: Path,
) -> None:
    """The `migrate run` process dies while pages are still moving: the destination copy is
    stopped by its agent before its daemon lets go of the memory (never run with holes),
    the source copy stays paused with the state at the pause, `migrate recover` changes
    nothing and says so."""
    before = start_holder(ab.docker_a, ab.container_name, ab.test_image)
    mark = tmp_path / "mark"
    # The test hook stops `migrate run` right after `commit`, post-copy running (the awk reads
    # its memory only when asked, so most pages are still on A, pushed in the background).
    proc = start_run(
        lab,
        ab.container_name,
        [*ab.migrate_args, "--strategy", "lazy", "--json"],
        mark,
        "source:wait:postcopy",
    )
    os.kill(wait_mark(mark, proc, 300), 9)
    proc.communicate(timeout=60)
    # The agent notices (tunnel gone, then the session): it stops its copy.
    deadline = time.monotonic() + 120
    while ab.docker_b.containers.get(ab.container_name).status == "running":
        assert time.monotonic() < deadline, "the destination copy kept running"
        time.sleep(0.5)
    # The source copy: paused, whole. Its lazy dump failed and left the tasks frozen.
    deadline = time.monotonic() + 60
    while _procs_mentioning(ab.docker_a.containers.get(ab.container_name).id):
        assert time.monotonic() < deadline, "the source's page server did not exit"
        time.sleep(0.5)
    assert ab.docker_a.containers.get(ab.container_name).status == "paused"
    rec = recover(ab.migrate_on_a, ab.container_name, ab.migrate_args)
    assert rec.returncode == 0, rec.stderr
    settled = json.loads(rec.stdout)["settled"]
    assert [s["outcome"] for s in settled] == ["postcopy_failed"], settled
    assert ab.docker_a.containers.get(ab.container_name).status == "paused"  # untouched
    ab.docker_a.containers.get(ab.container_name).unpause()
    assert _memory_sum(ab.docker_a, ab.container_name) == before


def test_link_cut_mid_postcopy(
    lab: Any,
    ab: AB,
    tmp_path: Path,
) -> None:
    """The link dies while pages are still moving: `migrate run` reports it (exit 4, the
    post-copy error and what to decide), B's agent stops its copy, A's copy stays paused
    with the state at the pause and resumes whole when the operator unpauses it."""
    before = start_holder(ab.docker_a, ab.container_name, ab.test_image)
    mark = tmp_path / "mark"
    proc = start_run(
        lab,
        ab.container_name,
        [*ab.migrate_args, "--strategy", "lazy"],
        mark,
        "source:wait:postcopy",
    )
    with link_cut(lab, mark, proc) as restore:
        wait_mark(mark, proc, 300)
        set_link(lab, False)
        restore.start()
        mark.unlink()
        _, err = proc.communicate(timeout=BOUND_S + 60)
    assert proc.returncode == 4, err
    assert "post-copy of" in err and "no rollback" in err and "docker unpause" in err, err
    deadline = time.monotonic() + 120
    while ab.docker_b.containers.get(ab.container_name).status == "running":
        assert time.monotonic() < deadline, "the destination copy kept running"
        time.sleep(0.5)
    assert ab.docker_a.containers.get(ab.container_name).status == "paused"
    rec = recover(
        ab.migrate_on_a, ab.container_name, ab.migrate_args
    )  # settled already: nothing to do
    assert rec.returncode == 0, rec.stderr
    ab.docker_a.containers.get(ab.container_name).unpause()
    assert _memory_sum(ab.docker_a, ab.container_name) == before
