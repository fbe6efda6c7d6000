"""The destination agent (`migrate agent`): allow-listed handlers behind the wire protocol.

It builds the container the source describes, fills its read-write layer and checkpoint from
the streams it receives, and restores it. Until it has journalled ``committed``, any failure,
an ``abort`` or a lost connection makes it delete everything it created.
"""

from __future__ import annotations

import base64
import errno
import json
import logging
import os
import platform
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migrate import __version__
from migrate.checkpoint import criu, lazy_pages, postcopy
from migrate.checkpoint import staging as staging_mod
from migrate.core.errors import (
    ConnectionLost,
    CriuUnavailable,
    DiskFull,
    EngineUnavailable,
    Incompatible,
    MigrateError,
    NameConflict,
    PostcopyFailed,
    ProtocolError,
    RestoreFailed,
    Unsupported,
    VolumeConflict,
)
from migrate.core.journal import DEFAULT_DIR, Journal
from migrate.core.lock import PidLock
from migrate.engines.base import ContainerSpec, LazyRestore, NetworkInfo, VolumeInfo
from migrate.fs import extract, precopy
from migrate.fs.files import atomic_write
from migrate.transport.bulk_sink import BulkListener
from migrate.wire.protocol import (
    KIND_CONTROL,
    METHODS,
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    Connection,
    StreamReader,
    decode_control,
    error_message,
    response_message,
    stream_header,
    validate_request,
)

log = logging.getLogger(__name__)

RESTORE_WAIT_S = 30.0
# A json-file log history larger than this is refused rather than filling the disk.
MAX_LOG_BYTES = 1 << 30
# Waiting for the lazy-pages daemon to move every page of a restored container (local disk).
RESTORE_FILL_TIMEOUT_S = 600.0
# Below this much lazy memory Docker's own restore path is as fast as the daemon's start.
LAZY_RESTORE_MIN_BYTES = lazy_pages.MIN_LAZY_BYTES
# Short: the daemon's unix socket lives here and socket paths are limited to 108 bytes.
LAZY_WORK_ROOT = lazy_pages.WORK_ROOT
# Checkpoint images staged in memory (staging.py); journalled like --staging-dir.
MEMORY_STAGING_ROOT = staging_mod.MEMORY_ROOT / "agent"
# Post-copy: the longest a restored container may wait for the rest of its memory.
POSTCOPY_TIMEOUT_S = 1800.0
# The source may go quiet for a long time while it dumps a large container.
IDLE_TIMEOUT_S = 900.0
# A stream via the bulk connection may arrive just after the sink's handover.
BULK_HANDOVER_WAIT_S = 10.0
# Label on every drill container: which drill made it (and that it is one).
DRILL_LABEL = "org.migrate.source.drill"


@dataclass
class _Migration:
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
    postcopy: _Postcopy | None = None  # --strategy lazy, from `restored` to the last page
    # Held by the agent process serving this migration, so another agent (started by
    # `migrate recover` or a rollback over a new session) never acts on it at the same time.
    lock: PidLock | None = None


@dataclass
class _Postcopy:
    """A restored container whose memory still arrives from the source (postcopy.py)."""

    daemon: lazy_pages.LazyPagesDaemon
    relay: postcopy.PageRelay
    full: Path  # the images the daemon reads (removed when it is done)
    t_running: float
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, Any] = field(default_factory=dict)
    error: MigrateError | None = None
    stopped: bool = False  # the destination copy was killed (its memory is incomplete)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _Drill:
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


# A drill's settle time and verification command are bounded (the source waits for them).
MAX_DRILL_WAIT_S = 3600.0
# Free space the bundle, the image it loads and the restored files need, as a multiple of the
# bundle's (compressed) size, plus a fixed reserve.
DRILL_DISK_FACTOR = 4
DRILL_DISK_RESERVE = 256 << 20


