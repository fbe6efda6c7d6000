"""Before anything moves: the precheck, the image, and the new container with its volumes,
bind-mount directories and networks (each journalled before it is made, for a rollback)."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migrate.agent.binds import bind_plan, parse_binds
from migrate.agent.state import MigrationState, Part
from migrate.checkpoint import criu
from migrate.core.errors import (
    CriuUnavailable,
    MigrateError,
    NameConflict,
    ProtocolError,
    VolumeConflict,
)
from migrate.engines.base import ContainerSpec, NetworkInfo, VolumeInfo
from migrate.wire.methods import CpuinfoCheck, ImageStatus, LoadImage, Precheck, Prepare
from migrate.wire.results import (
    CpuinfoResult,
    ImageStatusResult,
    LazyVerdict,
    LoadImageResult,
    PrecheckResult,
    PrepareResult,
)
from migrate.wire.stream import StreamReader

log = logging.getLogger(__name__)


@dataclass
class Preparer(Part):
    """The handlers before any stream: precheck, image status and load, prepare."""

    def h_precheck(self, req: Precheck) -> PrecheckResult:
        self.engine.refuse_unready(self.engine.info(), destination=True)
        found = criu.find_criu()
        caps = criu.capabilities(found)
        if caps.version is None:
            raise CriuUnavailable(
                "CRIU is not installed on the destination",
                hint="run `make setup` (or install CRIU >= 4.2) on the destination",
            )
        src = tuple(req.criu_version)
        if src and tuple(caps.version) < src:
            raise CriuUnavailable(
                f"the destination's CRIU {_version(caps.version)} is older than the source's {_version(src)}",
                hint="upgrade CRIU on the destination to at least the source's version",
            )
        if not caps.check_ok:
            raise CriuUnavailable(
                f"`criu check` fails on the destination: {caps.check_output[-300:]}",
                hint="run `migrate check` on the destination and apply its fixes",
            )
        if not self.s.faults.on("agent:skip_name_check") and self.engine.exists(req.name):
            raise NameConflict(
                f"a container named {req.name!r} already exists on the destination",
                hint="remove it there, or pick another name with --name",
            )
        parse_spec(req.spec)  # validates the shape
        for v in parse_volumes(req.volumes):
            self.volume_plan(v)
        for path, mode in parse_binds(req.binds):
            bind_plan(path, mode)
        if not req.lazy:
            return PrecheckResult(ok=True)
        why = self.postcopy_blocker(caps)
        return PrecheckResult(ok=True, lazy=LazyVerdict(ok=not why, why=why))

    def postcopy_blocker(self, caps: criu.CriuCapabilities | None = None) -> str:
        """Why a post-copy restore cannot be done here ("" when it can)."""
        if caps is None:
            caps = criu.capabilities(criu.find_criu())
        if not caps.lazy_pages:
            return (
                "`criu check --feature uffd-noncoop` fails on the destination (no "
                "non-cooperative userfaultfd in its kernel)"
            )
        if blocker := self.engine.lazy_restore_blocker():
            return str(blocker)
        return ""

    def volume_plan(self, want: VolumeInfo) -> bool:
        """Whether ``want`` must be created here (True) or an empty one of the same kind can
        take the content (False); a volume of that name with content, or another driver or
        options, is refused: never overwritten or merged."""
        have = self.engine.volume(want.name)
        if have is None:
            return True
        if have.driver != want.driver or dict(have.options) != dict(want.options):
            raise VolumeConflict(
                f"a volume named {want.name} already exists on the destination with another "
                f"driver or options ({have.driver} {dict(have.options)})",
                hint=f"remove it there (`{self.engine.name} volume rm {want.name}`) if it is not needed",
            )
        mp = Path(have.mountpoint)
        if mp.is_dir() and any(mp.iterdir()):
            raise VolumeConflict(
                f"a volume named {want.name} already exists on the destination and is not "
                "empty: migrate does not overwrite or merge volume content",
                hint=f"remove it there (`{self.engine.name} volume rm {want.name}`) if its content is not "
                "needed, or migrate to another host",
            )
        return False

    def h_cpuinfo_check(self, req: CpuinfoCheck) -> CpuinfoResult:
        """Would a checkpoint taken on the source (its ``cpuinfo.img``) restore on this CPU?"""
        try:
            image = base64.b64decode(req.image_b64, validate=True)
        except ValueError as e:
            raise ProtocolError(f"cpuinfo_check: image is not base64: {e}") from e
        res = criu.cpuinfo_compatible(image)
        return CpuinfoResult(ok=res.ok, output=res.output)

    def h_image_status(self, req: ImageStatus) -> ImageStatusResult:
        img = self.engine.image(req.image_id)
        if img is not None:
            return ImageStatusResult(image_present=True, layers_present=list(img.diff_ids))
        have = self.engine.layers_present()
        return ImageStatusResult(
            image_present=False, layers_present=[d for d in req.diff_ids if d in have]
        )

    def h_load_image(self, req: LoadImage, stream: StreamReader) -> LoadImageResult:
        def chunks() -> Iterator[bytes]:
            while True:
                b = stream.read(1 << 20)
                if not b:
                    return
                yield b

        self.engine.load_image(chunks())
        if self.engine.image(req.image_id) is None:
            raise MigrateError(f"image {req.image_id[:19]} is still missing after docker load")
        return LoadImageResult(loaded=True)

    def h_prepare(self, req: Prepare) -> PrepareResult:
        migration_id, name = req.migration_id, req.name
        s = parse_spec(req.spec)
        vols = parse_volumes(req.volumes)
        bind_list = parse_binds(req.binds)
        try:
            nets = [NetworkInfo.from_wire(n) for n in req.networks or []]
        except ValueError as e:
            raise ProtocolError(str(e)) from None
        if migration_id in self.s.migrations:
            raise ProtocolError(f"migration {migration_id} was already prepared")
        journal = self.s.journal(migration_id)
        if journal.records():
            raise ProtocolError(f"migration {migration_id} already has a journal here")
        m = MigrationState(id=migration_id, name=name)
        m.lock = self.s.lock(migration_id)
        m.lock.acquire()
        m.journal = journal
        m.checkpoint = f"migrate-{migration_id[:12]}"
        self.s.migrations[migration_id] = m
        m.journal.append("prepare", name=name, source_id=s.id)
        image = s.image_ref
        img = self.engine.image(s.image_ref) if s.image_ref else None
        if img is None or img.id != s.image_id:
            image = s.image_id  # the tag means another image here: pin the exact one
        for v in vols:
            if self.volume_plan(v):
                m.journal.append("volume_created", volume=v.name)
                m.volumes_made.append(v.name)
                self.engine.create_volume(v)
            else:
                m.journal.append("volume_reused", volume=v.name)
                m.volumes_reused.append(v.name)
        for path, mode in bind_list:
            plan = bind_plan(path, mode)
            if plan is not None:
                top, exists = plan
                if exists:
                    m.journal.append("bind_reused", path=path)
                    m.binds_reused.append(path)
                else:
                    m.journal.append("bind_created", path=str(top))
                    m.binds_made.append(str(top))
                    Path(path).mkdir(parents=True, mode=0o755)
        for net in nets:
            # A network of that name already here is used as it is (the address is kept when
            # its subnet allows); a missing one is created like the source's.
            if self.engine.network(net.name) is None:
                m.journal.append("network_created", network=net.name)
                m.networks_made.append(net.name)
                self.engine.create_network(net)
        m.container_id = self.engine.create(s, name, image=image, keep_volume_names=True)
        m.state = "prepared"
        m.journal.append("created", container_id=m.container_id)
        return PrepareResult(container_id=m.container_id)


def parse_spec(data: dict[str, Any]) -> ContainerSpec:
    try:
        return ContainerSpec.from_wire(data)
    except ValueError as e:
        raise ProtocolError(f"invalid container spec: {e}") from None


def parse_volumes(data: list[Any] | None) -> list[VolumeInfo]:
    """The volume descriptions of a request, checked (a bad one is a protocol error)."""
    try:
        out = [VolumeInfo.from_wire(v) for v in data or []]
    except ValueError as e:
        raise ProtocolError(str(e)) from None
    if len({v.name for v in out}) != len(out):
        raise ProtocolError("volumes: a name appears twice")
    return out


def _version(v: Any) -> str:
    return ".".join(str(x) for x in v)
