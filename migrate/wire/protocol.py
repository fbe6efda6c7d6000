"""Wire protocol between the source and the agent (pure: framing over a Channel, no other I/O).

A frame is a fixed 7-byte header (magic ``MG``, kind, body length) and a body:

* ``CONTROL``: a JSON object (size-capped) — hello, request, response, error, event;
* ``DATA``: raw bytes of the stream that the last request opened (zstd-compressed);
* ``END``: end of that stream (empty body).

A stream goes either on the control channel right after its request, or, when the request
says ``"via": "bulk"``, on the bulk connection (OpenSSH, migrate/transport/openssh.py): there
it starts with a ``CONTROL`` frame ``{"type": "stream", "id": REQUEST_ID}`` and then the same
``DATA`` frames and ``END``; the answer still comes on the control channel.

Requests are named, allow-listed and keyword-only: each method declares its parameters and
their JSON types here, and a request that does not match is refused before any handler runs.
Nothing received is ever evaluated or unpickled.
"""

from __future__ import annotations

import json
import os
import queue
import struct
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import zstandard

from migrate.core.errors import ConnectionLost, MigrateError, ProtocolError, from_wire
from migrate.transport import Channel

PROTOCOL_VERSION = 1
MIN_PROTOCOL_VERSION = 1

MAGIC = b"MG"
HEADER = struct.Struct("!2sBI")
KIND_CONTROL = 1
KIND_DATA = 2
KIND_END = 3
KINDS = {KIND_CONTROL, KIND_DATA, KIND_END}

# Caps: a hostile or broken peer must not make us allocate without bound.
MAX_CONTROL_BYTES = 1 << 20
MAX_DATA_BYTES = 4 << 20
# Size of data frames we send: large enough to amortise per-frame costs, small enough to keep
# memory low and progress smooth.
DATA_CHUNK = 1 << 20
# Items (of at most ~DATA_CHUNK bytes) a stream stage may queue ahead of the next one: enough
# to ride out a short stall of either side, few enough to keep memory bounded (issue 8 goal 5).
PIPELINE_DEPTH = 8
# How long closing a stream waits for its stage thread (which may be blocked on its input).
STAGE_JOIN_TIMEOUT_S = 5.0
# zstd's own worker threads (0: compress in the calling thread); chosen by measurement in
# benchmarks/results/stream.md.
ZSTD_THREADS = 0
# Adaptive compression (an agent whose hello says ``stream_frames: multi``): a long stream
# measures what it achieves (raw bytes per second as the sender takes them, so the link, the
# destination and the CPUs all count) at the normal level and at FAST_LEVEL (next to no CPU:
# 3-4 GB/s, ratio ~1), one ADAPT_WINDOW each, then goes on with the faster for
# ADAPT_EXPLOIT windows and measures again. On a link slower than the CPUs that keeps level 1
# (the ratio pays: 1 Gbit/s, half text, 1.6x OpenSSH's raw rate); where the CPUs are the
# limit (both ends on two shared vCPUs) it sends more bytes for less CPU
# (benchmarks/results/stream-adaptive.md). Each change of level starts a new zstd frame.
FAST_LEVEL = -1000
# (MIGRATE_ADAPT_WINDOW: a smaller window, for tests that want a small stream to adapt.)
ADAPT_WINDOW = int(os.environ.get("MIGRATE_ADAPT_WINDOW") or 32 << 20)
ADAPT_EXPLOIT = 24


@dataclass(frozen=True)
class Frame:
    kind: int
    body: bytes


def encode_frame(kind: int, body: bytes) -> bytes:
    if kind not in KINDS:
        raise ValueError(f"unknown frame kind {kind}")
    cap = MAX_CONTROL_BYTES if kind == KIND_CONTROL else MAX_DATA_BYTES
    if len(body) > cap:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds the cap of {cap}")
    return HEADER.pack(MAGIC, kind, len(body)) + body


def encode_control(msg: Mapping[str, Any]) -> bytes:
    body = json.dumps(msg, separators=(",", ":"), allow_nan=False).encode()
    return encode_frame(KIND_CONTROL, body)