@dataclass
class Agent:
    conn: Connection
    engine_factory: Callable[[], Any]
    state_dir: Path | None = None
    # Where checkpoint images are staged (None: inside the new container's directory).
    staging_root: Path | None = None
    faults: set[str] = field(default_factory=set)
    _engine: Any = None
    _migrations: dict[str, _Migration] = field(default_factory=dict)
    _drills: dict[str, _Drill] = field(default_factory=dict)
    _done: bool = False
    # The bulk connection (transport/bulk_sink.py): its one-shot listener, and once the sink
    # handed over its stdin, the Connection that reads streams sent `via: bulk` from it.
    _bulk_listener: BulkListener | None = None
    _bulk: Connection | None = None

    @property
    def engine(self) -> Any:
        if self._engine is None:
            self._engine = self.engine_factory()
        return self._engine

    # --- main loop ------------------------------------------------------------------------

    def serve(self) -> int:
        try:
            while not self._done:
                try:
                    frame = self.conn.recv_frame()
                except ConnectionLost:
                    log.warning("source went away")
                    return self._abandon()
                except MigrateError as e:
                    # A broken frame (bad magic, oversized length) or silence: the stream can
                    # not be resynchronised. Say why, undo what is uncommitted, and exit.
                    log.error("closing the session: %s", e.message)
                    self._send_quietly(error_message(None, e))
                    return self._abandon(2)
                if frame.kind != KIND_CONTROL:
                    # A stream nobody asked for: drop it (after a failed handler, say).
                    continue
                try:
                    self._dispatch(frame.body)
                except ConnectionLost:
                    log.warning("source went away")
                    return self._abandon()
            return 0
        finally:
            self._stop_postcopies()
            self._rollback_uncommitted("agent exiting")
            self._remove_drills()
            self._close_bulk()

    def _close_bulk(self) -> None:
        """Closing our end of the handed-over socket lets the sink, and its SSH session,
        end; the listener's directory goes with it."""
        if self._bulk_listener is not None:
            self._bulk_listener.close()
        self._bulk = None

    def _stop_postcopies(self) -> None:
        """The agent is leaving while a post-copy still runs (the source went away): stop the
        container first, then the daemon (never the other way round: postcopy.py)."""
        for m in self._migrations.values():
            pc = m.postcopy
            if pc is None or pc.done.is_set():
                continue
            self._stop_copy(m, "the agent is exiting before the last page arrived")
            pc.daemon.kill()
            pc.done.wait(30)

    def _send_quietly(self, msg: dict[str, Any]) -> None:
        try:
            self.conn.send_control(msg)
        except MigrateError:
            pass

    def _abandon(self, rc: int = 1) -> int:
        self._rollback_uncommitted("connection to the source lost")
        return rc

    def _dispatch(self, body: bytes) -> None:
        rid: int | None = None
        reader: StreamReader | None = None
        try:
            msg = decode_control(body)
            rid = msg.get("id") if isinstance(msg.get("id"), int) else None
            if msg.get("type") != "request":
                raise ProtocolError(f"unexpected message type {msg.get('type')!r}")
            rid, method, args = validate_request(msg)
            handler = getattr(self, f"h_{method.name}")
            if method.stream:
                reader = StreamReader(self._stream_conn(rid, msg.get("via")))
                result = handler(stream=reader, **args)
                reader.drain()
            else:
                result = handler(**args)
            self.conn.send_control(response_message(rid, result or {}))
        except ConnectionLost:
            raise
        except MigrateError as e:
            log.info("request failed: %s: %s", e.code, e.message)
            if reader is not None and not reader.finished:
                try:
                    reader.drain()
                except ConnectionLost:
                    raise
                except MigrateError as e2:
                    # The stream itself is broken (corrupt, oversized): no way to resync.
                    self._send_quietly(error_message(rid, e))
                    raise ConnectionLost(f"stream unusable: {e2.message}") from None
            self.conn.send_control(error_message(rid, e))
        except Exception as e:  # a bug must still answer, not hang the source
            log.exception("internal error")
            if reader is not None and not reader.finished:
                try:
                    reader.drain()
                except MigrateError:
                    self._send_quietly(error_message(rid, MigrateError("agent internal error")))
                    raise ConnectionLost("stream unusable after an internal error") from None
            err = MigrateError(f"agent internal error: {type(e).__name__}: {e}")
            self.conn.send_control(error_message(rid, err))

    def _stream_conn(self, rid: int, via: Any) -> Connection:
        """Where the stream of request ``rid`` arrives: right here on the control channel,
        or on the bulk connection, whose first frame must name this request."""
        if via is None:
            return self.conn
        if via != "bulk":
            raise ConnectionLost(f"stream via {via!r}: unknown, the session cannot resync")
        if self._bulk is None and self._bulk_listener is not None:
            end = self._bulk_listener.wait(BULK_HANDOVER_WAIT_S)
            if end is not None:
                self._bulk = Connection(end, timeout=IDLE_TIMEOUT_S)
        if self._bulk is None:
            # The source writes this stream into a connection nobody reads: no way to resync.
            raise ConnectionLost("a stream via the bulk connection, which is not open")
        try:
            head = self._bulk.recv_frame()
            if head.kind != KIND_CONTROL or decode_control(head.body) != stream_header(rid):
                raise ProtocolError("the bulk connection is out of step with the requests")
        except MigrateError as e:
            self._close_bulk()
            raise ConnectionLost(f"bulk connection unusable: {e.message}") from None
        return self._bulk

    # --- handlers (the allow-list is protocol.METHODS) -------------------------------------

    def h_bulk_open(self) -> dict[str, Any]:
        """A one-shot socket for the sink of the source's OpenSSH bulk connection, and the
        token that sink must present (transport/bulk_sink.py)."""
        if self._bulk_listener is not None:
            raise ProtocolError("the bulk connection was opened already in this session")
        root = LAZY_WORK_ROOT
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError:
            root = Path(tempfile.gettempdir())
        try:
            self._bulk_listener = BulkListener(root)
        except OSError as e:
            raise Unsupported(
                f"cannot open the bulk socket in {root}: {e}", hint="use --bulk paramiko"
            ) from None
        return {"socket": str(self._bulk_listener.path), "token": self._bulk_listener.token}

    def h_hello(
        self, *, protocol: int, min_protocol: int, software: str, faults: list[Any]
    ) -> dict[str, Any]:
        # The newer side decides: we accept any peer whose range overlaps ours.
        if min_protocol > PROTOCOL_VERSION or protocol < MIN_PROTOCOL_VERSION:
            raise Incompatible(
                f"protocol mismatch: source speaks {min_protocol}..{protocol}, "
                f"agent {MIN_PROTOCOL_VERSION}..{PROTOCOL_VERSION}",
                hint="install the same migrate version on both hosts",
            )
        self.faults = {str(f) for f in faults if isinstance(f, str)}
        caps: dict[str, Any] = {
            "software": __version__,
            "protocol": min(protocol, PROTOCOL_VERSION),
            "hostname": socket.gethostname(),
            "kernel": platform.release(),
            # What this agent can do: a source checks before it asks (drills, say).
            "methods": sorted(METHODS),
            # Where checkpoint images can be staged (staging.py): the source asks for memory.
            "staging": ["disk", "memory"],
            # Streams may be several zstd frames (adaptive compression, protocol.py).
            "stream_frames": "multi",
        }
        crit = criu.capabilities(criu.find_criu())
        caps["criu_version"] = list(crit.version) if crit.version else None
        caps["criu_ok"] = bool(crit.check_ok)
        try:
            info = self.engine.info()
            caps["engine"] = {
                "engine": info.engine,
                "version": info.version,
                "experimental": info.experimental,
                "storage_driver": info.storage_driver,
                "mem_total": info.mem_total,
                "live_restore": info.live_restore,
            }
            caps["free_disk"] = shutil.disk_usage(info.data_root).free
            caps["mem_available"] = staging_mod.mem_available()
        except MigrateError as e:
            caps["engine_error"] = e.to_wire()
        return caps

    def h_precheck(
        self,
        *,
        spec: dict[str, Any],
        name: str,
        criu_version: list[Any],
        volumes: list[Any] | None = None,
        binds: list[Any] | None = None,
        lazy: bool = False,
    ) -> dict[str, Any]:
        info = self.engine.info()
        if not info.experimental:
            raise EngineUnavailable(
                "the destination's Docker daemon is not running with experimental features",
                hint='add "experimental": true to /etc/docker/daemon.json on the destination '
                "(or start dockerd with --experimental) and restart it",
            )
        if info.storage_driver != "overlay2":
            raise Unsupported(
                f"the destination uses the {info.storage_driver!r} storage driver",
                hint="migrate supports overlay2 only",
            )
        found = criu.find_criu()
        caps = criu.capabilities(found)
        if caps.version is None:
            raise CriuUnavailable(
                "CRIU is not installed on the destination",
                hint="run `make setup` (or install CRIU >= 4.2) on the destination",
            )
        src = tuple(int(x) for x in criu_version if isinstance(x, int))
        if src and tuple(caps.version) < src:
            raise CriuUnavailable(
                f"the destination's CRIU {_v(caps.version)} is older than the source's {_v(src)}",
                hint="upgrade CRIU on the destination to at least the source's version",
            )
        if not caps.check_ok:
            raise CriuUnavailable(
                f"`criu check` fails on the destination: {caps.check_output[-300:]}",
                hint="run `migrate check` on the destination and apply its fixes",
            )
        if "agent:skip_name_check" not in self.faults and self.engine.exists(name):
            raise NameConflict(
                f"a container named {name!r} already exists on the destination",
                hint="remove it there, or pick another name with --name",
            )
        _spec(spec)  # validates the shape
        for v in _volumes(volumes):
            self._volume_plan(v)
        for path, mode in _binds(binds):
            bind_plan(path, mode)
        if not lazy:
            return {"ok": True}
        why = self._postcopy_blocker(caps)
        return {"ok": True, "lazy": {"ok": not why, "why": why}}

    def _postcopy_blocker(self, caps: criu.CriuCapabilities | None = None) -> str:
        """Why a post-copy restore cannot be done here ("" when it can)."""
        if caps is None:
            caps = criu.capabilities(criu.find_criu())
        if not caps.lazy_pages:
            return (
                "`criu check --feature uffd-noncoop` fails on the destination (no "
                "non-cooperative userfaultfd in its kernel)"
            )
        if blocker := self.engine.lazy_restore_blocker():
            return str(blocker)
        return ""

    def _volume_plan(self, want: VolumeInfo) -> bool:
        """Whether ``want`` must be created here (True) or an empty one of the same kind can
        take the content (False); a volume of that name with content, or another driver or
        options, is refused: never overwritten or merged."""
        have = self.engine.volume(want.name)
        if have is None:
            return True
        if have.driver != want.driver or dict(have.options) != dict(want.options):
            raise VolumeConflict(
                f"a volume named {want.name} already exists on the destination with another "
                f"driver or options ({have.driver} {dict(have.options)})",
                hint=f"remove it there (`docker volume rm {want.name}`) if it is not needed",
            )
        mp = Path(have.mountpoint)
        if mp.is_dir() and any(mp.iterdir()):
            raise VolumeConflict(
                f"a volume named {want.name} already exists on the destination and is not "
                "empty: migrate does not overwrite or merge volume content",
                hint=f"remove it there (`docker volume rm {want.name}`) if its content is not "
                "needed, or migrate to another host",
            )
        return False

    def h_cpuinfo_check(self, *, image_b64: str) -> dict[str, Any]:
        """Would a checkpoint taken on the source (its ``cpuinfo.img``) restore on this CPU?"""
        try:
            image = base64.b64decode(image_b64, validate=True)
        except ValueError as e:
            raise ProtocolError(f"cpuinfo_check: image is not base64: {e}") from e
        res = criu.cpuinfo_compatible(image)
        return {"ok": res.ok, "output": res.output}

    def h_image_status(self, *, image_id: str, diff_ids: list[Any]) -> dict[str, Any]:
        img = self.engine.image(image_id)
        if img is not None:
            return {"image_present": True, "layers_present": list(img.diff_ids)}
        have = self.engine.layers_present()
        return {
            "image_present": False,
            "layers_present": [d for d in diff_ids if isinstance(d, str) and d in have],
        }

    def h_load_image(self, *, stream: StreamReader, image_id: str) -> dict[str, Any]:
        def chunks() -> Iterator[bytes]:
            while True:
                b = stream.read(1 << 20)
                if not b:
                    return
                yield b

        self.engine.load_image(chunks())
        if self.engine.image(image_id) is None:
            raise MigrateError(f"image {image_id[:19]} is still missing after docker load")
        return {"loaded": True}

    def h_prepare(
        self,
        *,
        migration_id: str,
        spec: dict[str, Any],
        name: str,
        volumes: list[Any] | None = None,
        binds: list[Any] | None = None,
        networks: list[Any] | None = None,
    ) -> dict[str, Any]:
        s = _spec(spec)
        vols = _volumes(volumes)
        bind_list = _binds(binds)
        try:
            nets = [NetworkInfo.from_wire(n) for n in networks or []]
        except ValueError as e:
            raise ProtocolError(str(e)) from None
        if migration_id in self._migrations:
            raise ProtocolError(f"migration {migration_id} was already prepared")
        journal = self._journal(migration_id)
        if journal.records():
            raise ProtocolError(f"migration {migration_id} already has a journal here")
        m = _Migration(id=migration_id, name=name)
        m.lock = self._lock(migration_id)
        m.lock.acquire()
        m.journal = journal
        m.checkpoint = f"migrate-{migration_id[:12]}"
        self._migrations[migration_id] = m
        m.journal.append("prepare", name=name, source_id=s.id)
        image = s.image_ref
        img = self.engine.image(s.image_ref) if s.image_ref else None
        if img is None or img.id != s.image_id:
            image = s.image_id  # the tag means another image here: pin the exact one
        for v in vols:
            if self._volume_plan(v):
                m.journal.append("volume_created", volume=v.name)
                m.volumes_made.append(v.name)
                self.engine.create_volume(v)
            else:
                m.journal.append("volume_reused", volume=v.name)
                m.volumes_reused.append(v.name)
        for path, mode in bind_list:
            plan = bind_plan(path, mode)
            if plan is not None:
                top, exists = plan
                if exists:
                    m.journal.append("bind_reused", path=path)
                    m.binds_reused.append(path)
                else:
                    m.journal.append("bind_created", path=str(top))
                    m.binds_made.append(str(top))
                    Path(path).mkdir(parents=True, mode=0o755)
        for net in nets:
            # A network of that name already here is used as it is (the address is kept when
            # its subnet allows); a missing one is created like the source's.
            if self.engine.network(net.name) is None:
                m.journal.append("network_created", network=net.name)
                m.networks_made.append(net.name)
                self.engine.create_network(net)
        m.container_id = self.engine.create(s, name, image=image, keep_volume_names=True)
        m.state = "prepared"
        m.journal.append("created", container_id=m.container_id)
        return {"container_id": m.container_id}

    def _mig(self, migration_id: str) -> _Migration:
        m = self._migrations.get(migration_id)
        if m is None:
            raise ProtocolError(f"unknown migration {migration_id!r}")
        return m

    def _upper(self, m: _Migration) -> Path:
        upper = Path(self.engine.state(m.container_id).upper_dir)
        if not upper.is_dir():
            raise MigrateError(f"the new container's read-write layer {upper} does not exist")
        return upper

    def h_put_rootfs(self, *, stream: StreamReader, migration_id: str) -> dict[str, Any]:
        m = self._mig(migration_id)
        if m.precopied:
            raise ProtocolError("the read-write layer was pre-copied: only a delta may follow")
        stats = extract.apply(stream, self._upper(m), policy=extract.ROOTFS_POLICY)
        return {"files": stats.members, "bytes": stats.bytes}

    def h_precopy_rootfs(self, *, stream: StreamReader, migration_id: str) -> dict[str, Any]:
        """The read-write layer read while the source container still runs: possibly torn,
        put right by the frozen delta (put_rootfs_delta). Into the new container's upper dir,
        which a rollback removes with the container."""
        m = self._mig(migration_id)
        upper = self._upper(m)
        if m.precopied or any(upper.iterdir()):
            raise ProtocolError("the new container's read-write layer is not empty")
        m.precopied = True
        stats = extract.apply(stream, upper, policy=extract.ROOTFS_POLICY)
        # Written back now, while the source still runs, not during the pause.
        precopy.flush(upper)
        return {"files": stats.members, "bytes": stats.bytes}

    def h_put_rootfs_delta(self, *, stream: StreamReader, migration_id: str) -> dict[str, Any]:
        """The frozen layer over the pre-copy: changed files whole, unchanged ones only named
        (checked to be here); names it does not mention are removed."""
        m = self._mig(migration_id)
        if not m.precopied:
            raise ProtocolError("put_rootfs_delta without a pre-copy")
        stats = extract.apply(stream, self._upper(m), policy=extract.ROOTFS_DELTA_POLICY)
        return {
            "files": stats.members,
            "bytes": stats.bytes,
            "kept": stats.kept,
            "removed": stats.removed,
        }

    def _volume_dir(self, m: _Migration, volume: str, *, empty: bool) -> Path:
        if volume not in (*m.volumes_made, *m.volumes_reused):
            raise ProtocolError(f"volume {volume!r} was not prepared for this migration")
        v = self.engine.volume(volume)
        target = Path(v.mountpoint) if v is not None else None
        if target is None or not target.is_dir():
            raise MigrateError(f"volume {volume} has no directory on this host")
        if empty and any(target.iterdir()):
            raise VolumeConflict(f"volume {volume} got content since the precheck: not merged")
        return target

    def h_put_volume(
        self, *, stream: StreamReader, migration_id: str, volume: str
    ) -> dict[str, Any]:
        m = self._mig(migration_id)
        target = self._volume_dir(m, volume, empty=True)
        stats = extract.apply(stream, target, policy=extract.VOLUME_POLICY)
        return {"files": stats.members, "bytes": stats.bytes}

    def h_precopy_volume(
        self, *, stream: StreamReader, migration_id: str, volume: str
    ) -> dict[str, Any]:
        """A volume's content read while the source runs (like h_precopy_rootfs); a rollback
        removes or empties the volume as for put_volume."""
        m = self._mig(migration_id)
        if volume in m.volumes_precopied:
            raise ProtocolError(f"volume {volume!r} was already pre-copied")
        target = self._volume_dir(m, volume, empty=True)
        m.volumes_precopied.append(volume)
        stats = extract.apply(stream, target, policy=extract.VOLUME_POLICY)
        precopy.flush(target)
        return {"files": stats.members, "bytes": stats.bytes}

    def h_put_volume_delta(
        self, *, stream: StreamReader, migration_id: str, volume: str
    ) -> dict[str, Any]:
        m = self._mig(migration_id)
        if volume not in m.volumes_precopied:
            raise ProtocolError(f"put_volume_delta without a pre-copy of {volume!r}")
        target = self._volume_dir(m, volume, empty=False)
        stats = extract.apply(stream, target, policy=extract.VOLUME_DELTA_POLICY)
        return {
            "files": stats.members,
            "bytes": stats.bytes,
            "kept": stats.kept,
            "removed": stats.removed,
        }

    def _bind_dir(self, m: _Migration, path: str, *, empty: bool) -> Path:
        target = Path(path)
        if path not in m.binds_reused and not any(
            target == Path(t) or Path(t) in target.parents for t in m.binds_made
        ):
            raise ProtocolError(f"bind mount {path!r} was not prepared for this migration")
        if empty and any(target.iterdir()):
            raise VolumeConflict(f"{path} got content since the precheck: not merged")
        return target

    def h_put_bind(self, *, stream: StreamReader, migration_id: str, path: str) -> dict[str, Any]:
        m = self._mig(migration_id)
        target = self._bind_dir(m, path, empty=True)
        stats = extract.apply(stream, target, policy=extract.VOLUME_POLICY)
        return {"files": stats.members, "bytes": stats.bytes}

    def h_precopy_bind(
        self, *, stream: StreamReader, migration_id: str, path: str
    ) -> dict[str, Any]:
        """--bind-mounts copy: the directory's content read while the source runs (like
        h_precopy_volume); a rollback removes or empties it as for put_bind."""
        m = self._mig(migration_id)
        if path in m.binds_precopied:
            raise ProtocolError(f"bind mount {path!r} was already pre-copied")
        target = self._bind_dir(m, path, empty=True)
        m.binds_precopied.append(path)
        stats = extract.apply(stream, target, policy=extract.VOLUME_POLICY)
        precopy.flush(target)
        return {"files": stats.members, "bytes": stats.bytes}

    def h_put_bind_delta(
        self, *, stream: StreamReader, migration_id: str, path: str
    ) -> dict[str, Any]:
        m = self._mig(migration_id)
        if path not in m.binds_precopied:
            raise ProtocolError(f"put_bind_delta without a pre-copy of {path!r}")
        target = self._bind_dir(m, path, empty=False)
        stats = extract.apply(stream, target, policy=extract.VOLUME_DELTA_POLICY)
        return {
            "files": stats.members,
            "bytes": stats.bytes,
            "kept": stats.kept,
            "removed": stats.removed,
        }

    def h_put_log(self, *, stream: StreamReader, migration_id: str) -> dict[str, Any]:
        """The source's log history, where the new container's log driver appends to it (so
        `docker logs` shows what was logged before the move, then after)."""
        m = self._mig(migration_id)
        target = self.engine.log_file(m.container_id)
        size = 0
        if target is None or (target.exists() and target.stat().st_size > 0):
            while stream.read(1 << 20):  # no such file to extend: drain, keep nothing
                pass
            return {"bytes": 0}
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as f:
            while chunk := stream.read(1 << 20):
                size += len(chunk)
                if size > MAX_LOG_BYTES:
                    raise ProtocolError(f"log history larger than {MAX_LOG_BYTES} bytes")
                f.write(chunk)
        return {"bytes": size}

    def h_put_checkpoint(
        self,
        *,
        stream: StreamReader,
        migration_id: str,
        memory_bytes: int | None = None,
        require_memory: bool = False,
    ) -> dict[str, Any]:
        m = self._mig(migration_id)
        # The complete images go to a staging directory; h_restore decides what Docker gets.
        # In memory when the source asks and they fit twice (staging.py: the restored copy
        # fills while the images are still there), unless the operator chose a directory.
        where = "disk"
        if memory_bytes is not None and self.staging_root is None:
            root = MEMORY_STAGING_ROOT
            choice = staging_mod.choose("auto", max(memory_bytes, 0), root, copies=2)
            if choice.memory and memory_bytes >= LAZY_RESTORE_MIN_BYTES:
                # Without the split Docker needs all of the images in its own directory:
                # from memory that is a copy where the disk staging area has a rename.
                if why := lazy_pages.blocker(self.engine):
                    choice = staging_mod.Choice(False, f"no local lazy restore: {why}")
            log.info("agent staging: %s (%s)", choice.label, choice.reason)
            if choice.memory:
                staging_mod.ensure_root(root)
                m.staging = root / f"migrate-{m.id}"
                where = "memory"
            elif require_memory:
                raise DiskFull(
                    f"cannot stage the checkpoint in memory on the destination: {choice.reason}",
                    hint="use --staging auto (falls back to disk) or free memory on the "
                    "destination",
                )
        target = self._staging(m)
        if self.staging_root is not None or where == "memory":
            assert m.journal is not None
            m.journal.append("staging", path=str(target))  # before it exists: a rollback finds it
            m.staging = target
        target.mkdir(parents=True, exist_ok=False)
        if "agent:exit_mid_stream" in self.faults:
            stream.read(1 << 16)
            log.error("fault injected: agent exits in the middle of the checkpoint stream")
            os._exit(137)
        stats = extract.extract(stream, target, policy=extract.CHECKPOINT_POLICY)
        if "agent:restore_fail" in self.faults:
            # Corrupt a real image so that CRIU itself fails, with a real log to report.
            for img in sorted(target.glob("core-*.img")):
                img.write_bytes(b"\x00" * 16)
        return {"files": stats.members, "bytes": stats.bytes, "staging": where}

    def h_restore(
        self, *, migration_id: str, page_server_port: int | None = None
    ) -> dict[str, Any]:
        m = self._mig(migration_id)
        assert m.journal is not None
        t0 = time.monotonic()
        m.journal.append("restoring")
        if page_server_port is not None:
            return self._restore_postcopy(m, page_server_port, t0)
        full = self._staging(m)
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
            running_s = self._wait_running(m.container_id) - t0
            if daemon is not None:
                # Not `restored` before every page is here: until then the source's paused
                # copy is the rollback point and these images are the only other copy.
                fill_s = daemon.wait(RESTORE_FILL_TIMEOUT_S)
                self._wait_running(m.container_id)
        finally:
            if daemon is not None:
                daemon.kill()
                criu.keep_logs(daemon.work, f"{migration_id}-dest")
                shutil.rmtree(daemon.work, ignore_errors=True)
            shutil.rmtree(full, ignore_errors=True)
        restore_s = time.monotonic() - t0
        self._wait_fault("restoring", m.name)
        m.state = "restored"
        mode = "lazy_local" if split is not None else "plain"
        m.journal.append("restored", restore_s=restore_s, running_s=running_s, mode=mode)
        res: dict[str, Any] = {
            "container_id": m.container_id,
            "restore_s": restore_s,
            "running_s": running_s,
            "restore_mode": mode,
        }
        if split is not None:
            res["memory_fill_s"] = fill_s
            res["lazy_bytes"] = split.lazy_bytes
        return res

    def _restore_postcopy(self, m: _Migration, port: int, t0: float) -> dict[str, Any]:
        """Start the container while its memory is still on the source: a lazy-pages daemon
        fetches it through the relay and the SSH tunnel (postcopy.py). Answers as soon as the
        container runs; a supervisor thread follows the rest (h_postcopy_wait)."""
        assert m.journal is not None
        if not 0 < port < 65536:
            raise ProtocolError(f"restore: bad page-server port {port}")
        # The precheck probed CRIU's features (~0.2 s of `criu check` runs); inside the
        # downtime only what may have changed since: runc.conf, and that CRIU is still there.
        criu_bin = criu.find_criu()
        why = self.engine.lazy_restore_blocker() or ("" if criu_bin else "CRIU is missing")
        if why or criu_bin is None:
            raise Unsupported(
                f"post-copy restore impossible here: {why}", hint="use --strategy cold"
            )
        full = self._staging(m)
        target = self.engine.checkpoint_dir(m.container_id, m.checkpoint)
        # Only the small non-memory images: Docker gets hard links (a copy across file
        # systems), the daemon reads these. Inside the downtime: no byte copied needlessly.
        shutil.copytree(full, target, copy_function=_link_or_copy)
        t_copied = time.monotonic()
        work = LAZY_WORK_ROOT / f"post-{m.id[:12]}"
        shutil.rmtree(work, ignore_errors=True)
        pc: _Postcopy | None = None
        relay = postcopy.PageRelay(port, on_broken=lambda why: self._stop_copy(m, why))
        daemon: lazy_pages.LazyPagesDaemon | None = None
        try:
            # -v4: the daemon logs each page fault, which is how on-demand pages are counted.
            daemon = lazy_pages.LazyPagesDaemon(
                criu_bin, full, work, verbosity=4, page_server=(postcopy.LOOPBACK, relay.port)
            )
            t_daemon = time.monotonic()
            self.engine.start_from_checkpoint(
                m.container_id, m.checkpoint, lazy=LazyRestore(work_dir=work)
            )
            t_started = time.monotonic()
            t_running = self._wait_running(m.container_id)
            pc = _Postcopy(daemon=daemon, relay=relay, full=full, t_running=t_running)
            m.postcopy = pc
        finally:
            if pc is None:  # not running: nothing resumed, the source's copy is the container
                if daemon is not None:
                    daemon.kill()
                relay.close()
                criu.keep_logs(work, f"{m.id}-dest")
                shutil.rmtree(work, ignore_errors=True)
                shutil.rmtree(full, ignore_errors=True)
        threading.Thread(
            target=self._supervise_postcopy, args=(m, pc), daemon=True, name=f"postcopy-{m.id[:8]}"
        ).start()
        self._wait_fault("restoring", m.name)
        running_s = t_running - t0
        m.state = "restored"
        m.journal.append("restored", restore_s=running_s, running_s=running_s, mode="postcopy")
        # Where the downtime's restore part goes (benchmarks/results/lazy.md).
        steps = {
            "images": t_copied - t0,
            "daemon": t_daemon - t_copied,
            "docker_start": t_started - t_daemon,
            "until_running": t_running - t_started,
        }
        return {
            "container_id": m.container_id,
            "restore_s": running_s,
            "running_s": running_s,
            "restore_mode": "postcopy",
            "restore_steps": steps,
        }

    def _supervise_postcopy(self, m: _Migration, pc: _Postcopy) -> None:
        """Wait for the last page; on any failure stop the destination copy (its memory is
        incomplete) before anything else; journal the outcome; clean up."""
        try:
            try:
                rc: int | None = pc.daemon.proc.wait(timeout=POSTCOPY_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - TimeoutExpired, or anything: a failure
                rc = None
            t_end = time.monotonic()
            if rc == 0 and not pc.relay.broken:
                stats = postcopy.page_stats(pc.daemon.log_path)
                pc.result = {"postcopy_s": t_end - pc.t_running, "bytes": pc.relay.bytes_down}
                if stats is not None:
                    pc.result.update(
                        pages_total=stats.total,
                        pages_copied=stats.copied,
                        pages_on_demand=stats.faults,
                        pages_background=stats.background,
                    )
                if m.journal is not None:
                    m.journal.append("postcopy_done", **pc.result)
                return
            why = pc.relay.broken or (
                f"the lazy-pages daemon did not finish in {POSTCOPY_TIMEOUT_S:.0f} s"
                if rc is None
                else f"the lazy-pages daemon failed (exit {rc})"
            )
            self._stop_copy(m, why)
            tail = log_tail_safe(pc.daemon.log_path)
            pc.error = PostcopyFailed(
                f"post-copy on the destination failed: {why}; the destination copy was "
                f"stopped (its memory is incomplete)\nlazy-pages log, last lines:\n{tail}",
                details={"criu_log": tail},
            )
            if m.journal is not None:
                m.journal.append("postcopy_failed", reason=why)
        finally:
            pc.daemon.kill()
            pc.relay.close()
            criu.keep_logs(pc.daemon.work, f"{m.id}-dest")
            shutil.rmtree(pc.daemon.work, ignore_errors=True)
            shutil.rmtree(pc.full, ignore_errors=True)
            pc.done.set()

    def _stop_copy(self, m: _Migration, why: str) -> None:
        """Kill the destination copy whose memory can no longer be completed. Runs from the
        relay's thread too: a fresh engine client, and only once."""
        pc = m.postcopy
        if pc is not None:
            with pc.lock:
                if pc.stopped:
                    return
                pc.stopped = True
        log.error("stopping %s: post-copy failed (%s)", m.name, why)
        try:
            self.engine_factory().kill(m.container_id)
        except MigrateError as e:
            log.error("could not stop %s: %s", m.name, e.message)

    def h_postcopy_wait(self, *, migration_id: str, timeout_s: float) -> dict[str, Any]:
        m = self._mig(migration_id)
        pc = m.postcopy
        if pc is None:
            raise ProtocolError(f"migration {migration_id} has no post-copy running")
        if not pc.done.wait(max(0.0, min(timeout_s, POSTCOPY_TIMEOUT_S))):
            self._stop_copy(m, f"not finished after {timeout_s:.0f} s")
            pc.daemon.kill()  # the supervisor journals and cleans up
            pc.done.wait(30)
        if pc.error is not None:
            raise pc.error
        if not pc.result:
            raise PostcopyFailed("post-copy did not finish", hint="see the agent's log")
        return dict(pc.result)

    def _split_for_lazy_restore(self, full: Path, target: Path) -> lazy_pages.SplitStats | None:
        """Give Docker the checkpoint without its lazy memory when that is worth it and
        possible (lazy_pages.py); otherwise the complete images, moved (same file system)."""
        split, reason = lazy_pages.split_for_restore(self.engine, full, target)
        if split is None:
            log.debug("plain restore: %s", reason)
            _move_tree(full, target)
        return split

    def _staging(self, m: _Migration) -> Path:
        if m.staging is not None:
            return m.staging
        if self.staging_root is not None:
            return self.staging_root / f"migrate-{m.id}"
        return Path(self.engine.staging_dir(m.container_id, m.checkpoint))

    def _wait_running(self, container_id: str) -> float:
        deadline = time.monotonic() + RESTORE_WAIT_S
        while True:
            st = self.engine.state(container_id)
            if st.running and not st.paused:
                return time.monotonic()
            if st.status in ("exited", "dead") or time.monotonic() > deadline:
                raise RestoreFailed(
                    f"the restored container is {st.status}, not running",
                    hint="see `docker logs` of the destination container and the CRIU log",
                )
            time.sleep(0.01)

    def h_commit(self, *, migration_id: str) -> dict[str, Any]:
        m = self._mig(migration_id)
        if m.state != "restored":
            raise ProtocolError(f"commit in state {m.state}")
        assert m.journal is not None
        # The point of no return only for a copy that still runs (its dockerd may have
        # restarted and killed it since `restored`).
        st = self.engine.state(m.container_id)
        if not st.running or st.paused:
            from migrate.core.errors import RestoreFailed

            raise RestoreFailed(
                f"the restored container is {st.status} now, not running: not committing",
                hint="the source copy resumes; see the destination dockerd's log",
            )
        self._fault("agent:exit_before_commit")
        m.journal.append("committed", container_id=m.container_id)  # point of no return
        m.state = "committed"
        self._fault("agent:exit_after_commit")
        # The checkpoint images have served their purpose; do not leave them behind (the
        # post-copy daemon's own copy goes when it is done).
        if m.postcopy is None:
            shutil.rmtree(self._staging(m), ignore_errors=True)
        try:
            shutil.rmtree(self.engine.checkpoint_dir(m.container_id, m.checkpoint))
        except OSError as e:
            log.warning("could not remove the checkpoint images: %s", e)
        return {"committed": True}

    def h_abort(self, *, migration_id: str) -> dict[str, Any]:
        m = self._migrations.get(migration_id)
        if m is not None:
            if m.state == "committed":
                raise ProtocolError("abort of a committed migration")
            self._rollback(m, "aborted by the source")
            return {"aborted": True}
        m = self._from_journal(migration_id)  # takes its lock: Busy if another agent has it
        if m is None:
            return {"aborted": True, "known": False}
        try:
            if m.state == "committed":
                raise ProtocolError("abort of a committed migration")
            # Whatever the journal says, make sure the container is gone (a rollback by an
            # agent that was killed half way may have journalled nothing).
            self._rollback(m, "aborted from the journal", force=True)
        finally:
            if m.lock is not None:
                m.lock.release()
        return {"aborted": True, "known": True}

    def _journal(self, migration_id: str) -> Journal:
        try:
            return Journal.for_migration("agent", migration_id, self.state_dir)
        except ValueError:
            raise ProtocolError(f"bad migration id {migration_id[:80]!r}") from None

    def _lock(self, migration_id: str) -> PidLock:
        base = (self.state_dir or DEFAULT_DIR) / "journal" / "agent"
        return PidLock(
            base / f"{migration_id}.lock",
            busy=f"migration {migration_id} is still being handled by an agent",
            hint="that agent rolls back by itself when it notices the lost connection "
            "(seconds, with SSH keep-alives); run `migrate recover` again then",
        )

    def _from_journal(self, migration_id: str) -> _Migration | None:
        """Rebuild what an earlier agent (killed, say) had made, from its journal."""
        j = self._journal(migration_id)
        recs = j.records()
        if not recs:
            return None
        lock = self._lock(migration_id)
        lock.acquire()
        m = _Migration(
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

    def h_status(self, *, migration_id: str) -> dict[str, Any]:
        j = self._journal(migration_id)
        live = False
        if j.records() and migration_id not in self._migrations:
            lock = self._lock(migration_id)
            try:
                lock.acquire()
                lock.release()
            except MigrateError:
                live = True  # another agent still serves it
        return {"last": j.last(), "live": live}

    def h_bye(self) -> dict[str, Any]:
        self._done = True
        return {}

    # --- drills (migrate/source/drill.py): restore a bundle isolated, check it, remove it ---------

    def _drill(self, drill_id: str) -> _Drill:
        d = self._drills.get(drill_id)
        if d is None:
            raise ProtocolError(f"unknown drill {drill_id!r}")
        return d

    def h_drill_restore(
        self, *, stream: StreamReader, drill_id: str, name: str, size: int
    ) -> dict[str, Any]:
        """Receive a bundle (``size`` bytes) and import it under ``name``, isolated."""
        from migrate.core.errors import BundleInvalid, DiskFull
        from migrate.fs import bundle
        from migrate.source.portable import import_bundle

        if not drill_id.isalnum() or len(drill_id) > 64 or drill_id in self._drills:
            raise ProtocolError(f"bad or reused drill id {drill_id!r}")
        if size <= 0:
            raise ProtocolError(f"drill_restore: bad bundle size {size}")
        base = self.state_dir or DEFAULT_DIR
        staging = base / "staging" / f"drill-{drill_id}"
        staging.mkdir(parents=True, exist_ok=False)
        d = _Drill(id=drill_id, name=name)
        self._drills[drill_id] = d
        try:
            need = size * DRILL_DISK_FACTOR + DRILL_DISK_RESERVE
            free = shutil.disk_usage(staging).free
            if free < need:
                raise DiskFull(
                    f"the destination has {free >> 20} MiB free under {base}; the drill needs "
                    f"about {need >> 20} MiB",
                    hint="free space on the destination (or point MIGRATE_STATE_DIR elsewhere)",
                )
            path = staging / "bundle.tar.zst"
            got = 0
            with open(path, "wb") as f:
                while chunk := stream.read(1 << 20):
                    got += len(chunk)
                    if got > size:  # the declared size is the cap
                        raise ProtocolError(f"drill bundle larger than the declared {size} bytes")
                    f.write(chunk)
            if got != size:
                raise ProtocolError(f"drill bundle is {got} bytes, {size} were declared")
            try:
                meta = bundle.read_manifest(path).meta
                d.image_id = str(meta["image"]["id"])
                # The copy gets volumes of its own: the standby may hold a replica under the
                # original name, which a drill must never touch.
                renames = {
                    str(v["name"]): f"{v['name']}-drill-{drill_id[:8]}"
                    for v in meta.get("volumes") or []
                }
            except (KeyError, TypeError) as e:
                raise BundleInvalid(f"bundle member 'manifest.json': bad metadata ({e})") from None
            had_image = self.engine.image(d.image_id) is not None
            self._sweep_orphan_drills()
            self._record_drill(d, had_image, list(renames.values()))
            try:
                res = import_bundle(
                    self.engine,
                    path,
                    name=name,
                    state_dir=base,
                    isolated=True,
                    labels={DRILL_LABEL: drill_id},
                    volume_names=renames,
                )
            except BaseException:
                if not had_image:
                    self._remove_image(d)
                raise
            d.container_id, d.image_loaded = res.container_id, res.image_loaded
            d.volumes = res.volumes
            return {
                "container_id": res.container_id,
                "volumes": list(res.volumes),
                "restore_s": res.restore_s,
                "restore_mode": res.restore_mode,
                "recovery_s": res.total_s,
                "image_loaded": res.image_loaded,
                "bundle_bytes": got,
            }
        except BaseException:
            self._settled(d)  # import_bundle removed what it made
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _drill_files(self, drill_id: str) -> tuple[Path, PidLock]:
        base = (self.state_dir or DEFAULT_DIR) / "drills"
        lock = PidLock(
            base / f"{drill_id}.lock",
            busy=f"drill {drill_id} is live",
            hint="it is removed by its own agent",
        )
        return base / f"{drill_id}.json", lock

    def _record_drill(self, d: _Drill, had_image: bool, volumes: list[str]) -> None:
        d.record, d.lock = self._drill_files(d.id)
        d.lock.acquire()
        body = {"name": d.name, "image_id": d.image_id, "had_image": had_image, "volumes": volumes}
        atomic_write(d.record, json.dumps(body), durable=False)

    def _settled(self, d: _Drill) -> None:
        """Nothing of this drill is left to clean up (removed, kept, or never made)."""
        d.done = True
        if d.record is not None:
            d.record.unlink(missing_ok=True)
        if d.lock is not None:
            d.lock.release()

    def _sweep_orphan_drills(self) -> None:
        """Remove drill copies whose agent died before the source said keep or remove."""
        base = (self.state_dir or DEFAULT_DIR) / "drills"
        if not base.is_dir():
            return
        for rec in sorted(base.glob("*.json")):
            drill_id = rec.stem
            if drill_id in self._drills or not drill_id.isalnum():
                continue
            _, lock = self._drill_files(drill_id)
            try:
                lock.acquire()
            except MigrateError:
                continue  # its agent is alive
            try:
                data = json.loads(rec.read_text())
                name = str(data.get("name", ""))
                if name and self.engine.exists(name):
                    if self.engine.spec(name).labels.get(DRILL_LABEL) == drill_id:
                        log.warning("removing drill copy %s left by a dead agent", name)
                        self.engine.remove(name, force=True)
                for v in data.get("volumes") or []:
                    if isinstance(v, str) and f"-drill-{drill_id[:8]}" in v:
                        self.engine.remove_volume(v)
                if not data.get("had_image") and data.get("image_id"):
                    self._remove_image(
                        _Drill(id=drill_id, name=name, image_id=str(data["image_id"]))
                    )
                rec.unlink(missing_ok=True)
            except (MigrateError, OSError, ValueError, AttributeError) as e:
                log.error("could not remove what drill %s left: %s", drill_id, e)
            finally:
                lock.release()

    def h_drill_verify(
        self, *, drill_id: str, settle_s: float, argv: list[Any], timeout_s: float
    ) -> dict[str, Any]:
        """Still running after ``settle_s``? Then run ``argv`` inside (if any) for its exit."""
        d = self._drill(drill_id)
        if not all(isinstance(a, str) for a in argv):
            raise ProtocolError("drill_verify: argv must be a list of strings")
        if not 0 <= settle_s <= MAX_DRILL_WAIT_S or not 0 < timeout_s <= MAX_DRILL_WAIT_S:
            raise ProtocolError("drill_verify: settle or timeout out of range")
        time.sleep(settle_s)
        st = self.engine.state(d.container_id)
        res: dict[str, Any] = {
            "status": st.status,
            "running": st.running and not st.paused,
            "exit_code": None,
            "timed_out": False,
            "output": "",
        }
        if res["running"] and argv:
            ex = self.engine.exec(d.container_id, [str(a) for a in argv], timeout_s)
            res.update(exit_code=ex.exit_code, timed_out=ex.exit_code is None, output=ex.output)
        return res

    def h_drill_remove(self, *, drill_id: str, keep: bool) -> dict[str, Any]:
        d = self._drill(drill_id)
        if keep:
            self._settled(d)
            return {"kept": True, "container_removed": False, "image_removed": False}
        self.engine.remove(d.container_id, force=True)
        for v in d.volumes:
            self.engine.remove_volume(v)
        image_removed = self._remove_image(d) if d.image_loaded else False
        self._settled(d)
        return {
            "kept": False,
            "container_removed": True,
            "volumes_removed": list(d.volumes),
            "image_removed": image_removed,
        }

    def _remove_image(self, d: _Drill) -> bool:
        try:
            return bool(d.image_id) and self.engine.remove_image(d.image_id)
        except MigrateError as e:
            log.warning("could not remove the drill's image %s: %s", d.image_id[:19], e)
            return False

    def _remove_drills(self) -> None:
        """The source is gone before it said keep or remove: a drill never outlives it."""
        for d in self._drills.values():
            if d.done or not d.container_id:
                continue
            log.warning("removing drill container %s (the source went away)", d.name)
            try:
                self.engine.remove(d.container_id, force=True)
                for v in d.volumes:
                    self.engine.remove_volume(v)
                if d.image_loaded:
                    self._remove_image(d)
            except MigrateError as e:
                log.error("could not remove drill container %s: %s", d.name, e)
                d.done = True
                if d.lock is not None:
                    d.lock.release()  # the record stays: the next drill's sweep retries
                continue
            self._settled(d)

    # --- rollback -------------------------------------------------------------------------

    def _rollback(self, m: _Migration, why: str, *, force: bool = False) -> None:
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

    def _rollback_volumes(self, m: _Migration) -> None:
        """Remove the volumes this migration created; empty again those it found empty."""
        for name in m.volumes_made:
            try:
                self.engine.remove_volume(name)
            except MigrateError as e:
                log.error("could not remove volume %s: %s", name, e)
        for name in m.volumes_reused:
            v = self.engine.volume(name)
            if v is not None and v.mountpoint:
                _empty_dir(Path(v.mountpoint))
        for path in m.binds_made:
            if path and Path(path).is_dir() and not Path(path).is_symlink():
                shutil.rmtree(path, ignore_errors=True)
        for path in m.binds_reused:
            _empty_dir(Path(path))
        for net in m.networks_made:
            try:
                self.engine.remove_network(net)
            except MigrateError as e:
                log.error("could not remove network %s: %s", net, e)

    def _rollback_uncommitted(self, why: str) -> None:
        for m in list(self._migrations.values()):
            self._rollback(m, why)
            if m.lock is not None:
                m.lock.release()

    def _wait_fault(self, step: str, name: str) -> None:
        """Test hook ``agent:wait:STEP``: write this pid to /tmp/migrate-agent-wait-NAME and
        wait until a test removes it (it kills a process or cuts the link meanwhile)."""
        if f"agent:wait:{step}" not in self.faults:
            return
        safe = "".join(c for c in name if c.isalnum() or c in "-_.")[:64] or "x"
        mark = Path(f"/tmp/migrate-agent-wait-{safe}")
        mark.write_text(f"{os.getpid()} {step}\n")
        log.error("fault injected: agent waits at %s until %s is removed", step, mark)
        while mark.exists():
            time.sleep(0.05)

    def _fault(self, point: str) -> None:
        if point in self.faults:
            log.error("fault injected: agent exits at %s", point)
            os._exit(137)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def log_tail_safe(path: Path) -> str:
    try:
        return criu.log_tail(path)
    except OSError:
        return ""


def _spec(data: dict[str, Any]) -> ContainerSpec:
    try:
        return ContainerSpec.from_wire(data)
    except ValueError as e:
        raise ProtocolError(f"invalid container spec: {e}") from None


def _empty_dir(d: Path) -> None:
    if not d.is_dir() or d.is_symlink():
        return
    for child in d.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


# Host trees a copied bind mount must never be written into.
_BIND_FORBIDDEN = ("/proc", "/sys", "/dev", "/run", "/boot")


def bind_plan(p: str, mode: str) -> tuple[Path, bool] | None:
    """What the destination does for a bind-mounted ``path``: None (same-path: use it as it
    is) or (the topmost directory to create, or the path itself, and whether it exists
    already, empty). Refuses what would be wrong: a missing path for same-path, a path with
    content (never merged or overwritten) or in a system tree for copy."""
    from migrate.core.errors import Unsupported

    path = Path(p)
    if not p.startswith("/") or ".." in path.parts or p != os.path.normpath(p) or p == "/":
        raise ProtocolError(f"bind mount path {p!r} is not a normal absolute path")
    if mode == "same-path":
        if not path.exists():
            raise Unsupported(
                f"the bind-mounted path {p} does not exist on the destination",
                hint="--bind-mounts same-path needs the same data at that path there (shared "
                "storage, or copied beforehand); or use --bind-mounts copy",
            )
        return None
    if any(p == f or p.startswith(f + "/") for f in _BIND_FORBIDDEN):
        raise Unsupported(
            f"--bind-mounts copy does not write into {p} (a system tree)",
            hint="use --bind-mounts same-path for host paths like that",
        )
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise VolumeConflict(
            f"{p} exists on the destination and is not a directory",
            hint=f"remove {p} there, or use --bind-mounts same-path",
        )
    if path.is_dir():
        if any(path.iterdir()):
            raise VolumeConflict(
                f"{p} exists on the destination and is not empty: --bind-mounts copy does "
                "not overwrite or merge",
                hint=f"empty or remove {p} there, or use --bind-mounts same-path if it "
                "holds the same data",
            )
        return path, True
    top = path
    while not top.parent.exists():
        top = top.parent
    if top.parent.is_symlink() or not top.parent.is_dir():
        raise VolumeConflict(f"{top.parent} on the destination is not a directory")
    return top, False


def _binds(data: list[Any] | None) -> list[tuple[str, str]]:
    out = []
    for b in data or []:
        if not (
            isinstance(b, dict)
            and isinstance(b.get("path"), str)
            and b.get("mode") in ("same-path", "copy")
        ):
            raise ProtocolError("binds: each must be {path, mode: same-path|copy}")
        out.append((b["path"], b["mode"]))
    return out


def _volumes(data: list[Any] | None) -> list[VolumeInfo]:
    """The volume descriptions of a request, checked (a bad one is a protocol error)."""
    try:
        out = [VolumeInfo.from_wire(v) for v in data or []]
    except ValueError as e:
        raise ProtocolError(str(e)) from None
    if len({v.name for v in out}) != len(out):
        raise ProtocolError("volumes: a name appears twice")
    return out


def _v(v: Any) -> str:
    return ".".join(str(x) for x in v)


def run_agent(docker_host: str | None = None, staging_dir: Path | None = None) -> int:
    """Entry point of `migrate agent`: serve one source on stdin/stdout. ``staging_dir``:
    where checkpoint images land before Docker gets them (default: the new container's own
    directory, on the data root's file system)."""
    from migrate.engines.docker.engine import DockerEngine
    from migrate.transport.stdio import StdioChannel

    ch = StdioChannel.claim_stdio()
    conn = Connection(ch, timeout=IDLE_TIMEOUT_S)
    agent = Agent(conn, engine_factory=lambda: DockerEngine(docker_host), staging_root=staging_dir)
    return agent.serve()


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
                hint="free space on the destination's Docker data root",
            ) from None
        raise
    shutil.rmtree(src, ignore_errors=True)
