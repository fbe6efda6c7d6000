"""The source's side of the protocol: a Connection sends requests (and the streams that go
with them) over a Channel and reads the answers; the agent uses it to read and answer.

A stream goes either on the control channel right after its request, or, when the request
says ``"via": "bulk"``, on the bulk connection (OpenSSH, migrate/transport/openssh.py,
attached by migrate/wire/bulk.py): there it starts with a ``CONTROL`` frame
``{"type": "stream", "id": REQUEST_ID}`` and then the same ``DATA`` frames and ``END``; the
answer still comes on the control channel.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from migrate.core.errors import ConnectionLost, ProtocolError, from_wire
from migrate.transport import Channel
from migrate.wire.framing import (
    HEADER,
    KIND_CONTROL,
    KIND_DATA,
    KIND_END,
    Frame,
    decode_control,
    encode_control,
    encode_frame,
    read_frame,
)
from migrate.wire.messages import METHODS, stream_header
from migrate.wire.stream import ZSTD_THREADS, Compressor


class BulkSender(Protocol):
    """Where the source writes the frames of a stream sent ``via`` the bulk connection."""

    def sendall(self, data: bytes) -> None: ...

    def settimeout(self, seconds: float | None) -> None: ...

    def alive(self) -> bool: ...

    def kill(self) -> None: ...

    def close(self) -> None: ...


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

    # source side (the typed client, wire/client.py, is its caller)
    # long: one request and its answer, with the stream between them on either channel
    def exchange(
        self,
        method: str,
        args: Mapping[str, Any],
        *,
        stream: Iterator[bytes] | None = None,
        timeout: float | None = None,
        on_progress: Any = None,
    ) -> tuple[dict[str, Any], dict[str, int] | None]:
        """Send one request (and its stream) and wait for its answer: (the result object, the
        stream's byte counts or None). The agent's error is raised as the same class."""
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
        req: dict[str, Any] = {"type": "request", "id": rid, "method": method, "args": dict(args)}
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
        return result, stats

    def send_stream(
        self, chunks: Iterator[bytes], *, on_progress: Any = None, to: BulkSender | None = None
    ) -> dict[str, int]:
        """Compress and send a stream as DATA frames, then END. Returns raw/wire byte counts.

        Reading ``chunks`` and compressing run in a thread of their own (see ``Compressor``)
        while this thread sends, so disk reads, zstd and the SSH channel overlap instead of
        taking turns. An exception raised while reading or compressing comes out of here as
        is, with no END sent (the stream is then unusable, as before).
        """
        send = (
            self.send_frame
            if to is None
            else lambda kind, body: to.sendall(encode_frame(kind, body))
        )
        comp = Compressor(chunks, level=self.level, threads=self.threads, adaptive=self.adaptive)
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
