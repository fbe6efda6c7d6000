"""The destination agent (`migrate agent`): allow-listed handlers behind the wire protocol.

It builds the container the source describes, fills its read-write layer and checkpoint from
the streams it receives, and restores it. Until it has journalled ``committed``, any failure,
an ``abort`` or a lost connection makes it delete everything it created.
"""

from __future__ import annotations

import logging
import platform
import shutil
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migrate import __version__
from migrate.agent.binds import bind_plan
from migrate.agent.drills import Drills
from migrate.agent.handlers import Handler, handler_table, plain, streamed
from migrate.agent.postcopy import Postcopies
from migrate.agent.prepare import Preparer
from migrate.agent.restore import Restorer
from migrate.agent.rollback import Rollback
from migrate.agent.state import LAZY_WORK_ROOT, Session
from migrate.agent.streams import Streams
from migrate.checkpoint import criu
from migrate.checkpoint import staging as staging_mod
from migrate.core.errors import (
    ConnectionLost,
    Incompatible,
    MigrateError,
    ProtocolError,
    Unsupported,
)
from migrate.core.faults import agent_switch_on, from_wire
from migrate.engines.base import Engine
from migrate.transport.bulk_sink import BulkListener
from migrate.wire.connection import Connection
from migrate.wire.framing import KIND_CONTROL, decode_control
from migrate.wire.messages import (
    METHODS,
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    error_message,
    response_message,
    stream_header,
    validate_request,
)
from migrate.wire.methods import (
    Abort,
    BulkOpen,
    Bye,
    Commit,
    CpuinfoCheck,
    DrillRemove,
    DrillRestore,
    DrillVerify,
    Hello,
    ImageStatus,
    LoadImage,
    PostcopyWait,
    Precheck,
    Prepare,
    PutCheckpoint,
    PutLog,
    Restore,
    Status,
)
from migrate.wire.results import AgentHello, BulkOpenResult, Empty, EngineSummary, WireError
from migrate.wire.stream import StreamReader

# Re-exported: tests and benchmarks name them here.
__all__ = ["LAZY_WORK_ROOT", "Agent", "bind_plan", "run_agent"]

log = logging.getLogger(__name__)

# The source may go quiet for a long time while it dumps a large container.
IDLE_TIMEOUT_S = 900.0
# A stream via the bulk connection may arrive just after the sink's handover.
BULK_HANDOVER_WAIT_S = 10.0


