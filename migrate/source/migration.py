"""Source-side orchestration of a live migration (DESIGN.md, "Migration state machine").

precheck -> image layers (still running) -> create on the destination -> pause -> checkpoint
(tasks stay paused) -> stream read-write layer and checkpoint -> agent restores -> `restored`
-> `commit` -> agent journals `committed` -> the source copy is removed (or killed and kept).

Until the agent answers `restored`, every failure rolls back: the agent deletes what it made
and the source container is unpaused. Once `commit` has been sent, a lost answer leaves the
outcome in doubt: the source copy stays paused (never two running copies, never zero) and
`migrate recover` settles it.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migrate.checkpoint import criu, postcopy
from migrate.checkpoint import staging as staging_mod
from migrate.core.errors import InDoubt, InternalError, MigrateError, PrecheckFailed
from migrate.core.faults import NO_FAULTS, Faults
from migrate.core.journal import DEFAULT_DIR, Journal
from migrate.core.lock import ContainerLock
from migrate.core.report import Bytes, NullProgress, Progress, Report, Timer
from migrate.engines.base import Engine, NetworkInfo, VolumeInfo
from migrate.fs.precopy import PreCopy
from migrate.source.freeze import freeze_and_move
from migrate.source.handover import bye, commit, finish_source, rollback, wait_postcopy
from migrate.source.interrupt import InterruptLatch
from migrate.source.precopy import precopy
from migrate.source.prepare import prepare, transfer_image
from migrate.source.run_precheck import precheck
from migrate.transport import Channel, Tunnel
from migrate.wire.bulk import StreamChannel
from migrate.wire.client import AgentClient, StreamStats
from migrate.wire.connection import Connection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    container: str
    destination: str  # for the report
    name: str | None = None
    keep_source: bool = False
    dry_run: bool = False
    strategy: str = "cold"  # cold | lazy | auto (docs/architecture.md, "Post-copy")
    bind_mounts: str = "refuse"  # refuse | same-path | copy (docs/mounts-and-networks.md)
    compression_level: int = 1
    # adaptive: the level drops to almost none while the CPUs, not the link, are the limit
    # (wire/stream.py, FAST_LEVEL); fixed: always compression_level.
    compression: str = "adaptive"
    # Stream the read-write layer while the container runs; only what changed goes in the
    # freeze (migrate/fs/precopy.py). Off: the whole layer is captured frozen.
    precopy: bool = True
    state_dir: Path = DEFAULT_DIR
    lock_dir: Path | None = None  # None: migrate.core.lock.DEFAULT_LOCK_DIR
    faults: Faults = NO_FAULTS  # test seam (core/faults.py): none outside the test suite
    # Where checkpoint images are staged on both ends: auto | memory | disk (staging.py).
    staging: str = "auto"
    memory_root: Path = staging_mod.MEMORY_ROOT
    # Streams over an OpenSSH bulk connection (auto | openssh | paramiko; docs/architecture.md).
    bulk: str = "auto"


@dataclass
class Migration:
    opts: RunOptions
    engine: Engine
    connect: Callable[[], Channel]
    progress: Progress = field(default_factory=NullProgress)
    # Ctrl-C and SIGTERM, routed here by the caller (migrate.source.interrupt.handling).
    interrupts: InterruptLatch = field(default_factory=InterruptLatch)

    def __post_init__(self) -> None:
        self.id = uuid.uuid4().hex
        self.timer = Timer(self.progress)
        self.conn: Connection | None = None
        self.agent: AgentClient | None = None  # the typed client over ``conn``, set with it
        self.paused = False
        self.dest_created = False
        self.commit_sent = False
        self.dest_container_id = ""
        self.dest_name = ""
        self.bytes: dict[str, int] = {
            "raw": 0,
            "wire": 0,
            "image": 0,
            "rootfs": 0,
            "checkpoint": 0,
            "volumes": 0,
            "logs": 0,
            "rootfs_precopy": 0,
            "rootfs_kept": 0,
            "volumes_precopy": 0,
            "volumes_kept": 0,
            "fast": 0,
        }
        self.t_pause: float | None = None
        self.downtime: float | None = None
        self.staging = self.opts.state_dir / "staging" / self.id
        self.staged_in: dict[str, str] = {}  # source / destination -> memory | disk
        self.journal = Journal.for_migration("source", self.id, self.opts.state_dir)
        self.lock: ContainerLock | None = None
        self.volumes: list[VolumeInfo] = []
        self.networks: list[NetworkInfo] = []  # user-defined networks to recreate if missing
        self.binds: list[str] = []  # bind-mounted host paths (directories) handled per option
        self.agent_methods: frozenset[str] = frozenset()  # what the agent said it can do
        self.agent_memory_staging = False  # the agent can stage checkpoint images in memory
        self.memory_need = 0  # bytes the checkpoint images will take (the container's memory)
        self.precopied: PreCopy | None = None  # set once the agent holds a pre-copy
        self.precopied_volumes: dict[str, PreCopy] = {}  # likewise, by volume name
        self.precopied_binds: dict[str, PreCopy] = {}  # and by bind-mounted host path (copy)
        # The strategy this run uses (auto resolved in the precheck) and, for auto, why.
        self.strategy = self.opts.strategy if self.opts.strategy != "auto" else "cold"
        self.strategy_note = ""
        self.page_server: postcopy.PageServer | None = None
        self.tunnel: Tunnel | None = None
        self.postcopy: dict[str, Any] = {}
        self.stream_channel = StreamChannel("")

    # --- the state machine ---------------------------------------------------------------------------

    # long: the state machine, its steps and how each kind of failure ends, in one place
    def run(self) -> Report:
        t0 = time.monotonic()
        self.interrupts.arm()
        try:
            spec = precheck(self)
            self.interrupts.check()
            if self.opts.dry_run:
                return self._report("dry_run", t0, "untouched")
            # From here on the migration is journalled until it is settled (`migrate recover`
            # reads what a killed run left).
            self.journal.append(
                "precheck",
                container=spec.id,
                name=spec.name,
                destination=self.opts.destination,
                dest_name=self.dest_name,
                keep_source=self.opts.keep_source,
            )
            transfer_image(self, spec)
            self.interrupts.check()
            prepare(self, spec)
            self.interrupts.check()
            precopy(self, spec)
            self.interrupts.check()
            freeze_and_move(self, spec)
            commit(self, spec)
            if self.page_server is not None:
                wait_postcopy(self, spec)
            bye(self)
            action = finish_source(self, spec)
            return self._report("migrated", t0, action)
        except InDoubt:
            raise
        except PrecheckFailed as e:
            if self.paused or self.dest_created:
                raise rollback(self, e) from None
            raise
        except MigrateError as e:
            raise rollback(self, e) from None
        except KeyboardInterrupt:
            raise rollback(self, self.interrupts.error()) from None
        except Exception as e:
            # A bug of ours must not leave the source paused or a copy on the destination:
            # roll back as for any failure, and keep the traceback for the report.
            log.exception("unexpected error in migration %s", self.id)
            if self.commit_sent:  # past the point of no return: nothing to roll back
                raise InDoubt(
                    f"migration {self.id} was committed on the destination, then failed here "
                    f"(unexpected {type(e).__name__}: {e})",
                    hint=f"`migrate recover {self.opts.container}` settles the source copy",
                ) from e
            cause = InternalError(
                f"unexpected {type(e).__name__}: {e}",
                hint="please report it with the output of `migrate -v run ...`",
            )
            raise rollback(self, cause) from e
        finally:
            self.interrupts.disarm()  # cleaning up: an interrupt now is recorded, not raised
            if self.page_server is not None:
                self.page_server.kill()
            if self.tunnel is not None:
                self.tunnel.close()
            criu.keep_logs(self.staging / "work", f"{self.id}-source")
            shutil.rmtree(self.staging, ignore_errors=True)
            if self.conn is not None:
                self.conn.close()
            if self.lock is not None:
                self.lock.release()

    # --- for the phases (the modules beside this one) ---------------------------------------

    def fault(self, point: str) -> None:
        """The test seam at ``source:POINT`` (core/faults.py): a wait point writes
        ``PID STEP MIGRATION_ID`` to the mark file first."""
        name = point.removeprefix("source:")
        self.opts.faults.reach(point, f"{os.getpid()} {name} {self.id}\n")

    def faulty(self, chunks: Iterator[bytes], point: str) -> Iterator[bytes]:
        """Pass a stream through, reaching the fault point ``point`` after its first chunk."""
        name = point.removeprefix("source:")
        return self.opts.faults.wrap(chunks, point, f"{os.getpid()} {name} {self.id}\n")

    def count(self, what: str, stream_stats: StreamStats | None) -> None:
        """Add a stream's bytes under ``what`` and to the totals; ``stream_stats`` is the
        CallResult's ``stream``, always set for a request that carried one."""
        assert stream_stats is not None, f"{what}: no statistics for a stream"
        self.bytes[what] += stream_stats.raw
        self.bytes["raw"] += stream_stats.raw
        self.bytes["wire"] += stream_stats.wire
        self.bytes["fast"] += stream_stats.fast_raw

    # --- the report ------------------------------------------------------------------------

    def _report(self, status: str, t0: float, action: str) -> Report:
        return Report(
            status=status,
            container=self.opts.container,
            source=os.uname().nodename,
            destination=self.opts.destination,
            dest_name=self.dest_name,
            dest_container_id=self.dest_container_id,
            strategy=self.strategy,
            strategy_note=self.strategy_note,
            stream_channel=self.stream_channel.name,
            stream_channel_note=self.stream_channel.note,
            postcopy=dict(self.postcopy) or None,
            staging=dict(self.staged_in),
            migration_id=self.id,
            downtime_s=self.downtime,
            total_s=time.monotonic() - t0,
            phases=dict(self.timer.phases),
            bytes=Bytes(**self.bytes),
            source_action=action,
        )
