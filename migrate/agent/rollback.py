"""Undoing an uncommitted migration: everything it made here goes, from this session's
memory or, for an agent that died, rebuilt from its journal (replayed by `from_journal`)."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from migrate.agent.binds import empty_dir
from migrate.agent.state import LAZY_WORK_ROOT, MigrationState, Part
from migrate.core.errors import MigrateError, ProtocolError
from migrate.wire.methods import Abort, Status
from migrate.wire.results import AbortResult, StatusResult

log = logging.getLogger(__name__)


@dataclass
class Rollback(Part):
    """Rollback of this session's migrations, and of a dead agent's from its journal."""

    def rollback(self, m: MigrationState, why: str, *, force: bool = False) -> None:
        if m.state == "committed" or (m.state == "aborted" and not force):
            return
        log.warning("rolling back migration %s: %s", m.id, why)
        if m.container_id:
            try:
                self.engine.remove(m.container_id, force=True)
            except MigrateError as e:
                log.error("could not remove %s: %s", m.container_id, e)
        if m.staging is not None:
            shutil.rmtree(m.staging, ignore_errors=True)
        # A lazy restore's work directory (a killed agent's lazy-pages daemon died with it),
        # and runc's CRIU configuration if that agent died while Docker started the task: left
        # there, it would make every later checkpoint or restore on this host a lazy one.
        shutil.rmtree(LAZY_WORK_ROOT / f"lazy-{m.id[:12]}", ignore_errors=True)
        shutil.rmtree(LAZY_WORK_ROOT / f"post-{m.id[:12]}", ignore_errors=True)
        try:
            self.engine.settle_restore_config()
        except OSError as e:
            log.error("could not check runc's CRIU configuration: %s", e)
        self._rollback_volumes(m)
        m.state = "aborted"
        if m.journal is not None:
            m.journal.append("aborted", reason=why)

    def _rollback_volumes(self, m: MigrationState) -> None:
        """Remove the volumes this migration created; empty again those it found empty."""
        for name in m.volumes_made:
            try:
                self.engine.remove_volume(name)
            except MigrateError as e:
                log.error("could not remove volume %s: %s", name, e)
        for name in m.volumes_reused:
            v = self.engine.volume(name)
            if v is not None and v.mountpoint:
                empty_dir(Path(v.mountpoint))
        for path in m.binds_made:
            if path and Path(path).is_dir() and not Path(path).is_symlink():
                shutil.rmtree(path, ignore_errors=True)
        for path in m.binds_reused:
            empty_dir(Path(path))
        for net in m.networks_made:
            try:
                self.engine.remove_network(net)
            except MigrateError as e:
                log.error("could not remove network %s: %s", net, e)

    def rollback_uncommitted(self, why: str) -> None:
        for m in list(self.s.migrations.values()):
            self.rollback(m, why)
            if m.lock is not None:
                m.lock.release()

    def h_abort(self, req: Abort) -> AbortResult:
        migration_id = req.migration_id
        m = self.s.migrations.get(migration_id)
        if m is not None:
            if m.state == "committed":
                raise ProtocolError("abort of a committed migration")
            self.rollback(m, "aborted by the source")
            return AbortResult(aborted=True)
        m = self.from_journal(migration_id)  # takes its lock: Busy if another agent has it
        if m is None:
            return AbortResult(aborted=True, known=False)
        try:
            if m.state == "committed":
                raise ProtocolError("abort of a committed migration")
            # Whatever the journal says, make sure the container is gone (a rollback by an
            # agent that was killed half way may have journalled nothing).
            self.rollback(m, "aborted from the journal", force=True)
        finally:
            if m.lock is not None:
                m.lock.release()
        return AbortResult(aborted=True, known=True)

    def from_journal(self, migration_id: str) -> MigrationState | None:
        """Rebuild what an earlier agent (killed, say) had made, from its journal."""
        j = self.s.journal(migration_id)
        recs = j.records()
        if not recs:
            return None
        lock = self.s.lock(migration_id)
        lock.acquire()
        m = MigrationState(
            id=migration_id, name=str(recs[0].data.get("name", "")), journal=j, lock=lock
        )
        m.checkpoint = f"migrate-{migration_id[:12]}"
        for r in recs:
            if r.event == "created":
                m.container_id = str(r.data.get("container_id", ""))
                m.state = "prepared"
            elif r.event == "volume_created":
                m.volumes_made.append(str(r.data.get("volume", "")))
            elif r.event == "volume_reused":
                m.volumes_reused.append(str(r.data.get("volume", "")))
            elif r.event == "network_created":
                m.networks_made.append(str(r.data.get("network", "")))
            elif r.event == "bind_created":
                m.binds_made.append(str(r.data.get("path", "")))
            elif r.event == "bind_reused":
                m.binds_reused.append(str(r.data.get("path", "")))
            elif r.event == "staging" and r.data.get("path"):
                m.staging = Path(str(r.data["path"]))
            elif r.event in ("restored", "committed", "aborted"):
                m.state = r.event
        return m

    def h_status(self, req: Status) -> StatusResult:
        migration_id = req.migration_id
        j = self.s.journal(migration_id)
        live = False
        if j.records() and migration_id not in self.s.migrations:
            lock = self.s.lock(migration_id)
            try:
                lock.acquire()
                lock.release()
            except MigrateError:
                live = True  # another agent still serves it
        return StatusResult(last=j.last(), live=live)
