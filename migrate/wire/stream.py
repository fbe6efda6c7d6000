"""The stream pipeline: a stream compressed into DATA frames on the source and decompressed
from them on the agent, each side's work in a thread of its own behind a bounded queue, and the
choice of zstd level that adapts to what the link and the CPUs achieve.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any, Protocol

import zstandard

from migrate.core.errors import ProtocolError
from migrate.wire.framing import DATA_CHUNK, KIND_DATA, KIND_END, Frame

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


class FrameReceiver(Protocol):
    """Where an incoming stream's frames come from (the agent's Connection)."""

    def recv_frame(self) -> Frame: ...


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


class Compressor(_Stage):
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

    def __init__(self, conn: FrameReceiver, *, max_wire_bytes: int | None = None) -> None:
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
