"""What one agent session knows: its migrations and drills, and the helpers its parts share.

The parts (prepare.py, streams.py, restore.py, postcopy.py, rollback.py, drills.py) each get
the one Session of their Agent (server.py); none keeps state of its own.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from migrate.checkpoint import lazy_pages, postcopy
from migrate.core.errors import MigrateError, ProtocolError, RestoreFailed
from migrate.core.faults import NO_FAULTS, Faults
from migrate.core.journal import DEFAULT_DIR, Journal
from migrate.core.lock import PidLock
from migrate.engines.base import Engine
from migrate.wire.results import PostcopyResult

log = logging.getLogger(__name__)

RESTORE_WAIT_S = 30.0
# Short: the lazy-pages daemon's unix socket lives here and socket paths are limited to 108
# bytes. A rollback removes a killed agent's work directories there.
LAZY_WORK_ROOT = lazy_pages.WORK_ROOT


@dataclass
class MigrationState:
    id: str
    name: str
    container_id: str = ""
    checkpoint: str = ""
    state: str = "new"  # new|prepared|restored|committed|aborted
    # Volumes this migration created here (removed by a rollback) and those it found empty
    # and fills (emptied again by a rollback); only these may receive content.
    volumes_made: list[str] = field(default_factory=list)
    volumes_reused: list[str] = field(default_factory=list)
    # Bind-mount paths for --bind-mounts copy: directories this migration created (removed by
    # a rollback) and empty ones it found (emptied again).
    binds_made: list[str] = field(default_factory=list)
    binds_reused: list[str] = field(default_factory=list)
    networks_made: list[str] = field(default_factory=list)  # removed by a rollback
    precopied: bool = False  # the upper dir holds a pre-copy: only a delta may follow
    volumes_precopied: list[str] = field(default_factory=list)  # likewise, per volume
    binds_precopied: list[str] = field(default_factory=list)  # and per --bind-mounts copy path
    # The checkpoint images' staging directory when it lies outside the container's own
    # directory (`migrate agent --staging-dir`): `docker rm` does not take it, a rollback must.
    staging: Path | None = None
    journal: Journal | None = None
    postcopy: PostcopyRun | None = None  # --strategy lazy, from `restored` to the last page
    # Held by the agent process serving this migration, so another agent (started by
    # `migrate recover` or a rollback over a new session) never acts on it at the same time.
    lock: PidLock | None = None


@dataclass
class PostcopyRun:
    """A restored container whose memory still arrives from the source (postcopy.py)."""

    daemon: lazy_pages.LazyPagesDaemon
    relay: postcopy.PageRelay
    full: Path  # the images the daemon reads (removed when it is done)
    t_running: float
    done: threading.Event = field(default_factory=threading.Event)
    result: PostcopyResult | None = None  # set when the last page is in
    error: MigrateError | None = None
    stopped: bool = False  # the destination copy was killed (its memory is incomplete)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class DrillState:
    id: str
    name: str
    container_id: str = ""
    image_id: str = ""
    image_loaded: bool = False  # loaded for the drill only: removed with it
    volumes: tuple[str, ...] = ()  # the drill copy's own volumes: removed with it
    done: bool = False  # removed, or kept on request: nothing left to clean up at exit
    # While a drill is live its agent holds this lock and keeps a record next to it: a later
    # agent that finds the record with the lock free removes what a killed agent left.
    lock: PidLock | None = None
    record: Path | None = None


@dataclass
class Session:
    engine_factory: Callable[[], Engine]
    state_dir: Path | None = None
    # Where checkpoint images are staged (None: inside the new container's directory).
    staging_root: Path | None = None
    # The test seam (core/faults.py): set by `hello`, and only where the agent's own
    # environment allows it; none otherwise.
    faults: Faults = NO_FAULTS
    migrations: dict[str, MigrationState] = field(default_factory=dict)
    drills: dict[str, DrillState] = field(default_factory=dict)
    _engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = self.engine_factory()
        return self._engine

    def mig(self, migration_id: str) -> MigrationState:
        m = self.migrations.get(migration_id)
        if m is None:
            raise ProtocolError(f"unknown migration {migration_id!r}")
        return m

    def journal(self, migration_id: str) -> Journal:
        try:
            return Journal.for_migration("agent", migration_id, self.state_dir)
        except ValueError:
            raise ProtocolError(f"bad migration id {migration_id[:80]!r}") from None

    def lock(self, migration_id: str) -> PidLock:
        base = (self.state_dir or DEFAULT_DIR) / "journal" / "agent"
        return PidLock(
            base / f"{migration_id}.lock",
            busy=f"migration {migration_id} is still being handled by an agent",
            hint="that agent rolls back by itself when it notices the lost connection "
            "(seconds, with SSH keep-alives); run `migrate recover` again then",
        )

    def staging(self, m: MigrationState) -> Path:
        if m.staging is not None:
            return m.staging
        if self.staging_root is not None:
            return self.staging_root / f"migrate-{m.id}"
        return Path(self.engine.staging_dir(m.container_id, m.checkpoint))

    def wait_running(self, container_id: str) -> float:
        deadline = time.monotonic() + RESTORE_WAIT_S
        while True:
            st = self.engine.state(container_id)
            if st.running and not st.paused:
                return time.monotonic()
            if st.status in ("exited", "dead") or time.monotonic() > deadline:
                raise RestoreFailed(
                    f"the restored container is {st.status}, not running",
                    hint=f"see `{self.engine.name} logs` of the destination container and the CRIU log",
                )
            time.sleep(0.01)

    def wait_fault(self, step: str, name: str) -> None:
        """Test seam ``agent:wait:STEP``: write this pid to /tmp/migrate-agent-wait-NAME and
        wait until a test removes it (it kills a process or cuts the link meanwhile)."""
        point = f"agent:wait:{step}"
        if not self.faults.on(point):
            return
        safe = "".join(c for c in name if c.isalnum() or c in "-_.")[:64] or "x"
        mark = Path(f"/tmp/migrate-agent-wait-{safe}")
        self.faults.wait(point, f"{os.getpid()} {step}\n", mark)


@dataclass
class Part:
    """One concern of the agent (prepare, streams, restore, ...) working on the session."""

    s: Session

    @property
    def engine(self) -> Engine:
        return self.s.engine
