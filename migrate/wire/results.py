"""What the agent answers: one strict, frozen pydantic model per method's result.

The agent builds its answers as these models (so an answer that drifts from its declaration
fails where it is made, in the agent's own tests) and sends ``model_dump(exclude_unset=True)``:
an optional field the agent did not set is not on the wire at all, one it set to None is a
JSON null, exactly as the dicts it built before. The source validates what it receives with
the same model (wire/client.py): a hostile or broken agent gets a ProtocolError, never a
KeyError or a wrong type deep inside the state machine.
"""

from __future__ import annotations

from typing import Any, Literal

import pydantic


class Result(pydantic.BaseModel):
    """A method's answer: frozen, validated strictly (no coercion: "1" is not 1, true is not
    1), unknown fields refused, nested shapes included."""

    model_config = pydantic.ConfigDict(strict=True, extra="forbid", frozen=True)

    def to_wire(self) -> dict[str, Any]:
        """The answer as it goes on the wire: only the fields the agent set."""
        return self.model_dump(exclude_unset=True)


def invalid_fields(e: pydantic.ValidationError) -> str:
    """The first problems of a malformed answer, each with the field it is in."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'answer'}: {err['msg']}"
        for err in e.errors()[:5]
    )


class Empty(Result):
    """Nothing but success."""


# --- hello ----------------------------------------------------------------------------------


class EngineSummary(Result):
    """The destination's container engine, as its agent reports it."""

    engine: str
    version: str
    experimental: bool
    storage_driver: str
    mem_total: int
    live_restore: bool | None = None


class WireError(Result):
    """An error as it crosses the wire (core.errors: to_wire / from_wire)."""

    code: str
    message: str
    hint: str = ""
    details: dict[str, Any] = pydantic.Field(default_factory=dict)


class AgentHello(Result):
    """What an agent says about itself in answer to ``hello`` (docs/protocol.md)."""

    software: str
    protocol: int
    hostname: str
    kernel: str
    # The methods it serves: a source checks before it asks (drills, post-copy, bulk).
    methods: list[str]
    # Where checkpoint images can be staged on that host.
    staging: list[str] = pydantic.Field(default_factory=list)
    # "multi": streams may be several zstd frames (adaptive compression).
    stream_frames: str = ""
    criu_version: list[int] | None = None
    criu_ok: bool
    engine: EngineSummary | None = None
    engine_error: WireError | None = None
    free_disk: int | None = None
    mem_available: int | None = None

    def serves(self, method: str) -> bool:
        return method in self.methods


# --- before anything moves ------------------------------------------------------------------


class LazyVerdict(Result):
    """Whether a post-copy restore can be done on the destination, and why not."""

    ok: bool
    why: str


class PrecheckResult(Result):
    ok: bool
    lazy: LazyVerdict | None = None  # only when the request asked (`lazy: true`)


class CpuinfoResult(Result):
    ok: bool
    output: str


class ImageStatusResult(Result):
    image_present: bool
    layers_present: list[str]


class LoadImageResult(Result):
    loaded: bool


class PrepareResult(Result):
    container_id: str


# --- streams --------------------------------------------------------------------------------


class TreeResult(Result):
    """A tree (read-write layer, volume, bind directory) written from a stream."""

    files: int
    bytes: int


class DeltaResult(TreeResult):
    """A frozen delta over a pre-copy: also what it left and what it removed."""

    kept: int
    removed: int


class LogResult(Result):
    bytes: int


class CheckpointResult(Result):
    files: int
    bytes: int
    staging: Literal["memory", "disk"]


# --- restore and after ----------------------------------------------------------------------


class RestoreSteps(Result):
    """Where a post-copy restore's part of the downtime goes (seconds)."""

    images: float
    daemon: float
    docker_start: float
    until_running: float


class RestoreResult(Result):
    container_id: str
    restore_s: float
    running_s: float
    restore_mode: str  # plain | lazy_local | postcopy
    # lazy_local only: the time the local lazy-pages daemon took, and what it served.
    memory_fill_s: float | None = None
    lazy_bytes: int | None = None
    restore_steps: RestoreSteps | None = None  # postcopy only


class PostcopyResult(Result):
    postcopy_s: float
    bytes: int
    # From the lazy-pages daemon's log, when it could be read.
    pages_total: int | None = None
    pages_copied: int | None = None
    pages_on_demand: int | None = None
    pages_background: int | None = None


class CommitResult(Result):
    committed: bool


class AbortResult(Result):
    aborted: bool
    # Set when the migration was not this session's: whether a journal of it was found.
    known: bool | None = None


class StatusResult(Result):
    last: str  # the last journal event ("" when there is none)
    live: bool


# --- drills ---------------------------------------------------------------------------------


class DrillRestoreResult(Result):
    container_id: str
    volumes: list[str]
    restore_s: float
    restore_mode: str
    recovery_s: float
    image_loaded: bool
    bundle_bytes: int


class DrillVerifyResult(Result):
    status: str
    running: bool
    exit_code: int | None
    timed_out: bool
    output: str


class DrillRemoveResult(Result):
    kept: bool
    container_removed: bool
    volumes_removed: list[str] | None = None  # only when removed
    image_removed: bool


class BulkOpenResult(Result):
    socket: str
    token: str
