"""Drills (source/drill.py): restore a bundle here isolated, check it, remove it, and never
leave a copy behind, even after this agent is killed (a record and a lock per drill)."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from migrate.agent.importer import import_bundle
from migrate.agent.state import DrillState, Part
from migrate.core.errors import BundleInvalid, DiskFull, MigrateError, ProtocolError
from migrate.core.journal import DEFAULT_DIR
from migrate.core.lock import PidLock
from migrate.fs import bundle
from migrate.fs.files import atomic_write
from migrate.wire.methods import DrillRemove, DrillRestore, DrillVerify
from migrate.wire.results import DrillRemoveResult, DrillRestoreResult, DrillVerifyResult
from migrate.wire.stream import StreamReader

log = logging.getLogger(__name__)

# Label on every drill container: which drill made it (and that it is one).
DRILL_LABEL = "org.migrate.source.drill"
# A drill's settle time and verification command are bounded (the source waits for them).
MAX_DRILL_WAIT_S = 3600.0
# Free space the bundle, the image it loads and the restored files need, as a multiple of the
# bundle's (compressed) size, plus a fixed reserve.
DRILL_DISK_FACTOR = 4
DRILL_DISK_RESERVE = 256 << 20


@dataclass
class Drills(Part):
    """The drill handlers (drill_restore, drill_verify, drill_remove) and their cleanup."""

    def _drill(self, drill_id: str) -> DrillState:
        d = self.s.drills.get(drill_id)
        if d is None:
            raise ProtocolError(f"unknown drill {drill_id!r}")
        return d

    def h_drill_restore(self, req: DrillRestore, stream: StreamReader) -> DrillRestoreResult:
        """Receive a bundle (``size`` bytes) and import it under ``name``, isolated."""
        drill_id, name, size = req.drill_id, req.name, req.size
        if not drill_id.isalnum() or len(drill_id) > 64 or drill_id in self.s.drills:
            raise ProtocolError(f"bad or reused drill id {drill_id!r}")
        if size <= 0:
            raise ProtocolError(f"drill_restore: bad bundle size {size}")
        base = self.s.state_dir or DEFAULT_DIR
        staging = base / "staging" / f"drill-{drill_id}"
        staging.mkdir(parents=True, exist_ok=False)
        d = DrillState(id=drill_id, name=name)
        self.s.drills[drill_id] = d
        try:
            path = _receive(stream, staging, base, size)
            d.image_id, renames = _drill_meta(path, drill_id)
            had_image = self.engine.image(d.image_id) is not None
            self._sweep_orphan_drills()
            self._record_drill(d, had_image, list(renames.values()))
            try:
                res = import_bundle(
                    self.engine,
                    path,
                    name=name,
                    state_dir=base,
                    isolated=True,
                    labels={DRILL_LABEL: drill_id},
                    volume_names=renames,
                )
            except BaseException:
                if not had_image:
                    self._remove_image(d)
                raise
            d.container_id, d.image_loaded = res.container_id, res.image_loaded
            d.volumes = res.volumes
            return DrillRestoreResult(
                container_id=res.container_id,
                volumes=list(res.volumes),
                restore_s=res.restore_s,
                restore_mode=res.restore_mode,
                recovery_s=res.total_s,
                image_loaded=res.image_loaded,
                bundle_bytes=size,
            )
        except BaseException:
            self._settled(d)  # import_bundle removed what it made
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _drill_files(self, drill_id: str) -> tuple[Path, PidLock]:
        base = (self.s.state_dir or DEFAULT_DIR) / "drills"
        lock = PidLock(
            base / f"{drill_id}.lock",
            busy=f"drill {drill_id} is live",
            hint="it is removed by its own agent",
        )
        return base / f"{drill_id}.json", lock

    def _record_drill(self, d: DrillState, had_image: bool, volumes: list[str]) -> None:
        d.record, d.lock = self._drill_files(d.id)
        d.lock.acquire()
        body = {"name": d.name, "image_id": d.image_id, "had_image": had_image, "volumes": volumes}
        atomic_write(d.record, json.dumps(body), durable=False)

    def _settled(self, d: DrillState) -> None:
        """Nothing of this drill is left to clean up (removed, kept, or never made)."""
        d.done = True
        if d.record is not None:
            d.record.unlink(missing_ok=True)
        if d.lock is not None:
            d.lock.release()

    def _sweep_orphan_drills(self) -> None:
        """Remove drill copies whose agent died before the source said keep or remove."""
        base = (self.s.state_dir or DEFAULT_DIR) / "drills"
        if not base.is_dir():
            return
        for rec in sorted(base.glob("*.json")):
            drill_id = rec.stem
            if drill_id in self.s.drills or not drill_id.isalnum():
                continue
            _, lock = self._drill_files(drill_id)
            try:
                lock.acquire()
            except MigrateError:
                continue  # its agent is alive
            try:
                data = json.loads(rec.read_text())
                name = str(data.get("name", ""))
                if name and self.engine.exists(name):
                    if self.engine.spec(name).labels.get(DRILL_LABEL) == drill_id:
                        log.warning("removing drill copy %s left by a dead agent", name)
                        self.engine.remove(name, force=True)
                for v in data.get("volumes") or []:
                    if isinstance(v, str) and f"-drill-{drill_id[:8]}" in v:
                        self.engine.remove_volume(v)
                if not data.get("had_image") and data.get("image_id"):
                    self._remove_image(
                        DrillState(id=drill_id, name=name, image_id=str(data["image_id"]))
                    )
                rec.unlink(missing_ok=True)
            except (MigrateError, OSError, ValueError, AttributeError) as e:
                log.error("could not remove what drill %s left: %s", drill_id, e)
            finally:
                lock.release()

    def h_drill_verify(self, req: DrillVerify) -> DrillVerifyResult:
        """Still running after ``settle_s``? Then run ``argv`` inside (if any) for its exit."""
        d = self._drill(req.drill_id)
        settle_s, timeout_s = req.settle_s, req.timeout_s
        if not 0 <= settle_s <= MAX_DRILL_WAIT_S or not 0 < timeout_s <= MAX_DRILL_WAIT_S:
            raise ProtocolError("drill_verify: settle or timeout out of range")
        time.sleep(settle_s)
        st = self.engine.state(d.container_id)
        running = st.running and not st.paused
        if running and req.argv:
            ex = self.engine.exec(d.container_id, list(req.argv), timeout_s)
            return DrillVerifyResult(
                status=st.status,
                running=running,
                exit_code=ex.exit_code,
                timed_out=ex.exit_code is None,
                output=ex.output,
            )
        return DrillVerifyResult(
            status=st.status, running=running, exit_code=None, timed_out=False, output=""
        )

    def h_drill_remove(self, req: DrillRemove) -> DrillRemoveResult:
        d = self._drill(req.drill_id)
        if req.keep:
            self._settled(d)
            return DrillRemoveResult(kept=True, container_removed=False, image_removed=False)
        self.engine.remove(d.container_id, force=True)
        for v in d.volumes:
            self.engine.remove_volume(v)
        image_removed = self._remove_image(d) if d.image_loaded else False
        self._settled(d)
        return DrillRemoveResult(
            kept=False,
            container_removed=True,
            volumes_removed=list(d.volumes),
            image_removed=image_removed,
        )

    def _remove_image(self, d: DrillState) -> bool:
        try:
            return bool(d.image_id) and self.engine.remove_image(d.image_id)
        except MigrateError as e:
            log.warning("could not remove the drill's image %s: %s", d.image_id[:19], e)
            return False

    def remove_all(self) -> None:
        """The source is gone before it said keep or remove: a drill never outlives it."""
        for d in self.s.drills.values():
            if d.done or not d.container_id:
                continue
            log.warning("removing drill container %s (the source went away)", d.name)
            try:
                self.engine.remove(d.container_id, force=True)
                for v in d.volumes:
                    self.engine.remove_volume(v)
                if d.image_loaded:
                    self._remove_image(d)
            except MigrateError as e:
                log.error("could not remove drill container %s: %s", d.name, e)
                d.done = True
                if d.lock is not None:
                    d.lock.release()  # the record stays: the next drill's sweep retries
                continue
            self._settled(d)


def _receive(stream: StreamReader, staging: Path, base: Path, size: int) -> Path:
    """The bundle into ``staging``, after checking there is room for it and for the import;
    exactly ``size`` bytes (the declared size is the cap)."""
    need = size * DRILL_DISK_FACTOR + DRILL_DISK_RESERVE
    free = shutil.disk_usage(staging).free
    if free < need:
        raise DiskFull(
            f"the destination has {free >> 20} MiB free under {base}; the drill needs "
            f"about {need >> 20} MiB",
            hint="free space on the destination (or point MIGRATE_STATE_DIR elsewhere)",
        )
    path = staging / "bundle.tar.zst"
    got = 0
    with open(path, "wb") as f:
        while chunk := stream.read(1 << 20):
            got += len(chunk)
            if got > size:
                raise ProtocolError(f"drill bundle larger than the declared {size} bytes")
            f.write(chunk)
    if got != size:
        raise ProtocolError(f"drill bundle is {got} bytes, {size} were declared")
    return path


def _drill_meta(path: Path, drill_id: str) -> tuple[str, dict[str, str]]:
    """The bundle's image id, and the names its volumes get for this drill."""
    try:
        meta = bundle.read_manifest(path).meta
        image_id = str(meta["image"]["id"])
        # The copy gets volumes of its own: the standby may hold a replica under the
        # original name, which a drill must never touch.
        renames = {
            str(v["name"]): f"{v['name']}-drill-{drill_id[:8]}" for v in meta.get("volumes") or []
        }
    except (KeyError, TypeError) as e:
        raise BundleInvalid(f"bundle member 'manifest.json': bad metadata ({e})") from None
    return image_id, renames
