"""`migrate drill`: prove that a running container restores on a standby host.

precheck (source and destination) -> export a bundle with the source left running (it is
paused only for the checkpoint and the read-write layer) -> stream the bundle to the agent,
which verifies it and restores it under a drill name with no network, no published ports and
no restart policy -> verify (still running after the settle time, the verification command
exits 0) -> remove the drill copy and whatever it alone needed (unless ``keep``).

The source container is never stopped or changed; the destination keeps nothing unless asked
(the agent also removes a drill copy whose source went away). The result is a
:class:`DrillReport` (JSON and Markdown); the CLI prints and writes it.
"""

from __future__ import annotations

import shutil
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from migrate import __version__
from migrate.core.errors import Incompatible, MigrateError, PrecheckFailed, Unsupported
from migrate.core.journal import DEFAULT_DIR
from migrate.core.report import NullProgress, Progress, Timer
from migrate.engines.base import ContainerSpec, ContainerState, Engine
from migrate.fs.bundle import (
    CHECKPOINT_PREFIX,
    IMAGE_MEMBER,
    LOG_MEMBER,
    ROOTFS_MEMBER,
    VOLUME_PREFIX,
)
from migrate.fs.files import read_chunks
from migrate.source.portable import ExportResult, export
from migrate.source.precheck import check_cpu, check_source, refuse_shared_network, require_criu
from migrate.transport import Channel
from migrate.wire.bulk import StreamChannel, attach_bulk
from migrate.wire.client import AgentClient
from migrate.wire.connection import Connection
from migrate.wire.methods import Bye, DrillRemove, DrillRestore, DrillVerify, Precheck
from migrate.wire.session import open_session

CALL_TIMEOUT_S = 60.0
RESTORE_TIMEOUT_S = 1800.0  # the agent verifies, loads the image and restores: GBs take minutes
DEFAULT_SETTLE_S = 5.0
DEFAULT_VERIFY_TIMEOUT_S = 60.0
_CHUNK = 1 << 20


@dataclass(frozen=True)
class DrillOptions:
    container: str
    destination: str  # for the report
    verify_argv: tuple[str, ...] = ()
    settle_s: float = DEFAULT_SETTLE_S
    verify_timeout_s: float = DEFAULT_VERIFY_TIMEOUT_S
    keep: bool = False
    state_dir: Path = DEFAULT_DIR
    bulk: str = "auto"  # how the bundle travels over SSH (migrate/transport/openssh.py)


@dataclass(frozen=True)
class Verification:
    settle_s: float
    command: tuple[str, ...] | None
    running: bool | None = None  # after the settle time
    status: str = ""
    exit_code: int | None = None
    timed_out: bool = False
    output: str = ""  # tail of the command's output


@dataclass(frozen=True)
class DrillReport:
    """What the drill proved. ``status``: passed | failed | refused."""

    status: str
    container: str
    source_host: str
    destination: str
    drill_id: str
    drill_name: str
    started: str
    finished: str
    total_s: float
    drill_container_id: str = ""
    recovery_point: str | None = None  # when the checkpoint was taken (UTC)
    recovery_time_s: float | None = None  # bundle on the standby -> container running there
    restore_s: float | None = None  # the CRIU restore part of it
    source_pause_s: float | None = None
    source_running: bool | None = None  # after the drill
    sizes: dict[str, int] = field(default_factory=dict)
    verification: Verification | None = None
    kept: bool = False
    teardown: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)
    reason: str | None = None  # why it failed or was refused
    error: dict[str, Any] | None = None
    stream_channel: str = ""  # openssh | paramiko | local (the bundle's stream)
    stream_channel_note: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed  # for scripts: one boolean to test
        d["migrate_version"] = __version__
        for k in ("total_s", "recovery_time_s", "restore_s", "source_pause_s"):
            if d[k] is not None:
                d[k] = round(d[k], 3)
        d["phases"] = {k: round(v, 3) for k, v in self.phases.items()}
        if d["verification"] is not None and d["verification"]["command"] is not None:
            d["verification"]["command"] = list(d["verification"]["command"])
        return d

    def to_markdown(self) -> str:
        return render_markdown(self)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _fmt_s(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f} s"


