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

import base64
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
from migrate.core.errors import (
    Busy,
    CheckpointFailed,
    ConnectionLost,
    ContainerNotRunning,
    CriuUnavailable,
    EngineUnavailable,
    Incompatible,
    InDoubt,
    MigrateError,
    MigrationFailed,
    PrecheckFailed,
    ProtocolError,
    Timeout,
    Unsupported,
)
from migrate.core.faults import NO_FAULTS, Faults
from migrate.core.journal import DEFAULT_DIR, Journal, unsettled
from migrate.core.lock import ContainerLock
from migrate.core.report import Bytes, NullProgress, Progress, Report, Timer
from migrate.engines.base import ContainerSpec, Engine, NetworkInfo, VolumeInfo
from migrate.fs import capture, precopy
from migrate.fs.files import read_chunks
from migrate.fs.precopy import PreCopy
from migrate.source.interrupt import InterruptLatch
from migrate.transport import Channel, Tunnel
from migrate.wire.bulk import StreamChannel, attach_bulk
from migrate.wire.connection import Connection
from migrate.wire.session import open_session

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 60.0
# Restoring goes through containerd's content store: seconds per GB of memory.
RESTORE_TIMEOUT_S = 600.0
IMAGE_TIMEOUT_S = 1800.0
# Post-copy: how long the destination may take to pull every page, and how long the source's
# page server may take to exit after the last one.
POSTCOPY_TIMEOUT_S = 1800.0
PAGE_SERVER_EXIT_S = 60.0
# How long a rollback keeps trying to reach the agent to delete what it made.
ABORT_RETRY_S = 45.0
# How long a rollback waits for an interrupted CRIU dump to end before resuming the source.
DUMP_WAIT_S = 120.0
# The last call, after `committed` (nothing depends on its answer).
BYE_TIMEOUT_S = 5.0


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

    # --- public ---------------------------------------------------------------------------

    def run(self) -> Report:
        t0 = time.monotonic()
        self.interrupts.arm()
        try:
            spec = self._precheck()
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
            self._transfer_image(spec)
            self.interrupts.check()
            self._prepare(spec)
            self.interrupts.check()
            self._precopy(spec)
            self.interrupts.check()
            self._freeze_and_move(spec)
            self._commit(spec)
            if self.page_server is not None:
                self._postcopy(spec)
            self._bye()
            action = self._finish_source(spec)
            return self._report("migrated", t0, action)
        except InDoubt:
            raise
        except PrecheckFailed as e:
            if self.paused or self.dest_created:
                raise self._rollback(e) from None
            raise
        except MigrateError as e:
            raise self._rollback(e) from None
        except KeyboardInterrupt:
            raise self._rollback(self.interrupts.error()) from None
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

    # --- phases ---------------------------------------------------------------------------

    def _precheck(self) -> ContainerSpec:
        with self.timer.phase("precheck", "checking source and destination"):
            st = self.engine.state(self.opts.container)
            # Held until run() returns; the kernel drops it if this process dies.
            lock = ContainerLock(st.id, st.name, self.opts.lock_dir)
            lock.acquire()
            self.lock = lock
            pending = [j for j in unsettled(self.opts.state_dir) if j.container_id == st.id]
            if pending:
                raise InDoubt(
                    f"an earlier migration of {st.name} ({pending[0].migration_id}) is not "
                    f"settled (last step: {pending[0].last}); nothing was touched",
                    hint=f"run `migrate recover {st.name} --to {pending[0].destination}` first",
                    details={"migration_id": pending[0].migration_id},
                )
            if not st.running or st.paused:
                raise ContainerNotRunning(
                    f"container {st.name} is {st.status}: only running containers migrate",
                    hint=f"start it (`docker start {st.name}`) or unpause it first",
                )
            spec = self.engine.spec(self.opts.container)
            self._check_supported(spec)
            self.volumes = self._volumes(spec)
            self.binds = self._binds(spec)
            self.networks = self._networks(spec)
            execs = self.engine.exec_sessions(spec.id)
            if execs:
                raise Unsupported(
                    f"`docker exec` sessions are running in {spec.name}: {'; '.join(execs)}",
                    hint="CRIU cannot dump processes outside the container's process tree: "
                    "end those exec sessions and retry",
                )
            check_process_owners(self.engine, spec)
            info = self.engine.info()
            if not info.checkpoint_enabled:
                raise EngineUnavailable(
                    "the source's Docker daemon is not running with experimental features",
                    hint='add "experimental": true to /etc/docker/daemon.json and restart '
                    "dockerd (or start it with --experimental)",
                )
            caps = criu.capabilities(criu.find_criu())
            if caps.version is None or caps.version < criu.MIN_CRIU:
                raise CriuUnavailable(
                    "CRIU >= 4.2 is needed on the source"
                    + (f" (found {'.'.join(map(str, caps.version))})" if caps.version else ""),
                    hint="run `make setup` (it builds CRIU 4.2 from Debian's source package)",
                )
            self.dest_name = self.opts.name or spec.name
            self.conn = Connection(
                self.connect(), timeout=CALL_TIMEOUT_S, level=self.opts.compression_level
            )
            # None: post-copy possible on this side (the agent is asked about its own).
            lazy_why = None if self.opts.strategy != "cold" else "not asked"
            if lazy_why is None:
                lazy_why = self._source_postcopy_blocker(caps) or None
            hello = open_session(
                self.conn,
                faults=self.opts.faults.for_side("agent"),
                adaptive=self.opts.compression == "adaptive",
            )
            log.debug("agent: %s", hello)
            self.agent_methods = frozenset(hello.methods)
            self.agent_memory_staging = "memory" in hello.staging
            # Before anything is frozen: its handshake must not land in the downtime.
            self.stream_channel = attach_bulk(
                self.conn, self.opts.bulk, self.agent_methods, self.opts.faults.points
            )
            if lazy_why is None and "postcopy_wait" not in self.agent_methods:
                lazy_why = "the destination's migrate is too old for post-copy"
            res = self.conn.call(
                "precheck",
                spec=spec.to_wire(),
                name=self.dest_name,
                criu_version=list(caps.version),
                volumes=[v.to_wire() for v in self.volumes],
                binds=self._binds_wire(),
                **({"lazy": True} if lazy_why is None else {}),  # type: ignore[arg-type]
            )
            self._choose_strategy(lazy_why, res)
            self._check_cpu()
            return spec

    def _source_postcopy_blocker(self, caps: criu.CriuCapabilities) -> str:
        """Why this host cannot serve a post-copy ("" when it can)."""
        from migrate.source.check import check_pipe_max_size

        if not caps.lazy_pages:
            return (
                "`criu check --feature uffd-noncoop` fails on the source (no "
                "non-cooperative userfaultfd)"
            )
        pipe = check_pipe_max_size(
            _read_int(Path("/proc/sys/fs/pipe-max-size")),
            0xFFFFFFFFFF if criu.has_cap_sys_resource() else 0,
        )
        if not pipe.ok:
            return f"{pipe.problem} (fix: {pipe.fix})"
        assert self.conn is not None
        if self.conn.ch.tunnels() is None:
            return "this transport cannot carry the page-server link"
        return ""

    def _choose_strategy(self, source_why: str | None, res: dict[str, Any]) -> None:
        """Resolve --strategy: lazy needs both sides able to do post-copy (refused, exit 3,
        when they cannot); auto takes lazy where it can and cold otherwise."""
        if self.opts.strategy == "cold":
            return
        why = source_why or ""
        if not why:
            lazy = res.get("lazy")
            if not isinstance(lazy, dict):
                why = "the destination did not say whether it can restore lazily"
            elif not lazy.get("ok"):
                why = str(lazy.get("why") or "the destination cannot restore lazily")
        if not why:
            self.strategy = "lazy"
            return
        if self.opts.strategy == "auto":
            self.strategy, self.strategy_note = "cold", f"lazy impossible: {why}"
            log.info("--strategy auto: cold (%s)", why)
            return
        raise Unsupported(
            f"--strategy lazy is impossible: {why}",
            hint="fix that (`migrate check --to DEST` lists it), or use --strategy cold, which "
            "always works and can always roll back",
            details={"strategy": "lazy"},
        )

    def _check_cpu(self) -> None:
        """A checkpoint restores only on a CPU with the features its programs may use: ask the
        destination's CRIU about this host's CPU before anything is frozen."""
        assert self.conn is not None
        image = criu.cpuinfo_image()
        res = self.conn.call("cpuinfo_check", image_b64=base64.b64encode(image).decode())
        if not res.get("ok"):
            raise Incompatible(
                "the destination's CPU lacks features this host's CPU has: a checkpoint taken "
                "here would not restore there",
                hint="migrate between hosts with the same CPU features (`migrate check --to "
                "DEST` shows it)",
                details={"criu_log": str(res.get("output") or "")},
            )

    def _check_supported(self, spec: ContainerSpec) -> None:
        for m in spec.mounts:
            if m.type == "bind" and self.opts.bind_mounts == "refuse":
                raise Unsupported(
                    f"{spec.name} bind-mounts {m.source} at {m.destination}: a host path, "
                    "which does not move with the container by default",
                    hint="use --bind-mounts same-path if that path holds the same data on the "
                    "destination (shared storage), or --bind-mounts copy to move its content "
                    "to the same path there",
                )
        if self.engine.shares_network_namespace(spec):
            raise Unsupported(
                f"{spec.name} uses network mode {spec.network_mode!r}",
                hint="only bridge, user-defined and none networks can be migrated",
            )

    def _volumes(self, spec: ContainerSpec) -> list[VolumeInfo]:
        """The container's volumes, each one that can move (local driver, content in a
        directory on this host): refused otherwise, before anything is touched."""
        out = []
        for m in spec.mounts:
            if m.type != "volume":
                continue
            v = self.engine.volume(m.name) if m.name else None
            if v is None:
                raise Unsupported(f"{spec.name}: the volume at {m.destination} is gone")
            if not self.engine.volume_movable(v):
                raise Unsupported(
                    f"{spec.name} uses volume {v.name} (driver {v.driver}, options "
                    f"{dict(v.options)}): its content is not in a directory of this host",
                    hint="only local volumes without device options move; copy that "
                    "volume's data yourself, or use a plain local volume",
                )
            if not Path(v.mountpoint).is_dir():
                raise Unsupported(f"volume {v.name} has no directory at {v.mountpoint}")
            out.append(v)
        return out

    def _binds(self, spec: ContainerSpec) -> list[str]:
        out = []
        for m in spec.mounts:
            if m.type != "bind":
                continue
            src = Path(m.source)
            if self.opts.bind_mounts == "copy" and not src.is_dir():
                raise Unsupported(
                    f"{spec.name} bind-mounts {m.source}, which is not a directory: "
                    "--bind-mounts copy moves directories only",
                    hint="put the file in a directory and bind-mount that, or use "
                    "--bind-mounts same-path after copying it yourself",
                )
            out.append(m.source)
        return out

    def _networks(self, spec: ContainerSpec) -> list[NetworkInfo]:
        """The user-defined networks the container is on (its network mode's and any it was
        connected to later), each to be created on the destination if missing there."""
        out = []
        for name in self.engine.user_networks(spec):
            net = self.engine.network(name)
            if net is None:
                raise Unsupported(f"{spec.name}'s network {name} is gone on the source")
            if not self.engine.network_movable(net):
                raise Unsupported(
                    f"{spec.name} is on network {name} with driver {net.driver}",
                    hint="only bridge networks (the default and user-defined ones) migrate; "
                    f"`docker network disconnect {name} {spec.name}` first if it can do without",
                )
            out.append(net)
        return out

    def _binds_wire(self) -> list[dict[str, str]]:
        return [{"path": p, "mode": self.opts.bind_mounts} for p in self.binds]

    def _transfer_image(self, spec: ContainerSpec) -> None:
        assert self.conn is not None
        with self.timer.phase("image", "image layers"):
            img = self.engine.image(spec.image_id)
            if img is None:
                raise MigrateError(f"the image of {spec.name} ({spec.image_id[:19]}) is gone")
            status = self.conn.call("image_status", image_id=img.id, diff_ids=list(img.diff_ids))
            if status.get("image_present"):
                return
            have = {d for d in status.get("layers_present", []) if isinstance(d, str)}
            refs = [spec.image_ref] if spec.image_ref in img.repo_tags else []
            refs = refs or list(img.repo_tags[:1]) or [img.id]
            stats: dict[str, int] = {}
            stream = self.engine.save_missing_layers(refs, have, stats)
            res = self.conn.call(
                "load_image",
                stream=stream,
                image_id=img.id,
                timeout=IMAGE_TIMEOUT_S,
                on_progress=lambda raw, wire: self.progress.transfer("image", raw, wire, None),
            )
            self._count("image", res["_stream"])
            log.info(
                "image: %s layers sent, %s skipped",
                stats.get("layers_sent"),
                stats.get("layers_skipped"),
            )

    def _prepare(self, spec: ContainerSpec) -> None:
        assert self.conn is not None
        with self.timer.phase("create", "creating the container on the destination"):
            self.dest_created = True  # from here on the agent may have made something
            res = self.conn.call(
                "prepare",
                migration_id=self.id,
                spec=spec.to_wire(),
                name=self.dest_name,
                volumes=[v.to_wire() for v in self.volumes],
                binds=self._binds_wire(),
                networks=[n.to_wire() for n in self.networks],
            )
            self.dest_container_id = str(res["container_id"])
            self.journal.append("prepared", dest_container_id=self.dest_container_id)

    def _precopy(self, spec: ContainerSpec) -> None:
        """Stream the read-write layer into the new container's upper dir while the container
        still runs; the freeze then only sends what changed (migrate/fs/precopy.py)."""
        assert self.conn is not None
        if (
            not self.opts.precopy
            or not {"precopy_rootfs", "put_rootfs_delta"} <= self.agent_methods
        ):
            return
        self._fault("source:before_precopy")
        with self.timer.phase("precopy", "pre-copying the read-write layer (still running)"):
            upper = Path(self.engine.state(spec.id).upper_dir)
            pids = lambda: [p.pid for p in self.engine.processes(spec.id)]  # noqa: E731
            pc = PreCopy.start(pids)
            volumes_pc = pc  # volumes get one pass, from the first one's start
            t_pass = time.monotonic()
            cap = capture.capture(upper, live=True, record=pc.record)
            res = self.conn.call(
                "precopy_rootfs",
                stream=cap,
                migration_id=self.id,
                timeout=RESTORE_TIMEOUT_S,
                on_progress=lambda raw, wire: self.progress.transfer("precopy", raw, wire, None),
            )
            self._count("rootfs_precopy", res["_stream"])
            self.precopied = pc
            log.info(
                "pre-copy: %d files (%d bytes) sent while running, %d names skipped",
                len(pc.files),
                pc.bytes_recorded,
                cap.stats.vanished,
            )
            while pc.passes < precopy.MAX_PASSES and pc.worth_another_pass(
                time.monotonic() - t_pass
            ):
                # Another pass while running, a delta over the first: what changed meanwhile
                # or was too recently changed to vouch for goes now rather than in the freeze.
                t_pass = time.monotonic()
                pc = PreCopy.start(pids, previous=pc)
                cap = capture.capture(
                    upper, live=True, record=pc.record, keep=pc.keep_from_previous
                )
                res = self.conn.call(
                    "put_rootfs_delta",
                    stream=cap,
                    migration_id=self.id,
                    timeout=RESTORE_TIMEOUT_S,
                    on_progress=lambda raw, wire: self.progress.transfer(
                        "precopy", raw, wire, None
                    ),
                )
                self._count("rootfs_precopy", res["_stream"])
                self.precopied = pc
                log.info(
                    "pre-copy pass %d: %d files (%d bytes) sent again, %d kept",
                    pc.passes,
                    len(pc.files),
                    pc.bytes_recorded,
                    len(pc.kept),
                )
            if {"precopy_volume", "put_volume_delta"} <= self.agent_methods:
                where = {m.name: m.destination for m in spec.mounts if m.type == "volume"}
                for v in self.volumes:
                    vpc = volumes_pc.under(where.get(v.name, "/nonexistent"))
                    res = self.conn.call(
                        "precopy_volume",
                        stream=capture.capture(Path(v.mountpoint), live=True, record=vpc.record),
                        migration_id=self.id,
                        volume=v.name,
                        timeout=RESTORE_TIMEOUT_S,
                        on_progress=lambda raw, wire: self.progress.transfer(
                            "precopy", raw, wire, None
                        ),
                    )
                    self._count("volumes_precopy", res["_stream"])
                    self.precopied_volumes[v.name] = vpc
            if (
                self.opts.bind_mounts == "copy"
                and {"precopy_bind", "put_bind_delta"} <= self.agent_methods
            ):
                where = {m.source: m.destination for m in spec.mounts if m.type == "bind"}
                for path in self.binds:
                    bpc = volumes_pc.under(where.get(path, "/nonexistent"))
                    res = self.conn.call(
                        "precopy_bind",
                        stream=capture.capture(Path(path), live=True, record=bpc.record),
                        migration_id=self.id,
                        path=path,
                        timeout=RESTORE_TIMEOUT_S,
                    )
                    self._count("volumes_precopy", res["_stream"])
                    self.precopied_binds[path] = bpc
                    precopy.flush(Path(path))  # may be another file system than the layer's
            # What the container wrote is written back now, not during the pause.
            precopy.flush(upper)
        self._fault("source:after_precopy")

    def _choose_staging(self, spec: ContainerSpec) -> None:
        """Memory or disk for the checkpoint images, decided while the container still runs
        (staging.py). ``--staging memory`` that does not fit is refused before the pause."""
        # A post-copy dump writes only the small non-memory images.
        self.memory_need = 0 if self.strategy == "lazy" else self.engine.memory_usage(spec.id)
        root = self.opts.memory_root / "staging"
        choice = staging_mod.choose(self.opts.staging, self.memory_need, root)
        log.info("source staging: %s (%s)", choice.label, choice.reason)
        if self.opts.staging == "memory" and not choice.memory:
            raise PrecheckFailed(
                f"cannot stage the checkpoint in memory on the source: {choice.reason}",
                hint="use --staging auto (falls back to disk) or free memory on the source",
            )
        if choice.memory:
            staging_mod.ensure_root(root)
            self.staging = root / self.id
        self.staged_in["source"] = choice.label

    def _checkpoint(self, spec: ContainerSpec, img_dir: Path, work_dir: Path) -> tuple[Path, Path]:
        """The cold dump; staged in memory, a dump that runs out of room there is done again
        on disk (the container is still paused and untouched: --leave-running)."""
        try:
            self.engine.checkpoint(spec.id, img_dir, work_dir)
            return img_dir, work_dir
        except CheckpointFailed as e:
            in_memory = self.staged_in.get("source") == "memory"
            said = f"{e.message} {e.details.get('criu_log', '')}"
            if not in_memory or self.opts.staging == "memory" or "No space left" not in said:
                raise
            log.warning("the checkpoint did not fit in %s; dumping again on disk", self.staging)
        dumping = criu.wait_until_unused(self.staging, DUMP_WAIT_S)
        if dumping:
            raise CheckpointFailed(
                f"the CRIU dump into {self.staging} still runs "
                f"(pids {', '.join(map(str, dumping))})"
            )
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging = self.opts.state_dir / "staging" / self.id
        self.staged_in["source"] = "disk"
        img_dir, work_dir = self.staging / "checkpoint", self.staging / "work"
        self.engine.checkpoint(spec.id, img_dir, work_dir)
        return img_dir, work_dir

    def _dest_staging_args(self) -> dict[str, Any]:
        """Ask the agent to stage in memory when it can and the images may fit there."""
        if self.opts.staging == "disk" or not self.agent_memory_staging:
            return {}
        return {"memory_bytes": self.memory_need, "require_memory": self.opts.staging == "memory"}

    def _freeze_and_move(self, spec: ContainerSpec) -> None:
        assert self.conn is not None
        self._choose_staging(spec)
        img_dir = self.staging / "checkpoint"
        work_dir = self.staging / "work"
        # Looked up while the container still runs: neither changes with the pause, and each
        # is a Docker API call that would otherwise add to the downtime.
        upper = Path(self.engine.state(spec.id).upper_dir)
        log_path = self.engine.log_file(spec.id)
        self._fault("source:before_pause")
        with self.timer.phase("freeze", "pausing the container"):
            self.journal.append("pausing")
            self.t_pause = time.monotonic()
            self.engine.pause(spec.id)
            self.paused = True
        self._fault("source:after_pause")
        with self.timer.phase("checkpoint", "CRIU checkpoint"):
            if self.strategy == "lazy":
                # The memory stays here, served on demand once the destination runs.
                self.page_server = self.engine.start_lazy_checkpoint(spec.id, img_dir, work_dir)
            else:
                img_dir, work_dir = self._checkpoint(spec, img_dir, work_dir)
        self.interrupts.check()
        with self.timer.phase("rootfs", "read-write layer"):
            pc = self.precopied
            # After a pre-copy: a delta (unchanged files named, not sent; the agent removes
            # what the frozen tree no longer has).
            cap = (
                capture.capture(upper) if pc is None else capture.capture(upper, keep=pc.unchanged)
            )
            res = self.conn.call(
                "put_rootfs" if pc is None else "put_rootfs_delta",
                stream=cap,
                migration_id=self.id,
                timeout=RESTORE_TIMEOUT_S,
                on_progress=lambda raw, wire: self.progress.transfer("rootfs", raw, wire, None),
            )
            self._count("rootfs", res["_stream"])
            self.bytes["rootfs_kept"] += cap.stats.kept_bytes
        # Still frozen: volume content is consistent with the memory image.
        for v in self.volumes:
            with self.timer.phase("volumes", f"volume {v.name}"):
                vpc = self.precopied_volumes.get(v.name)
                vcap = (
                    capture.capture(Path(v.mountpoint))
                    if vpc is None
                    else capture.capture(Path(v.mountpoint), keep=vpc.unchanged)
                )
                res = self.conn.call(
                    "put_volume" if vpc is None else "put_volume_delta",
                    stream=vcap,
                    migration_id=self.id,
                    volume=v.name,
                    timeout=RESTORE_TIMEOUT_S,
                    on_progress=lambda raw, wire: self.progress.transfer(
                        "volumes", raw, wire, None
                    ),
                )
                self._count("volumes", res["_stream"])
                self.bytes["volumes_kept"] += vcap.stats.kept_bytes
        if self.opts.bind_mounts == "copy":
            for path in self.binds:
                with self.timer.phase("binds", f"bind mount {path}"):
                    bpc = self.precopied_binds.get(path)
                    bcap = (
                        capture.capture(Path(path))
                        if bpc is None
                        else capture.capture(Path(path), keep=bpc.unchanged)
                    )
                    res = self.conn.call(
                        "put_bind" if bpc is None else "put_bind_delta",
                        stream=bcap,
                        migration_id=self.id,
                        path=path,
                        timeout=RESTORE_TIMEOUT_S,
                    )
                    self._count("volumes", res["_stream"])
                    self.bytes["volumes_kept"] += bcap.stats.kept_bytes
        if log_path is not None and log_path.is_file():
            with self.timer.phase("logs", "log history"):
                res = self.conn.call(
                    "put_log",
                    stream=read_chunks(log_path),
                    migration_id=self.id,
                    timeout=RESTORE_TIMEOUT_S,
                )
                self._count("logs", res["_stream"])
        with self.timer.phase("transfer", "checkpoint images"):
            total = _dir_size(img_dir)
            res = self.conn.call(
                "put_checkpoint",
                stream=self._faulty(capture.capture(img_dir), "source:mid_stream"),
                migration_id=self.id,
                timeout=RESTORE_TIMEOUT_S,
                **self._dest_staging_args(),
                on_progress=lambda raw, wire: self.progress.transfer(
                    "checkpoint", raw, wire, total
                ),
            )
            self._count("checkpoint", res["_stream"])
            self.staged_in["destination"] = str(res.get("staging") or "disk")
        tunnel = None
        if self.page_server is not None:
            open_tunnel = self.conn.ch.tunnels()
            assert open_tunnel is not None  # lazy needs it: _source_postcopy_blocker
            tunnel = open_tunnel(self.page_server.port)
            self.tunnel = tunnel
        self._fault("source:before_restore")
        self.interrupts.check()
        with self.timer.phase("restore", "restoring on the destination"):
            t_call = time.monotonic()
            extra: dict[str, Any] = (
                {} if tunnel is None else {"page_server_port": tunnel.remote_port}
            )
            res = self.conn.call(
                "restore", migration_id=self.id, timeout=RESTORE_TIMEOUT_S, **extra
            )
            self.downtime = time.monotonic() - self.t_pause
            running_s = res.get("running_s")
            if isinstance(running_s, (int, float)) and 0 <= running_s:
                # With a local lazy restore the container runs before the agent answers
                # (it waits for the last page first): downtime ends when it runs.
                self.downtime = min(self.downtime, t_call - self.t_pause + float(running_s))
        fill = res.get("memory_fill_s")
        if isinstance(fill, (int, float)):
            self.timer.phases["restore_memory_fill"] = round(float(fill), 4)
        steps = res.get("restore_steps")
        if isinstance(steps, dict):  # parts of `restore` as the agent saw them (post-copy)
            for k, v in steps.items():
                if isinstance(k, str) and isinstance(v, (int, float)):
                    self.timer.phases[f"restore.{k}"] = round(float(v), 4)
        self.journal.append(
            "restored", downtime_s=self.downtime, restore_mode=str(res.get("restore_mode", ""))
        )

    def _postcopy(self, spec: ContainerSpec) -> None:
        """Committed, running on the destination; wait until every page has moved. A failure
        here has no rollback (docs/architecture.md, "Post-copy"): report it, exit 4."""
        assert self.conn is not None and self.page_server is not None
        self.journal.append("postcopy")
        if self.opts.faults.on("source:wait:postcopy") and self.tunnel is not None:
            self.tunnel.hold()  # the test breaks the link while post-copy is surely unfinished
        self._fault("source:postcopy")
        ps = self.page_server
        with self.timer.phase("postcopy", "moving the rest of the memory"):
            t0 = time.monotonic()
            try:
                res = self.conn.call(
                    "postcopy_wait",
                    migration_id=self.id,
                    timeout_s=POSTCOPY_TIMEOUT_S,
                    timeout=POSTCOPY_TIMEOUT_S + CALL_TIMEOUT_S,
                )
            except MigrateError as e:
                # Reset the page server's connection first: CRIU then fails the dump and
                # leaves the tasks frozen. Killing CRIU instead would thaw them.
                if self.tunnel is not None:
                    self.tunnel.close()
                    self.tunnel = None
                rc = ps.wait(PAGE_SERVER_EXIT_S)
                ps.kill()
                try:
                    self.engine.ensure_frozen(spec.id)
                except MigrateError as e2:
                    log.error("could not keep the source copy frozen: %s", e2.message)
                self.journal.append("postcopy_failed", reason=e.message, page_server_rc=rc)
                self.paused = False  # never unpaused by us: the operator decides
                raise postcopy.interrupted(
                    e.message,
                    spec.name,
                    {
                        "cause": e.code,
                        "migration_id": self.id,
                        "page_server": ps.failure_text()[-2000:],
                    },
                ) from None
            rc = ps.wait(PAGE_SERVER_EXIT_S)
            if rc != 0:
                log.warning(
                    "the source's page server ended with %s after the last page: %s",
                    rc,
                    ps.failure_text()[-500:],
                )
            ps.kill()
        self.postcopy = {"postcopy_s": float(res.get("postcopy_s") or time.monotonic() - t0)}
        for k in ("pages_total", "pages_on_demand", "pages_background", "bytes"):
            if isinstance(res.get(k), int):
                self.postcopy[k] = res[k]
        self.journal.append("postcopy_done", **self.postcopy)

    def _bye(self) -> None:
        assert self.conn is not None
        try:
            # Committed: the answer only lets the agent end cleanly. Bounded, so a link that
            # dies now delays retiring the stale source copy by seconds, not by the
            # dead-peer timeout.
            self.conn.call("bye", timeout=BYE_TIMEOUT_S)
        except MigrateError:
            pass

    def _commit(self, spec: ContainerSpec) -> None:
        assert self.conn is not None
        self._fault("source:before_commit")
        with self.timer.phase("commit", "hand-over"):
            # The last place an interrupt rolls back; after it, the migration completes.
            self.interrupts.pass_point_of_no_return()
            self.journal.append("committing")
            self.commit_sent = True
            try:
                self.conn.call("commit", migration_id=self.id)
            except (ConnectionLost, Timeout, ProtocolError) as e:
                self.journal.append("in_doubt", reason=e.message)
                raise InDoubt(
                    f"the destination restored {spec.name} but the answer to `commit` was lost "
                    f"({e.message}); the source copy is kept paused",
                    hint=f"run `migrate recover {spec.name} --to {self.opts.destination}` "
                    "to settle it from both journals",
                    details={"migration_id": self.id},
                ) from None
            except MigrateError:
                # The agent answered: it refused to commit (its copy is not running, say) and
                # journalled nothing, so this is still before the point of no return.
                self.commit_sent = False
                raise
            self.journal.append("committed")
            self._fault("source:after_commit")

    def _finish_source(self, spec: ContainerSpec) -> str:
        with self.timer.phase("cleanup", "retiring the source copy"):
            st = self.engine.state(spec.id)
            if st.running or st.paused:  # after post-copy CRIU has killed the tasks already
                self.engine.kill(spec.id)
            if self.opts.keep_source:
                action = "stopped"
            else:
                self.engine.remove(spec.id, force=True)
                action = "removed"
            self.paused = False
            self.journal.append("done", source_action=action)
            return action

    # --- rollback -------------------------------------------------------------------------

    def _rollback(self, cause: MigrateError) -> MigrateError:
        self.interrupts.disarm()  # a rollback cut in half would leave the source paused
        if self.commit_sent:
            return cause
        problems: list[str] = []
        if self.dest_created:
            try:
                self._abort_remote()
            except MigrateError as e:
                problems.append(
                    f"cleaning up the destination failed: {e.message} (the agent removes its "
                    "copy when it notices the lost connection; `migrate recover` settles it)"
                )
        if self.page_server is not None:
            # Before the unpause: the dump's CRIU still holds the frozen tasks.
            self.page_server.kill()
        # Interrupted during the dump (SIGINT kills our runc child, not its CRIU): the dump
        # ends by putting the freezer back as it found it, frozen, so the container is
        # resumed only once nothing works on our staging directory any more.
        dumping = criu.wait_until_unused(self.staging, DUMP_WAIT_S) if self.paused else []
        if dumping:
            problems.append(
                f"a CRIU dump (pids {', '.join(map(str, dumping))}) still writes into "
                f"{self.staging}: the source stays paused until `migrate recover` (which "
                "waits for it)"
            )
        elif self.paused:
            try:
                self.engine.unpause(self.opts.container)
                self.paused = False
            except MigrateError as e:
                problems.append(f"unpausing the source failed: {e.message}")
        touched = self.dest_created or self.t_pause is not None
        if touched or self.journal.records():
            # `rollback_incomplete` leaves the migration for `migrate recover` to settle.
            event = "rolled_back" if not problems else "rollback_incomplete"
            self.journal.append(event, cause=cause.code, problems=problems)
        if not touched:
            return cause
        msg = f"{cause.message}\nRolled back: {self.opts.container} runs on the source again"
        msg += (
            "; nothing was left on the destination." if not problems else ". " + "; ".join(problems)
        )
        err = MigrationFailed(msg, hint=cause.hint, details={"cause": cause.code, **cause.details})
        return err

    def _abort_remote(self) -> None:
        """Tell the agent to delete what it made; over a new session if the old one died, and
        again for a while if the link is down (a link that comes back within
        ABORT_RETRY_S is cleaned up now rather than by `migrate recover`)."""
        if self.conn is not None:
            try:
                self.conn.call("abort", migration_id=self.id, timeout=60)
                return
            except (ConnectionLost, Timeout):
                log.warning("agent connection lost; cleaning up over a new session")
            except MigrateError:
                pass
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001 - closing a dead channel may fail any way
                pass
        deadline = time.monotonic() + ABORT_RETRY_S
        while True:
            try:
                abort_over_new_session(self.connect, self.id)
                return
            except MigrateError as e:
                if time.monotonic() > deadline or not isinstance(
                    e, (ConnectionLost, Timeout, PrecheckFailed, Busy)
                ):
                    raise
                log.warning("cleanup on the destination failed (%s); retrying", e.message)
                time.sleep(2.0)

    # --- helpers --------------------------------------------------------------------------

    def _fault(self, point: str) -> None:
        """The test seam at ``source:POINT`` (core/faults.py): a wait point writes
        ``PID STEP MIGRATION_ID`` to the mark file first."""
        name = point.removeprefix("source:")
        self.opts.faults.reach(point, f"{os.getpid()} {name} {self.id}\n")

    def _faulty(self, chunks: Iterator[bytes], point: str) -> Iterator[bytes]:
        """Pass a stream through, reaching the fault point ``point`` after its first chunk."""
        name = point.removeprefix("source:")
        return self.opts.faults.wrap(chunks, point, f"{os.getpid()} {name} {self.id}\n")

    def _count(self, what: str, stream_stats: dict[str, Any]) -> None:
        self.bytes[what] += int(stream_stats.get("raw", 0))
        self.bytes["raw"] += int(stream_stats.get("raw", 0))
        self.bytes["wire"] += int(stream_stats.get("wire", 0))
        self.bytes["fast"] += int(stream_stats.get("fast_raw", 0))

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


