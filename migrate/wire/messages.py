"""What the control frames say: the protocol version, the requests the agent accepts, and the
shapes of its answers.

Requests are named, allow-listed and keyword-only: each method declares its parameters and
their JSON types here, and a request that does not match is refused before any handler runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from migrate.core.errors import MigrateError, ProtocolError

PROTOCOL_VERSION = 1
MIN_PROTOCOL_VERSION = 1


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


def stream_header(rid: int) -> dict[str, Any]:
    """First frame of a stream on the bulk connection: whose request it belongs to."""
    return {"type": "stream", "id": rid}


def error_message(rid: int | None, err: MigrateError) -> dict[str, Any]:
    return {"type": "error", "id": rid, "error": err.to_wire()}


def response_message(rid: int, result: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "response", "id": rid, "result": dict(result)}