def _md(text: str) -> str:
    """Table-cell safe text: no pipes or newlines breaking the row."""
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(r: DrillReport) -> str:
    verdict = {"passed": "PASSED", "failed": "FAILED", "refused": "REFUSED"}.get(r.status, r.status)
    lines = [
        f"# Drill of `{r.container}` to {r.destination}: {verdict}",
        "",
        "| | |",
        "|---|---|",
        f"| container | `{_md(r.container)}` on {_md(r.source_host)} |",
        f"| drill copy | `{_md(r.drill_name)}` (drill {r.drill_id}) |",
        f"| started / finished | {r.started} / {r.finished} ({_fmt_s(r.total_s)}) |",
        f"| recovery point (checkpoint) | {r.recovery_point or '-'} |",
        f"| recovery time (bundle to running) | {_fmt_s(r.recovery_time_s)} "
        f"(CRIU restore {_fmt_s(r.restore_s)}) |",
        f"| source paused | {_fmt_s(r.source_pause_s)} |",
        f"| source running afterwards | {_yes_no(r.source_running)} |",
    ]
    if r.sizes:
        lines.append(
            "| sizes | " + ", ".join(f"{k} {_human(v)}" for k, v in r.sizes.items()) + " |"
        )
    v = r.verification
    if v is not None:
        lines.append(
            f"| running after {v.settle_s:g} s | {_yes_no(v.running)}"
            + (f" ({v.status})" if v.status else "")
            + " |"
        )
        if v.command is not None:
            res = "timed out" if v.timed_out else f"exit {v.exit_code}"
            if v.exit_code is None and not v.timed_out:
                res = "not run"
            lines.append(f"| verify command | `{_md(' '.join(v.command))}`: {res} |")
    kept = "kept (network none)" if r.kept else ("removed" if r.teardown else "-")
    lines.append(f"| drill copy afterwards | {kept} |")
    if r.reason:
        first = r.reason.splitlines()[0]
        lines.append(f"| reason | {_md(first[:400])}{'...' if len(first) > 400 else ''} |")
    if r.error and r.error.get("hint"):
        lines.append(f"| fix | {_md(str(r.error['hint']))} |")
    if v is not None and v.output:
        lines += ["", "Output of the verify command (tail):", "", "```", v.output.rstrip(), "```"]
    log = str(((r.error or {}).get("details") or {}).get("criu_log") or "")
    if log:
        lines += ["", "CRIU log (last lines):", "", "```", log.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def _yes_no(v: bool | None) -> str:
    return "-" if v is None else ("yes" if v else "NO")


def _human(n: int) -> str:
    from migrate.core.report import human_bytes

    return human_bytes(n)


@dataclass
class Drill:
    opts: DrillOptions
    engine: Engine
    connect: Callable[[], Channel]
    progress: Progress = field(default_factory=NullProgress)

    def __post_init__(self) -> None:
        self.id = uuid.uuid4().hex
        self.timer = Timer(self.progress)
        self.agent: AgentClient | None = None
        self.started = _now()
        self.t0 = time.monotonic()
        self.name = self.opts.container
        self.drill_name = ""
        self.staging = self.opts.state_dir / "staging" / f"drill-source-{self.id}"
        self.fields: dict[str, Any] = {}
        self.stream_channel = StreamChannel("")

    def run(self) -> DrillReport:
        """Never raises a MigrateError: every outcome is a report (refused, failed, passed)."""
        try:
            try:
                spec = self._precheck()
            except MigrateError as e:
                return self._report(
                    "refused" if isinstance(e, PrecheckFailed) else "failed", e.message, e
                )
            try:
                return self._drill(spec)
            except MigrateError as e:
                return self._report("failed", e.message, e)
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)
            if self.agent is not None:
                try:
                    self.agent.conn.close()
                except Exception:  # noqa: BLE001 - closing a dead channel may fail any way
                    pass

    # --- phases ---------------------------------------------------------------------------

    def _precheck(self) -> ContainerSpec:
        with self.timer.phase("precheck", "checking source and destination"):
            spec = check_source(
                self.engine,
                self.opts.container,
                only_running="are drilled",
                on_state=self._found,
                on_spec=self._check_mounts,
            ).spec
            source_criu = require_criu(say_found=False)
            self.drill_name = f"{spec.name}-drill-{self.id[:8]}"
            self.agent = agent = AgentClient(Connection(self.connect(), timeout=CALL_TIMEOUT_S))
            hello = open_session(agent)
            self.stream_channel = attach_bulk(agent, self.opts.bulk, frozenset(hello.methods))
            if not hello.serves("drill_restore"):
                raise Incompatible(
                    f"the destination's migrate ({hello.software}) cannot run drills",
                    hint="install the same migrate version on both hosts",
                )
            drill_spec = replace(spec, name=self.drill_name)
            agent.call(
                Precheck(
                    spec=drill_spec.to_wire(),
                    name=self.drill_name,
                    criu_version=list(source_criu.version),
                )
            )
            check_cpu(
                agent,
                hint="drill to a host with the same CPU features (`migrate check --to DEST`)",
            )
            return spec

    def _found(self, st: ContainerState) -> None:
        self.name = st.name

    def _check_mounts(self, spec: ContainerSpec) -> None:
        for m in spec.mounts:
            # Volumes travel in the bundle (the copy gets its own); a bind mount is a path
            # of this host, which the standby does not have.
            if m.type == "bind":
                raise Unsupported(
                    f"{spec.name} has a bind mount at {m.destination}: its content is a "
                    "path of this host, not carried in the bundle",
                    hint="use a named volume instead of the bind mount (docs/bundle.md)",
                )
        refuse_shared_network(
            self.engine,
            spec,
            hint="only containers with their own network namespace can be checkpointed",
        )

    def _drill(self, spec: ContainerSpec) -> DrillReport:
        assert self.agent is not None
        self.staging.mkdir(parents=True)
        path = self.staging / "bundle.tar.zst"
        with self.timer.phase("checkpoint", "checkpoint (the source keeps running)"):
            exp = export(
                self.engine, spec.id, path, leave_running=True, state_dir=self.opts.state_dir
            )
        sizes = _sizes(exp)
        self.fields.update(
            recovery_point=exp.checkpoint_time, source_pause_s=exp.pause_s, sizes=sizes
        )
        with self.timer.phase("restore", "sending the bundle and restoring it on the destination"):
            call = self.agent.call(
                DrillRestore(drill_id=self.id, name=self.drill_name, size=exp.bundle_bytes),
                stream=read_chunks(path, _CHUNK),
                timeout=RESTORE_TIMEOUT_S,
                on_progress=lambda raw, wire: self.progress.transfer(
                    "bundle", raw, wire, exp.bundle_bytes
                ),
            )
        sizes["wire"] = call.stream.wire if call.stream is not None else 0
        res = call.result
        self.fields.update(
            recovery_time_s=res.recovery_s,
            restore_s=res.restore_s,
            drill_container_id=res.container_id,
        )
        path.unlink()
        with self.timer.phase("verify", "verifying the drill copy"):
            v = self.agent.call(
                DrillVerify(
                    drill_id=self.id,
                    settle_s=self.opts.settle_s,
                    argv=list(self.opts.verify_argv),
                    timeout_s=self.opts.verify_timeout_s,
                ),
                timeout=self.opts.settle_s + self.opts.verify_timeout_s + CALL_TIMEOUT_S,
            ).result
        ver = Verification(
            settle_s=self.opts.settle_s,
            command=self.opts.verify_argv or None,
            running=v.running,
            status=v.status,
            exit_code=v.exit_code,
            timed_out=v.timed_out,
            output=v.output,
        )
        self.fields["verification"] = ver
        reason = _verdict(ver, self.opts.verify_timeout_s)
        with self.timer.phase("teardown", "removing the drill copy"):
            td = self.agent.call(DrillRemove(drill_id=self.id, keep=self.opts.keep)).result
            # The report keeps the agent's answer as it came (only the fields it sent).
            self.fields.update(kept=td.kept, teardown=td.to_wire())
            try:
                self.agent.call(Bye())
            except MigrateError:
                pass
        return self._report("failed" if reason else "passed", reason, None)

    # --- report ---------------------------------------------------------------------------

    def _report(self, status: str, reason: str | None, err: MigrateError | None) -> DrillReport:
        source_running: bool | None = None
        try:
            st = self.engine.state(self.opts.container)
            source_running = st.running and not st.paused
        except MigrateError:
            pass
        return DrillReport(
            status=status,
            container=self.name,
            source_host=socket.gethostname(),
            destination=self.opts.destination,
            drill_id=self.id,
            drill_name=self.drill_name,
            started=self.started,
            finished=_now(),
            total_s=time.monotonic() - self.t0,
            source_running=source_running,
            phases=dict(self.timer.phases),
            reason=reason,
            error=err.to_wire() if err is not None else None,
            stream_channel=self.stream_channel.name,
            stream_channel_note=self.stream_channel.note,
            **self.fields,
        )


def _sizes(exp: ExportResult) -> dict[str, int]:
    """The bundle's size, and its content's by part (checkpoint, volumes, image, rootfs, log)."""
    sizes = {"bundle": exp.bundle_bytes, "content": exp.manifest.total_size}
    for m in exp.manifest.members:
        part = (
            "checkpoint"
            if m.name.startswith(CHECKPOINT_PREFIX)
            else "volumes"
            if m.name.startswith(VOLUME_PREFIX)
            else {IMAGE_MEMBER: "image", ROOTFS_MEMBER: "rootfs", LOG_MEMBER: "log"}.get(
                m.name, "other"
            )
        )
        sizes[part] = sizes.get(part, 0) + m.size
    return sizes


def _verdict(v: Verification, timeout_s: float) -> str | None:
    """Why the verification failed, or None if it passed."""
    if not v.running:
        return f"the drill copy was {v.status or 'gone'}, not running, after {v.settle_s:g} s"
    if v.command is None:
        return None
    if v.timed_out:
        return f"the verify command did not finish within {timeout_s:g} s"
    if v.exit_code != 0:
        return f"the verify command exited with {v.exit_code}"
    return None
