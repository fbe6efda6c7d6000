"""Frames: how messages and stream data travel over a Channel between the source and the agent.

A frame is a fixed 7-byte header (magic ``MG``, kind, body length) and a body:

* ``CONTROL``: a JSON object (size-capped) — hello, request, response, error, event
  (wire/messages.py says which);
* ``DATA``: raw bytes of the stream that the last request opened (zstd-compressed,
  wire/stream.py);
* ``END``: end of that stream (empty body).

Both ends cap what a frame may hold, so a hostile or broken peer cannot make us allocate
without bound. Nothing received is ever evaluated or unpickled.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from migrate.core.errors import ConnectionLost, ProtocolError
from migrate.transport import Channel

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