def decode_control(body: bytes) -> dict[str, Any]:
    try:
        msg = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(f"control frame is not valid JSON: {e}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError("control frame is not a typed JSON object")
    return msg


def _read_exact(ch: Channel, n: int) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < n:
        chunk = ch.recv(min(n - got, 1 << 20))
        if not chunk:
            raise ConnectionLost(
                f"connection to {ch.peer} closed"
                + (" in the middle of a frame" if got or parts else ""),
                details={"stderr_tail": ch.stderr_tail()},
            )
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def read_frame(ch: Channel) -> Frame:
    magic, kind, length = HEADER.unpack(_read_exact(ch, HEADER.size))
    if magic != MAGIC:
        raise ProtocolError(
            f"bad frame magic {magic!r} from {ch.peer}",
            hint="the agent command printed something that is not the protocol; "
            "check --agent-command and the remote shell's startup files",
            details={"stderr_tail": ch.stderr_tail()},
        )
    if kind not in KINDS:
        raise ProtocolError(f"unknown frame kind {kind}")
    cap = MAX_CONTROL_BYTES if kind == KIND_CONTROL else MAX_DATA_BYTES
    if length > cap:
        raise ProtocolError(f"frame of {length} bytes exceeds the cap of {cap}")
    return Frame(kind, _read_exact(ch, length) if length else b"")


# --- methods: the allow-list --------------------------------------------------------------

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "bool": (bool,),
    "dict": (dict,),
    "list": (list,),
    "float": (int, float),
}


@dataclass(frozen=True)
class Param:
    type: str
    required: bool = True


@dataclass(frozen=True)
class Method:
    name: str
    params: Mapping[str, Param] = field(default_factory=dict)
    stream: bool = False  # the request is followed by DATA frames and an END frame


def _m(method_name: str, /, *, stream: bool = False, **params: Param) -> Method:
    return Method(method_name, params, stream)


_S, _I, _D, _L, _B = Param("str"), Param("int"), Param("dict"), Param("list"), Param("bool")
_F = Param("float")
_OL = Param("list", required=False)

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        _m("hello", protocol=_I, min_protocol=_I, software=_S, faults=_L),
        # lazy: also say whether a post-copy restore (--strategy lazy) can be done here.
        _m(
            "precheck",
            spec=_D,
            name=_S,
            criu_version=_L,
            volumes=_OL,
            binds=_OL,
            lazy=Param("bool", required=False),
        ),
        _m("cpuinfo_check", image_b64=_S),
        _m("image_status", image_id=_S, diff_ids=_L),
        _m("load_image", stream=True, image_id=_S),
        _m("prepare", migration_id=_S, spec=_D, name=_S, volumes=_OL, binds=_OL, networks=_OL),
        _m("put_rootfs", stream=True, migration_id=_S),
        # Pre-copy (migrate/fs/precopy.py): the layer while the container runs, into the empty
        # upper dir; then the frozen delta over it.
        _m("precopy_rootfs", stream=True, migration_id=_S),
        _m("put_rootfs_delta", stream=True, migration_id=_S),
        _m("precopy_volume", stream=True, migration_id=_S, volume=_S),
        _m("put_volume_delta", stream=True, migration_id=_S, volume=_S),
        _m("precopy_bind", stream=True, migration_id=_S, path=_S),
        _m("put_bind_delta", stream=True, migration_id=_S, path=_S),
        # Volume content and the log history, captured while the container is frozen.
        _m("put_volume", stream=True, migration_id=_S, volume=_S),
        _m("put_log", stream=True, migration_id=_S),
        _m("put_bind", stream=True, migration_id=_S, path=_S),
        # memory_bytes: stage the images in memory when that much fits (staging.py).
        _m(
            "put_checkpoint",
            stream=True,
            migration_id=_S,
            memory_bytes=Param("int", required=False),
            require_memory=Param("bool", required=False),
        ),
        # page_server_port: post-copy; the loopback port that leads to the source's pages.
        _m("restore", migration_id=_S, page_server_port=Param("int", required=False)),
        _m("postcopy_wait", migration_id=_S, timeout_s=_F),
        _m("commit", migration_id=_S),
        _m("abort", migration_id=_S),
        _m("status", migration_id=_S),
        # Disaster-recovery drills (migrate/source/drill.py): the stream is a bundle file.
        _m("drill_restore", stream=True, drill_id=_S, name=_S, size=_I),
        _m("drill_verify", drill_id=_S, settle_s=_F, argv=_L, timeout_s=_F),
        _m("drill_remove", drill_id=_S, keep=_B),
        # Open the bulk connection's socket: answers {socket, token} (docs/protocol.md).
        _m("bulk_open"),
        _m("bye"),
    )
}


