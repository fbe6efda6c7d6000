"""The destination's readiness for `migrate check --to DEST`, from its agent's answers: the
handshake (its CRIU, Docker and disk), whether a checkpoint taken here restores on its CPU,
and whether streams will go through OpenSSH."""

from __future__ import annotations

import base64

from migrate.checkpoint import criu
from migrate.core.checks import CheckResult
from migrate.core.errors import MigrateError, from_wire
from migrate.engines.base import EngineInfo, EngineReadiness
from migrate.source.check_result import CheckReport, gib
from migrate.source.host_checks import MIN_FREE_BYTES
from migrate.wire.bulk import attach_bulk
from migrate.wire.client import AgentClient
from migrate.wire.methods import CpuinfoCheck
from migrate.wire.results import CpuinfoResult
from migrate.wire.session import AgentHello, EngineSummary, open_session


def check_destination(agent: AgentClient, readiness: EngineReadiness) -> CheckReport:
    """The destination's readiness, asked of its agent through ``agent``: its handshake (CRIU,
    Docker, disk) and whether a checkpoint taken here restores on its CPU."""
    hello = open_session(agent)
    local = criu.capabilities(criu.find_criu(), probe_features=False)
    cpu: CpuinfoResult | None = None
    if local.path is not None:
        try:
            image = criu.cpuinfo_image(local.path)
        except MigrateError:
            cpu = None  # this host's own check reports its CRIU problem
        else:
            req = CpuinfoCheck(image_b64=base64.b64encode(image).decode())
            cpu = agent.call(req).result
    rows = destination_results(hello, cpu, local.version, readiness)
    # The streams' fast path: does the OpenSSH bulk connection come up (`--bulk auto`)?
    bulk = bulk_result(
        attach_bulk(agent, "auto", frozenset(hello.methods)).note, agent.conn.bulk is not None
    )
    if bulk is not None:
        rows.append(bulk)
    return CheckReport(tuple(rows), host=hello.hostname)


def bulk_result(note: str, up: bool) -> CheckResult | None:
    """The `bulk` row: whether streams will go through OpenSSH (a warning when they fall back
    to paramiko: slower, still correct); None for transports without SSH."""
    if up:
        return CheckResult("bulk", True, "streams through OpenSSH (ssh)", required=False)
    if not note:
        return None  # local://
    return CheckResult(
        "bulk",
        False,
        "streams over paramiko (slower)",
        problem=note,
        fix="install the OpenSSH client (`ssh`) and make the same key log in "
        "non-interactively (BatchMode); `migrate run` falls back to paramiko meanwhile",
        required=False,
    )


def destination_results(
    hello: AgentHello,
    cpu: CpuinfoResult | None,
    local_criu: tuple[int, int, int] | None,
    readiness: EngineReadiness,
) -> list[CheckResult]:
    """Rows for the destination from its agent's answers (pure, for unit tests)."""
    rows = [
        CheckResult(
            "agent",
            True,
            f"migrate {hello.software}, protocol {hello.protocol}, kernel {hello.kernel}",
        ),
        _criu_row(hello.criu_version, local_criu),
        CheckResult(
            "criu_check",
            hello.criu_ok,
            "passed" if hello.criu_ok else "failed",
            problem="" if hello.criu_ok else "`criu check` fails on the destination",
            fix="" if hello.criu_ok else "run `migrate check` on the destination for details",
        ),
    ]
    rows += _engine_rows(hello, readiness)
    free = hello.free_disk
    if free is not None:
        rows.append(
            CheckResult(
                "disk_data_root",
                free >= MIN_FREE_BYTES,
                f"{gib(free)} free (Docker's data root)",
                required=False,
                problem=""
                if free >= MIN_FREE_BYTES
                else f"less than {gib(MIN_FREE_BYTES)} free: "
                "image layers, the container's files and checkpoint images land there",
                fix="" if free >= MIN_FREE_BYTES else "free space on the destination",
            )
        )
    if cpu is not None:
        ok = cpu.ok
        rows.append(
            CheckResult(
                "cpu",
                ok,
                "compatible" if ok else "incompatible",
                problem=""
                if ok
                else "a checkpoint taken here would not restore there (CPU "
                "features missing): " + cpu.output,
                fix="" if ok else "migrate between hosts with the same CPU features",
            )
        )
    return rows


def _criu_row(version: list[int] | None, local_criu: tuple[int, int, int] | None) -> CheckResult:
    """The destination's CRIU: found, new enough, not older than this host's."""
    theirs = (version[0], version[1], version[2]) if version and len(version) == 3 else None
    need = "{}.{}".format(*criu.MIN_CRIU[:2])
    fix = "run `make setup` on the destination (it builds CRIU >= " + need + ")"
    if theirs is None:
        return CheckResult("criu", False, "not found", problem="no usable criu", fix=fix)
    if theirs < criu.MIN_CRIU:
        return CheckResult(
            "criu",
            False,
            criu.format_version(theirs),
            problem=f"CRIU >= {need} is needed",
            fix=fix,
        )
    if local_criu is not None and theirs < local_criu:
        return CheckResult(
            "criu",
            False,
            criu.format_version(theirs),
            problem=f"older than this host's {criu.format_version(local_criu)}: it may not "
            "read this host's checkpoint images",
            fix="install the same CRIU on both hosts (`make setup`)",
        )
    return CheckResult("criu", True, criu.format_version(theirs))


def _engine_rows(hello: AgentHello, readiness: EngineReadiness) -> list[CheckResult]:
    """The destination's engine, judged by the engine of our kind (engines/select.py)."""
    if hello.engine is None:
        err = hello.engine_error
        return readiness.remote_rows(None, from_wire(err.model_dump()) if err else None)
    return readiness.remote_rows(_engine_info(hello.engine), None)


def _engine_info(engine: EngineSummary) -> EngineInfo:
    return EngineInfo(
        engine=engine.engine or "docker",
        version=engine.version,
        api_version="",
        # The hello's key predates the neutral name: Docker's experimental mode.
        checkpoint_enabled=engine.experimental,
        storage_driver=engine.storage_driver,
        rootfs_supported=_rootfs_supported(engine),
        data_root="",
        runtime="",
        runc_version="",
        cgroup_version="",
        kernel="",
        os="",
        mem_total=engine.mem_total,
        host_name="",
        live_restore=engine.live_restore,
    )


def _rootfs_supported(engine: EngineSummary) -> bool:
    """Whether the destination's engine can hand over a container's read-write layer. The
    hello names the storage driver only, and its shape is fixed (wire/session.py refuses
    unknown fields, so a new one would break older sources): overlay2 is the one the agent
    takes (DockerEngine.info derives the same)."""
    return engine.storage_driver == "overlay2"
