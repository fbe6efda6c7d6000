"""`migrate export`: a running container to a bundle file (the import is agent/importer.py).

Export: save the image (still running), pause, checkpoint with CRIU, capture the read-write
layer, then unpause (``--leave-running``) or kill the source, and write the bundle from the
staged files (migrate/fs/bundle.py).
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from migrate import __version__
from migrate.checkpoint import criu
from migrate.core.errors import MigrateError
from migrate.core.journal import DEFAULT_DIR
from migrate.engines.base import ContainerSpec, Engine, ImageInfo
from migrate.fs import bundle, capture
from migrate.fs.bundle import (
    CHECKPOINT_PREFIX,
    IMAGE_MEMBER,
    LOG_MEMBER,
    ROOTFS_MEMBER,
    VOLUME_PREFIX,
)
from migrate.source.precheck import check_source


@dataclass(frozen=True)
class ExportResult:
    manifest: bundle.Manifest
    path: Path
    bundle_bytes: int
    pause_s: float
    checkpoint_time: str
    source_action: str  # "running" or "stopped"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def export(
    engine: Engine,
    container: str,
    out: Path,
    *,
    leave_running: bool = False,
    state_dir: Path = DEFAULT_DIR,
) -> ExportResult:
    spec = check_source(engine, container, only_running="are exported").spec
    img = engine.image(spec.image_id)
    if img is None:
        raise MigrateError(f"the image of {spec.name} ({spec.image_id[:19]}) is gone")
    staging = state_dir / "staging" / f"export-{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    paused = False
    try:
        refs = [spec.image_ref] if spec.image_ref in img.repo_tags else []
        refs = refs or list(img.repo_tags[:1]) or [img.id]
        with open(staging / "image.tar", "wb") as f:
            for chunk in engine.save_image(refs):
                f.write(chunk)
        log_src = engine.log_file(spec.id)
        log_copy = staging / LOG_MEMBER
        # Most of the log is copied while the container runs, the rest while it is paused.
        log_at = _copy_log(log_src, log_copy, 0) if log_src is not None else None
        t_pause = time.monotonic()
        engine.pause(spec.id)
        paused = True
        checkpoint_time = _now()
        engine.checkpoint(spec.id, staging / "checkpoint", staging / "work")
        with open(staging / ROOTFS_MEMBER, "wb") as f:
            capture.capture_to(Path(engine.state(spec.id).upper_dir), f)
        if log_src is not None and log_at is not None:
            _copy_log(log_src, log_copy, log_at)
        volumes = _capture_volumes(spec, staging / "volumes")  # frozen: consistent with memory
        if leave_running:
            engine.unpause(spec.id)
            action = "running"
        else:
            engine.kill(spec.id)
            action = "stopped"
        paused = False
        pause_s = time.monotonic() - t_pause
        manifest = _write_bundle(engine, spec, img, staging, out, volumes, checkpoint_time)
        return ExportResult(manifest, out, out.stat().st_size, pause_s, checkpoint_time, action)
    finally:
        if paused:
            try:
                engine.unpause(spec.id)
            except MigrateError:
                pass
        shutil.rmtree(staging, ignore_errors=True)


def _write_bundle(
    engine: Engine,
    spec: ContainerSpec,
    img: ImageInfo,
    staging: Path,
    out: Path,
    volumes: list[dict[str, str]],
    checkpoint_time: str,
) -> bundle.Manifest:
    """The bundle written from the staged files, with what an import needs to know."""
    log_copy = staging / LOG_MEMBER
    files = [(IMAGE_MEMBER, staging / "image.tar"), (ROOTFS_MEMBER, staging / ROOTFS_MEMBER)]
    if log_copy.is_file():
        files.append((LOG_MEMBER, log_copy))
    for v in volumes:
        files.append((v["member"], staging / v["member"]))
    for p in sorted((staging / "checkpoint").iterdir()):
        if not p.is_file() or p.is_symlink():
            raise MigrateError(f"unexpected non-file {p.name} in the CRIU images")
        files.append((CHECKPOINT_PREFIX + p.name, p))
    info = engine.info()
    caps = criu.capabilities(criu.find_criu())
    meta = {
        "container": spec.name,
        "spec": spec.to_wire(),
        "image": {"id": img.id, "ref": spec.image_ref, "diff_ids": list(img.diff_ids)},
        "engine": {"name": info.engine, "version": info.version},
        "criu_version": ".".join(map(str, caps.version)) if caps.version else None,
        "migrate_version": __version__,
        "source_host": socket.gethostname(),
        "created": checkpoint_time,
        "checkpoint": "checkpoint",
        "volumes": volumes,
    }
    return bundle.write_file(out, files, meta)


def _copy_log(src: Path, dst: Path, offset: int) -> int | None:
    """Append ``src`` from ``offset`` to ``dst``; the new offset. A log that shrank (rotated)
    is copied again from its start. None if it cannot be read (the bundle goes without it)."""
    try:
        with open(src, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < offset:
                offset = 0
                dst.unlink(missing_ok=True)
            f.seek(offset)
            with open(dst, "ab") as out:
                while offset < size and (b := f.read(min(1 << 20, size - offset))):
                    out.write(b)
                    offset += len(b)
        return offset
    except FileNotFoundError:
        return 0
    except OSError:
        dst.unlink(missing_ok=True)
        return None


def _capture_volumes(spec: ContainerSpec, into: Path) -> list[dict[str, str]]:
    """Each volume mount's content as ``volumes/<name>.tar`` (fs/capture.py format)."""
    out = []
    for m in spec.mounts:
        if m.type != "volume" or not m.name:
            continue
        member = f"{VOLUME_PREFIX}{m.name}.tar"
        bundle.check_name(member)
        into.mkdir(exist_ok=True)
        with open(into / f"{m.name}.tar", "wb") as f:
            capture.capture_to(Path(m.source), f)
        out.append({"name": m.name, "destination": m.destination, "member": member})
    return out
