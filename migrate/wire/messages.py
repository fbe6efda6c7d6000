"""What the control frames say: the protocol version, the requests the agent accepts, and the
shapes of its answers.

Requests are named, allow-listed and keyword-only: each method's arguments are declared once,
as a strict model in wire/methods.py, and a request that does not match is refused before any
handler runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pydantic

from migrate.core.errors import MigrateError, ProtocolError
from migrate.wire.methods import REQUESTS, Request

PROTOCOL_VERSION = 1
MIN_PROTOCOL_VERSION = 1


@dataclass(frozen=True)
class Param:
    type: str
    required: bool = True


@dataclass(frozen=True)
class Method:
    """One allow-listed method, as the dispatch and the docs see it (from its model)."""

    name: str
    model: type[Request[Any]]
    params: Mapping[str, Param] = field(default_factory=dict)
    stream: bool = False  # the request is followed by DATA frames and an END frame


def _method(model: type[Request[Any]]) -> Method:
    params = {
        name: Param(_type_name(f.annotation), f.is_required())
        for name, f in model.model_fields.items()
    }
    return Method(model.method, model, params, model.stream)


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


METHODS: dict[str, Method] = {m.method: _method(m) for m in REQUESTS}

# pydantic's error types, said the way the protocol docs name JSON types.
_KINDS = {
    "string_type": "str",
    "int_type": "int",
    "bool_type": "bool",
    "float_type": "float",
    "dict_type": "dict",
    "list_type": "list",
}


def validate_request(msg: Mapping[str, Any]) -> tuple[int, Method, Request[Any]]:
    """Check a request against the allow-list and its method's model; return (id, method,
    the validated request). An optional argument the source did not send is left unset
    (``model_fields_set``) and reads as its model's default."""
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
    try:
        req = method.model.model_validate(args)
    except pydantic.ValidationError as e:
        raise ProtocolError(f"{method.name}: {_describe(e)}") from None
    return rid, method, req


def _describe(e: pydantic.ValidationError) -> str:
    """The first problems of a refused request, in the protocol's words."""
    said = []
    extra = sorted(str(err["loc"][0]) for err in e.errors() if err["type"] == "extra_forbidden")
    if extra:
        said.append(f"unexpected arguments {extra}")
    for err in e.errors():
        if err["type"] == "extra_forbidden":
            continue
        where = str(err["loc"][0]) if err["loc"] else "args"
        item = "".join(f"[{p}]" for p in err["loc"][1:])
        if err["type"] == "missing":
            said.append(f"missing argument {where!r}")
        elif err["type"] in _KINDS:
            said.append(f"argument {where!r}{item} must be {_KINDS[err['type']]}")
        else:
            said.append(f"argument {where!r}{item}: {err['msg']}")
    return "; ".join(said[:4])


def stream_header(rid: int) -> dict[str, Any]:
    """First frame of a stream on the bulk connection: whose request it belongs to."""
    return {"type": "stream", "id": rid}


def error_message(rid: int | None, err: MigrateError) -> dict[str, Any]:
    return {"type": "error", "id": rid, "error": err.to_wire()}


def response_message(rid: int, result: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "response", "id": rid, "result": dict(result)}