def validate_request(msg: Mapping[str, Any]) -> tuple[int, Method, dict[str, Any]]:
    """Check a request against the allow-list; return (id, method, keyword arguments)."""
    rid = msg.get("id")
    if not isinstance(rid, int) or isinstance(rid, bool):
        raise ProtocolError("request without an integer id")
    name = msg.get("method")
    method = METHODS.get(name) if isinstance(name, str) else None
    if method is None:
        raise ProtocolError(f"method {name!r} is not allowed")
    args = msg.get("args", {})
    if not isinstance(args, dict):
        raise ProtocolError(f"{method.name}: arguments must be an object")
    unknown = set(args) - set(method.params)
    if unknown:
        raise ProtocolError(f"{method.name}: unexpected arguments {sorted(unknown)}")
    for pname, p in method.params.items():
        if pname not in args:
            if p.required:
                raise ProtocolError(f"{method.name}: missing argument {pname!r}")
            continue
        v = args[pname]
        ok = isinstance(v, _JSON_TYPES[p.type]) and not (
            p.type in ("int", "float") and isinstance(v, bool)
        )
        if not ok:
            raise ProtocolError(f"{method.name}: argument {pname!r} must be {p.type}")
    return rid, method, dict(args)


# --- a connection: requests, responses and streams ----------------------------------------


class BulkSender(Protocol):
    """Where the source writes the frames of a stream sent ``via`` the bulk connection."""

    def sendall(self, data: bytes) -> None: ...

    def settimeout(self, seconds: float | None) -> None: ...

    def alive(self) -> bool: ...

    def kill(self) -> None: ...

    def close(self) -> None: ...


def stream_header(rid: int) -> dict[str, Any]:
    """First frame of a stream on the bulk connection: whose request it belongs to."""
    return {"type": "stream", "id": rid}


class Connection:
    """Frames over a channel; the source side's request/response and stream helpers.

    ``bulk``: when set, streams go there (``via: bulk``) instead of the control channel.
    """

    def __init__(
        self,
        channel: Channel,
        *,
        timeout: float = 60.0,
        level: int = 1,
        threads: int = ZSTD_THREADS,
    ) -> None:
        self.ch = channel
        self.timeout = timeout
        self.level = level
        self.threads = threads
        self._next_id = 1
        self.bytes_sent = 0
        self.bytes_received = 0
        self.bulk: BulkSender | None = None
        # The agent reads several zstd frames per stream (note_agent): compression may adapt.
        self.adaptive = False
        channel.settimeout(timeout)

    def note_agent(self, hello: Mapping[str, Any], *, adaptive: bool = True) -> None:
        """What the agent's hello says about streams: multi-frame streams allow adaptive
        compression (an older agent refuses data after the first frame)."""
        self.adaptive = adaptive and hello.get("stream_frames") == "multi"

    # low level
    def send_frame(self, kind: int, body: bytes) -> None:
        data = encode_frame(kind, body)
        self.ch.sendall(data)
        self.bytes_sent += len(data)

    def send_control(self, msg: Mapping[str, Any]) -> None:
        data = encode_control(msg)
        self.ch.sendall(data)
        self.bytes_sent += len(data)

    def recv_frame(self) -> Frame:
        f = read_frame(self.ch)
        self.bytes_received += HEADER.size + len(f.body)
        return f

    def recv_control(self) -> dict[str, Any]:
        f = self.recv_frame()
        if f.kind != KIND_CONTROL:
            raise ProtocolError(f"expected a control frame, got kind {f.kind}")
        return decode_control(f.body)

    # source side
    def call(
        self,
        method: str,
        *,
        stream: Iterator[bytes] | None = None,
        timeout: float | None = None,
        on_progress: Any = None,
        **args: Any,
    ) -> dict[str, Any]:
        """Call a method on the agent; raise the agent's error as the same class."""
        m = METHODS[method]
        if m.stream != (stream is not None):
            raise ValueError(f"{method}: stream {'required' if m.stream else 'not allowed'}")
        rid = self._next_id
        self._next_id += 1
        bulk = self.bulk if stream is not None else None
        if bulk is not None and not bulk.alive():
            # Died between streams (its ssh exited): nothing is half sent, but this stream
            # has nowhere to go. The caller's error path rolls back, as for a lost link.
            self.bulk = None
            bulk.kill()
            raise ConnectionLost("the bulk connection (ssh) ended before a stream")
        req: dict[str, Any] = {"type": "request", "id": rid, "method": method, "args": args}
        if bulk is not None:
            req["via"] = "bulk"
        self.send_control(req)
        stats = None
        if stream is not None and bulk is not None:
            try:
                bulk.settimeout(self.timeout)
                bulk.sendall(encode_control(stream_header(rid)))
                stats = self.send_stream(stream, on_progress=on_progress, to=bulk)
            except BaseException:
                # Frames may be half sent: it cannot carry another stream. Ending it gives
                # the agent EOF in the middle of the stream, which ends its session (and
                # rolls back what it made), as a broken stream on the control channel does.
                self.bulk = None
                bulk.kill()
                raise
        elif stream is not None:
            stats = self.send_stream(stream, on_progress=on_progress)
        self.ch.settimeout(timeout if timeout is not None else self.timeout)
        try:
            while True:
                msg = self.recv_control()
                if msg.get("type") == "event":
                    continue  # reserved for progress events
                break
        finally:
            self.ch.settimeout(self.timeout)
        if msg.get("id") != rid:
            raise ProtocolError(f"answer to request {msg.get('id')} while waiting for {rid}")
        if msg["type"] == "error":
            raise from_wire(msg.get("error") or {})
        if msg["type"] != "response":
            raise ProtocolError(f"unexpected message type {msg['type']!r}")
        result = msg.get("result")
        if not isinstance(result, dict):
            raise ProtocolError(f"{method}: result is not an object")
        if stats is not None:
            result.setdefault("_stream", stats)
        return result

    def send_stream(
        self, chunks: Iterator[bytes], *, on_progress: Any = None, to: BulkSender | None = None
    ) -> dict[str, int]:
        """Compress and send a stream as DATA frames, then END. Returns raw/wire byte counts.

        Reading ``chunks`` and compressing run in a thread of their own (see ``_Compressor``)
        while this thread sends, so disk reads, zstd and the SSH channel overlap instead of
        taking turns. An exception raised while reading or compressing comes out of here as
        is, with no END sent (the stream is then unusable, as before).
        """
        send = (
            self.send_frame
            if to is None
            else lambda kind, body: to.sendall(encode_frame(kind, body))
        )
        comp = _Compressor(chunks, level=self.level, threads=self.threads, adaptive=self.adaptive)
        raw = wire = 0
        try:
            for body, raw in comp:
                send(KIND_DATA, body)
                wire += len(body) + HEADER.size
                if on_progress is not None:
                    on_progress(raw, wire)
        finally:
            comp.close()
        send(KIND_END, b"")
        wire += HEADER.size
        if on_progress is not None:
            on_progress(raw, wire)
        return {"raw": raw, "wire": wire, "fast_raw": comp.fast_raw}

    def close(self) -> None:
        try:
            self.ch.close()
        finally:
            # After the control channel: the agent has exited (or been given its time), so
            # the remote end of the bulk connection is gone and ssh exits on its own.
            bulk, self.bulk = self.bulk, None
            if bulk is not None:
                bulk.close()