def check_process_owners(engine: Engine, spec: ContainerSpec) -> None:
    """Refuse, before anything is frozen, a container CRIU cannot dump here: CRIU reads every
    task's rlimits with prlimit(), which for a process of another user needs CAP_SYS_RESOURCE
    (PLATFORM.md; PostgreSQL, nginx workers as www-data). Real hosts' root has it."""
    if criu.has_cap_sys_resource():
        return
    me_u, me_g = os.getuid(), os.getgid()
    others = [
        p
        for p in engine.processes(spec.id)
        if any(u != me_u for u in p.uids) or any(g != me_g for g in p.gids)
    ]
    if not others:
        return
    shown = "; ".join(
        f"pid {p.pid} uid {p.uids[0] if p.uids else '?'} ({p.command[:60]})" for p in others[:5]
    )
    raise Unsupported(
        f"{spec.name} runs processes as another user ({shown}{', ...' if len(others) > 5 else ''})"
        " and this host lacks CAP_SYS_RESOURCE: CRIU cannot read their rlimits (prlimit) "
        "and could not checkpoint the container",
        hint="run migrate as root with full capabilities (a normal host, not a restricted "
        "sandbox); `migrate check` shows cap_sys_resource. Containers whose processes all "
        "run as root migrate here",
        details={"pids": [p.pid for p in others]},
    )


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _dir_size(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        except OSError:
            pass
    return total


def abort_over_new_session(connect: Callable[[], Channel], migration_id: str) -> None:
    """Ask a fresh agent to roll back ``migration_id`` from its journal."""
    conn = Connection(connect(), timeout=CALL_TIMEOUT_S)
    try:
        open_session(conn)
        conn.call("abort", migration_id=migration_id, timeout=60)
        conn.call("bye")
    finally:
        conn.close()
