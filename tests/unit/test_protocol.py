"""Frames, the allow-list and streams: pure logic over an in-memory channel."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import tracemalloc
from collections.abc import Iterator

import pytest
import zstandard

from migrate.core import errors
from migrate.wire import framing, messages, stream
from migrate.wire.client import AgentClient
from migrate.wire.connection import Connection
from migrate.wire.methods import Bye
from migrate.wire.stream import StreamReader


class Pipe:
    """An in-memory one-way byte pipe pretending to be a Channel."""

    def __init__(self, data: bytes = b"") -> None:
        self.buf = bytearray(data)
        self.sent = bytearray()

    def recv(self, n: int) -> bytes:
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def settimeout(self, seconds: float | None) -> None:
        pass

    def close(self) -> None:
        pass

    def stderr_tail(self) -> str:
        return ""

    @property
    def peer(self) -> str:
        return "test"

    def tunnels(self) -> None:
        return None

    def bulk(self) -> None:
        return None


def test_control_frame_round_trip() -> None:
    msg = {"type": "request", "id": 1, "method": "bye", "args": {}}
    ch = Pipe(framing.encode_control(msg))
    f = framing.read_frame(ch)
    assert f.kind == framing.KIND_CONTROL
    assert framing.decode_control(f.body) == msg


def test_bad_magic_is_refused() -> None:
    ch = Pipe(b"XX" + bytes(5))
    with pytest.raises(errors.ProtocolError, match="magic"):
        framing.read_frame(ch)


def test_oversized_length_is_refused_before_reading_the_body() -> None:
    header = framing.HEADER.pack(framing.MAGIC, framing.KIND_CONTROL, framing.MAX_CONTROL_BYTES + 1)
    with pytest.raises(errors.ProtocolError, match="exceeds"):
        framing.read_frame(Pipe(header))


def test_truncated_frame_is_a_lost_connection() -> None:
    frame = framing.encode_control({"type": "hello"})
    with pytest.raises(errors.ConnectionLost, match="middle of a frame"):
        framing.read_frame(Pipe(frame[:-3]))


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(errors.ProtocolError):
        framing.read_frame(Pipe(framing.HEADER.pack(framing.MAGIC, 9, 0)))


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1,2]", b'{"no":"type"}', b"\xff\xfe"],
)
def test_control_body_must_be_a_typed_object(body: bytes) -> None:
    with pytest.raises(errors.ProtocolError):
        framing.decode_control(body)


def test_validate_request_accepts_allowed_call() -> None:
    rid, m, req = messages.validate_request(
        {"type": "request", "id": 7, "method": "commit", "args": {"migration_id": "abc"}}
    )
    assert (rid, m.name, req.model_dump(exclude_unset=True)) == (
        7,
        "commit",
        {"migration_id": "abc"},
    )


@pytest.mark.parametrize(
    ("msg", "match"),
    [
        ({"id": 1, "method": "__init__", "args": {}}, "not allowed"),
        ({"id": 1, "method": "os.system", "args": {}}, "not allowed"),
        ({"id": "1", "method": "bye", "args": {}}, "integer id"),
        ({"id": True, "method": "bye", "args": {}}, "integer id"),
        ({"id": 1, "method": "commit", "args": {}}, "missing"),
        ({"id": 1, "method": "commit", "args": {"migration_id": 3}}, "must be str"),
        ({"id": 1, "method": "commit", "args": {"migration_id": "a", "x": 1}}, "unexpected"),
        ({"id": 1, "method": "commit", "args": ["a"]}, "object"),
        (
            {
                "id": 1,
                "method": "hello",
                "args": {"protocol": True, "min_protocol": 1, "software": "x", "faults": []},
            },
            "must be int",
        ),
    ],
)
def test_validate_request_refuses(msg: dict, match: str) -> None:
    with pytest.raises(errors.ProtocolError, match=match):
        messages.validate_request({"type": "request", **msg})


def test_stream_round_trip_is_compressed_and_exact() -> None:
    payload = [os.urandom(300_000), b"text " * 400_000, b"", os.urandom(10)]
    tx = Pipe()
    stats = Connection(tx).send_stream(iter(payload))
    raw = b"".join(payload)
    assert stats["raw"] == len(raw)
    assert stats["wire"] < len(raw)  # the text half compresses
    rx = Connection(Pipe(bytes(tx.sent)))
    reader = StreamReader(rx)
    got = bytearray()
    while chunk := reader.read(65536):
        got += chunk
    assert hashlib.sha256(got).digest() == hashlib.sha256(raw).digest()
    assert reader.finished


def test_stream_with_control_frame_inside_is_refused() -> None:
    tx = Pipe()
    conn = Connection(tx)
    conn.send_frame(framing.KIND_DATA, b"\x28\xb5\x2f\xfd")  # zstd magic only
    conn.send_control({"type": "hello"})
    reader = StreamReader(Connection(Pipe(bytes(tx.sent))))
    with pytest.raises(errors.ProtocolError):
        reader.read(10)


def test_corrupt_compressed_stream_is_refused() -> None:
    tx = Pipe()
    conn = Connection(tx)
    conn.send_frame(framing.KIND_DATA, os.urandom(1000))
    conn.send_frame(framing.KIND_END, b"")
    reader = StreamReader(Connection(Pipe(bytes(tx.sent))))
    with pytest.raises(errors.ProtocolError, match="corrupt"):
        reader.read(10)


def test_errors_cross_the_wire_as_the_same_class() -> None:
    e = errors.RestoreFailed("boom", hint="look", details={"criu_log": "tail"})
    back = errors.from_wire(json.loads(json.dumps(e.to_wire())))
    assert type(back) is errors.RestoreFailed
    assert (back.message, back.hint, back.details) == ("boom", "look", {"criu_log": "tail"})
    assert back.exit_code == errors.EXIT_FAILED


def test_unknown_remote_error_code_keeps_the_code() -> None:
    back = errors.from_wire({"code": "martian", "message": "m"})
    assert isinstance(back, errors.RemoteError)
    assert back.details["remote_code"] == "martian"


def test_call_raises_remote_error_and_checks_ids() -> None:
    reply = framing.encode_control(
        messages.error_message(1, errors.NameConflict("taken", hint="rename"))
    )
    client = AgentClient(Connection(Pipe(reply)))
    with pytest.raises(errors.NameConflict, match="taken") as ei:
        client.call(Bye())
    assert ei.value.exit_code == errors.EXIT_REFUSED
    wrong = framing.encode_control(messages.response_message(99, {}))
    with pytest.raises(errors.ProtocolError, match="99"):
        AgentClient(Connection(Pipe(wrong))).call(Bye())


# --- the stream's stage threads (issue 8: reading, compressing and sending overlap) --------


def _stage_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("stream-")]


def test_error_while_reading_the_stream_surfaces_as_is_and_sends_no_end() -> None:
    def chunks() -> Iterator[bytes]:
        yield os.urandom(3 << 20)  # a few frames go out first
        raise errors.DiskFull("the source vanished", hint="fix it")

    tx = Pipe()
    with pytest.raises(errors.DiskFull, match="vanished") as ei:
        Connection(tx).send_stream(chunks())
    assert ei.value.hint == "fix it"
    kinds = _frame_kinds(bytes(tx.sent))
    assert kinds and set(kinds) == {framing.KIND_DATA}  # no END: the stream is unusable
    _wait_no_stage_threads()


def test_a_broken_link_stops_the_compressor_thread_and_closes_the_input() -> None:
    closed = threading.Event()
    produced = 0

    def endless() -> Iterator[bytes]:
        nonlocal produced
        try:
            while True:
                produced += 1
                yield os.urandom(1 << 20)
        finally:
            closed.set()

    class Broken(Pipe):
        def sendall(self, data: bytes) -> None:
            if len(self.sent) > (2 << 20):
                raise errors.ConnectionLost("link cut")
            self.sent += data

    with pytest.raises(errors.ConnectionLost, match="link cut"):
        Connection(Broken()).send_stream(endless())
    assert closed.wait(10), "the input was not closed"
    _wait_no_stage_threads()
    # Bounded read-ahead: the queue, not the whole input.
    assert produced <= 2 + stream.PIPELINE_DEPTH + 3


def test_progress_is_reported_from_the_sending_thread() -> None:
    seen: list[tuple[int, int, str]] = []
    payload = [os.urandom(1 << 20) for _ in range(5)]
    stats = Connection(Pipe()).send_stream(
        iter(payload),
        on_progress=lambda raw, wire: seen.append((raw, wire, threading.current_thread().name)),
    )
    assert seen[-1][:2] == (stats["raw"], stats["wire"]) == (5 << 20, stats["wire"])
    assert {name for _, _, name in seen} == {threading.current_thread().name}
    assert [r for r, _, _ in seen] == sorted(r for r, _, _ in seen)


def test_zstd_worker_threads_give_the_same_bytes() -> None:
    payload = [os.urandom(700_000), b"log line 42 INFO ok\n" * 200_000]
    tx = Pipe()
    Connection(tx, threads=2).send_stream(iter(payload))
    reader = StreamReader(Connection(Pipe(bytes(tx.sent))))
    assert reader.read() == b"".join(payload)


def test_well_compressed_stream_is_decompressed_in_bounded_pieces() -> None:
    # 256 MiB of zeros compress to a few KiB: one frame must not become 256 MiB in memory.
    tx = Pipe()
    zeros = bytes(1 << 20)
    Connection(tx).send_stream(zeros for _ in range(256))
    assert len(tx.sent) < (1 << 20)
    tracemalloc.start()
    try:
        reader = StreamReader(Connection(Pipe(bytes(tx.sent))))
        total = 0
        while chunk := reader.read(4 << 20):
            assert len(chunk) <= framing.DATA_CHUNK
            total += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 256 << 20
    assert peak < 3 * stream.PIPELINE_DEPTH * framing.DATA_CHUNK


def test_lost_connection_mid_stream_surfaces_in_the_reader_and_again_on_drain() -> None:
    tx = Pipe()
    Connection(tx).send_stream(iter([os.urandom(3 << 20)]))
    cut = bytes(tx.sent)[: (2 << 20)]  # the link dies in the middle of the second frame
    reader = StreamReader(Connection(Pipe(cut)))
    with pytest.raises(errors.ConnectionLost):
        while reader.read(1 << 20):
            pass
    with pytest.raises(errors.ConnectionLost):
        reader.drain()
    assert not reader.finished
    _wait_no_stage_threads()


def test_reader_drain_leaves_the_connection_at_the_next_frame() -> None:
    tx = Pipe()
    conn = Connection(tx)
    conn.send_stream(iter([os.urandom(3 << 20)]))
    conn.send_control({"type": "event", "n": 1})
    rx = Connection(Pipe(bytes(tx.sent)))
    reader = StreamReader(rx)
    assert len(reader.read(10)) == 10  # the handler gave up early
    reader.drain()
    assert reader.finished
    assert rx.recv_control() == {"type": "event", "n": 1}


def test_data_after_the_compressed_stream_is_refused() -> None:
    tx = Pipe()
    conn = Connection(tx)
    body = zstandard.ZstdCompressor().compress(b"hello")
    conn.send_frame(framing.KIND_DATA, body)
    conn.send_frame(framing.KIND_DATA, b"trailing junk")
    conn.send_frame(framing.KIND_END, b"")
    reader = StreamReader(Connection(Pipe(bytes(tx.sent))))
    with pytest.raises(errors.ProtocolError):
        reader.read()


def _frame_kinds(data: bytes) -> list[int]:
    kinds = []
    while data:
        _, kind, length = framing.HEADER.unpack(data[: framing.HEADER.size])
        kinds.append(kind)
        data = data[framing.HEADER.size + length :]
    return kinds


def _wait_no_stage_threads(timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while _stage_threads() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _stage_threads(), f"stage threads left running: {_stage_threads()}"


def _words(mib: int, seed: int = 7) -> list[bytes]:
    """Compressible text (~0.3 at zstd level 1) in 256 KiB pieces, the same every run."""
    import random

    rnd = random.Random(seed)
    vocab = [
        bytes(rnd.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 9)))
        for _ in range(4000)
    ]
    out, size = [], 0
    while size < mib << 20:
        piece = b" ".join(rnd.choice(vocab) for _ in range(40_000))[: 256 << 10]
        out.append(piece)
        size += len(piece)
    return out


class SlowPipe(Pipe):
    """A link slower than the compressor: 20 MB/s."""

    def sendall(self, data: bytes) -> None:
        time.sleep(len(data) / 20e6)
        super().sendall(data)


def _receive(data: bytes) -> bytes:
    reader = StreamReader(Connection(Pipe(data)))
    got = bytearray()
    while chunk := reader.read(1 << 20):
        got += chunk
    assert reader.finished
    return bytes(got)


@pytest.fixture
def small_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    # Windows well above what the queue holds, so each window's rate is the link's.
    monkeypatch.setattr(stream, "ADAPT_WINDOW", 4 << 20)
    monkeypatch.setattr(stream, "PIPELINE_DEPTH", 1)


def test_adaptive_stream_goes_fast_where_compressing_is_the_limit(small_windows: None) -> None:
    payload = _words(32)
    raw = b"".join(payload)
    tx = Pipe()  # sends instantly: only the compressor limits the rate
    conn = Connection(tx)
    conn.note_agent({"stream_frames": "multi"})
    stats = conn.send_stream(iter(payload))
    assert stats["raw"] == len(raw)
    # warm-up and one window at level 1, one fast, then fast for the rest
    assert stats["fast_raw"] >= 16 << 20, stats
    assert _receive(bytes(tx.sent)) == raw  # several zstd frames, one stream


def test_adaptive_stream_keeps_the_level_where_the_link_is_the_limit(small_windows: None) -> None:
    payload = _words(32)
    tx = SlowPipe()
    conn = Connection(tx)
    conn.note_agent({"stream_frames": "multi"})
    stats = conn.send_stream(iter(payload))
    # one window measured fast (the probe), the rest at level 1: the ratio pays on this link
    assert 0 < stats["fast_raw"] <= (4 << 20) + (256 << 10), stats
    assert stats["wire"] < 0.6 * stats["raw"]
    assert _receive(bytes(tx.sent)) == b"".join(payload)


def test_no_adaptive_compression_with_an_agent_that_reads_one_frame(small_windows: None) -> None:
    conn = Connection(Pipe())
    conn.note_agent({"methods": []})  # an older agent: no stream_frames
    assert not conn.adaptive
    stats = conn.send_stream(iter(_words(16)))
    assert stats["fast_raw"] == 0
    conn.note_agent({"stream_frames": "multi"}, adaptive=False)  # --compression fixed
    assert not conn.adaptive
