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
from migrate.wire.client import AgentClient
from migrate.wire.messages import MIN_PROTOCOL_VERSION, PROTOCOL_VERSION
from migrate.wire.methods import Hello
from migrate.wire.results import AgentHello, EngineSummary, WireError, invalid_fields

# The hello's models live with the other answers (wire/results.py); named here too.
__all__ = ["AgentHello", "EngineSummary", "WireError", "open_session", "parse_hello"]


def parse_hello(answer: dict[str, Any]) -> AgentHello:
    """Validate an agent's hello answer already at hand; a malformed one is a protocol error,
    named. (open_session's answer is validated by the typed client, with the same model.)"""
    try:
        return AgentHello.model_validate(answer)
    except pydantic.ValidationError as e:
        raise ProtocolError(
            f"the agent's hello answer is malformed ({invalid_fields(e)})",
            hint="install the same migrate version on both hosts",
        ) from None


def open_session(
    client: AgentClient, *, faults: Iterable[str] = (), adaptive: bool = True
) -> AgentHello:
    """Say hello through ``client`` and return the agent's validated answer. The agent refuses a
    protocol range that does not overlap its own (the newer side decides). ``faults``: test
    fault points for the agent, honoured only where the agent's own environment allows it.
    ``adaptive``: whether streams may change their compression level (when the agent reads
    multi-frame streams)."""
    hello = client.call(
        Hello(
            protocol=PROTOCOL_VERSION,
            min_protocol=MIN_PROTOCOL_VERSION,
            software=__version__,
            faults=sorted(faults),
        )
    ).result
    client.conn.adaptive = adaptive and hello.stream_frames == "multi"
    return hello
