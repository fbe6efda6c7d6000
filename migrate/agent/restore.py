"""The restore: Docker starts the new container from the checkpoint (all of its memory, or a
local lazy-pages daemon feeding what Docker did not get); post-copy is postcopy.py. Then the
commit, the point of no return."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from migrate.agent.postcopy import Postcopies
from migrate.agent.state import LAZY_WORK_ROOT, Part
from migrate.checkpoint import criu, lazy_pages
from migrate.core.errors import DiskFull, ProtocolError, RestoreFailed
from migrate.engines.base import LazyRestore
from migrate.wire.methods import Commit, Restore
from migrate.wire.results import CommitResult, RestoreResult

log = logging.getLogger(__name__)

# Waiting for the lazy-pages daemon to move every page of a restored container (local disk).
RESTORE_FILL_TIMEOUT_S = 600.0


@dataclass
class Restorer(Part):
    postcopies: Postcopies

    def h_restore(self, req: Restore) -> RestoreResult:
        migration_id = req.migration_id
        m = self.s.mig(migration_id)
        assert m.journal is not None
        t0 = time.monotonic()
        m.journal.append("restoring")
        if req.page_server_port is not None:
            return self.postcopies.restore(m, req.page_server_port, t0)
        full = self.s.staging(m)
        target = self.engine.checkpoint_dir(m.container_id, m.checkpoint)
        split = self._split_for_lazy_restore(full, target)
        daemon: lazy_pages.LazyPagesDaemon | None = None
        fill_s = None
        try:
            if split is not None:
                criu_bin = criu.find_criu()
                assert criu_bin is not None  # checked by _split_for_lazy_restore
                work = LAZY_WORK_ROOT / f"lazy-{migration_id[:12]}"
                shutil.rmtree(work, ignore_errors=True)
                daemon = lazy_pages.LazyPagesDaemon(criu_bin, full, work)
                self.engine.start_from_checkpoint(
                    m.container_id, m.checkpoint, lazy=LazyRestore(work_dir=work)
                )
            else:
                self.engine.start_from_checkpoint(m.container_id, m.checkpoint)
            running_s = self.s.wait_running(m.container_id) - t0
            if daemon is not None:
                # Not `restored` before every page is here: until then the source's paused
                # copy is the rollback point and these images are the only other copy.
                fill_s = daemon.wait(RESTORE_FILL_TIMEOUT_S)
                self.s.wait_running(m.container_id)
        finally:
            if daemon is not None:
                daemon.kill()
                criu.keep_logs(daemon.work, f"{migration_id}-dest")
                shutil.rmtree(daemon.work, ignore_errors=True)
            shutil.rmtree(full, ignore_errors=True)
        restore_s = time.monotonic() - t0
        self.s.wait_fault("restoring", m.name)
        m.state = "restored"
        mode = "lazy_local" if split is not None else "plain"
        m.journal.append("restored", restore_s=restore_s, running_s=running_s, mode=mode)
        if split is not None:
            return RestoreResult(
                container_id=m.container_id,
                restore_s=restore_s,
                running_s=running_s,
                restore_mode=mode,
                memory_fill_s=fill_s,
                lazy_bytes=split.lazy_bytes,
            )
        return RestoreResult(
            container_id=m.container_id,
            restore_s=restore_s,
            running_s=running_s,
            restore_mode=mode,
        )

    def _split_for_lazy_restore(self, full: Path, target: Path) -> lazy_pages.SplitStats | None:
        """Give Docker the checkpoint without its lazy memory when that is worth it and
        possible (lazy_pages.py); otherwise the complete images, moved (same file system)."""
        split, reason = lazy_pages.split_for_restore(self.engine, full, target)
        if split is None:
            log.debug("plain restore: %s", reason)
            _move_tree(full, target)
        return split

    def h_commit(self, req: Commit) -> CommitResult:
        m = self.s.mig(req.migration_id)
        if m.state != "restored":
            raise ProtocolError(f"commit in state {m.state}")
        assert m.journal is not None
        # The point of no return only for a copy that still runs (its dockerd may have
        # restarted and killed it since `restored`).
        st = self.engine.state(m.container_id)
        if not st.running or st.paused:
            raise RestoreFailed(
                f"the restored container is {st.status} now, not running: not committing",
                hint=f"the source copy resumes; see the destination {self.engine.name} daemon's log",
            )
        self.s.faults.exit("agent:exit_before_commit")
        m.journal.append("committed", container_id=m.container_id)  # point of no return
        m.state = "committed"
        self.s.faults.exit("agent:exit_after_commit")
        # The checkpoint images have served their purpose; do not leave them behind (the
        # post-copy daemon's own copy goes when it is done).
        if m.postcopy is None:
            shutil.rmtree(self.s.staging(m), ignore_errors=True)
        try:
            shutil.rmtree(self.engine.checkpoint_dir(m.container_id, m.checkpoint))
        except OSError as e:
            log.warning("could not remove the checkpoint images: %s", e)
        return CommitResult(committed=True)


def _move_tree(src: Path, dst: Path) -> None:
    """Move a directory: a rename on one file system, else a copy (a checkpoints directory
    may be a mount of its own) whose lack of space is reported as DiskFull."""
    try:
        os.rename(src, dst)
        return
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
    try:
        shutil.copytree(src, dst)
    except (OSError, shutil.Error) as e:
        shutil.rmtree(dst, ignore_errors=True)
        text = str(e)
        if (
            "No space left" in text
            or "Disk quota" in text
            or getattr(e, "errno", None)
            in (
                errno.ENOSPC,
                errno.EDQUOT,
            )
        ):
            raise DiskFull(
                f"no space for the checkpoint images in {dst.parent}: {text[:300]}",
                hint="free space on the destination engine's data root",
            ) from None
        raise
    shutil.rmtree(src, ignore_errors=True)
