"""The handshake, once for every command: ``open_session`` says hello to an agent and returns
what it answered as a typed, validated :class:`AgentHello`.

Run, check, evacuate, recover, drill and the rollback's fresh session all start this way; the
version negotiation and the checks on what the agent said live here and nowhere else. The
answer is validated strictly (pydantic, in strict mode: no coercion, unknown fields refused,
nested shapes included): a hostile or broken agent gets a ProtocolError, never a KeyError or a
wrong type deep inside the state machine.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pydantic

from migrate import __version__
from migrate.core.errors import ProtocolError
from migrate.wire.protocol import MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, Connection


class _Strict(pydantic.BaseModel):
    """Frozen and validated strictly: no coercion ("1" is not 1), unknown fields refused."""

    model_config = pydantic.ConfigDict(strict=True, extra="forbid", frozen=True)


class EngineSummary(_Strict):
    """The destination's container engine, as its agent reports it."""

    engine: str
    version: str
    experimental: bool
    storage_driver: str
    mem_total: int
    live_restore: bool | None = None


class WireError(_Strict):
    """An error as it crosses the wire (core.errors: to_wire / from_wire)."""

    code: str
    message: str
    hint: str = ""
    details: dict[str, Any] = pydantic.Field(default_factory=dict)


class AgentHello(_Strict):
    """What an agent says about itself in answer to ``hello`` (docs/protocol.md)."""

    software: str
    protocol: int
    hostname: str
    kernel: str
    # The methods it serves: a source checks before it asks (drills, post-copy, bulk).
    methods: list[str]
    criu_ok: bool
    criu_version: list[int] | None = None
    # Where checkpoint images can be staged on that host.
    staging: list[str] = pydantic.Field(default_factory=list)
    # "multi": streams may be several zstd frames (adaptive compression).
    stream_frames: str = ""
    engine: EngineSummary | None = None
    engine_error: WireError | None = None
    free_disk: int | None = None
    mem_available: int | None = None

    def serves(self, method: str) -> bool:
        return method in self.methods


def parse_hello(answer: dict[str, Any]) -> AgentHello:
    """Validate an agent's hello answer; a malformed one is a protocol error, named."""
    try:
        return AgentHello.model_validate(answer)
    except pydantic.ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'answer'}: {err['msg']}"
            for err in e.errors()[:5]
        )
        raise ProtocolError(
            f"the agent's hello answer is malformed ({problems})",
            hint="install the same migrate version on both hosts",
        ) from None


def open_session(
    conn: Connection, *, faults: Iterable[str] = (), adaptive: bool = True
) -> AgentHello:
    """Say hello on ``conn`` and return the agent's validated answer. The agent refuses a
    protocol range that does not overlap its own (the newer side decides). ``faults``: test
    fault points for the agent, honoured only where the agent's own environment allows it.
    ``adaptive``: whether streams may change their compression level (when the agent reads
    multi-frame streams)."""
    hello = parse_hello(
        conn.call(
            "hello",
            protocol=PROTOCOL_VERSION,
            min_protocol=MIN_PROTOCOL_VERSION,
            software=__version__,
            faults=sorted(faults),
        )
    )
    conn.adaptive = adaptive and hello.stream_frames == "multi"
    return hello
