"""Frames, the allow-list and streams: pure logic over an in-memory channel."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from migrate import errors, protocol
from migrate.protocol import Connection, StreamReader


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


def test_control_frame_round_trip() -> None:
    msg = {"type": "request", "id": 1, "method": "bye", "args": {}}
    ch = Pipe(protocol.encode_control(msg))
    f = protocol.read_frame(ch)
    assert f.kind == protocol.KIND_CONTROL
    assert protocol.decode_control(f.body) == msg


def test_bad_magic_is_refused() -> None:
    ch = Pipe(b"XX" + bytes(5))
    with pytest.raises(errors.ProtocolError, match="magic"):
        protocol.read_frame(ch)


def test_oversized_length_is_refused_before_reading_the_body() -> None:
    header = protocol.HEADER.pack(protocol.MAGIC, protocol.KIND_CONTROL, protocol.MAX_CONTROL_BYTES + 1)
    with pytest.raises(errors.ProtocolError, match="exceeds"):
        protocol.read_frame(Pipe(header))


def test_truncated_frame_is_a_lost_connection() -> None:
    frame = protocol.encode_control({"type": "hello"})
    with pytest.raises(errors.ConnectionLost, match="middle of a frame"):
        protocol.read_frame(Pipe(frame[:-3]))


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(errors.ProtocolError):
        protocol.read_frame(Pipe(protocol.HEADER.pack(protocol.MAGIC, 9, 0)))


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1,2]", b'{"no":"type"}', b"\xff\xfe"],
)
def test_control_body_must_be_a_typed_object(body: bytes) -> None:
    with pytest.raises(errors.ProtocolError):
        protocol.decode_control(body)


def test_validate_request_accepts_allowed_call() -> None:
    rid, m, args = protocol.validate_request(
        {"type": "request", "id": 7, "method": "commit", "args": {"migration_id": "abc"}}
    )
    assert (rid, m.name, args) == (7, "commit", {"migration_id": "abc"})


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
        ({"id": 1, "method": "hello", "args": {"protocol": True, "min_protocol": 1,
                                                "software": "x", "faults": []}}, "must be int"),
    ],
)
def test_validate_request_refuses(msg: dict, match: str) -> None:
    with pytest.raises(errors.ProtocolError, match=match):
        protocol.validate_request({"type": "request", **msg})


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
    conn.send_frame(protocol.KIND_DATA, b"\x28\xb5\x2f\xfd")  # zstd magic only
    conn.send_control({"type": "hello"})
    reader = StreamReader(Connection(Pipe(bytes(tx.sent))))
    with pytest.raises(errors.ProtocolError):
        reader.read(10)


def test_corrupt_compressed_stream_is_refused() -> None:
    tx = Pipe()
    conn = Connection(tx)
    conn.send_frame(protocol.KIND_DATA, os.urandom(1000))
    conn.send_frame(protocol.KIND_END, b"")
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
    reply = protocol.encode_control(
        protocol.error_message(1, errors.NameConflict("taken", hint="rename"))
    )
    conn = Connection(Pipe(reply))
    with pytest.raises(errors.NameConflict, match="taken") as ei:
        conn.call("bye")
    assert ei.value.exit_code == errors.EXIT_REFUSED
    wrong = protocol.encode_control(protocol.response_message(99, {}))
    with pytest.raises(errors.ProtocolError, match="99"):
        Connection(Pipe(wrong)).call("bye")
