"""The agent's methods: each one's arguments declared once, as a strict pydantic model.

A request's ``args`` are validated against its model before any handler runs: JSON types
checked without coercion ("1" is not 1, true is not 1), list items included, unknown arguments
refused, required ones present. The table of methods in docs/protocol.md is generated from
these classes (scripts/protocol_doc.py; a unit test keeps it current): a model's docstring is
what the agent does with it. Each request is parametrised by its answer's model
(wire/results.py): the agent's handler returns it, the typed client (wire/client.py) returns
it validated.
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, TypeVar

import pydantic

from migrate.wire.results import (
    AbortResult,
    AgentHello,
    BulkOpenResult,
    CheckpointResult,
    CommitResult,
    CpuinfoResult,
    DeltaResult,
    DrillRemoveResult,
    DrillRestoreResult,
    DrillVerifyResult,
    Empty,
    ImageStatusResult,
    LoadImageResult,
    LogResult,
    PostcopyResult,
    PrecheckResult,
    PrepareResult,
    RestoreResult,
    Result,
    StatusResult,
    TreeResult,
)

R = TypeVar("R", bound=Result)


class Request(pydantic.BaseModel, Generic[R]):
    """Arguments of one method, parametrised by its answer
    (``class Commit(MigrationRequest[CommitResult])``). ``method``: its name on the wire; ``stream``: DATA frames and an END frame follow the
    request; ``stream_doc``: what that stream is; ``result``: the model of its answer, taken
    from the parameter (so it is declared once, and a typed client knows what it returns)."""

    model_config = pydantic.ConfigDict(strict=True, extra="forbid", frozen=True)
    method: ClassVar[str]
    stream: ClassVar[bool] = False
    stream_doc: ClassVar[str] = "yes"
    result: ClassVar[type[Result]]

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        # The nearest parametrised base names the answer:
        # Restore -> MigrationRequest[RestoreResult] -> RestoreResult.
        for base in cls.__mro__:
            args = base.__pydantic_generic_metadata__["args"] if issubclass(base, Request) else ()
            if args and isinstance(args[0], type) and issubclass(args[0], Result):
                cls.result = args[0]
                return


class Hello(Request[AgentHello]):
    """Version negotiation (the ranges must overlap; the newer side decides) and capabilities:
    CRIU version and self-check, engine, kernel, free disk, `methods` (the allow-list, so a
    source can tell what an older agent lacks), `staging` modes, `stream_frames`. `faults`
    are honoured only by an agent whose own environment allows test faults."""

    method = "hello"
    protocol: int
    min_protocol: int
    software: str
    faults: list[str]


class Precheck(Request[PrecheckResult]):
    """Daemon experimental, a storage driver it can restore into, CRIU present, not older than
    the source's, passes `criu check`; the name is free; each volume is missing here or empty
    with the same driver and options (`precheck.volume_conflict` otherwise); each bind mount
    is checked against its `--bind-mounts` plan. With `lazy: true` the answer also says
    whether a post-copy restore can be done here: `lazy: {ok, why}`."""

    method = "precheck"
    spec: dict[str, Any]
    name: str
    criu_version: list[int]
    volumes: list[dict[str, Any]] | None = None
    binds: list[dict[str, Any]] | None = None
    lazy: bool = False


class CpuinfoCheck(Request[CpuinfoResult]):
    """The source's `criu cpuinfo dump` image (base64): would a checkpoint taken there restore
    on this CPU (`criu cpuinfo check`)? `{ok, output}`; `run` refuses with exit 3 when not,
    `check --to` reports it."""

    method = "cpuinfo_check"
    image_b64: str


class ImageStatus(Request[ImageStatusResult]):
    """Is the image here; which of its layers (diff ids) are."""

    method = "image_status"
    image_id: str
    diff_ids: list[str]


class LoadImage(Request[LoadImageResult]):
    """Load an image archive (the engine's save format) whose present layers were emptied."""

    method = "load_image"
    stream = True
    image_id: str


class Prepare(Request[PrepareResult]):
    """Create the volumes that are missing (same name, driver options, labels; journalled),
    the user-defined networks, and the container (not started); journal it."""

    method = "prepare"
    migration_id: str
    spec: dict[str, Any]
    name: str
    volumes: list[dict[str, Any]] | None = None
    binds: list[dict[str, Any]] | None = None
    networks: list[dict[str, Any]] | None = None


class MigrationRequest(Request[R], Generic[R]):
    """A request about one migration this agent prepared (or, for abort and status, knew)."""

    migration_id: str


class PutRootfs(MigrationRequest[TreeResult]):
    """Extract the read-write layer into the new container's upper dir (safe extraction)."""

    method = "put_rootfs"
    stream = True


class PrecopyRootfs(MigrationRequest[TreeResult]):
    """The read-write layer read while the source still runs, into the (empty) new upper dir;
    only a delta may follow."""

    method = "precopy_rootfs"
    stream = True


class PutRootfsDelta(MigrationRequest[DeltaResult]):
    """The frozen layer over the pre-copy: `MIGRATE.keep` members name files already here
    (checked: a regular file of that size), anything else replaces what is in the way, names
    not mentioned are removed; `{files, bytes, kept, removed}`."""

    method = "put_rootfs_delta"
    stream = True


class VolumeRequest(MigrationRequest[R], Generic[R]):
    """A stream into one volume of the migration."""

    volume: str


class PrecopyVolume(VolumeRequest[TreeResult]):
    """The pre-copy of a volume prepared for this migration (extraction policy `volume`)."""

    method = "precopy_volume"
    stream = True


class PutVolumeDelta(VolumeRequest[DeltaResult]):
    """The frozen delta over a volume's pre-copy (extraction policy `volume delta`)."""

    method = "put_volume_delta"
    stream = True


class PutVolume(VolumeRequest[TreeResult]):
    """Extract one volume's content into that (new or empty) volume; only volumes named in
    `prepare`."""

    method = "put_volume"
    stream = True


class BindRequest(MigrationRequest[R], Generic[R]):
    """A stream into one `--bind-mounts copy` directory of the migration."""

    path: str


class PrecopyBind(BindRequest[TreeResult]):
    """The pre-copy of a `--bind-mounts copy` directory (extraction policy `volume`)."""

    method = "precopy_bind"
    stream = True


class PutBindDelta(BindRequest[DeltaResult]):
    """The frozen delta over a bind directory's pre-copy (policy `volume delta`)."""

    method = "put_bind_delta"
    stream = True


class PutBind(BindRequest[TreeResult]):
    """A `--bind-mounts copy` directory's content, captured frozen, to the same path here."""

    method = "put_bind"
    stream = True


class PutLog(MigrationRequest[LogResult]):
    """The json-file log history, written where the new container's log driver appends
    (capped at 1 GiB)."""

    method = "put_log"
    stream = True


class PutCheckpoint(MigrationRequest[CheckpointResult]):
    """Extract the CRIU images into a staging directory (restore decides what the engine
    gets); with `memory_bytes` (sent only to agents whose `hello` lists `"memory"` under
    `staging`) in memory (`/dev/shm/migrate/agent/`) when that much fits twice, else on disk;
    `require_memory`: refuse instead of using disk. Answers `staging: "memory"|"disk"`."""

    method = "put_checkpoint"
    stream = True
    memory_bytes: int | None = None
    require_memory: bool = False


class Restore(MigrationRequest[RestoreResult]):
    """Start from the checkpoint; wait until running; journal `restored`. With
    `page_server_port` (`--strategy lazy`): the memory is not in the images; a lazy-pages
    daemon fetches it through a relay from that loopback port (sshd's forward to the source's
    page server) and `restored` is answered as soon as the container runs."""

    method = "restore"
    page_server_port: int | None = None


class PostcopyWait(MigrationRequest[PostcopyResult]):
    """Wait until every page has moved: `{postcopy_s, bytes, pages_total, pages_copied,
    pages_on_demand, pages_background}`; `postcopy.interrupted` if the daemon or its link
    failed (the container was stopped first) or it did not finish in time."""

    method = "postcopy_wait"
    timeout_s: float


class Commit(MigrationRequest[CommitResult]):
    """Refuse unless `restored` and the container still runs; journal `committed` (the point
    of no return), drop the checkpoint images."""

    method = "commit"


class Abort(MigrationRequest[AbortResult]):
    """Delete what this migration created (also from the journal of an earlier, dead agent,
    whose migration lock it then takes: `lock.busy` while that agent lives);
    `{aborted, known}`."""

    method = "abort"


class Status(MigrationRequest[StatusResult]):
    """`{last, live}`: the last journal record, and whether another agent still serves it."""

    method = "status"


class DrillRestore(Request[DrillRestoreResult]):
    """`migrate drill`: check free disk, receive the bundle, verify and import it as `name`,
    isolated (network none, no ports, restart no, label `org.migrate.source.drill`); answers
    `restore_s`, `recovery_s`, `image_loaded`."""

    method = "drill_restore"
    stream = True
    stream_doc = "bundle file (`size` bytes, the cap)"
    drill_id: str
    name: str
    size: int


class DrillVerify(Request[DrillVerifyResult]):
    """Wait `settle_s`, report whether the copy runs, then run `argv` in it (no shell) and
    report `exit_code`, `timed_out`, output tail."""

    method = "drill_verify"
    drill_id: str
    settle_s: float
    argv: list[str]
    timeout_s: float


class DrillRemove(Request[DrillRemoveResult]):
    """Remove the copy, its volumes and an image loaded only for it, or keep it; copies neither
    removed nor kept are removed when the session ends, and those of a killed agent by the
    next `drill_restore` (record and lock under `drills/`)."""

    method = "drill_remove"
    drill_id: str
    keep: bool


class BulkOpen(Request[BulkOpenResult]):
    """Open the one-shot socket of the OpenSSH bulk connection: `{socket, token}`; once per
    session."""

    method = "bulk_open"


class Bye(Request[Empty]):
    """End the session."""

    method = "bye"


REQUESTS: tuple[type[Request[Any]], ...] = (
    Hello,
    Precheck,
    CpuinfoCheck,
    ImageStatus,
    LoadImage,
    Prepare,
    PutRootfs,
    PrecopyRootfs,
    PutRootfsDelta,
    PrecopyVolume,
    PutVolumeDelta,
    PrecopyBind,
    PutBindDelta,
    PutVolume,
    PutLog,
    PutBind,
    PutCheckpoint,
    Restore,
    PostcopyWait,
    Commit,
    Abort,
    Status,
    DrillRestore,
    DrillVerify,
    DrillRemove,
    BulkOpen,
    Bye,
)