# --- stream stages in threads ---------------------------------------------------------------


class _Failed:
    """What a stage thread puts in its queue when it raised: the consumer re-raises it."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_DONE = object()  # a stage thread's last item


class _Stage:
    """One producer thread feeding its consumer through a bounded queue.

    The queue bounds memory (``PIPELINE_DEPTH`` items of at most ~1 MiB each) and lets the
    producer work ahead while the consumer blocks elsewhere (on the network, on a disk
    write): the C parts of each stage (zstd, read/write system calls, the cipher) release the
    GIL, so on two CPUs the stages run in parallel. The producer's exception is re-raised in
    the consumer, unchanged, at the point of the stream where it happened. ``close`` stops the
    producer without waiting for it forever (it may be blocked reading its input, which is
    bounded by that input's own timeout).
    """

    def __init__(self, name: str) -> None:
        self._q: queue.Queue[object] = queue.Queue(PIPELINE_DEPTH)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._done = False
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    # producer side
    def produce(self) -> None:
        raise NotImplementedError

    def put(self, item: object) -> bool:
        """Hand an item over; False once the consumer has gone (the producer should return)."""
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _main(self) -> None:
        try:
            self.produce()
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            self.put(_Failed(e))
        else:
            self.put(_DONE)

    # consumer side
    def get(self) -> object:
        """The next item, or _DONE; raises what the producer raised (again on every call)."""
        if self._error is not None:
            raise self._error
        if self._done:
            return _DONE
        item = self._q.get()
        if isinstance(item, _Failed):
            self._error = item.exc
            raise item.exc
        if item is _DONE:
            self._done = True
        return item

    def close(self, timeout: float = STAGE_JOIN_TIMEOUT_S) -> None:
        self._stop.set()
        while True:  # unblock a producer waiting in put()
            try:
                self._q.get_nowait()
            except queue.Empty:
                break
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)


class _Compressor(_Stage):
    """Source side: reads ``chunks`` and compresses them into frame bodies of ~DATA_CHUNK;
    iterating yields ``(body, raw bytes read so far)``. ``adaptive``: choose between the level
    and FAST_LEVEL by the rate each achieves (``_Adapt``), a new zstd frame at each change."""

    def __init__(
        self, chunks: Iterator[bytes], *, level: int, threads: int, adaptive: bool = False
    ) -> None:
        super().__init__("stream-compress")
        self._chunks = chunks
        self._cctx = zstandard.ZstdCompressor(level=level, threads=threads)
        self._adapt = (
            _Adapt(self._cctx, zstandard.ZstdCompressor(level=FAST_LEVEL)) if adaptive else None
        )
        self.fast_raw = 0  # raw bytes that went at FAST_LEVEL
        self.start()

    def produce(self) -> None:
        cctx = self._cctx
        comp = cctx.compressobj()
        fast = self._adapt.fast if self._adapt is not None else None
        raw = 0
        pending: list[bytes] = []
        pending_len = 0
        try:
            for chunk in self._chunks:
                if self._stop.is_set():
                    return
                if not chunk:
                    continue
                raw += len(chunk)
                if cctx is fast:
                    self.fast_raw += len(chunk)
                out = comp.compress(chunk)
                if out:
                    pending.append(out)
                    pending_len += len(out)
                if pending_len >= DATA_CHUNK:
                    if not self._emit(b"".join(pending), raw):
                        return
                    pending, pending_len = [], 0
                if self._adapt is not None:
                    want = self._adapt.next(raw, time.monotonic())
                    if want is not cctx:
                        # End this frame here; the next one starts at the other level.
                        pending.append(comp.flush())
                        pending_len += len(pending[-1])
                        cctx, comp = want, want.compressobj()
            pending.append(comp.flush())
            self._emit(b"".join(pending), raw)
        finally:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()  # release open files (generator semantics), in the thread using them

    def _emit(self, data: bytes, raw: int) -> bool:
        if len(data) <= DATA_CHUNK:
            return self.put((data, raw))
        view = memoryview(data)
        for i in range(0, len(data), DATA_CHUNK):
            if not self.put((bytes(view[i : i + DATA_CHUNK]), raw)):
                return False
        return True

    def __iter__(self) -> Iterator[tuple[bytes, int]]:
        while True:
            item = self.get()
            if item is _DONE:
                return
            assert isinstance(item, tuple)
            yield item


class _Adapt:
    """Which compressor the next window of a stream uses: windows of ADAPT_WINDOW raw bytes;
    after one to warm up (the queues fill), one at each level is measured, and the faster
    one (raw bytes per second) runs for ADAPT_EXPLOIT windows before measuring again. The
    rate is taken where the producer hands bodies over, so back-pressure from the link, the
    destination and the CPUs all shows in it."""

    def __init__(self, normal: zstandard.ZstdCompressor, fast: zstandard.ZstdCompressor) -> None:
        self.normal, self.fast = normal, fast
        # The last two windows of every plan are measured; the first plan's first is not.
        self._plan: list[zstandard.ZstdCompressor] = [normal, normal, fast]
        self._rates: dict[int, float] = {}
        self._current = normal
        self._start_raw = 0
        self._start_t: float | None = None
        self.choices: list[str] = []  # "normal" / "fast" after each measurement (reports, tests)

    def next(self, raw: int, now: float) -> zstandard.ZstdCompressor:
        if self._start_t is None:
            self._start_t = now
        if raw - self._start_raw < ADAPT_WINDOW:
            return self._current
        rate = (raw - self._start_raw) / max(now - self._start_t, 1e-6)
        done = self._plan.pop(0)
        if len(self._plan) < 2:
            self._rates[id(done)] = rate
        if not self._plan:
            best = max((self.normal, self.fast), key=lambda c: self._rates.get(id(c), 0.0))
            self.choices.append("fast" if best is self.fast else "normal")
            other = self.normal if best is self.fast else self.fast
            self._plan = [best] * ADAPT_EXPLOIT + [other, best]
            self._rates.clear()
        self._current = self._plan[0]
        self._start_raw, self._start_t = raw, now
        return self._current


class _FrameSource:
    """The compressed bytes of one incoming stream, frame after frame until END, as a
    file-like ``read`` for zstd's stream reader. Counts and caps what arrives."""

    def __init__(self, reader: StreamReader) -> None:
        self._r = reader
        self._body = b""
        self._pos = 0
        self.ended = False

    def read(self, n: int) -> bytes:
        while self._pos >= len(self._body):
            if self.ended:
                return b""
            f = self._r.conn.recv_frame()
            if f.kind == KIND_END:
                self.ended = True
                return b""
            if f.kind != KIND_DATA:
                raise ProtocolError("control frame inside a data stream")
            self._r.wire_bytes += len(f.body)
            cap = self._r.max_wire_bytes
            if cap is not None and self._r.wire_bytes > cap:
                raise ProtocolError("stream exceeds its size cap")
            self._body, self._pos = f.body, 0
        if self._pos == 0 and n >= len(self._body):
            out = self._body
        else:
            out = self._body[self._pos : self._pos + n]
        self._pos += len(out)
        return out


class _Decompressor(_Stage):
    """Agent side: receives the frames of one stream and decompresses them, in a thread,
    into pieces of at most DATA_CHUNK bytes, so that however well the data compressed (a
    file of zeros: 1 GiB in a few KiB) memory stays bounded."""

    def __init__(self, reader: StreamReader) -> None:
        super().__init__("stream-decompress")
        self._src = _FrameSource(reader)
        self.start()

    def produce(self) -> None:
        dctx = zstandard.ZstdDecompressor()
        # _FrameSource is not an IO[bytes], but read() is all the stream reader calls.
        # Across frames: an adaptive sender starts a new frame at each change of level.
        zr = dctx.stream_reader(
            self._src,  # type: ignore[arg-type]
            read_size=DATA_CHUNK,
            closefd=False,
            read_across_frames=True,
        )
        try:
            while not self._stop.is_set():
                try:
                    out = zr.read(DATA_CHUNK)
                except zstandard.ZstdError as e:
                    raise ProtocolError(f"corrupt compressed stream: {e}") from None
                if not out:
                    break
                if not self.put(out):
                    return
        finally:
            zr.close()  # type: ignore[no-untyped-call]  # zstandard ships no annotation for it
        # The sender ends each stream with END right after the compressed data: anything
        # in between is not ours to ignore.
        while not self._src.ended and not self._stop.is_set():
            if self._src.read(DATA_CHUNK):
                raise ProtocolError("data after the end of the compressed stream")


class StreamReader:
    """File-like reader of one incoming stream (DATA frames until END), decompressed.

    Used by the agent: handlers read it like a file (``tarfile.open(mode="r|")``). Receiving
    and decompressing run in a thread of their own (``_Decompressor``), ahead of the handler
    by at most PIPELINE_DEPTH pieces, so the network and the handler's disk writes overlap.
    The compressed input is capped so a hostile sender cannot fill the disk unboundedly;
    what the data decompresses to is capped by whoever consumes it.
    """

    def __init__(self, conn: Connection, *, max_wire_bytes: int | None = None) -> None:
        self.conn = conn
        self._cur = b""
        self._pos = 0
        self._eof = False
        self.wire_bytes = 0
        self.raw_bytes = 0
        self.max_wire_bytes = max_wire_bytes
        self._stage = _Decompressor(self)

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            parts: list[bytes] = []
            while True:
                chunk = self.read(1 << 20)
                if not chunk:
                    return b"".join(parts)
                parts.append(chunk)
        if n == 0:
            return b""
        if self._pos >= len(self._cur):
            if self._eof:
                return b""
            item = self._stage.get()
            if item is _DONE:
                self._eof = True
                self._cur, self._pos = b"", 0
                return b""
            assert isinstance(item, bytes)
            self._cur, self._pos = item, 0
        if self._pos == 0 and n >= len(self._cur):
            out = self._cur  # the common case: a whole piece, not copied
        else:
            out = self._cur[self._pos : self._pos + n]
        self._pos += len(out)
        self.raw_bytes += len(out)
        return out

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        """Consume the rest of the stream so the connection stays in sync after an error."""
        while self.read(DATA_CHUNK):
            pass

    def close(self) -> None:
        """Stop the receiving thread (for a reader abandoned with the connection)."""
        self._stage.close()

    @property
    def finished(self) -> bool:
        return self._eof


def error_message(rid: int | None, err: MigrateError) -> dict[str, Any]:
    return {"type": "error", "id": rid, "error": err.to_wire()}


def response_message(rid: int, result: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "response", "id": rid, "result": dict(result)}