@dataclass
class Agent:
    """One session with one source: reads requests, runs the handler of each (the allow-list
    is protocol.METHODS, each served by one of the parts below), answers."""

    conn: Connection
    engine_factory: Callable[[], Engine]
    state_dir: Path | None = None
    # Where checkpoint images are staged (None: inside the new container's directory).
    staging_root: Path | None = None
    # Whether this process obeys the fault points a source sends (core/faults.py): only when
    # its own environment says so, i.e. in the test suite.
    wire_faults: bool = False
    _done: bool = False
    # The bulk connection (transport/bulk_sink.py): its one-shot listener, and once the sink
    # handed over its stdin, the Connection that reads streams sent `via: bulk` from it.
    _bulk_listener: BulkListener | None = None
    _bulk: Connection | None = None
    _handlers: dict[str, Handler] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.s = Session(self.engine_factory, self.state_dir, self.staging_root)
        self.preparer = Preparer(self.s)
        self.streams = Streams(self.s)
        self.postcopies = Postcopies(self.s)
        self.restorer = Restorer(self.s, self.postcopies)
        self.rollback = Rollback(self.s)
        self.drills = Drills(self.s)
        self._handlers = handler_table(
            [
                plain(Hello, self.h_hello),
                plain(Precheck, self.preparer.h_precheck),
                plain(CpuinfoCheck, self.preparer.h_cpuinfo_check),
                plain(ImageStatus, self.preparer.h_image_status),
                streamed(LoadImage, self.preparer.h_load_image),
                plain(Prepare, self.preparer.h_prepare),
                *self.streams.tree_handlers(),
                streamed(PutLog, self.streams.h_put_log),
                streamed(PutCheckpoint, self.streams.h_put_checkpoint),
                plain(Restore, self.restorer.h_restore),
                plain(PostcopyWait, self.postcopies.h_postcopy_wait),
                plain(Commit, self.restorer.h_commit),
                plain(Abort, self.rollback.h_abort),
                plain(Status, self.rollback.h_status),
                streamed(DrillRestore, self.drills.h_drill_restore),
                plain(DrillVerify, self.drills.h_drill_verify),
                plain(DrillRemove, self.drills.h_drill_remove),
                plain(BulkOpen, self.h_bulk_open),
                plain(Bye, self.h_bye),
            ]
        )

    @property
    def engine(self) -> Engine:
        return self.s.engine

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
            self.postcopies.stop_all()
            self.rollback.rollback_uncommitted("agent exiting")
            self.drills.remove_all()
            self._close_bulk()

    def _close_bulk(self) -> None:
        """Closing our end of the handed-over socket lets the sink, and its SSH session,
        end; the listener's directory goes with it."""
        if self._bulk_listener is not None:
            self._bulk_listener.close()
        self._bulk = None

    def _send_quietly(self, msg: dict[str, Any]) -> None:
        try:
            self.conn.send_control(msg)
        except MigrateError:
            pass

    def _abandon(self, rc: int = 1) -> int:
        self.rollback.rollback_uncommitted("connection to the source lost")
        return rc

    def _dispatch(self, body: bytes) -> None:
        rid: int | None = None
        reader: StreamReader | None = None
        try:
            msg = decode_control(body)
            rid = msg.get("id") if isinstance(msg.get("id"), int) else None
            if msg.get("type") != "request":
                raise ProtocolError(f"unexpected message type {msg.get('type')!r}")
            rid, method, req = validate_request(msg)
            handler = self._handlers[method.name]
            if method.stream:
                reader = StreamReader(self._stream_conn(rid, msg.get("via")))
                result = handler(req, reader)
                reader.drain()
            else:
                result = handler(req)
            self.conn.send_control(response_message(rid, result.to_wire()))
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

    # --- the session's own handlers --------------------------------------------------------

    def h_bulk_open(self, req: BulkOpen) -> BulkOpenResult:
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
        return BulkOpenResult(socket=str(self._bulk_listener.path), token=self._bulk_listener.token)

    def h_hello(self, req: Hello) -> AgentHello:
        # The newer side decides: we accept any peer whose range overlaps ours.
        if req.min_protocol > PROTOCOL_VERSION or req.protocol < MIN_PROTOCOL_VERSION:
            raise Incompatible(
                f"protocol mismatch: source speaks {req.min_protocol}..{req.protocol}, "
                f"agent {MIN_PROTOCOL_VERSION}..{PROTOCOL_VERSION}",
                hint="install the same migrate version on both hosts",
            )
        self.s.faults = from_wire(req.faults, allowed=self.wire_faults)
        crit = criu.capabilities(criu.find_criu())
        return AgentHello(
            software=__version__,
            protocol=min(req.protocol, PROTOCOL_VERSION),
            hostname=socket.gethostname(),
            kernel=platform.release(),
            # What this agent can do: a source checks before it asks (drills, say).
            methods=sorted(METHODS),
            # Where checkpoint images can be staged (staging.py): the source asks for memory.
            staging=["disk", "memory"],
            # Streams may be several zstd frames (adaptive compression, protocol.py).
            stream_frames="multi",
            criu_version=list(crit.version) if crit.version else None,
            criu_ok=bool(crit.check_ok),
            **self._engine_caps(),
        )

    def _engine_caps(self) -> dict[str, Any]:
        """The hello's engine part: what it is and the room it has, or why it cannot say.
        Only the keys that apply are set (the answer leaves the others out)."""
        caps: dict[str, Any] = {}
        try:
            info = self.engine.info()
            caps["engine"] = EngineSummary(
                engine=info.engine,
                version=info.version,
                # Wire key of Docker's name for it (the hello's shape is fixed: results.py).
                experimental=info.checkpoint_enabled,
                storage_driver=info.storage_driver,
                mem_total=info.mem_total,
                live_restore=info.live_restore,
            )
            caps["free_disk"] = shutil.disk_usage(info.data_root).free
            caps["mem_available"] = staging_mod.mem_available()
        except MigrateError as e:
            caps["engine_error"] = WireError.model_validate(e.to_wire())
        return caps

    def h_bye(self, req: Bye) -> Empty:
        self._done = True
        return Empty()


def run_agent(engine_factory: Callable[[], Engine], staging_dir: Path | None = None) -> int:
    """Entry point of `migrate agent`: serve one source on stdin/stdout. ``engine_factory``
    opens this host's engine (engines/select.py) when a request first needs it.
    ``staging_dir``: where checkpoint images land before the engine gets them (default: the
    new container's own directory, on the data root's file system)."""
    from migrate.transport.stdio import StdioChannel

    ch = StdioChannel.claim_stdio()
    conn = Connection(ch, timeout=IDLE_TIMEOUT_S)
    agent = Agent(
        conn,
        engine_factory=engine_factory,
        staging_root=staging_dir,
        wire_faults=agent_switch_on(),
    )
    return agent.serve()
